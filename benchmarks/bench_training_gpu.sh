#!/usr/bin/env bash
# Seconds per training epoch of lorem-torch and lorem-jax on a GPU, same data (GNL
# cumulenes: 200 training, 50 validation structures), same model and batch
# (examples/configs/gnl-f64d3.yaml), a few epochs each; prints a table.
#
# 1. Here, once (stages the data, 1 MB, and the device bundle in .device/, git-ignored):
#        bash benchmarks/bench_training_gpu.sh --stage
# 2. One device call with .device carried (about 3 minutes: 50 s build, then each
#    implementation under its own timeout; results in $OUT as they come):
#        bash benchmarks/bench_training_gpu.sh
#
# The first epoch is reported apart (CUDA warm-up; lorem-jax compiles one program per
# padded batch shape). lorem-torch runs the steps of lorem-train on the device (its
# command line has no device option yet); lorem-jax runs its own lorem-train.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--stage" ]; then
  set -e
  [ -f .device/site.tar.xz ] || bash ../shared/device/make_bundle.sh
  mkdir -p .device/datasets/cumulene_gnl
  cp ../shared/datasets/cumulene_gnl/gnl-v0.2-{train,val,test}.xyz .device/datasets/cumulene_gnl/
  [ -f .device/setup_on_gpu.sh ] || cp ../shared/device/setup_on_gpu.sh .device/
  echo "staged: $(du -sh .device | cut -f1) in .device"
  exit 0
fi

OUT="${OUT:-/tmp/bench_training_gpu}"
mkdir -p "$OUT"
EPOCHS="${EPOCHS:-3}"
if [ ! -f .device/site.tar.xz ] || [ ! -d .device/datasets/cumulene_gnl ]; then
  echo "run 'bash benchmarks/bench_training_gpu.sh --stage' first (here, not on the GPU)" >&2
  exit 2
fi
# shellcheck disable=SC1091
source .device/setup_on_gpu.sh
export LOREM_JAX_PYTHON=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

for impl in torch jax; do
  # lorem-jax compiles per batch shape: it gets the longer leash
  limit=$([ "$impl" = torch ] && echo 50 || echo 100)
  timeout "$limit" python3 benchmarks/bench_training.py --shared .device \
    --output "$OUT/runs" speed --dataset gnl --epochs "$EPOCHS" --device cuda \
    --impl "$impl" 2>&1 | tail -n 4 | tee "$OUT/speed-$impl.txt"
  echo "$impl: exit ${PIPESTATUS[0]}"
done
echo
echo "GPU: $(cat "$OUT/gpu.txt")"
cat "$OUT"/speed-*.txt
