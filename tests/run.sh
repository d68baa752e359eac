#!/usr/bin/env bash
# The test command (README.md): set up .venv, then run pytest (fast selection by
# default; pass pytest options through, e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
.venv/bin/python -m pytest -q "$@"
