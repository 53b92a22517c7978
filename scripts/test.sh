#!/usr/bin/env bash
# Install (once) into .venv and run the test suite. README command (b).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 MUJOCO_GL=egl
python -m pytest -q "$@"
