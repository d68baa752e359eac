"""2D slabs (pbc True, True, False; long_range slab): Yeh-Berkowitz with the Ballenegger
terms (long_range/slab.py) against a direct sum over in-plane images (slab_reference.py),
for point charges and a model's learned charges; the model's forces and in-plane stress
by finite differences; exports; the refusals where slab is not granted."""

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import evaluate, small_model, water_slab
from slab_reference import direct_slab
from slab_systems import LONG_CUTOFF, kspace_method, point_charge_slab, slab_potentials_of

from lorem_torch import LoremCalculator
from lorem_torch.data import atoms_to_graph, neighbor_list
from lorem_torch.errors import UnsupportedPeriodicityError
from lorem_torch.export import export_model, load_exported
from lorem_torch.export.contract import CapabilityError
from lorem_torch.long_range import Ewald, long_range_settings
from lorem_torch.long_range.slab import slab_energy, slab_moments, slab_potentials

# the reference's two radii: the second must agree with the first to CONVERGED (relative;
# energies and forces, whose remainder falls off as 1 / R^3) or CONVERGED_POTENTIALS (per
# atom, 1 / R^2): what is left at the second is below a tenth of the tests' 1e-6
RADII = (400.0, 800.0)
CONVERGED = 1e-7
CONVERGED_POTENTIALS = 3e-7


def reference(positions, charges, cell):
    """Potentials and forces ([N] and [N, 3], or per channel [N, C] and [N, 3, C]) of the
    direct sum at the larger radius, checked converged. Channels with a net charge:
    forces and potential differences (their potentials diverge with the radius)."""
    coarse_v, coarse_f = direct_slab(positions, charges, cell, RADII[0])
    fine_v, fine_f = direct_slab(positions, charges, cell, RADII[1])
    q = charges.reshape(len(positions), -1)
    fv, cv = fine_v.reshape(q.shape), coarse_v.reshape(q.shape)
    ff, cf = fine_f.reshape(len(q), 3, -1), coarse_f.reshape(len(q), 3, -1)
    for c in range(q.shape[1]):
        assert np.abs(ff[..., c] - cf[..., c]).max() < CONVERGED * np.abs(ff[..., c]).max()
        if abs(q[:, c].sum()) < 1e-12:
            energy = float(q[:, c] @ fv[:, c])
            assert abs(float(q[:, c] @ cv[:, c]) - energy) < CONVERGED * abs(energy)
            scale = np.abs(fv[:, c]).max()
            assert np.abs(fv[:, c] - cv[:, c]).max() < CONVERGED_POTENTIALS * scale
        else:
            diff = (fv[:, c] - fv[0, c]) - (cv[:, c] - cv[0, c])
            scale = np.abs(fv[:, c] - fv[0, c]).max()
            assert np.abs(diff).max() < CONVERGED_POTENTIALS * scale
    return fine_v, fine_f


@pytest.mark.parametrize("name", ["ewald", "pme"])
def test_neutral_point_charges_match_the_direct_sum(name):
    positions, charges, cell = point_charge_slab()
    v_ref, f_ref = reference(positions, charges, cell)
    e_ref = float(charges @ v_ref)
    pot, energy, forces = slab_potentials_of(kspace_method(name), positions, charges, cell, 3.0)
    assert energy[0] == pytest.approx(e_ref, rel=1e-6)
    np.testing.assert_allclose(pot[:, 0], v_ref, atol=1e-6 * np.abs(v_ref).max())
    np.testing.assert_allclose(forces[..., 0], f_ref, atol=1e-6 * np.abs(f_ref).max())
    # without the dipole correction the images' dipole layers are felt (not a weak test)
    method = kspace_method(name)
    bare = slab_potentials_of(method, positions, charges, cell, 3.0)[1][0] - float(
        slab_energy(torch.tensor(positions), torch.tensor(charges)[:, None], _tall(cell, 3.0))[0]
    )
    assert abs(bare - e_ref) > 1e-4 * abs(e_ref)


def _tall(cell, factor):
    tall = torch.tensor(cell).clone()
    tall[2] *= factor
    return tall


@pytest.mark.parametrize("name", ["ewald", "pme"])
def test_charged_point_charges(name):
    """A net charge (Ballenegger terms): the forces match the direct sum (a charged 2D
    lattice has a finite field), the potentials up to the one constant that a charged
    lattice's sum leaves open, and the energy depends neither on slab_factor nor on
    where the slab sits along z."""
    positions, charges, cell = point_charge_slab(seed=1)
    charges = charges + 0.37
    v_ref, f_ref = reference(positions, charges, cell)
    method = kspace_method(name)
    pot, energy, forces = slab_potentials_of(method, positions, charges, cell, 3.0)
    np.testing.assert_allclose(forces[..., 0], f_ref, atol=1e-6 * np.abs(f_ref).max())
    offset = pot[:, 0] - v_ref
    assert np.ptp(offset) < 1e-6 * np.ptp(v_ref)
    for factor, shift in ((5.0, 0.0), (3.0, 17.0), (4.0, -6.5)):
        pot_b, energy_b, forces_b = slab_potentials_of(
            method, positions, charges, cell, factor, shift
        )
        assert energy_b[0] == pytest.approx(energy[0], rel=1e-8)
        np.testing.assert_allclose(pot_b, pot, atol=1e-8 * np.abs(pot).max())
        np.testing.assert_allclose(forces_b, forces, atol=1e-8 * np.abs(forces).max())


def test_correction_is_the_energy_of_its_potentials():
    """sum_i q_i V_i^corr = E_corr, and the potentials are half the charge derivative."""
    rng = np.random.default_rng(3)
    r = torch.tensor(rng.normal(size=(7, 3)) * 2.0)
    q = torch.tensor(rng.normal(size=(7, 4)), requires_grad=True)
    cell = _tall(np.diag([5.0, 6.0, 9.0]), 3.0)
    pot = slab_potentials(r, slab_moments(r, q, cell), cell, 1.0)
    energy = slab_energy(r, q, cell)
    torch.testing.assert_close((q * pot).sum(dim=0), energy, rtol=1e-12, atol=1e-14)
    (gradient,) = torch.autograd.grad(energy.sum(), q)
    torch.testing.assert_close(gradient / 2.0, pot, rtol=1e-12, atol=1e-14)


def slab_model(num_message_passing=0, **settings):
    return small_model(
        species=[1, 8],
        long_range={"slab": True, **settings},
        num_message_passing=num_message_passing,
    )


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_learned_charges_match_the_direct_sum(method):
    """The ten channels a model learns on a slab (each with its own net charge) with the
    model's smearing and slab_factor, by Ewald on the whole reference grid or PME at
    accuracy 1e-9 (the model's own k-space stops at 1e-6): the forces of every channel,
    their potential differences, and the energies of their neutral parts against the
    direct sum."""
    model = slab_model(method=method)
    atoms = water_slab()
    charges = evaluate(model, [atoms])["charges"].detach().numpy()
    assert np.abs(charges.sum(axis=0)).min() > 1e-3  # charged channels: the general case
    module = kspace_method(method, model.smearing)
    positions, cell = atoms.positions, atoms.cell.array
    neutral = charges - charges.mean(axis=0)
    v_ref, f_ref = reference(positions, np.concatenate([charges, neutral], axis=1), cell)
    channels = charges.shape[1]
    for k, q in enumerate((charges, neutral)):
        pot, energy, forces = slab_potentials_of(module, positions, q, cell, model.slab_factor)
        for c in range(channels):
            v, f = v_ref[:, k * channels + c], f_ref[..., k * channels + c]
            np.testing.assert_allclose(
                forces[..., c], f, atol=1e-6 * np.abs(f).max(), err_msg=f"channel {c}"
            )
            offset = pot[:, c] - v
            assert np.ptp(offset) < 1e-6 * np.ptp(v), f"channel {c}"
            if k == 1:
                assert energy[c] == pytest.approx(float(q[:, c] @ v), rel=1e-6)


def test_model_potentials_are_those_of_the_slab_terms():
    """What Lorem.forward computes for a slab is Ewald/PME over the extended cell plus the
    correction (the same functions as above), with the model's own neighbour list."""
    for method in ("ewald", "pme"):
        model = slab_model(method=method)
        atoms = water_slab()
        out = evaluate(model, [atoms])
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64, slab=True)
        r = graph["positions"]
        vectors = r[graph["others"]] - r[graph["centers"]] + graph["cell_shifts"] @ graph["cell"][0]
        module = model.ewald if method == "ewald" else model.pme
        pot = module(
            r,
            out["charges"].detach(),
            graph["cell"][0],
            graph["centers"],
            graph["others"],
            torch.linalg.norm(vectors, dim=-1),
            slab_factor=model.slab_factor,
        )
        torch.testing.assert_close(out["potentials"].detach(), pot, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_forces_are_minus_the_energy_gradient(method):
    model = slab_model(method=method)
    atoms = water_slab()
    forces = evaluate(model, [atoms])["forces"].numpy()
    h = 1e-5
    for atom, axis in ((0, 2), (1, 0), (4, 1), (8, 2)):
        energies = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(float(evaluate(model, [moved])["energy"].detach()))
        numerical = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numerical, abs=1e-7)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_stress_by_finite_differences(method):
    """The strain derivative of the energy divided by the volume of the cell as given (not
    the extended k-space cell): in-plane (xx, yy, xy) and zz (the heights of the atoms and
    the cell together) by finite differences; the shears out of the plane (which a slab
    cell cannot take) are symmetric, since the correction follows a tilted plane."""
    model = slab_model(method=method)
    atoms = water_slab()
    stress = evaluate(model, [atoms], stress=True)["stress"][0].numpy()
    volume = atoms.get_volume()
    h = 1e-6
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    for a, b in ((0, 0), (1, 1), (0, 1), (2, 2)):
        energies = []
        for sign in (1.0, -1.0):
            strain = np.eye(3)
            strain[a, b] += sign * h
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=False)
            strained.positions = atoms.positions @ strain
            energies.append(float(evaluate(model, [strained])["energy"].detach()))
        numerical = (energies[0] - energies[1]) / (2 * h) / volume
        assert stress[a, b] == pytest.approx(numerical, abs=1e-8), (a, b)
    # zz is the atoms' virial along z: the extended cell's height drops out
    forces = evaluate(model, [atoms])["forces"].numpy()
    heights = atoms.positions[:, 2] - atoms.positions[:, 2].mean()
    assert stress[2, 2] * volume == pytest.approx(-(heights * forces[:, 2]).sum(), rel=1e-5)


def test_the_slab_is_invariant_under_translations():
    """Along z for every channel, charged ones included (M^2 - Q S is invariant), and
    in-plane by lattice vectors or not."""
    model = slab_model()
    atoms = water_slab()
    base = evaluate(model, [atoms])
    for shift in ([0.0, 0.0, 1.7], [0.0, 0.0, -3.1], [2.3, -0.7, 0.4]):
        moved = atoms.copy()
        moved.positions += shift
        out = evaluate(model, [moved])
        assert float(out["energy"]) == pytest.approx(float(base["energy"]), abs=1e-10)
        np.testing.assert_allclose(out["forces"], base["forces"], atol=1e-9)


def test_calculator_and_export_agree(tmp_path):
    model = slab_model()
    atoms = water_slab()
    reference_out = evaluate(model, [atoms], stress=True)
    path = tmp_path / "slab.pt"
    metadata = export_model(model, path, "float64")
    contract = metadata["contract"]
    assert contract["capabilities"]["slab"] and "slab" not in contract["limitations"]
    assert contract["long_range"]["slab"] and contract["long_range"]["slab_factor"] == 3.0
    assert contract["version"] == 2
    for source in (path, model):
        atoms.calc = LoremCalculator(source)
        assert atoms.get_potential_energy() == pytest.approx(
            float(reference_out["energy"]), abs=1e-10
        )
        np.testing.assert_allclose(atoms.get_forces(), reference_out["forces"], atol=1e-10)
        stress = reference_out["stress"][0].numpy()
        np.testing.assert_allclose(stress, stress.T, atol=1e-12)  # the correction follows the plane
        voigt = stress.flat[[0, 4, 8, 5, 2, 1]]
        np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-10)
    # the calculator's settings make a slab of a model exported... no: of a Lorem
    plain = small_model(species=[1, 8])
    atoms.calc = LoremCalculator(plain, long_range={"slab": True})
    assert atoms.get_potential_energy() == pytest.approx(
        float(evaluate(plain.with_long_range({"slab": True}), [atoms])["energy"]), abs=1e-10
    )


def test_slabs_are_refused_without_slab(tmp_path):
    plain = small_model(species=[1, 8])
    atoms = water_slab()
    with pytest.raises(UnsupportedPeriodicityError, match="long_range slab: true"):
        atoms_to_graph([atoms], plain.cutoff)
    for source in (plain, tmp_path / "plain.pt"):
        if not isinstance(source, torch.nn.Module):
            export_model(plain, source, "float64")
            assert load_exported(source)[1]["contract"]["version"] == 1
        atoms.calc = LoremCalculator(source)
        with pytest.raises(CapabilityError, match="need an export made with slab"):
            atoms.get_potential_energy()
    # an export cannot be switched to slab afterwards
    with pytest.raises(ValueError, match="--slab"):
        LoremCalculator(tmp_path / "plain.pt", long_range={"slab": True})
    # the eager model refuses a slab graph when its settings lack slab
    graph = atoms_to_graph([atoms], plain.cutoff, dtype=torch.float64, slab=True)
    from lorem_torch import EnergyModel

    with pytest.raises(ValueError, match=r"\[lorem:cell\].*long_range slab: true"):
        EnergyModel(plain)(**graph)


def test_slab_geometry_is_checked():
    model = slab_model()
    atoms = water_slab()
    sideways = atoms.copy()
    sideways.pbc = [True, False, True]
    tilted = atoms.copy()
    tilted.set_cell([[6.1, 0.0, 0.0], [0.9, 5.8, 0.0], [0.5, 0.0, 12.0]], scale_atoms=False)
    low = atoms.copy()
    low.set_cell([[6.1, 0.0, 0.0], [0.9, 5.8, 0.0], [0.0, 0.0, 2.0]], scale_atoms=False)
    for bad, message in (
        (sideways, "periodic along x and y and open along z"),
        (tilted, "c along z"),
        (low, "more than its cell's height"),
    ):
        with pytest.raises(UnsupportedPeriodicityError, match=message):
            atoms_to_graph([bad], model.cutoff, slab=True)


def test_settings():
    settings = long_range_settings({"slab": True})
    assert settings["slab"] is True and settings["slab_factor"] == 3.0
    assert long_range_settings({"slab_factor": 4})["slab_factor"] == 4.0
    for bad in ({"slab": "yes"}, {"slab_factor": 1.0}, {"slab_factor": float("nan")}):
        with pytest.raises(ValueError, match="slab"):
            long_range_settings(bad)
    # a model keeps them through its config (checkpoints, with_long_range)
    model = slab_model(slab_factor=4.5)
    assert model.config()["long_range"]["slab_factor"] == 4.5
    assert model.with_long_range("pme").slab_factor == 4.5


def test_export_command_line(tmp_path):
    from lorem_torch.checkpoint import save_checkpoint
    from lorem_torch.export.archive import export_main

    save_checkpoint(tmp_path / "model.ckpt", small_model(species=[1, 8]))
    export_main([str(tmp_path / "model.ckpt"), "-o", str(tmp_path / "slab.pt"), "--slab"])
    export_main(
        [str(tmp_path / "model.ckpt"), "-o", str(tmp_path / "tall.pt"), "--slab-factor", "5"]
    )
    slab = load_exported(tmp_path / "slab.pt")[1]["contract"]
    tall = load_exported(tmp_path / "tall.pt")[1]["contract"]
    assert slab["capabilities"]["slab"] and slab["long_range"]["slab_factor"] == 3.0
    assert not tall["capabilities"]["slab"]  # a factor alone grants nothing


def test_a_point_charge_slab_is_not_a_periodic_box():
    """The reason for all this: the same charges in the fully periodic cell (vacuum of the
    same height) differ from the slab by far more than the slab's error."""
    positions, charges, cell = point_charge_slab()
    v_ref, _ = reference(positions, charges, cell)
    atoms = Atoms(positions=positions, cell=cell, pbc=True)
    nl = neighbor_list(atoms.positions, cell, True, LONG_CUTOFF)
    r = torch.tensor(positions)
    distances = torch.tensor(nl["distances"])
    pot = Ewald(1.25, 0.625, accuracy=None)(
        r,
        torch.tensor(charges)[:, None],
        torch.tensor(cell),
        torch.tensor(nl["centers"], dtype=torch.int64),
        torch.tensor(nl["others"], dtype=torch.int64),
        distances,
    )
    periodic = float(torch.tensor(charges) @ pot[:, 0])
    assert abs(periodic - float(charges @ v_ref)) > 1e-3 * abs(float(charges @ v_ref))


@pytest.mark.parametrize("layers", [0, 1])
def test_simulated_ranks_and_runtime_match_python(tmp_path, layers):
    """The C++ runtime on one process and over 1-3 simulated ranks, Ewald and PME, equals
    the whole model in float64."""
    from conftest import cpp_evaluate
    from lorem_torch._core import Model

    from lorem_torch.export import evaluate_ranks, split_into_ranks

    atoms = water_slab()
    for method in ("ewald", "pme"):
        model = slab_model(method=method, num_message_passing=layers)
        reference_out = evaluate(model, [atoms], stress=True)
        energy = float(reference_out["energy"].detach())
        forces = reference_out["forces"].numpy()
        virial = (reference_out["stress"][0] * atoms.get_volume()).numpy()
        path = tmp_path / f"{method}{layers}.pt"
        export_model(model, path, "float64")
        out = cpp_evaluate(Model(str(path)), atoms)
        assert out["energy"] == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(out["forces"], forces, atol=1e-10)
        np.testing.assert_allclose(out["virial"], virial, atol=1e-10)
        for ranks in (1, 3):
            owner = np.floor(atoms.get_scaled_positions()[:, 0] * ranks).astype(int)
            systems = split_into_ranks(atoms, model.cutoff, owner)
            results = evaluate_ranks(path, systems, atoms.cell.array, True, slab=True)
            assert sum(r.energy for r in results) == pytest.approx(energy, abs=1e-10)
            total_virial = sum(r.virial for r in results).numpy()
            np.testing.assert_allclose(total_virial, virial, atol=1e-10)
            for r, result in enumerate(results):
                np.testing.assert_allclose(result.forces, forces[owner == r], atol=1e-10)


def test_training_data_follow_the_setting(tmp_path):
    """Slab frames load as slabs for a model with slab (training and lorem-eval's
    predictor), and are refused otherwise."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from lorem_torch.train.data import LabelKeys, load_samples, make_batch
    from lorem_torch.train.evaluation import Predictor

    atoms = water_slab()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    keys = LabelKeys("energy", "forces", None)
    with pytest.raises(UnsupportedPeriodicityError):
        load_samples([atoms], 5.0, keys)
    model = slab_model()
    batch = make_batch(load_samples([atoms], 5.0, keys, slab=True), torch.float64)
    expected = float(evaluate(model, [atoms])["energy"].detach())
    predicted = Predictor(model)(batch.graph, stress=False)
    assert float(predicted["energy"][0]) == pytest.approx(expected, abs=1e-12)
    path = tmp_path / "slab.pt"
    export_model(model, path, "float64")
    exported = Predictor(str(path))(batch.graph, stress=False)
    assert float(exported["energy"][0]) == pytest.approx(expected, abs=1e-10)


def test_born_effective_charge_models_run_slabs(tmp_path):
    """A LoremBEC with slab: BECModel's energy and forces are EnergyModel's, the APT keeps
    the acoustic sum rule, and its export and the C++ runtime agree."""
    from conftest import cpp_evaluate, small_bec
    from lorem_torch._core import Model

    from lorem_torch import EnergyModel
    from lorem_torch.models import BECModel

    model = small_bec(species=[1, 8], long_range={"slab": True})
    atoms = water_slab()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64, slab=True)
    field = torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64)
    bec = BECModel(model)(**graph, compute_stress=True, electric_field=field)
    plain = EnergyModel(model)(**graph, compute_stress=True)
    torch.testing.assert_close(bec["energy"], plain["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(bec["stress"], plain["stress"], rtol=0, atol=1e-12)
    field_forces = torch.einsum("nab,b->na", bec["apt"], field)
    torch.testing.assert_close(bec["forces"] - field_forces, plain["forces"], rtol=0, atol=1e-12)
    assert float(bec["apt"].sum(dim=0).abs().max()) < 1e-10
    path = tmp_path / "bec.pt"
    export_model(model, path, "float64")
    out = cpp_evaluate(Model(str(path)), atoms, electric_field=(0.3, -0.5, 0.7))
    assert out["energy"] == pytest.approx(float(plain["energy"].detach()), abs=1e-10)
    np.testing.assert_allclose(out["forces"], bec["forces"].detach().numpy(), atol=1e-10)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_float32_slab_far_from_z_zero_keeps_its_precision(tmp_path, method):
    """A slab's z cannot wrap, so both the calculator and the runtime centre it on the
    atoms' mean z before casting to float32: a slab at z ~ 1000 A is as precise as the
    same slab near z = 0 in the same cell. Before, float32 forces there were off from float64
    by 4e-3 eV/A with a trained water model (the positions' float32 spacing at 1000 A is
    6e-5 A)."""
    from conftest import cpp_evaluate
    from lorem_torch._core import Model

    model = slab_model(method=method)
    near = water_slab()
    far = near.copy()  # the same cell: only the atoms' span along z must fit its height
    far.positions[:, 2] += 1000.0
    errors = {}
    for name, atoms in (("near", near), ("far", far)):
        reference = evaluate(model, [atoms])["forces"].numpy()
        single = evaluate(model.to(torch.float32), [atoms])["forces"].double().numpy()
        model.to(torch.float64)
        path = tmp_path / f"{name}.pt"
        export_model(model, path, "float32")
        runtime = cpp_evaluate(Model(str(path)), atoms)["forces"]
        calculator = LoremCalculator(path).get_forces(atoms)
        errors[name] = [np.abs(f - reference).max() for f in (single, runtime, calculator)]
    assert max(errors["near"]) < 1e-4
    for far_error in errors["far"]:
        assert far_error < 2 * max(errors["near"]), errors
