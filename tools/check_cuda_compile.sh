#!/usr/bin/env bash
# Compiles the CUDA side of the operators (docs/design.md section 1.11) without a GPU:
# the kernels (cpp/src/ops/*_cuda.cu) with nvcc, and the host glue that launches
# it with LOREM_CUDA_KERNELS defined, against the headers of a CUDA build of torch.
# A check that a GPU session will not spend its minutes on a compile error.
#
#   bash tools/check_cuda_compile.sh PYTHON_WITH_CUDA_TORCH [SM]   (SM default 90)
#
# e.g. python3 -m venv /tmp/cudatorch && /tmp/cudatorch/bin/pip install torch==2.14.1
# (a CUDA wheel, several GB) and nvcc on PATH (CUDA 13 here: /usr/local/cuda).
set -euo pipefail
python=${1:?usage: tools/check_cuda_compile.sh PYTHON_WITH_CUDA_TORCH [SM]}
sm=${2:-90}
cd "$(dirname "$0")/.."
command -v nvcc > /dev/null || { echo "no nvcc on PATH (a CUDA toolkit is needed)" >&2; exit 2; }
"$python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2> /dev/null ||
  { echo "$python has no CUDA build of torch" >&2; exit 2; }
cuda_home=${CUDA_HOME:-/usr/local/cuda}  # its include/ has cuda_runtime.h
mapfile -t includes < <(CUDA_HOME=$cuda_home "$python" -c \
  "import torch.utils.cpp_extension as c; print('\n'.join('-I' + p for p in c.include_paths()))")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for kernel in sparse_form_cuda pair_group_cuda harmonics_cuda mesh_cuda; do
  echo "nvcc $(nvcc --version | tail -1): $kernel.cu for sm_$sm"
  nvcc -std=c++17 -O3 -arch="sm_$sm" -Werror all-warnings -c "cpp/src/ops/$kernel.cu" \
    -o "$out/$kernel.o"
  nm -C "$out/$kernel.o" | grep -q "launch_on_cuda<double>" ||
    { echo "$kernel.o lacks launch_on_cuda<double>" >&2; exit 1; }
done
echo "g++: the operators' CUDA glue (LOREM_CUDA_KERNELS) against $("$python" -c \
  'import torch; print(torch.__version__)')"
for source in cpp/src/ops/sparse_form_device.cpp cpp/src/ops/coupling_ops.cpp \
  cpp/src/ops/pair_form_ops.cpp cpp/src/ops/pair_sum_ops.cpp cpp/src/ops/edge_ops.cpp \
  cpp/src/ops/harmonics_ops.cpp cpp/src/ops/mesh_ops.cpp \
  cpp/src/ops/message_ops.cpp; do
  g++ -std=c++20 -fsyntax-only -Wno-psabi -fopenmp -DLOREM_CUDA_KERNELS -D_GLIBCXX_USE_CXX11_ABI=1 \
    "${includes[@]}" -I"$cuda_home/include" "$source"
done
echo "CUDA side compiles"
