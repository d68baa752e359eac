"""Structures on the model's kinks: atoms on inversion centres or cubic sites, whose
l > 0 features vanish by symmetry. Every path (eager, export, LAMMPS; float64 and
float32) returns the central-difference derivative there, and the calculator says
once that the structure sits on a kink."""

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import evaluate, nacl, small_model
from lammps_run import pressure_from_stress, read_single_point, run, single_point_script, write_data

from lorem_torch import LoremCalculator
from lorem_torch.calculator import SymmetricSitesWarning
from lorem_torch.export import export_model

SPECIES = [1, 8, 11, 17, 29]


def fcc_cell():
    return bulk("Cu", "fcc", a=3.6)  # one atom, primitive (triclinic) cell


def strained_energy(model, atoms, strain):
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return float(evaluate(model, [strained])["energy"][0].detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stress_at_a_cubic_site_is_the_central_difference(dtype):
    model = small_model(species=SPECIES)
    atoms = fcc_cell()
    stress = evaluate(model.to(dtype), [atoms], stress=True)["stress"][0].detach().double().numpy()
    model = model.to(torch.float64)
    volume, h = atoms.get_volume(), 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = h if a != b else h
        forward = (
            strained_energy(model, atoms, strain) - strained_energy(model, atoms, 0 * strain)
        ) / h
        backward = (
            strained_energy(model, atoms, 0 * strain) - strained_energy(model, atoms, -strain)
        ) / h
        if a == b:  # a kink: the one-sided derivatives differ
            assert abs(forward - backward) / volume > 1e-3
        central = 0.5 * (forward + backward) / volume / (1 if a == b else 2)
        assert stress[a, b] == pytest.approx(central, abs=2e-6 if dtype == torch.float64 else 2e-5)
    # cubic: isotropic
    np.testing.assert_allclose(
        stress, stress[0, 0] * np.eye(3), atol=1e-12 if dtype == torch.float64 else 1e-7
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_forces_on_inversion_centres(dtype):
    """Perfect rocksalt: every atom is an inversion centre, so forces vanish; round-off
    in the vanished degree-1 features used to give forces of 0.05 eV/A here."""
    model = small_model(species=SPECIES).to(dtype)
    forces = evaluate(model, [nacl(1, rattle=0.0)])["forces"]
    assert float(forces.abs().max()) < (1e-12 if dtype == torch.float64 else 1e-6)


def test_calculator_warns_once_on_symmetric_sites():
    calculator = LoremCalculator(small_model(species=SPECIES))
    atoms = nacl(1, rattle=0.0)
    atoms.calc = calculator
    with pytest.warns(
        SymmetricSitesWarning,
        match=r"8 of 8 atoms sit on symmetric sites.*degree 1, 2, 3, 5 .*rattle",
    ):
        atoms.get_forces()
    moved = atoms.copy()
    moved.positions += 0.3  # rebuilds the neighbour list, still symmetric: said once only
    moved.calc = calculator
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymmetricSitesWarning)
        moved.get_forces()


def test_calculator_is_silent_on_a_rattled_cell():
    atoms = nacl(1, rattle=1e-3)
    atoms.calc = LoremCalculator(small_model(species=SPECIES))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymmetricSitesWarning)
        atoms.get_forces()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lammps_and_ase_agree_on_a_one_atom_fcc_cell(tmp_path, dtype):
    model = small_model(species=SPECIES)
    export = tmp_path / "model.pt"
    export_model(model, export, dtype)
    write_data(fcc_cell(), tmp_path / "fcc.data", ["Cu"])
    # LAMMPS' orientation of the triclinic cell, for ASE as well
    atoms = ase.io.read(tmp_path / "fcc.data", format="lammps-data", atom_style="atomic")
    atoms.numbers[:] = 29
    atoms.pbc = True
    atoms.calc = LoremCalculator(str(export))
    with pytest.warns(SymmetricSitesWarning):
        stress = atoms.get_stress(voigt=False)
    code, output = run(tmp_path, single_point_script("fcc.data", export, ["Cu"]))
    assert code == 0
    result = read_single_point(tmp_path, output)
    expected = pressure_from_stress(stress)
    scale = np.abs(expected).max()
    assert scale > 1e3  # bar: a real stress, not zero
    tolerance = 1e-9 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(result["pressure"], expected, atol=tolerance * scale)
    # cubic: isotropic in LAMMPS too
    np.testing.assert_allclose(result["pressure"][3:], 0.0, atol=tolerance * scale)
    np.testing.assert_allclose(result["pressure"][:3], expected[0], atol=tolerance * scale)
