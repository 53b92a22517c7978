#!/usr/bin/env bash
# Create .venv and install the package with its simulator, dev and deepspeed extras (pinned stack, see pyproject.toml).
# DS_BUILD_OPS=0: DeepSpeed compiles no CUDA ops at install (the tests run its ZeRO-2/3 on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "vla needs Python 3.11 (lerobot 0.4.4 and its pins); found $(python3 --version)" >&2
    exit 1
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
DS_BUILD_OPS=0 python -m pip install -q -e ".[sim,dev,deepspeed]"
