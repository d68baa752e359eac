"""The C++ runtime's staged algorithm (what every LAMMPS rank runs) over 1-4 ranks simulated
in one process (lorem_torch._core.Model.compute_ranks: one thread per rank, the MPI
collectives over shared memory), against the whole eager model in float64: PME, message
passing with PME, Born effective charges and a field, empty ranks, every method."""

import dataclasses

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
    "grid",
    [(1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 1), (1, 1, 4), (1, 3, 2), (2, 2, 2), (4, 4, 1)],
)
def test_pme_over_ranks_equals_the_model(pme_exports, layers, grid):
    """PME with the mesh owned in parts over 1-16 ranks (cpp/src/mesh.cpp; the mesh
    [21, 24, 12] with stencils of 8: thin slabs on 2 and 3 ranks, x-pencils beyond, 4 x 4
    on 16), every atom visiting the ranks that hold its stencil, with and without message
    passing, on a triclinic cell."""
    model, path = pme_exports[layers]
    atoms = triclinic_water() * (2, 1, 1)
    reference = evaluate(model, [atoms], stress=True)
    ranks = int(np.prod(grid))
    rank_of_atom = along_x(atoms, ranks)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
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


def test_mesh_layout_and_its_traffic():
    """The owned layout (cpp/src/mesh.cpp): slabs while they are a stencil thick, x-pencils
    beyond, always a tiling of the mesh into non-empty parts; too many ranks for the mesh
    are refused by name. The plan's mesh part is the FFT's transposes, each way and twice
    (two convolutions), of a rank's share less what it keeps within each transpose's
    group: 8 x (C / 2 complex pairs) x (N^3 / P) x ((1 - 1/p1) + (1 - 1/p2)) values, so it
    falls as 1/P up to that factor; each visit adds 3 + 2C values each way."""
    from lorem_torch._core import _pme_bytes_sent, _pme_owned_layout

    def tiles(mesh, boxes):
        hits = np.zeros(mesh, dtype=int)
        for lo, hi in boxes:
            assert all(h > low for low, h in zip(lo, hi, strict=True)), (lo, hi)
            hits[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += 1
        return (hits == 1).all()

    def grid(boxes):
        return len({lo[1] for lo, _ in boxes}), len({lo[2] for lo, _ in boxes})

    mesh, order = (24, 24, 24), 8
    for ranks in (1, 2, 3):  # slabs along axis 2, at least 8 planes thick
        boxes = _pme_owned_layout(mesh, ranks, order)
        assert tiles(mesh, boxes) and grid(boxes) == (1, ranks)
    for ranks, expected in ((4, (2, 2)), (8, (2, 4)), (36, (6, 6)), (576, (24, 24))):
        boxes = _pme_owned_layout(mesh, ranks, order)  # x-pencils, axis 0 whole
        assert tiles(mesh, boxes) and grid(boxes) == expected
        assert all(lo[0] == 0 and hi[0] == 24 for lo, hi in boxes)
    assert grid(_pme_owned_layout((24, 24, 24), 23, order)) == (1, 23)  # prime: thin slabs
    with pytest.raises(LoremError, match="PME over 577 ranks needs more mesh points"):
        _pme_owned_layout(mesh, 577, order)

    channels, pairs = 10, 5
    assert _pme_bytes_sent(mesh, 1, order, channels, [0], [0]) == [0.0]
    for ranks in (2, 3, 4, 8):
        p1, p2 = grid(_pme_owned_layout(mesh, ranks, order))
        share = 24**3 / ranks
        mesh_part = 8 * pairs * share * ((1 - 1 / p1) + (1 - 1 / p2)) * 8  # float64
        sent = _pme_bytes_sent(mesh, ranks, order, channels, [0] * ranks, [0] * ranks)
        np.testing.assert_allclose(sent, mesh_part)
        visits = _pme_bytes_sent(mesh, ranks, order, channels, [3] * ranks, [2] * ranks, 4)
        np.testing.assert_allclose(visits, mesh_part / 2 + 5 * (3 + 2 * channels) * 4)


@pytest.mark.parametrize("whole_axis", [0, 2])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 6, 16])
def test_every_stencil_point_is_visited_once(ranks, whole_axis):
    """mesh_visits: an atom visits every rank that holds a point of its stencil (the
    order points floor(u) - order + 1 .. floor(u) per axis, periodic), each once, and no
    rank beyond those its stencil reaches with one more point each side; atoms far
    outside the cell and on integer mesh coordinates included."""
    from lorem_torch._core import _pme_owned_layout, _pme_visits

    mesh, order = (10, 12, 14), 4
    boxes = _pme_owned_layout(mesh, ranks, order, whole_axis)

    def owners(u, margin):
        found = set()
        first = np.floor(u).astype(int)
        axes = [
            np.arange(f - order + 1 - margin, f + 1 + margin) % n
            for f, n in zip(first, mesh, strict=True)
        ]
        for rank, (lo, hi) in enumerate(boxes):
            inside = [((ax >= lo[a]) & (ax < hi[a])).any() for a, ax in enumerate(axes)]
            if all(inside):
                found.add(rank)
        return found

    rng = np.random.default_rng(ranks + 10 * whole_axis)
    points = rng.uniform(-3, 4, size=(300, 3)) * np.array(mesh)
    points[:20] = np.round(points[:20])  # on mesh points
    for u in points:
        counts = _pme_visits(u.reshape(1, 3), mesh, ranks, order, whole_axis)
        assert set(counts) <= {0, 1}, counts
        visited = {r for r, c in enumerate(counts) if c}
        assert owners(u, 0) <= visited <= owners(u, 1), (u, visited)


def test_pme_over_thick_slabs_equals_the_model(pme_exports):
    """A cell tall enough along z for slabs a stencil thick (mesh [21, 24, 36], order 8:
    slabs up to 4 ranks), so that atoms visit one or two ranks, not all."""
    from lorem_torch._core import _pme_owned_layout

    model, path = pme_exports[0]
    atoms = triclinic_water() * (2, 1, 3)
    reference = evaluate(model, [atoms], stress=True)
    for ranks in (2, 4):
        boxes = _pme_owned_layout((21, 24, 36), ranks, 8)
        assert all(lo[:2] == [0, 0] and hi[:2] == [21, 24] for lo, hi in boxes)
        rank_of_atom = along_x(atoms, ranks)
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
        assert_matches(results, rank_of_atom, reference)


def test_one_rank_sends_nothing(pme_exports):
    """The byte counter counts what crosses ranks: one rank's ghosts are periodic images
    of its own atoms and its sums have no one to go to, so it sends 0 bytes; with two
    ranks the ghosts owned by the other rank and the mesh remaps count."""
    model, path = pme_exports[1]
    atoms = triclinic_water() * (2, 1, 1)
    for ranks in (1, 2):
        rank_of_atom = along_x(atoms, ranks)
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        assert len(systems[0].ghost_rank) > 0  # periodic images even on one rank
        results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
        sent = [r.bytes_sent for r in results]
        if ranks == 1:
            assert sent == [0.0]
        else:
            assert min(sent) > 0.0


def test_float32_models_send_the_mesh_in_float32(pme_exports, tmp_path):
    """The mesh and the visiting atoms travel in the model's dtype: the same PME model
    exported in float32 and float64, over the same 2 ranks, sends the same ghost values
    and sums, so the float64 run's extra bytes are what the plan counts for the float64
    mesh and visits less the float32 ones (the visits from the atoms' mesh coordinates
    in each dtype, as the runtime computes them)."""
    import torch
    from lorem_torch._core import _pme_bytes_sent, _pme_visits

    from lorem_torch.export import load_exported

    model, path64 = pme_exports[0]
    path32 = tmp_path / "pme32.pt"
    export_model(model, path32, "float32")
    atoms = triclinic_water() * (2, 1, 1)
    rank_of_atom = along_x(atoms, 2)
    module, metadata = load_exported(path64)
    cell = torch.tensor(atoms.cell.array)
    mesh = tuple(int(n) for n in module.pme_mesh(cell))
    order = int(module.pme_brick(torch.zeros(1, 3, dtype=torch.float64), cell, list(mesh))[1][0])
    channels = int(metadata["contract"]["num_charges"])
    sent, plan = {}, {}
    for name, path, dtype in (
        ("float64", path64, np.float64),
        ("float32", path32, np.float32),
    ):
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
        sent[name] = np.array([r.bytes_sent for r in results])
        inverse = np.linalg.inv(atoms.cell.array.astype(dtype).astype(np.float64))
        counts = []
        for system in systems:
            local = np.asarray(system.positions[: system.n_local]).astype(dtype)
            counts.append(_pme_visits(local.astype(np.float64) @ inverse * mesh, mesh, 2, order))
        visits_out = [sum(c for d, c in enumerate(row) if d != r) for r, row in enumerate(counts)]
        visits_in = [sum(row[d] for r, row in enumerate(counts) if r != d) for d in range(2)]
        assert min(visits_out) > 0 and min(visits_in) > 0
        plan[name] = np.array(
            _pme_bytes_sent(mesh, 2, order, channels, visits_out, visits_in, dtype().itemsize)
        )
    np.testing.assert_allclose(
        sent["float64"] - sent["float32"], plan["float64"] - plan["float32"], rtol=1e-12
    )
    assert (plan["float32"] > 0.5 * sent["float32"]).all(), (plan, sent)


def test_pme_needs_no_domains(pme_exports):
    """The atoms visit the mesh by their positions, so PME does not depend on which rank
    holds which atom (no domains: LAMMPS' tiled decompositions and load balancing work
    alike): atoms dealt to 3 ranks at random give the model's numbers."""
    model, path = pme_exports[1]
    atoms = nacl(1) * (2, 1, 1)
    reference = evaluate(model, [atoms], stress=True)
    rank_of_atom = np.random.default_rng(7).permutation(np.arange(len(atoms)) % 3)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    results = evaluate_ranks(Model(str(path)), systems, atoms.cell.array, True)
    assert_matches(results, rank_of_atom, reference)


def test_exports_before_the_split_pme_methods(pme_exports, tmp_path):
    """An export whose contract lists pme_potentials but not pme_interpolate and
    pme_combine (made before them) runs the same algorithm through pme_potentials and
    gives the same numbers on 1 and 3 ranks."""
    from conftest import rewrite_metadata

    model, path = pme_exports[1]
    older = tmp_path / "older.pt"

    def drop_split_methods(metadata):
        methods = metadata["contract"]["methods"]
        metadata["contract"]["methods"] = [
            m for m in methods if m not in ("pme_interpolate", "pme_combine")
        ]
        assert len(metadata["contract"]["methods"]) == len(methods) - 2
        return metadata

    rewrite_metadata(path, older, drop_split_methods)
    atoms = triclinic_water() * (2, 1, 1)
    reference = evaluate(model, [atoms], stress=True)
    for ranks in (1, 3):
        rank_of_atom = along_x(atoms, ranks)
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        results = evaluate_ranks(Model(str(older)), systems, atoms.cell.array, True)
        assert_matches(results, rank_of_atom, reference)


def test_simulated_ranks_refuse_ranks_that_disagree_on_the_collectives():
    """MPI would hang where ranks call different collectives; the simulated ranks must
    fail, naming them, rather than read each other's stale slots and go on."""
    from lorem_torch import _core

    _core._simulated_collectives([["all_reduce_sum", "all_to_all"]] * 3)  # agreeing: runs
    with pytest.raises(LoremError, match="rank 0 called all_reduce_sum while rank 1 called"):
        _core._simulated_collectives([["all_reduce_sum"], ["all_to_all"], ["all_reduce_sum"]])
    with pytest.raises(LoremError, match="called all_gather_ints while rank 2 called forward"):
        _core._simulated_collectives(
            [["all_to_all", "all_gather_ints"]] * 2 + [["all_to_all", "forward_ghosts"]]
        )
    with pytest.raises(LoremError, match="another rank, which has ended, never called"):
        _core._simulated_collectives([["all_reduce_sum"], []])
