#!/usr/bin/env bash
# Build and install LAMMPS from a source tree the way a site does: CMake, the system
# MPI (Debian's Open MPI here), a shared liblammps plus the lmp binary, and the
# packages lorem-torch needs (PLUGIN for `plugin load`, KSPACE, MOLECULE, EXTRA-PAIR).
#
#   tools/build_lammps.sh [--with-lorem] SRC PREFIX
#
# --with-lorem: pair_style lorem built into LAMMPS (lammps_plugin/ml-lorem.cmake), for
# sites without PLUGIN, with the lorem-torch of the Python on PATH (or LOREM_PYTHON);
# add -DPKG_PLUGIN=off to EXTRA_CMAKE_ARGS for a LAMMPS that has no plugin loader at all.
#
# SRC: a LAMMPS source tree (the folder holding cmake/ and src/). PREFIX: the install
# prefix; afterwards PREFIX/bin/lmp, PREFIX/lib/liblammps.so, PREFIX/include/lammps and
# PREFIX/lib*/cmake/LAMMPS (find_package(LAMMPS) with CMAKE_PREFIX_PATH=PREFIX). The
# build folder is PREFIX.build unless BUILD_DIR is set. Environment: JOBS (default 2),
# MPI_HOME (an MPI other than the one on PATH), LAMMPS_SIZES (default smallbig),
# EXTRA_CMAKE_ARGS (more -D options, e.g. -DPKG_GPU=on), CC/CXX.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lorem_args=()
if [ "${1:-}" = "--with-lorem" ]; then
  shift
  python="${LOREM_PYTHON:-$(command -v python3 || command -v python)}"
  lorem_args=(-C "$ROOT/lammps_plugin/ml-lorem.cmake" "-DLOREM_PYTHON=$python")
fi
if [ $# -ne 2 ]; then
  echo "usage: $0 [--with-lorem] LAMMPS_SOURCE_TREE INSTALL_PREFIX" >&2
  exit 2
fi
SRC="$(cd "$1" && pwd)"
PREFIX="$(mkdir -p "$2" && cd "$2" && pwd)"
BUILD_DIR="${BUILD_DIR:-$PREFIX.build}"
JOBS="${JOBS:-2}"
if [ ! -f "$SRC/cmake/CMakeLists.txt" ]; then
  echo "$SRC is not a LAMMPS source tree (no cmake/CMakeLists.txt)" >&2
  exit 2
fi
if [ -z "${MPI_HOME:-}" ] && ! command -v mpicxx >/dev/null; then
  echo "no MPI found (mpicxx not on PATH, MPI_HOME unset); on Debian:" >&2
  echo "  apt-get install -y libopenmpi-dev openmpi-bin" >&2
  exit 2
fi
mpi_args=()
if [ -n "${MPI_HOME:-}" ]; then mpi_args+=("-DMPI_HOME=$MPI_HOME"); fi
# shellcheck disable=SC2206
extra=(${EXTRA_CMAKE_ARGS:-})
cmake "${lorem_args[@]}" -S "$SRC/cmake" -B "$BUILD_DIR" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_INSTALL_RPATH="$PREFIX/lib" \
  -DBUILD_SHARED_LIBS=on \
  -DBUILD_MPI=on \
  -DBUILD_OMP=on \
  -DLAMMPS_SIZES="${LAMMPS_SIZES:-smallbig}" \
  -DPKG_PLUGIN=on -DPKG_KSPACE=on -DPKG_MOLECULE=on -DPKG_EXTRA-PAIR=on \
  -DBUILD_TOOLS=off -DBUILD_DOC=off \
  "${mpi_args[@]}" "${extra[@]}"
cmake --build "$BUILD_DIR" -j "$JOBS"
cmake --install "$BUILD_DIR"
echo "LAMMPS installed in $PREFIX: $PREFIX/bin/lmp"
