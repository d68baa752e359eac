"""The long-range module alone: analytic values, torch-pme, stages, chunks, limits."""

import math

import numpy as np
import pytest
import torch
import torchpme
import vesin
from ase import Atoms
from ase.build import bulk
from conftest import shared_file

from lorem_torch.long_range import Ewald, direct_potentials

COULOMB_EV_ANGSTROM = 14.399645478425668  # e^2 / (4 pi eps0) in eV A


def full_list(atoms, cutoff):
    i, j, d = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijd"
    )
    return (torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long), torch.tensor(d))


def energy(ewald, atoms, charges, cutoff):
    centers, others, distances = full_list(atoms, cutoff)
    potentials = ewald(
        torch.tensor(atoms.positions),
        charges,
        torch.tensor(atoms.cell.array),
        centers,
        others,
        distances,
    )
    return (charges * potentials).sum()


@pytest.mark.parametrize(
    "structure, madelung, nearest",
    [
        (bulk("NaCl", "rocksalt", a=4.0, cubic=True), 1.747564594633, 2.0),
        (bulk("CsCl", "cesiumchloride", a=4.0), 1.762674773070, 4.0 * math.sqrt(3) / 2),
    ],
)
def test_madelung_constants(structure, madelung, nearest):
    # converged parameters: real space to erfc(8 / sqrt 2) ~ 1e-15, k-space to exp(-8 pi^2)
    ewald = Ewald(smearing=1.0, lr_wavelength=0.5)
    charges = torch.tensor([1.0 if z in (11, 55) else -1.0 for z in structure.numbers])[:, None]
    pairs = len(structure) / 2
    e = energy(ewald, structure, charges.double(), cutoff=8.0)
    assert float(-e / pairs * nearest) == pytest.approx(madelung, abs=1e-6)


@pytest.mark.parametrize("triclinic", [False, True])
def test_agrees_with_torchpme_for_model_parameters(triclinic):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    if triclinic:
        atoms.set_cell(
            atoms.cell.array + [[0, 0, 0], [1.3, 0, 0], [0.7, -0.8, 0]], scale_atoms=True
        )
    atoms.rattle(0.1, seed=1)
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0)).double()
    centers, others, distances = full_list(atoms, 5.0)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    ours = Ewald(smearing=1.25, lr_wavelength=0.625)(
        positions, charges, cell, centers, others, distances
    )
    pairs, half_distances = vesin.NeighborList(cutoff=5.0, full_list=False).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="Pd"
    )
    calculator = torchpme.EwaldCalculator(
        torchpme.CoulombPotential(smearing=1.25), lr_wavelength=0.625
    )
    reference = calculator(
        charges, cell, positions, torch.tensor(pairs.astype(np.int64)), torch.tensor(half_distances)
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_torchpme_reference_frames():
    """Analytic Coulomb energies and forces of torch-pme's Na4Cl4 frames (in eV).

    Our sums are converged: other smearings and cutoffs change them by < 1e-11.
    The stored values differ from them by up to 1.01e-5 relative in energy and
    3e-4 eV/A in forces (the file holds rounded inputs), hence the tolerances.
    """
    assert_matches_torchpme_frames(Ewald(smearing=0.5, lr_wavelength=0.25))


def assert_matches_torchpme_frames(summation):
    """Energies and forces of a long-range summation (Ewald, PME: called as
    module(positions, charges, cell, centers, others, distances)) on the frames."""
    import ase.io

    frames = ase.io.read(
        shared_file("datasets/torchpme_ewald_reference/coulomb_test_frames.xyz"), ":"
    )
    for atoms in frames:
        positions = torch.tensor(atoms.positions, requires_grad=True)
        charges = torch.tensor(atoms.get_initial_charges())[:, None]
        cell = torch.tensor(atoms.cell.array)
        i, j, shifts = vesin.NeighborList(cutoff=6.0, full_list=True).compute(
            points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijS"
        )
        vectors = positions[j] - positions[i] + torch.tensor(shifts, dtype=torch.float64) @ cell
        potentials = summation(
            positions,
            charges,
            cell,
            torch.tensor(i, dtype=torch.long),
            torch.tensor(j, dtype=torch.long),
            torch.linalg.norm(vectors, dim=-1),
        )
        e = (charges * potentials).sum() * COULOMB_EV_ANGSTROM
        (gradient,) = torch.autograd.grad(e, positions)
        assert float(e.detach()) == pytest.approx(atoms.get_potential_energy(), rel=2e-5)
        np.testing.assert_allclose(-gradient.numpy(), atoms.get_forces(), atol=5e-4)


def split_evaluation(ewald, positions, charges, cell, centers, others, distances, split):
    """Stages as two MPI ranks would run them: partial S(k) and Q summed, then potentials."""
    shape = ewald.grid_shape(cell)
    parts = [torch.arange(0, split), torch.arange(split, positions.shape[0])]
    s_total = sum(ewald.structure_factors(positions[p], charges[p], cell, shape) for p in parts)
    q_total = sum(charges[p].sum(dim=0) for p in parts)
    out = []
    for p in parts:
        mask = (centers >= p[0]) & (centers <= p[-1]) if len(p) else centers < 0
        real = ewald.real_space_potentials(
            charges, positions.shape[0], centers[mask], others[mask], distances[mask]
        )[p]
        out.append(ewald.potentials(positions[p], charges[p], s_total, q_total, cell, shape, real))
    return torch.cat(out)


@pytest.mark.parametrize("split", [0, 5, 64])
def test_staged_equals_single_shot(split):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=2)
    charges = torch.randn(len(atoms), 4, generator=torch.Generator().manual_seed(1)).double()
    centers, others, distances = full_list(atoms, 5.0)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    ewald = Ewald(smearing=1.25, lr_wavelength=0.625)
    single = ewald(positions, charges, cell, centers, others, distances)
    staged = split_evaluation(ewald, positions, charges, cell, centers, others, distances, split)
    torch.testing.assert_close(staged, single, rtol=0, atol=1e-13)


def test_chunked_equals_unchunked():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=3)
    charges = torch.randn(len(atoms), 2, generator=torch.Generator().manual_seed(2)).double()
    centers, others, distances = full_list(atoms, 5.0)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    whole = Ewald(1.25, 0.625)(positions, charges, cell, centers, others, distances)
    chunked_ewald = Ewald(1.25, 0.625, chunk_elements=1)  # one atom per chunk
    assert chunked_ewald._chunk_size(chunked_ewald.grid_shape(cell)) == 1
    chunked = chunked_ewald(positions, charges, cell, centers, others, distances)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-13)
    (g1,) = torch.autograd.grad((whole * charges).sum(), positions)
    (g2,) = torch.autograd.grad((chunked * charges).sum(), positions)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


def test_direct_sum_equals_cluster_in_huge_box():
    # a compact neutral cluster: every pair within the 5 A real-space cutoff, so the
    # periodic result differs only by the images (dipolar, ~ 2 pi M^2 / 3 V ~ 1e-5)
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 3.0, size=(8, 3)) + 48.0
    charges = torch.tensor(rng.normal(size=(8, 2)))
    charges = charges - charges.mean(dim=0)
    atoms = Atoms("C8", positions=positions, cell=[100.0] * 3, pbc=True)
    centers, others, distances = full_list(atoms, 5.0)
    periodic = Ewald(1.25, 0.625)(
        torch.tensor(positions), charges, torch.tensor(atoms.cell.array), centers, others, distances
    )
    direct = direct_potentials(torch.tensor(positions), charges)
    torch.testing.assert_close(periodic, direct, rtol=0, atol=1e-4)


def test_float32_matches_float64():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=4)
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(3)).double()
    centers, others, distances = full_list(atoms, 5.0)
    args = (torch.tensor(atoms.positions), charges, torch.tensor(atoms.cell.array))
    ewald = Ewald(1.25, 0.625)
    v64 = ewald(*args, centers, others, distances)
    v32 = ewald(*(a.float() for a in args), centers, others, distances.float())
    torch.testing.assert_close(v32.double(), v64, rtol=0, atol=2e-5 * float(v64.abs().max()))
