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


def test_non_finite_results_are_an_error():
    """With min_distance=0 two coincident atoms pass the input checks; the model's NaN
    (a pair without a direction) stops with the first atom named, and nothing is kept."""
    from lorem_torch.errors import NonFiniteError

    atoms = cluster()
    atoms.positions[1] = atoms.positions[0]
    atoms.calc = LoremCalculator(small_model(), min_distance=0.0)
    with pytest.raises(NonFiniteError, match=r"non-finite energy|non-finite energies"):
        atoms.get_potential_energy()
    assert atoms.calc.results == {}


@pytest.mark.parametrize("pbc", [[True, False, False], [False, True, True], [True, False, True]])
def test_periodicity_no_model_takes_is_refused_without_sending_to_slab(pbc):
    from lorem_torch.errors import UnsupportedPeriodicityError

    atoms = triclinic_water()
    atoms.pbc = pbc
    atoms.calc = LoremCalculator(small_model())
    with pytest.raises(UnsupportedPeriodicityError, match="pbc True, True, False") as error:
        atoms.get_potential_energy()
    assert "--slab" not in str(error.value)
