#!/usr/bin/env bash
# Create .venv and install the package with its simulator and dev extras (pinned stack, see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "vla needs Python 3.11 (lerobot 0.4.4 and its pins); found $(python3 --version)" >&2
    exit 1
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[sim,dev]"
