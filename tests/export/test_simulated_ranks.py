"""The C++ runtime's staged algorithm (what every LAMMPS rank runs) over 1-4 ranks simulated
in one process (lorem_torch._core.Model.compute_ranks: one thread per rank, the MPI
collectives over shared memory), against the whole eager model in float64: PME, message
passing with PME, Born effective charges and a field, empty ranks, every method."""

import dataclasses
import math

import numpy as np
import pytest
from conftest import (
    FIELD,
    bec_outputs,
    cluster,
    evaluate,
    nacl,
    small_bec,
    small_model,
    triclinic_water,
)
from lorem_torch._core import LoremError, Model

from lorem_torch.export import evaluate_ranks, export_model, split_into_ranks

TOLERANCE = 1e-10


def along_x(atoms, ranks):
    """Rank of each atom: slabs of the cell along x (periodic) or of the atoms' x order."""
    if atoms.pbc.all():
        fractional = atoms.get_scaled_positions(wrap=True)[:, 0]
    else:
        fractional = np.argsort(np.argsort(atoms.positions[:, 0])) / len(atoms)
    return np.minimum((fractional * ranks).astype(int), ranks - 1)


def grid_domains(systems, shape):
    """Give the ranks domains on a processor grid (shape: ranks per axis), so that the PME
    mesh is owned in blocks split along several axes; any tiling gives the same numbers."""
    for rank, system in enumerate(systems):
        index = np.unravel_index(rank, shape)
        system.domain_lo = tuple(i / n for i, n in zip(index, shape, strict=True))
        system.domain_hi = tuple((i + 1) / n for i, n in zip(index, shape, strict=True))
    return systems


def gather(results, rank_of_atom, key):
    """Per-atom results of every rank in the global atom order."""
    first = getattr(results[0], key)
    out = np.zeros((len(rank_of_atom),) + tuple(first.shape[1:]))
    for rank, result in enumerate(results):
        out[rank_of_atom == rank] = getattr(result, key).numpy()
    return out


def assert_matches(results, rank_of_atom, reference, periodic=True):
    energy = float(reference["energy"].detach())
    assert sum(r.energy for r in results) == pytest.approx(energy, abs=TOLERANCE)
    np.testing.assert_allclose(
        gather(results, rank_of_atom, "energies"),
        reference["energies"].detach().numpy(),
        atol=TOLERANCE,
    )
    np.testing.assert_allclose(
        gather(results, rank_of_atom, "forces"), reference["forces"].numpy(), atol=TOLERANCE
    )
    if periodic:
        virial = sum(r.virial for r in results).numpy()
        np.testing.assert_allclose(virial, reference["virial"][0].numpy(), atol=TOLERANCE)


@pytest.fixture(scope="module")
def pme_exports(tmp_path_factory):
    """float64 exports with PME (and Ewald), without and with a message-passing layer."""
    folder = tmp_path_factory.mktemp("simulated_ranks")
    out = {}
    for layers in (0, 1):
        model = small_model(num_message_passing=layers).with_long_range("pme")
        path = folder / f"pme{layers}.pt"
        export_model(model, path, "float64")
        out[layers] = (model, path)
    return out


@pytest.mark.parametrize("layers", [0, 1])
@pytest.mark.parametrize(
    "grid", [(1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 1), (1, 1, 4), (1, 3, 2), (2, 2, 2)]
)
def test_pme_over_ranks_equals_the_model(pme_exports, layers, grid):
    """PME with the mesh owned in parts over 1-8 ranks (the distributed FFT of
    cpp/src/mesh.cpp: pencils aligned with the domains where the grid leaves an axis
    whole, a square process grid for 2 x 2 x 2), with and without message passing, on a
    triclinic cell."""
    model, path = pme_exports[layers]
    atoms = triclinic_water() * (2, 1, 1)
    reference = evaluate(model, [atoms], stress=True)
    ranks = int(np.prod(grid))
    rank_of_atom = along_x(atoms, ranks)
    systems = grid_domains(split_into_ranks(atoms, model.cutoff, rank_of_atom), grid)
    cpp = Model(str(path))
    assert cpp.long_range_method == "pme"
    results = evaluate_ranks(cpp, systems, atoms.cell.array, True)
    assert_matches(results, rank_of_atom, reference)


@pytest.mark.parametrize("method", ["ewald", "pme", "auto"])
def test_empty_ranks_take_part(pme_exports, method):
    """Ranks 1 and 3 of 4 own no atom (they still hold ghosts or nothing) and take part
    in every collective: the PME remaps, the sums over ranks, the ghost exchanges."""
    model, path = pme_exports[1]
    atoms = nacl(1)
    rank_of_atom = np.where(along_x(atoms, 2) == 0, 0, 2)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)  # ranks 0, 1 (empty), 2
    systems.append(dataclasses.replace(systems[1]))  # rank 3: no atoms, no ghosts
    assert [s.n_local > 0 for s in systems] == [True, False, True, False]
    systems = grid_domains(systems, (2, 2, 1))
    cpp = Model(str(path))
    cpp.long_range_method = method
    reference = evaluate(model.with_long_range(method), [atoms], stress=True)
    results = evaluate_ranks(cpp, systems, atoms.cell.array, True)
    assert results[1].energy == 0.0 and results[3].energy == 0.0
    assert_matches(results, rank_of_atom, reference)


def test_open_boundaries_over_ranks(pme_exports):
    """A molecule without a cell: the direct sum over all-gathered positions and charges,
    message passing across ranks, one rank empty."""
    model, path = pme_exports[1]
    atoms = cluster()
    rank_of_atom = along_x(atoms, 2) * 2  # ranks 0 and 2; rank 1 owns nothing
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    assert systems[1].n_local == 0
    reference = evaluate(model, [atoms])
    results = evaluate_ranks(path, systems, np.zeros((3, 3)), False)
    assert_matches(results, rank_of_atom, reference, periodic=False)


@pytest.fixture(scope="module")
def bec_exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simulated_ranks_bec")
    model = small_bec(num_message_passing=1)
    out = {}
    for method in ("ewald", "pme"):
        path = folder / f"bec_{method}.pt"
        export_model(model, path, "float64", long_range=method)
        out[method] = path
    return model, out


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_born_effective_charges_over_ranks(bec_exports, method, ranks):
    """Z* per atom with the acoustic sum rule over the whole system (one all-reduce), and
    the field's forces Z* E, equal LoremBEC's batch evaluation."""
    model, paths = bec_exports
    atoms = triclinic_water() * (2, 1, 1)
    plain = bec_outputs(model.with_long_range(method), [atoms], stress=True)
    with_field = bec_outputs(model.with_long_range(method), [atoms], field=[FIELD], stress=True)
    rank_of_atom = along_x(atoms, ranks)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    results = evaluate_ranks(paths[method], systems, atoms.cell.array, True, electric_field=FIELD)
    apt = gather(results, rank_of_atom, "born_effective_charges")
    np.testing.assert_allclose(apt, plain["apt"].detach().numpy(), atol=TOLERANCE)
    assert np.abs(apt.sum(0)).max() < TOLERANCE  # the acoustic sum rule, over all ranks
    np.testing.assert_allclose(
        gather(results, rank_of_atom, "forces"),
        with_field["forces"].detach().numpy(),
        atol=TOLERANCE,
    )
    energy = sum(r.energy for r in results)
    assert energy == pytest.approx(float(plain["energy"].detach()), abs=TOLERANCE)
    virial = sum(r.virial for r in results).numpy()
    volume = atoms.get_volume()
    np.testing.assert_allclose(virial, plain["stress"][0].detach().numpy() * volume, atol=TOLERANCE)


def test_a_failing_rank_releases_the_others(pme_exports):
    """Two atoms closer than the model allows, both owned by rank 1: rank 1 refuses them
    before any collective (the pair is its own), rank 0 reaches its first collective and
    is released instead of waiting forever; rank 1's error is the one that comes back."""
    model, path = pme_exports[0]
    atoms = nacl(1)
    atoms.positions[1] = atoms.positions[0] + [0.01, 0.0, 0.0]
    rank_of_atom = np.where(np.arange(len(atoms)) < 2, 1, 0)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    with pytest.raises(LoremError, match="atoms 0 and 1 are 0.01.* A apart"):
        evaluate_ranks(path, systems, atoms.cell.array, True)


def test_ranks_must_be_described_fully(pme_exports):
    _, path = pme_exports[0]
    atoms = nacl(1)
    (system,) = split_into_ranks(atoms, 5.0, np.zeros(len(atoms), dtype=int))
    cpp = Model(str(path))
    rank = {
        "positions": system.positions.numpy(),
        "atomic_numbers": system.atomic_numbers.numpy(),
        "n_local": system.n_local,
    }
    with pytest.raises(LoremError, match="lacks the key 'centers'"):
        cpp.compute_ranks([rank], atoms.cell.array, True)
    # the runtime stays usable
    results = evaluate_ranks(cpp, [system], atoms.cell.array, True)
    assert np.isfinite(results[0].energy)


def test_aligned_pencils_move_less_mesh():
    """The remap plan (cpp/src/mesh.cpp): one rank sends nothing; on grids that leave an
    axis whole the owned parts are the first pencils, so each rank sends less than with
    x-, y-, z-pencils on a square process grid; on a 3-D grid both plans are the same."""
    from lorem_torch._core import _pme_bytes_sent

    mesh = (24, 24, 24)

    def boxes(grid):
        out = []
        for k in range(grid[2]):
            for j in range(grid[1]):
                for i in range(grid[0]):
                    index = (i, j, k)
                    lo = tuple(index[a] * mesh[a] // grid[a] for a in range(3))
                    hi = tuple((index[a] + 1) * mesh[a] // grid[a] for a in range(3))
                    out.append((lo, hi))
        return out

    def with_margin(owned):
        return [(tuple(x - 4 for x in lo), tuple(x + 1 for x in hi)) for lo, hi in owned]

    owned = boxes((1, 1, 1))
    assert _pme_bytes_sent(mesh, owned, with_margin(owned), 10) == [0.0]
    for grid in ((2, 1, 1), (4, 1, 1), (2, 2, 1), (1, 2, 3)):
        owned = boxes(grid)
        aligned = _pme_bytes_sent(mesh, owned, with_margin(owned), 10, True)
        square = _pme_bytes_sent(mesh, owned, with_margin(owned), 10, False)
        assert max(aligned) < max(square), grid
    owned = boxes((2, 2, 2))
    assert _pme_bytes_sent(mesh, owned, with_margin(owned), 10, True) == _pme_bytes_sent(
        mesh, owned, with_margin(owned), 10, False
    )


def test_one_rank_sends_nothing(pme_exports):
    """The byte counter counts what crosses ranks: one rank's ghosts are periodic images
    of its own atoms and its sums have no one to go to, so it sends 0 bytes; with two
    ranks the ghosts owned by the other rank and the mesh remaps count."""
    model, path = pme_exports[1]
    atoms = triclinic_water() * (2, 1, 1)
    for ranks in (1, 2):
        rank_of_atom = along_x(atoms, ranks)
        systems = grid_domains(split_into_ranks(atoms, model.cutoff, rank_of_atom), (ranks, 1, 1))
        assert len(systems[0].ghost_rank) > 0  # periodic images even on one rank
        results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
        sent = [r.bytes_sent for r in results]
        if ranks == 1:
            assert sent == [0.0]
        else:
            assert min(sent) > 0.0


def test_float32_models_send_the_mesh_in_float32(pme_exports, tmp_path):
    """The mesh travels in the model's dtype: the same PME model exported in float32 and
    float64, over the same 2 ranks, sends the same per-atom values and sums, and a mesh
    half as many bytes, so the float64 run's extra bytes are the float32 run's mesh part,
    which the plan gives (value_bytes 4) and which is most of its traffic."""
    from lorem_torch._core import _pme_bytes_sent

    model, path64 = pme_exports[0]
    path32 = tmp_path / "pme32.pt"
    export_model(model, path32, "float32")
    atoms = triclinic_water() * (2, 1, 1)
    rank_of_atom = along_x(atoms, 2)
    sent = {}
    for name, path in (("float64", path64), ("float32", path32)):
        systems = grid_domains(split_into_ranks(atoms, model.cutoff, rank_of_atom), (2, 1, 1))
        results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
        sent[name] = np.array([r.bytes_sent for r in results])
    mesh_part32 = sent["float64"] - sent["float32"]
    assert (mesh_part32 > 0.5 * sent["float32"]).all(), sent
    # the plan of the same owned parts and bricks, from the export's own mesh functions
    import torch

    from lorem_torch.export import load_exported

    module, metadata = load_exported(path64)
    cell = torch.tensor(atoms.cell.array)
    mesh = tuple(int(n) for n in module.pme_mesh(cell))
    owned, bricks = [], []
    for system in grid_domains(split_into_ranks(atoms, model.cutoff, rank_of_atom), (2, 1, 1)):
        lo = tuple(math.ceil(f * n) for f, n in zip(system.domain_lo, mesh, strict=True))
        hi = tuple(math.ceil(f * n) for f, n in zip(system.domain_hi, mesh, strict=True))
        owned.append((lo, hi))
        start, shape = module.pme_brick(system.positions[: system.n_local], cell, mesh)
        bricks.append(
            (tuple(int(x) for x in start), tuple(int(start[a] + shape[a]) for a in range(3)))
        )
    channels = int(metadata["contract"]["num_charges"])
    plan32 = _pme_bytes_sent(mesh, owned, bricks, channels, True, 4)
    plan64 = _pme_bytes_sent(mesh, owned, bricks, channels, True, 8)
    np.testing.assert_allclose(plan64, 2 * np.array(plan32))
    np.testing.assert_allclose(mesh_part32, plan32, rtol=1e-12)


def test_domains_must_tile_the_cell(pme_exports):
    """Two ranks that both claim the whole cell (RankSystem's one-rank default) would add
    their charges twice on the PME mesh: refused by name."""
    _, path = pme_exports[0]
    atoms = nacl(1)
    systems = split_into_ranks(atoms, 5.0, along_x(atoms, 2))
    for system in systems:
        system.domain_lo, system.domain_hi = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    with pytest.raises(LoremError, match="domains of ranks 0 and 1 overlap"):
        evaluate_ranks(path, systems, atoms.cell.array, True)
    systems[1].domain_lo, systems[1].domain_hi = (0.5, 0.0, 0.0), (0.9, 1.0, 1.0)
    systems[0].domain_hi = (0.5, 1.0, 1.0)
    with pytest.raises(LoremError, match="leave part of the cell to no rank"):
        evaluate_ranks(path, systems, atoms.cell.array, True)
