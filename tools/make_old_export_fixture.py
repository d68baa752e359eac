"""Write tests/fixtures/export_before_fused_edges: a small export made by lorem-torch
before the fused edge operators (commit 84ad853), and its energies, forces and virial on
two structures, so that tests check that such archives still load and give the same
numbers. Run once with that version installed:

    python tools/make_old_export_fixture.py tests/fixtures/export_before_fused_edges
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import molecule

import lorem_torch
from lorem_torch import EnergyModel, Lorem
from lorem_torch.data import atoms_to_graph
from lorem_torch.export import export_model


def structures():
    water = molecule("H2O")
    water.set_cell([[5.3, 0.0, 0.0], [1.2, 5.4, 0.0], [0.6, -0.9, 5.2]])
    water.pbc = True
    water = water * (1, 2, 1)
    water.rattle(0.05, seed=2)
    water.wrap()
    cluster = molecule("H2O") * 1
    cluster.positions[1] += [0.1, 0.05, 0.0]
    return {"triclinic_water": water, "cluster": cluster}


def main():
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Lorem(
        num_features=8, num_radial=4, num_spherical_features=2, max_degree=3, species=[1, 8]
    ).double()
    export_model(model, folder / "model.pt", "float64")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(lorem_torch.__file__).parent,
    ).stdout.strip()
    arrays = {"commit": np.array(commit)}
    for name, atoms in structures().items():
        periodic = bool(atoms.pbc.all())
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
        out = EnergyModel(model)(**graph, compute_stress=periodic)
        arrays[f"{name}:numbers"] = atoms.numbers
        arrays[f"{name}:positions"] = atoms.positions
        arrays[f"{name}:cell"] = np.asarray(atoms.cell.array)
        arrays[f"{name}:pbc"] = atoms.pbc
        arrays[f"{name}:energy"] = out["energy"].detach().numpy()
        arrays[f"{name}:forces"] = out["forces"].numpy()
        if periodic:
            arrays[f"{name}:virial"] = out["virial"].numpy()
    np.savez(folder / "reference.npz", **arrays)


if __name__ == "__main__":
    main()
