"""The ASE calculator over a model object."""

import numpy as np
import pytest
import torch
from conftest import cluster, evaluate, small_model, triclinic_water

from lorem_torch import LoremCalculator


def test_calculator_matches_model_and_ase_conventions():
    model = small_model()
    atoms = triclinic_water()
    atoms.calc = LoremCalculator(model)
    out = evaluate(model, [atoms], stress=True)
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"]), rel=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].numpy(), atol=1e-12)
    stress = out["stress"][0].numpy()
    np.testing.assert_allclose(atoms.get_stress(voigt=False), 0.5 * (stress + stress.T), atol=1e-12)
    assert atoms.calc.results["charges"].shape == (len(atoms), 10)


def test_calculator_in_float32_and_non_periodic():
    model = small_model(dtype=torch.float32)
    atoms = cluster()
    atoms.calc = LoremCalculator(model)
    forces = atoms.get_forces()
    assert forces.dtype == np.float64 and np.isfinite(forces).all()
    reference = evaluate(small_model(), [atoms])
    np.testing.assert_allclose(forces, reference["forces"].numpy(), atol=1e-4)
