#!/usr/bin/env bash
# Seconds per training epoch on a GPU: lorem-torch (and lorem-jax where it is installed)
# on the same data (GNL cumulenes: 200 training, 50 validation structures), the same
# model and batch (examples/configs/gnl-f64d3.yaml), a few epochs each. This gives the
# GPU rows of docs/benchmarks.md section 3.
#
# Needs: the repository, an installed lorem-torch (with ase) on a CUDA torch, and the
# GNL files (cumulene_gnl/gnl-v0.2-{train,val}.xyz, not bundled: their licence) under
# the first of $LOREM_DATASETS, ../shared/datasets, .device/datasets that has them.
#   bash benchmarks/bench_training_gpu.sh --stage   # here: copies the GNL files (1 MB)
#                                                   # into .device/datasets (git-ignored)
#   bash benchmarks/bench_training_gpu.sh           # on the GPU machine, from the repo
# If lorem_torch does not import and .device/setup_on_gpu.sh exists (the shared device
# bundle, ../shared/device/README.md), that is sourced first. lorem-jax is timed only
# if `import lorem, marathon` works in the same Python; otherwise its row says so.
#
# Output: a table on stdout and in $OUT/bench_training_gpu.txt (OUT defaults to
# /tmp/bench_training_gpu), per-implementation rows as JSON in $OUT/runs/speed-*.json
# (copy them to runs/bench_training/ and run `bench_training.py report` to put them in
# the docs). Each implementation runs under its own timeout (TORCH_TIMEOUT, JAX_TIMEOUT
# seconds); EPOCHS (default 3) timed epochs after the first, which is reported apart
# (CUDA warm-up; lorem-jax compiles one program per padded batch shape). lorem-torch
# runs the steps of lorem-train (batch, forces by autograd, loss, fused Adam) on the GPU.
# DEVICE=cpu runs the same on the CPU (to check the script where there is no GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

find_datasets() {
  for folder in "${LOREM_DATASETS:-}" ../shared/datasets .device/datasets; do
    if [ -n "$folder" ] && [ -f "$folder/cumulene_gnl/gnl-v0.2-train.xyz" ]; then
      echo "$folder"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = "--stage" ]; then
  set -e
  source_folder=$(find_datasets) || { echo "no cumulene_gnl data found to stage" >&2; exit 2; }
  mkdir -p .device/datasets/cumulene_gnl
  cp "$source_folder"/cumulene_gnl/gnl-v0.2-{train,val}.xyz .device/datasets/cumulene_gnl/
  echo "staged: $(du -sh .device/datasets | cut -f1) in .device/datasets"
  exit 0
fi

OUT="${OUT:-/tmp/bench_training_gpu}"
mkdir -p "$OUT/runs"
EPOCHS="${EPOCHS:-3}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu checks this script on a machine without a GPU
report="$OUT/bench_training_gpu.txt"
: > "$report"

if ! "$PYTHON" -c "import lorem_torch" 2>/dev/null && [ -f .device/setup_on_gpu.sh ]; then
  # shellcheck disable=SC1091
  source .device/setup_on_gpu.sh
fi
if ! "$PYTHON" -c "import lorem_torch, ase, torch; assert '$DEVICE' == 'cpu' or torch.cuda.is_available()" 2>/dev/null; then
  echo "needs lorem-torch (with ase) importable by $PYTHON and a CUDA torch" | tee -a "$report"
  exit 2
fi
datasets=$(find_datasets) || {
  echo "no cumulene_gnl/gnl-v0.2-train.xyz under \$LOREM_DATASETS, ../shared/datasets or" \
    ".device/datasets (stage with --stage)" | tee -a "$report"
  exit 2
}
# bench_training.py takes the folder that holds datasets/
shared=$(dirname "$datasets")
if [ "$(basename "$datasets")" != datasets ]; then
  mkdir -p "$OUT/shared" && ln -sfn "$(cd "$datasets" && pwd)" "$OUT/shared/datasets"
  shared="$OUT/shared"
fi

{
  echo "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
  echo "data: $datasets/cumulene_gnl; model and batch: examples/configs/gnl-f64d3.yaml"
} | tee -a "$report"

implementations=(torch)
if "$PYTHON" -c "import lorem, marathon" 2>/dev/null; then
  implementations+=(jax)
else
  echo "lorem-jax: not importable by $PYTHON, not timed" | tee -a "$report"
fi
export LOREM_JAX_PYTHON="$PYTHON" XLA_PYTHON_CLIENT_PREALLOCATE=false
for impl in "${implementations[@]}"; do
  limit=$([ "$impl" = torch ] && echo "${TORCH_TIMEOUT:-150}" || echo "${JAX_TIMEOUT:-240}")
  timeout "$limit" "$PYTHON" benchmarks/bench_training.py --shared "$shared" \
    --output "$OUT/runs" speed --dataset gnl --epochs "$((EPOCHS + 1))" --device "$DEVICE" \
    --impl "$impl" > "$OUT/speed-$impl.log" 2>&1
  status=$?
  echo "lorem-$impl: exit $status (log: $OUT/speed-$impl.log)" | tee -a "$report"
  tail -n 2 "$OUT/speed-$impl.log" | tee -a "$report"
done
echo
echo "== $report"
cat "$report"
