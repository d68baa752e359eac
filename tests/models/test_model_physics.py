"""Symmetries, derivatives and extensivity of the full model (long range on, l > 0
charges of order one), in float64."""

import numpy as np
import pytest
import torch
from conftest import cluster, evaluate, nacl, random_rotation, small_model, triclinic_water


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_spherical_charges_are_of_order_one(model):
    out = evaluate(model, [triclinic_water(), cluster()])
    charges = out["charges"].detach()
    assert charges.shape[1] == 10
    assert float(charges[:, 1:].abs().max()) > 0.1


@pytest.mark.parametrize("make", [cluster, triclinic_water, nacl])
def test_rotation_invariance_and_force_equivariance(model, make):
    atoms = make()
    rotation = random_rotation(1)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.all():
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    a = evaluate(model, [atoms], stress=atoms.pbc.all())
    b = evaluate(model, [rotated], stress=atoms.pbc.all())
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10, abs=1e-10)
    r = torch.tensor(rotation)
    torch.testing.assert_close(b["forces"], a["forces"] @ r.T, rtol=0, atol=1e-9)
    if atoms.pbc.all():
        torch.testing.assert_close(b["stress"][0], r @ a["stress"][0] @ r.T, rtol=0, atol=1e-9)
    # the scalar charge is invariant; the l = 1 charges rotate as vectors (e3x order x, y, z)
    torch.testing.assert_close(b["charges"][:, 0], a["charges"][:, 0], rtol=0, atol=1e-9)
    torch.testing.assert_close(b["charges"][:, 2:5], a["charges"][:, 2:5] @ r.T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_inversion(model, make):
    atoms = make()
    inverted = atoms.copy()
    inverted.positions = -atoms.positions
    if atoms.pbc.all():
        inverted.set_cell(-atoms.cell.array, scale_atoms=False)
    a, b = evaluate(model, [atoms]), evaluate(model, [inverted])
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    torch.testing.assert_close(b["forces"], -a["forces"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_translation_and_permutation(model, make):
    atoms = make()
    a = evaluate(model, [atoms])
    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.1, 2.3])
    b = evaluate(model, [moved])
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=0, atol=1e-9)
    order = np.random.default_rng(0).permutation(len(atoms))
    c = evaluate(model, [atoms[order]])
    assert float(c["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    torch.testing.assert_close(c["forces"], a["forces"][order], rtol=0, atol=1e-9)
    torch.testing.assert_close(c["energies"], a["energies"][order], rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_forces_are_minus_energy_gradient(model, make):
    atoms = make()
    forces = evaluate(model, [atoms])["forces"].numpy()
    step = 1e-5
    rng = np.random.default_rng(5)
    for index in rng.choice(len(atoms), size=3, replace=False):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[index, axis] += step
            minus.positions[index, axis] -= step
            numeric = -(
                float(evaluate(model, [plus])["energy"]) - float(evaluate(model, [minus])["energy"])
            ) / (2 * step)
            assert forces[index, axis] == pytest.approx(numeric, abs=1e-6)


def test_stress_is_strain_derivative(model):
    atoms = triclinic_water()
    out = evaluate(model, [atoms], stress=True)
    stress = out["stress"][0].numpy()
    volume = atoms.get_volume()
    step = 1e-5
    for a, b in [(0, 0), (1, 2), (2, 0), (1, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * step
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=False)
            strained.positions = atoms.positions @ strain
            energies.append(float(evaluate(model, [strained])["energy"]))
        numeric = (energies[0] - energies[1]) / (2 * step) / volume
        assert stress[a, b] == pytest.approx(numeric, abs=1e-7)


def test_supercell_is_extensive(model):
    atoms = nacl(rattle=0.1)
    supercell = atoms * (2, 2, 2)
    a = evaluate(model, [atoms], stress=True)
    b = evaluate(model, [supercell], stress=True)
    assert float(b["energy"]) == pytest.approx(8 * float(a["energy"]), rel=1e-7)
    torch.testing.assert_close(b["forces"][: len(atoms)], a["forces"], rtol=0, atol=1e-7)
    torch.testing.assert_close(b["stress"], a["stress"], rtol=0, atol=1e-8)


def test_batch_equals_structures_one_by_one(model):
    structures = [cluster(), triclinic_water(), nacl(), cluster(seed=7)]
    batch = evaluate(model, structures, stress=True)
    start = 0
    for index, atoms in enumerate(structures):
        single = evaluate(model, [atoms], stress=True)
        stop = start + len(atoms)
        assert float(batch["energy"][index]) == pytest.approx(float(single["energy"]), rel=1e-12)
        torch.testing.assert_close(
            batch["forces"][start:stop], single["forces"], rtol=0, atol=1e-12
        )
        torch.testing.assert_close(batch["stress"][index], single["stress"][0], rtol=0, atol=1e-12)
        start = stop


@pytest.mark.parametrize(
    "options",
    [
        dict(num_message_passing=1),
        dict(num_message_passing=2, equivariant_message_passing=False),
        dict(lr=False),
        dict(initialize_node_features=False, max_degree=3, max_degree_lr=1),
    ],
)
def test_variants_are_invariant_and_conservative(options):
    model = small_model(**options)
    atoms = triclinic_water()
    rotation = random_rotation(2)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    a, b = evaluate(model, [atoms]), evaluate(model, [rotated])
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    step = 1e-5
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[1, 2] += step
    minus.positions[1, 2] -= step
    numeric = -(
        float(evaluate(model, [plus])["energy"]) - float(evaluate(model, [minus])["energy"])
    )
    assert float(a["forces"][1, 2]) == pytest.approx(numeric / (2 * step), abs=1e-6)


def test_baseline_is_added_per_element():
    with_baseline = small_model(species=[1, 8], baseline={1: -13.6, 8: -2041.0})
    without = small_model(species=[1, 8])
    atoms = triclinic_water()
    difference = float(evaluate(with_baseline, [atoms])["energy"]) - float(
        evaluate(without, [atoms])["energy"]
    )
    assert difference == pytest.approx(4 * -13.6 + 2 * -2041.0, rel=1e-12)
