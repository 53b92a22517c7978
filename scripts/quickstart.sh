#!/usr/bin/env bash
# Install (once) into .venv and run the quickstart: demos -> train -> closed-loop eval. README command (a).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 MUJOCO_GL=egl
vla-quickstart --config_path configs/quickstart.yaml "$@"
