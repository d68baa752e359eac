"""Bad input raises a named error that says what is wrong."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import small_model, triclinic_water

from lorem_torch import EnergyModel, LoremCalculator, keys
from lorem_torch.data import atoms_to_graph
from lorem_torch.errors import (
    AtomsTooCloseError,
    DegenerateCellError,
    EmptyStructureError,
    NonFiniteError,
    UnknownElementError,
    UnsupportedPeriodicityError,
)
from lorem_torch.export import ExportedLorem


def test_unknown_element():
    calculator = LoremCalculator(small_model(species=[1, 8]))
    atoms = molecule("CH4")
    atoms.calc = calculator
    with pytest.raises(ValueError, match=r"unknown element.*\[6\]"):
        atoms.get_potential_energy()


def test_unknown_element_in_the_model():
    """Every path into the model (forward, EnergyModel, the scripted export) refuses
    species it was not built for, instead of returning an energy."""
    model = small_model(species=[1, 8])
    graph = atoms_to_graph([molecule("CH4")], model.cutoff, dtype=torch.float64)
    message = r"unknown element: atomic numbers \[6\] are not among the model's species \[1, 8\]"
    with pytest.raises(UnknownElementError, match=message):
        model(**graph)
    with pytest.raises(UnknownElementError, match=message):
        EnergyModel(model)(**graph)
    scripted = torch.jit.script(ExportedLorem(model))
    inputs = [graph[k] for k in keys.INPUT_KEYS]
    # with the code that runtimes find it by (errors.coded_line)
    coded = r"UnknownElementError: \[lorem:element\] " + message
    with pytest.raises(torch.jit.Error, match=coded):
        scripted.energy_forces_virial(*inputs)
    # beyond the embedding table, too (no index error)
    graph[keys.ATOMIC_NUMBERS][0] = 150
    with pytest.raises(UnknownElementError, match=r"\[150\]"):
        model(**graph)
    # and what the model knows still works
    water = atoms_to_graph([molecule("H2O")], model.cutoff, dtype=torch.float64)
    assert torch.isfinite(EnergyModel(model)(**water)["energy"]).all()


def test_nan_positions():
    atoms = molecule("H2O")
    atoms.positions[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        atoms_to_graph([atoms], 5.0)


def test_degenerate_cell():
    atoms = Atoms(
        "H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True
    )
    with pytest.raises(DegenerateCellError, match="degenerate"):
        atoms_to_graph([atoms], 5.0)


def test_atoms_too_close():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.05, 0, 0]])
    with pytest.raises(AtomsTooCloseError, match="0.05"):
        atoms_to_graph([atoms], 5.0)
    # and the threshold is the caller's to set
    atoms_to_graph([atoms], 5.0, min_distance=0.01)


def test_empty_structure():
    with pytest.raises(EmptyStructureError, match="no atoms"):
        atoms_to_graph([triclinic_water(), Atoms()], 5.0)
    with pytest.raises(EmptyStructureError):
        atoms_to_graph([], 5.0)


def test_partially_periodic():
    atoms = triclinic_water()
    atoms.pbc = [True, True, False]
    with pytest.raises(UnsupportedPeriodicityError, match="2D"):
        atoms_to_graph([atoms], 5.0)
