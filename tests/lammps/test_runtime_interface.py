"""The check that code compiled against one lorem-torch's headers (a LAMMPS with
pair_style lorem built in, a plugin built by tools/build_plugin.sh) runs with the same
runtime library: lorem::header_interface() where it is compiled against
lorem::runtime_interface() of the library loaded (cpp/include/lorem/model.hpp). Here a
program is compiled against the installed headers with one struct grown, as another
lorem-torch's would be, and linked to the installed library: the two must differ, and
name what."""

import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAM = r"""
#include <iostream>
#include "lorem/model.hpp"
int main() {
  const auto mine = lorem::header_interface();
  const auto loaded = lorem::runtime_interface();
  std::cout << "equal:" << (mine == loaded) << "\n";
  std::cout << "mine:" << mine.describe() << "\n";
  std::cout << "loaded:" << loaded.describe() << "\n";
}
"""


def test_a_runtime_of_another_layout_is_told_apart(tmp_path):
    import torch
    from torch.utils import cpp_extension

    from lorem_torch import _core

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    package = Path(_core.__file__).parent  # the runtime and its headers lie beside _core
    headers = tmp_path / "include"
    shutil.copytree(package / "include", headers)
    model_header = headers / "lorem" / "model.hpp"
    text = model_header.read_text()
    grown = text.replace("struct System {", "struct System {\n  double another_field = 0.0;", 1)
    assert grown != text
    model_header.write_text(grown)
    source = tmp_path / "check.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "check"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [compiler, "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{headers}"]
    command += [f"-I{p}" for p in cpp_extension.include_paths()]
    command += [str(source), "-o", str(binary), f"-L{package}", "-llorem_runtime"]
    for folder in cpp_extension.library_paths():
        command += [f"-L{folder}", f"-Wl,-rpath,{folder}"]
    command += [f"-Wl,-rpath,{package}", "-ltorch", "-ltorch_cpu", "-lc10"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    lines = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    out = dict(line.split(":", 1) for line in lines.splitlines())
    assert out["equal"] == "0", out
    assert out["mine"] != out["loaded"] and "System" in out["mine"], out
    assert out["loaded"].startswith("version "), out
