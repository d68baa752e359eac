"""Where a structure sits must not matter: translation invariance in float32, lattice
wrapping, and exact neighbour lists for sparse non-periodic structures."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, cluster, evaluate, small_model, triclinic_water

from lorem_torch import LoremCalculator
from lorem_torch.data import neighbor_list

SPECIES = [1, 6, 8]
FAR = np.array([1e6, -2e6, 3e5])


def energy_and_forces(result):
    return float(result["energy"].detach()), result["forces"].detach().double().numpy()


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_float32_translation_invariance(make):
    """A structure moved by ~1e6 A gives the energy and forces of the unmoved one to
    float32 round-off (before centring/wrapping: 2e-3 eV and 0.02 eV/A off here)."""
    atoms = make()
    moved = atoms.copy()
    moved.positions += FAR
    periodic = bool(atoms.pbc.all())
    exact_energy, exact_forces = energy_and_forces(
        evaluate(small_model(species=SPECIES), [atoms], stress=periodic)
    )
    model = small_model(species=SPECIES, dtype=torch.float32)
    energy, forces = energy_and_forces(evaluate(model, [atoms], stress=periodic))
    # float32 round-off of the unmoved structure, with a floor for a lucky zero
    energy_tolerance = 4 * abs(energy - exact_energy) + 1e-6
    force_tolerance = 4 * np.abs(forces - exact_forces).max() + 1e-6

    moved_energy, moved_forces = energy_and_forces(evaluate(model, [moved], stress=periodic))
    assert abs(moved_energy - exact_energy) <= energy_tolerance
    assert np.abs(moved_forces - exact_forces).max() <= force_tolerance

    moved.calc = LoremCalculator(model)
    assert abs(moved.get_potential_energy() - exact_energy) <= energy_tolerance
    assert np.abs(moved.get_forces() - exact_forces).max() <= force_tolerance


def test_wrapping_leaves_energy_forces_and_stress_unchanged():
    """Atoms moved by lattice vectors (in float64): the same energy, forces and stress,
    through the graph path (training, evaluation) and the calculator."""
    atoms = triclinic_water()
    model = small_model(species=SPECIES)
    reference = evaluate(model, [atoms], stress=True)
    shifted = atoms.copy()
    lattice_steps = np.random.default_rng(5).integers(-3, 4, size=(len(atoms), 3))
    shifted.positions += lattice_steps @ atoms.cell.array
    moved = evaluate(model, [shifted], stress=True)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(
            moved[key].detach().numpy(), reference[key].detach().numpy(), atol=1e-10
        )
    shifted.calc = LoremCalculator(model)
    assert shifted.get_potential_energy() == pytest.approx(float(reference["energy"]), abs=1e-10)
    stress = reference["stress"][0].detach().numpy()
    np.testing.assert_allclose(
        shifted.get_stress(voigt=False), 0.5 * (stress + stress.T), atol=1e-10
    )


def brute_force_pairs(positions, cutoff):
    vectors = positions[None, :, :] - positions[:, None, :]
    distances = np.linalg.norm(vectors, axis=-1)
    centers, others = np.nonzero((distances < cutoff) & ~np.eye(len(positions), dtype=bool))
    return set(zip(centers.tolist(), others.tolist(), strict=True)), distances


@pytest.mark.parametrize(
    "far",
    [None, [1e6, 0, 0], [0, -3e7, 2e7], [1e4, 1e4, 1e4]],
    ids=["compact", "x_1e6", "yz_3e7", "diagonal_1e4"],
)
def test_non_periodic_neighbour_list_is_exact(far):
    rng = np.random.default_rng(7)
    positions = rng.uniform(-6, 6, size=(60, 3))
    if far is not None:
        positions[::7] += far  # a second cluster far away, and some loners
    # pairs straddling the cutoff within round-off
    positions[1] = positions[0] + [5.0, 0.0, 0.0]
    positions[3] = positions[2] + [0.0, 4.999999999, 0.0]
    nl = neighbor_list(positions, np.zeros((3, 3)), False, 5.0)
    expected, distances = brute_force_pairs(positions, 5.0)
    found = list(zip(nl["centers"].tolist(), nl["others"].tolist(), strict=True))
    assert len(found) == len(set(found)) == len(expected)
    assert set(found) == expected
    assert (0, 1) not in expected and (2, 3) in expected
    np.testing.assert_array_equal(nl["cell_shifts"], 0)
    np.testing.assert_allclose(nl["distances"], distances[nl["centers"], nl["others"]], rtol=1e-14)


def test_one_atom_far_away_does_not_kill_the_process():
    """One atom at x = 1e6 A: the calculator and the data path (lorem-train, lorem-eval)
    work, in a separate process because the failure was a floating-point exception."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import numpy as np
from conftest import cluster, small_model
from lorem_torch import LoremCalculator
from lorem_torch.data import atoms_to_graph
from ase import Atoms

model = small_model(species=[1, 6, 8])
molecule = cluster()
far = molecule + Atoms("O", positions=[[1e6, 0.0, 0.0]])
atoms_to_graph([far], 5.0)
parts = []
for atoms in (far, molecule, Atoms("O")):
    atoms.calc = LoremCalculator(model)
    parts.append((atoms.get_potential_energy(), atoms.get_forces()))
print(parts[0][0] - parts[1][0] - parts[2][0])
print(np.abs(parts[0][1][:-1] - parts[1][1]).max())
"""
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-2000:]
    energy_difference, force_difference = map(float, process.stdout.split())
    # the far atom interacts with the molecule only through 1/r at 1e6 A
    assert abs(energy_difference) < 1e-5
    assert force_difference < 1e-8
