"""Small fixes found while benchmarking training: the periodicity override of the data
files (data.pbc) and the fused Adam step."""

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from lorem_torch.data import structure_to_graph
from lorem_torch.train.config import ConfigError
from lorem_torch.train.data import DataError, read_frames
from lorem_torch.train.loop import Trainer


def boxed_dimer(distance: float) -> Atoms:
    """Two molecules written in a 30 A periodic box, as the LODE dimer files are."""
    atoms = Atoms(
        "NHOF", positions=[[0, 0, 0], [1.0, 0, 0], [distance, 0, 0], [distance + 1.4, 0, 0]]
    )
    atoms.cell = [30.0, 30.0, 30.0]
    atoms.pbc = True
    atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=np.zeros((4, 3)))
    return atoms


def trainer(tmp_path, path, pbc=None, **training) -> Trainer:
    data = {"train": str(path), "valid": str(path), "pbc": pbc}
    settings = {"output": str(tmp_path / f"run-{pbc}"), "epochs": 1, "progress": False}
    settings.update(training)
    model = {"num_features": 8, "max_degree": 2, "num_radial": 4, "num_spherical_features": 2}
    return Trainer({"model": model, "data": data, "training": settings}, log=lambda m: None)


def test_pbc_override_reads_boxed_molecules_as_isolated(tmp_path):
    """data.pbc: false drops the periodicity and the cell of every frame; with the file's
    30 A box the images of the anion (15 A away) would otherwise enter the Ewald sum."""
    path = tmp_path / "boxed.xyz"
    ase.io.write(path, [boxed_dimer(15.0)])
    (kept,) = read_frames(str(path))
    assert kept.pbc.all()
    (isolated,) = read_frames(str(path), pbc=False)
    assert not isolated.pbc.any() and isolated.cell.volume == 0.0
    assert isolated.get_potential_energy() == kept.get_potential_energy()
    graph = structure_to_graph(isolated, 5.0)
    assert not graph["pbc"].any()
    # the trainer reads its files through the option; anything but a boolean is refused
    assert trainer(tmp_path, path).train_samples[0].graph["pbc"].all()
    assert not trainer(tmp_path, path, pbc=False).train_samples[0].graph["pbc"].any()
    with pytest.raises(ConfigError, match="data.pbc"):
        trainer(tmp_path, path, pbc="no")


def test_pbc_override_refuses_periodic_without_a_cell(tmp_path):
    """data.pbc: true on molecules written without a cell is an error naming the frame,
    not a degenerate periodic structure."""
    molecule = Atoms("NH", positions=[[0, 0, 0], [1.0, 0, 0]])
    molecule.calc = SinglePointCalculator(molecule, energy=-1.0, forces=np.zeros((2, 3)))
    path = tmp_path / "molecule.xyz"
    ase.io.write(path, [boxed_dimer(3.0), molecule])
    with pytest.raises(DataError, match="frame 1 has no full cell"):
        read_frames(str(path), pbc=True)
    assert all(atoms.pbc.all() for atoms in read_frames(str(path), index="0", pbc=True))


def test_fused_adam_step_equals_the_reference_step(tmp_path):
    """lorem-train's optimiser is the fused Adam; its step is Adam's (float64)."""
    path = tmp_path / "boxed.xyz"
    ase.io.write(path, [boxed_dimer(3.0)])
    run = trainer(tmp_path, path, pbc=False, dtype="float64", weight_decay=0.01)
    assert run.optimizer.defaults["fused"]
    parameters = list(run.model.parameters())
    reference_parameters = [p.detach().clone().requires_grad_(True) for p in parameters]
    reference = torch.optim.Adam(
        reference_parameters, lr=run.settings["learning_rate"], weight_decay=0.01, foreach=False
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(parameters, reference_parameters, strict=True):
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            q.grad = p.grad.clone()
        run.optimizer.step()
        reference.step()
    for p, q in zip(parameters, reference_parameters, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
