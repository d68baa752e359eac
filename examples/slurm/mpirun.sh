#!/bin/bash
# pair_style lorem with Open MPI's mpirun instead of srun (examples/slurm/README.md): one
# rank per GPU, NODES x GPUS_PER_NODE ranks, CORES_PER_RANK cores each, on the hosts of
# HOSTFILE (or of the enclosing allocation when it is unset).
set -euo pipefail
NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
CORES_PER_RANK="${CORES_PER_RANK:-8}"
PLUGIN="${LOREM_PLUGIN:-$HOME/lorem-plugin/loremplugin.so}"
MODEL="${LOREM_MODEL:-model.pt}"
DATA="${LOREM_DATA:-system.data}"
hosts=()
if [ -n "${HOSTFILE:-}" ]; then hosts=(--hostfile "$HOSTFILE"); fi

export OMP_NUM_THREADS="$CORES_PER_RANK" OMP_PROC_BIND=close OMP_PLACES=cores
# ppr:G:node places G ranks per node, PE=C gives each C cores and binds it to them;
# -x passes the environment (the venv's library paths, OMP_*) to the remote ranks.
mpirun -np $((NODES * GPUS_PER_NODE)) "${hosts[@]}" \
  --map-by "ppr:${GPUS_PER_NODE}:node:PE=${CORES_PER_RANK}" --bind-to core --report-bindings \
  -x OMP_NUM_THREADS -x OMP_PROC_BIND -x OMP_PLACES -x PATH -x LD_LIBRARY_PATH \
  lmp -in in.lorem \
  -var plugin "$PLUGIN" -var model "$MODEL" -var data "$DATA" \
  -var elements "O H" -var steps 1000 -var device auto
