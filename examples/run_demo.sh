#!/usr/bin/env bash
# The main job: set up .venv and run the model on bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
.venv/bin/python examples/demo.py "$@"
