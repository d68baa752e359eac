"""Smooth PME: against Ewald and torch-pme's references, symmetries and derivatives with
PME in the model, and the staged pieces that MPI ranks will run (bricks, fold/unfold,
kernel blocks)."""

import math

import numpy as np
import pytest
import torch
import vesin
from ase import Atoms
from conftest import evaluate, nacl, random_rotation, small_model, triclinic_water
from test_ewald import assert_matches_torchpme_frames

from lorem_torch.long_range import PME, Ewald


def dense_mixed(seed=4, count=60) -> Atoms:
    """A random dense triclinic box of five species (no pair, images included, closer than 1.3 A)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[9.0, 0.4, 0.0], [0.3, 8.5, 0.5], [-0.6, 0.2, 9.3]])
    atoms = Atoms(cell=cell, pbc=True)
    while len(atoms) < count:
        trial = atoms + Atoms("H", positions=[rng.uniform(0, 1, 3) @ cell])
        if (
            len(atoms) == 0
            or trial.get_distances(len(atoms), range(len(atoms)), mic=True).min() > 1.3
        ):
            atoms = trial
    atoms.numbers = rng.choice([1, 6, 8, 11, 17], size=count)
    return atoms


def full_list(atoms, cutoff):
    i, j, d = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijd"
    )
    return (torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long), torch.tensor(d))


@pytest.fixture(scope="module")
def models():
    """The same weights with PME (default accuracy) and with a converged Ewald sum."""
    model = small_model()
    return {
        "pme": model.with_long_range("pme"),
        "ewald": model.with_long_range({"method": "ewald", "accuracy": 1e-10}),
    }


@pytest.mark.parametrize("make", [lambda: nacl(2), triclinic_water, dense_mixed])
def test_model_with_pme_equals_ewald(models, make):
    atoms = make()
    pme = evaluate(models["pme"], [atoms], stress=True)
    ewald = evaluate(models["ewald"], [atoms], stress=True)
    assert models["pme"].uses_pme(torch.tensor(atoms.cell.array), len(atoms))
    assert float(pme["energy"]) == pytest.approx(float(ewald["energy"]), rel=1e-6)
    torch.testing.assert_close(pme["forces"], ewald["forces"], rtol=0, atol=1e-5)
    # stress in eV/A^3: 1e-5 eV/A over a cell edge of about 10 A
    torch.testing.assert_close(pme["stress"], ewald["stress"], rtol=0, atol=1e-6)
    # the long range matters in these structures: without it the energies differ
    assert float((pme["potentials"] - pme["charges"]).abs().max()) > 0.1


@pytest.mark.parametrize("accuracy", [1e-3, 1e-5, 1e-7])
def test_potentials_and_fields_meet_the_accuracy(accuracy):
    """The error estimate of accuracy.py holds for the potentials and forces of random
    charges, relative to the scales it is stated in (one unit charge)."""
    atoms = dense_mixed()
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0)).double()
    centers, others, distances = full_list(atoms, 5.0)
    cell = torch.tensor(atoms.cell.array)
    results = []
    for module in (Ewald(1.25, 0.625), PME(1.25, accuracy=accuracy)):
        positions = torch.tensor(atoms.positions, requires_grad=True)
        potentials = module(positions, charges, cell, centers, others, distances)
        (gradient,) = torch.autograd.grad((potentials * charges).sum(), positions)
        results.append((potentials.detach(), gradient))
    potential_scale = math.sqrt(2 / math.pi) / 1.25 * float(charges.abs().max())
    field_scale = potential_scale / 1.25 * float(charges.abs().max())
    assert float((results[1][0] - results[0][0]).abs().max()) <= accuracy * potential_scale
    assert float((results[1][1] - results[0][1]).abs().max()) <= accuracy * field_scale


def test_torchpme_reference_frames():
    """torch-pme's Na4Cl4 Coulomb frames with PME (tolerances as for Ewald in test_ewald.py:
    the stored values carry rounded inputs)."""
    assert_matches_torchpme_frames(PME(smearing=0.5, accuracy=1e-8))


@pytest.mark.parametrize("make", [triclinic_water, lambda: nacl(1)])
def test_rotation_invariance_with_pme(models, make):
    atoms = make()
    rotation = random_rotation(3)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    a = evaluate(models["pme"], [atoms], stress=True)
    b = evaluate(models["pme"], [rotated], stress=True)
    # the mesh turns with the cell: exact up to round-off
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    r = torch.tensor(rotation)
    torch.testing.assert_close(b["forces"], a["forces"] @ r.T, rtol=0, atol=1e-9)
    torch.testing.assert_close(b["stress"][0], r @ a["stress"][0] @ r.T, rtol=0, atol=1e-9)


def test_translation_with_pme(models):
    atoms = triclinic_water()
    a = evaluate(models["pme"], [atoms])
    # by whole mesh steps: the same mesh problem, exact up to round-off
    mesh = models["pme"].pme.mesh_shape(torch.tensor(atoms.cell.array))
    step = atoms.copy()
    step.positions += np.array([2, -1, 3]) / np.array(mesh) @ atoms.cell.array
    b = evaluate(models["pme"], [step])
    assert float(b["energy"]) == pytest.approx(float(a["energy"]), rel=1e-10)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=0, atol=1e-9)
    # by any vector: the mesh samples other points, equal within the accuracy
    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.1, 2.3])
    c = evaluate(models["pme"], [moved])
    assert float(c["energy"]) == pytest.approx(float(a["energy"]), rel=1e-7)
    torch.testing.assert_close(c["forces"], a["forces"], rtol=0, atol=1e-6)
    assert float((c["forces"] - a["forces"]).abs().max()) > 0  # the mesh did move


def test_forces_and_stress_are_derivatives_with_pme(models):
    model = models["pme"]
    atoms = dense_mixed(count=24)
    out = evaluate(model, [atoms], stress=True)
    forces, stress = out["forces"].numpy(), out["stress"][0].numpy()
    step = 1e-5
    for index, axis in [(0, 0), (5, 2), (17, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[index, axis] += step
        minus.positions[index, axis] -= step
        numeric = -(
            float(evaluate(model, [plus])["energy"]) - float(evaluate(model, [minus])["energy"])
        ) / (2 * step)
        assert forces[index, axis] == pytest.approx(numeric, abs=1e-6)
    volume = atoms.get_volume()
    for a, b in [(0, 0), (1, 2), (2, 0)]:
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


def test_float32_matches_float64():
    atoms = dense_mixed()
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(3)).double()
    centers, others, distances = full_list(atoms, 5.0)
    args = (torch.tensor(atoms.positions), charges, torch.tensor(atoms.cell.array))
    pme = PME(1.25)
    v64 = pme(*args, centers, others, distances)
    v32 = pme(*(a.float() for a in args), centers, others, distances.float())
    torch.testing.assert_close(v32.double(), v64, rtol=0, atol=2e-5 * float(v64.abs().max()))


# -- staged pieces --


@pytest.fixture(scope="module")
def staged():
    """A skewed 216-atom cell (mesh about 27 points per axis, p = 8) and 4 charge channels."""
    atoms = nacl(3)
    atoms.set_cell(atoms.cell.array + [[0, 0, 0], [2.1, 0, 0], [0.9, -1.4, 0]], scale_atoms=True)
    pme = PME(1.25, accuracy=1e-5)
    cell = torch.tensor(atoms.cell.array)
    charges = torch.randn(len(atoms), 4, generator=torch.Generator().manual_seed(5)).double()
    return pme, torch.tensor(atoms.positions), charges, cell, pme.mesh_shape(cell), atoms


def test_two_bricks_fold_into_the_whole(staged):
    """Two 'ranks' own atoms on either side of a plane; each spreads into its own brick
    (from brick_for of its sub-domain), and the folded sum equals one brick of all."""
    pme, positions, charges, cell, mesh, atoms = staged
    fractional = positions @ torch.linalg.inv(cell)
    fractional = fractional - torch.floor(fractional)
    positions = fractional @ cell
    owners = [fractional[:, 0] < 0.5, fractional[:, 0] >= 0.5]
    folded = torch.zeros(charges.shape[1], *mesh, dtype=charges.dtype)
    for own, (lo, hi) in zip(owners, [(0.0, 0.5), (0.5, 1.0)], strict=True):
        assert bool(own.any())
        brick_lo, brick_shape = pme.brick_for([lo, 0.0, 0.0], [hi, 1.0, 1.0], mesh)
        assert brick_shape[0] < mesh[0]  # a real sub-brick along the split axis
        brick = pme.spread(positions[own], charges[own], cell, brick_lo, brick_shape, mesh)
        folded = folded + pme.fold(brick, brick_lo, mesh)
    lo, shape = pme.brick_of_atoms(positions, cell, mesh)
    whole = pme.fold(pme.spread(positions, charges, cell, lo, shape, mesh), lo, mesh)
    torch.testing.assert_close(folded, whole, rtol=0, atol=1e-13)
    # charge is conserved channel by channel
    torch.testing.assert_close(whole.sum(dim=(1, 2, 3)), charges.sum(dim=0), rtol=0, atol=1e-12)


def test_brick_for_and_the_stencil(staged):
    pme, positions, charges, cell, mesh, atoms = staged
    lo, shape = pme.brick_for([0.25, 0.0, 0.5], [0.5, 0.1, 0.5], mesh)
    assert lo[0] == math.floor(0.25 * mesh[0]) - pme.order + 1
    assert lo[0] + shape[0] - 1 == math.floor(0.5 * mesh[0])
    assert shape[2] == pme.order  # a single plane of atoms touches p points
    with pytest.raises(ValueError, match="outside the brick"):
        pme.spread(positions, charges, cell, [0, 0, 0], [4, 4, 4], mesh)


@pytest.mark.parametrize(
    "brick_lo, brick_shape", [([-7, -3, 2], [40, 9, 31]), ([5, 0, -20], [3, 25, 17])]
)
def test_fold_and_unfold_are_adjoint(staged, brick_lo, brick_shape):
    pme, _, _, _, mesh, _ = staged
    generator = torch.Generator().manual_seed(7)
    brick = torch.randn(2, *brick_shape, generator=generator, dtype=torch.float64)
    full = torch.randn(2, *mesh, generator=generator, dtype=torch.float64)
    folded, unfolded = pme.fold(brick, brick_lo, mesh), pme.unfold(full, brick_lo, brick_shape)
    assert list(folded.shape) == [2, *mesh] and list(unfolded.shape) == [2, *brick_shape]
    assert float((folded * full).sum()) == pytest.approx(float((brick * unfolded).sum()), rel=1e-12)
    # fold against an explicit periodic sum
    wrapped = [
        torch.remainder(torch.arange(brick_lo[a], brick_lo[a] + brick_shape[a]), mesh[a])
        for a in range(3)
    ]
    explicit = torch.zeros(2, *mesh, dtype=torch.float64)
    explicit.index_put_(
        (
            torch.arange(2)[:, None, None, None],
            wrapped[0][None, :, None, None],
            wrapped[1][None, None, :, None],
            wrapped[2][None, None, None, :],
        ),
        brick,
        accumulate=True,
    )
    torch.testing.assert_close(folded, explicit, rtol=0, atol=1e-12)


def test_kernel_blocks_equal_slices_of_the_whole(staged):
    pme, _, _, cell, mesh, _ = staged
    full = pme.kernel(cell, mesh, [[0, mesh[0]], [0, mesh[1]], [0, mesh[2]]])
    assert float(full[0, 0, 0]) == 0.0
    block = pme.kernel(cell, mesh, [[3, 11], [0, 5], [mesh[2] - 4, mesh[2]]])
    torch.testing.assert_close(block, full[3:11, 0:5, mesh[2] - 4 :], rtol=0, atol=0)
    # G(k) = G(-k) on the full grid, as the real FFT assumes
    mirrored = full.flip(0, 1, 2).roll((1, 1, 1), dims=(0, 1, 2))
    torch.testing.assert_close(full, mirrored, rtol=0, atol=1e-13 * float(full.max()))


def test_complex_fft_of_channel_pairs_equals_convolve(staged):
    """The distributed recipe: two real channels packed as real + imaginary parts, complex
    FFTs over the whole index grid, the kernel on all of it, unnormalised both ways."""
    pme, positions, charges, cell, mesh, atoms = staged
    whole = pme.fold(pme.spread(positions, charges, cell, [0, 0, 0], mesh, mesh), [0, 0, 0], mesh)
    expected = pme.convolve(whole, cell, mesh)
    packed = torch.complex(whole[0::2], whole[1::2])  # [C / 2, N0, N1, N2]
    g = pme.kernel(cell, mesh, [[0, mesh[0]], [0, mesh[1]], [0, mesh[2]]])
    result = torch.fft.ifftn(
        torch.fft.fftn(packed, dim=(1, 2, 3)) * g, dim=(1, 2, 3), norm="forward"
    )
    torch.testing.assert_close(result.real, expected[0::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(result.imag, expected[1::2], rtol=0, atol=1e-12)


def test_kernel_is_differentiable_in_the_cell(staged):
    pme, _, _, cell, mesh, _ = staged
    cell = cell.clone().requires_grad_(True)

    def total(c):
        return pme.kernel(c, mesh, [[0, mesh[0]], [0, 4], [0, mesh[2] // 2 + 1]]).sum()

    (gradient,) = torch.autograd.grad(total(cell), cell)
    direction = torch.randn(3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    step = 1e-6
    numeric = (total(cell + step * direction) - total(cell - step * direction)) / (2 * step)
    assert float((gradient * direction).sum()) == pytest.approx(float(numeric), rel=1e-6)


def test_single_process_composition_of_the_stages(staged):
    """kspace_potentials == spread -> fold -> convolve -> unfold -> interpolate by hand,
    and interpolate reads back the convolved charges as the direct sum over k would."""
    pme, positions, charges, cell, mesh, atoms = staged
    lo, shape = pme.brick_for([0.0, 0.0, 0.0], [0.999, 0.999, 0.999], mesh)
    fractional = positions @ torch.linalg.inv(cell)
    inside = (fractional - torch.floor(fractional)) @ cell
    brick = pme.spread(inside, charges, cell, lo, shape, mesh)
    potential_mesh = pme.convolve(pme.fold(brick, lo, mesh), cell, mesh)
    by_hand = pme.interpolate(inside, pme.unfold(potential_mesh, lo, shape), cell, lo, mesh)
    torch.testing.assert_close(
        by_hand, pme.kspace_potentials(positions, charges, cell), rtol=0, atol=1e-12
    )


def test_scripted_equals_eager(staged):
    pme, positions, charges, cell, mesh, atoms = staged
    centers, others, distances = full_list(atoms, 5.0)
    scripted = torch.jit.script(pme)
    eager = pme(positions, charges, cell, centers, others, distances)
    torch.testing.assert_close(
        scripted(positions, charges, cell, centers, others, distances), eager, rtol=0, atol=1e-13
    )
    lo, shape = scripted.brick_for([0.1, 0.2, 0.3], [0.6, 0.7, 0.9], mesh)
    assert (lo, shape) == pme.brick_for([0.1, 0.2, 0.3], [0.6, 0.7, 0.9], mesh)
    assert scripted.mesh_shape(cell) == mesh


def test_non_periodic_and_bad_orders_are_refused():
    from lorem_torch.errors import NotPeriodicError

    pme = PME(1.25)
    with pytest.raises(NotPeriodicError, match="periodic cell"):
        pme.mesh_shape(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="order"):
        PME(1.25, spacing=0.5, order=5)
