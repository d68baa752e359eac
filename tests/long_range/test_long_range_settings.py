"""The accuracy target (Ewald's k cutoff, PME's mesh), the long_range settings of the
model and the calculator, and the refusals: bad accuracy, grids too large for memory,
PME without a periodic cell."""

import math
import time

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import cluster, evaluate, nacl, small_model, triclinic_water

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import model_from_checkpoint, save_checkpoint
from lorem_torch.errors import LongRangeTooLargeError, NotPeriodicError
from lorem_torch.long_range import PME, Ewald, long_range_settings
from lorem_torch.long_range.accuracy import ewald_kspace_cutoff, pme_error


def test_ewald_cutoff_leaves_out_only_what_the_accuracy_allows():
    """Fewer k-vectors than the reference grid; all of those with |k| <= k_c kept, and
    the Gaussian field bound at k_c equal to the accuracy."""
    cell = torch.tensor(nacl(4).cell.array)
    reference = Ewald(1.25, 0.625)
    cut = Ewald(1.25, 0.625, accuracy=1e-6)
    k_ref = reference.num_kvectors(reference.grid_shape(cell))
    k_cut = reference.num_kvectors(cut.grid_shape(cell))
    assert k_cut < 0.6 * k_ref
    k_c = ewald_kspace_cutoff(1.25, 1e-6)
    assert math.sqrt(2 / math.pi) * math.exp(-0.5 * 1.25**2 * k_c**2) == pytest.approx(1e-6)
    kept_ref = (reference.kernel(cell, reference.grid_shape(cell)) > 0).sum()
    kept_cut = (cut.kernel(cell, cut.grid_shape(cell)) > 0).sum()
    # every reference k-vector inside the sphere is still there
    m = torch.arange(-40, 41, dtype=torch.float64)
    b = 2 * math.pi * torch.linalg.inv(cell).T
    k = (
        m[:, None, None, None] * b[0]
        + m[None, :, None, None] * b[1]
        + m[None, None, :, None] * b[2]
    )
    inside = ((k * k).sum(-1) <= k_c**2).sum()
    assert int(kept_cut) == (int(inside) - 1) // 2  # half space, k = 0 out
    assert int(kept_cut) < int(kept_ref)


@pytest.mark.parametrize("accuracy", [1e-2, 1e-4, 1e-6, 1e-8])
def test_ewald_errors_stay_within_the_accuracy(accuracy):
    import vesin

    atoms = nacl(2)
    atoms.set_cell(atoms.cell.array + [[0, 0, 0], [1.3, 0, 0], [0.7, -0.8, 0]], scale_atoms=True)
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0)).double()
    i, j, d = vesin.NeighborList(cutoff=5.0, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijd"
    )
    pairs = (torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long), torch.tensor(d))
    cell = torch.tensor(atoms.cell.array)
    results = []
    for ewald in (Ewald(1.25, 0.625), Ewald(1.25, 0.625, accuracy=accuracy)):
        positions = torch.tensor(atoms.positions, requires_grad=True)
        potentials = ewald(positions, charges, cell, *pairs)
        (gradient,) = torch.autograd.grad((potentials * charges).sum(), positions)
        results.append((potentials.detach(), gradient))
    potential_scale = math.sqrt(2 / math.pi) / 1.25 * float(charges.abs().max())
    field_scale = potential_scale / 1.25 * float(charges.abs().max())
    assert float((results[1][0] - results[0][0]).abs().max()) <= accuracy * potential_scale
    assert float((results[1][1] - results[0][1]).abs().max()) <= accuracy * field_scale


def test_pme_mesh_follows_the_accuracy():
    coarse, fine = PME(1.25, accuracy=1e-3), PME(1.25, accuracy=1e-8)
    assert fine.spacing < coarse.spacing and fine.order >= coarse.order
    for pme, accuracy in ((coarse, 1e-3), (fine, 1e-8)):
        assert pme_error(1.25, pme.spacing, pme.order) <= accuracy
    cell = torch.tensor(triclinic_water().cell.array)
    mesh = fine.mesh_shape(cell)
    lengths = torch.linalg.norm(cell, dim=1)
    assert all(lengths[a] / mesh[a] <= fine.spacing for a in range(3))


@pytest.mark.parametrize("accuracy", [0.0, -1e-6, 0.02, 1.0, float("nan"), "1e-6", True])
def test_accuracy_outside_the_allowed_range_is_refused(accuracy):
    with pytest.raises(ValueError, match="accuracy"):
        long_range_settings({"accuracy": accuracy})
    with pytest.raises(ValueError, match="accuracy"):
        small_model(long_range={"method": "pme", "accuracy": accuracy})
    if isinstance(accuracy, float):
        with pytest.raises(ValueError, match="accuracy"):
            PME(1.25, accuracy=accuracy)
        with pytest.raises(ValueError, match="accuracy"):
            Ewald(1.25, 0.625, accuracy=accuracy)


def test_other_bad_settings_are_named():
    with pytest.raises(ValueError, match="method"):
        long_range_settings("p3m")
    with pytest.raises(ValueError, match="unknown long_range settings"):
        long_range_settings({"method": "pme", "mesh": 3})
    with pytest.raises(ValueError, match="max_memory_gb"):
        long_range_settings({"max_memory_gb": 0})
    assert long_range_settings(None) == {
        "method": "ewald",
        "accuracy": 1e-6,
        "max_memory_gb": 8.0,
        "slab": False,
        "slab_factor": 3.0,
    }


def lone_atom(side):
    return Atoms("Na", positions=[[1.0, 2.0, 3.0]], cell=[side] * 3, pbc=True)


@pytest.mark.parametrize("method", ["ewald", "pme", "auto"])
def test_huge_cells_are_refused_before_allocating(method):
    model = small_model(dtype=torch.float32, long_range=method)
    start = time.perf_counter()
    with pytest.raises(
        LongRangeTooLargeError, match=r"300\.0 x 300\.0 x 300\.0 A cell needs .* GB"
    ):
        evaluate(model, [lone_atom(300.0)])
    # the callers name their setting of the limit (test_vacuum_box.py)
    with pytest.raises(LongRangeTooLargeError, match=r"^\[lorem:memory\] .*higher memory limit$"):
        evaluate(model, [lone_atom(1000.0)])
    assert time.perf_counter() - start < 10.0  # the refusal comes before any big work


def test_the_memory_limit_can_be_raised():
    cell = torch.eye(3, dtype=torch.float64) * 60.0
    strict = small_model(long_range={"method": "pme", "max_memory_gb": 0.01})
    with pytest.raises(LongRangeTooLargeError, match="PME mesh"):
        strict.pme.mesh_shape(cell)
    roomy = strict.with_long_range({"max_memory_gb": 64})
    assert roomy.pme.mesh_shape(cell) == strict.pme.mesh_of(cell)
    ewald = small_model(long_range={"max_memory_gb": 0.01})
    with pytest.raises(LongRangeTooLargeError, match="Ewald k-space"):
        ewald.ewald.grid_shape(cell)


def test_pme_without_a_periodic_cell():
    with pytest.raises(NotPeriodicError, match="non-periodic structures use the direct sum"):
        PME(1.25).mesh_shape(torch.zeros(3, 3))
    # in the model, non-periodic structures are summed directly whatever the method
    model = small_model()
    pme = model.with_long_range("pme")
    molecule = cluster()
    torch.testing.assert_close(
        evaluate(pme, [molecule])["forces"], evaluate(model, [molecule])["forces"], rtol=0, atol=0
    )
    # the calculator asked for PME explicitly says so
    calculator = LoremCalculator(model, long_range="pme")
    molecule.calc = calculator
    with pytest.raises(NotPeriodicError, match="not periodic"):
        molecule.get_potential_energy()


def test_auto_takes_ewald_for_small_cells_and_pme_for_large():
    model = small_model(long_range="auto")
    small = torch.tensor(nacl(1).cell.array)
    large = torch.tensor(nacl(8).cell.array)
    assert not model.uses_pme(small, 8)
    assert model.uses_pme(large, 4096)
    assert not small_model(long_range="ewald").uses_pme(large, 4096)
    assert small_model(long_range="pme").uses_pme(small, 8)


def test_settings_round_trip_through_checkpoints(tmp_path):
    model = small_model(long_range={"method": "pme", "accuracy": 1e-7, "max_memory_gb": 4})
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    loaded = model_from_checkpoint(path)
    assert loaded.long_range_settings == {
        "method": "pme",
        "accuracy": 1e-7,
        "max_memory_gb": 4.0,
        "slab": False,
        "slab_factor": 3.0,
    }
    assert loaded.pme.spacing == model.pme.spacing and loaded.pme.order == model.pme.order
    atoms = triclinic_water()
    torch.testing.assert_close(
        evaluate(loaded, [atoms])["forces"], evaluate(model, [atoms])["forces"], rtol=0, atol=0
    )
    # a configuration from before the setting existed (lorem-jax model.yaml) gives Ewald
    config = model.config()
    config.pop("long_range")
    old = model_from_checkpoint({"model": config, "state_dict": model.state_dict()})
    assert old.long_range_method == "ewald"
    cell = torch.tensor(atoms.cell.array)
    assert not old.uses_pme(cell, len(atoms)) and model.uses_pme(cell, len(atoms))


def test_calculator_override_and_scripted_model():
    model = small_model()
    atoms = nacl(2)
    results = {}
    for long_range in (None, "pme", {"method": "ewald", "accuracy": 1e-8}):
        atoms.calc = LoremCalculator(model, long_range=long_range)
        results[str(long_range)] = atoms.get_forces()
    assert model.long_range_method == "ewald"  # the caller's model is left alone
    for forces in results.values():
        np.testing.assert_allclose(forces, results["None"], atol=1e-6)
    scripted = torch.jit.script(model.with_long_range("pme"))
    graph_out = evaluate(model.with_long_range("pme"), [atoms])
    from lorem_torch.data import atoms_to_graph

    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    energies, _, _ = scripted(**graph)
    torch.testing.assert_close(energies, graph_out["energies"], rtol=0, atol=1e-12)


def test_calculator_switches_an_exports_method_for_every_copy(tmp_path):
    """An export carries Ewald and PME; long_range="pme" on the calculator must give PME's
    numbers (the eager PME model's, to round-off), not the export's own Ewald ones."""
    from lorem_torch.export import export_model

    model = small_model()
    path = tmp_path / "model.pt"
    export_model(model, path, "float64")
    atoms = triclinic_water()
    ewald, pme = evaluate(model, [atoms]), evaluate(model.with_long_range("pme"), [atoms])
    assert abs(float(ewald["energy"]) - float(pme["energy"])) > 1e-10  # the methods differ
    for method, reference in (("pme", pme), ("ewald", ewald)):
        atoms.calc = LoremCalculator(path, long_range=method)
        assert atoms.calc.model_long_range_method() == method
        assert atoms.get_potential_energy() == pytest.approx(float(reference["energy"]), abs=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), reference["forces"].numpy(), atol=1e-12)


def test_other_long_range_settings_keep_the_reference_path():
    # with_long_range rebuilds the model: use_fused_operators(False) must survive it, or a
    # comparison of the fused path with the reference would compare the fused with itself
    from lorem_torch.models.lorem import FUSED_SWITCHES

    for method in ("pme", "ewald", {"accuracy": 1e-8}):
        rebuilt = small_model().use_fused_operators(False).with_long_range(method)
        values = [
            getattr(module, switch)
            for module in rebuilt.modules()
            for switch in FUSED_SWITCHES
            if hasattr(module, switch)
        ]
        assert values and not any(values), method
        assert all(
            getattr(module, switch)
            for module in small_model().with_long_range(method).modules()
            for switch in FUSED_SWITCHES
            if hasattr(module, switch)
        )
