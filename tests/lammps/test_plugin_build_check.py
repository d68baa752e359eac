"""The plugin's check that the running LAMMPS is the one it was built for
(lammps_plugin/build_check.h), compiled alone with the system compiler: a plugin built
for other headers or integer sizes must refuse to register, naming both builds."""

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
