"""LoremBEC: Born effective charges (APT), the acoustic sum rule and field forces.

Physics in float64 on a small model; parity with lorem-jax's LoremBEC on fixtures
written by lorem-jax itself (tools/make_jax_bec_fixtures.py, tests/fixtures/jax_bec).
"""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import (
    FIELD,
    FIXTURES,
    bec_outputs,
    cluster,
    nacl,
    random_rotation,
    small_bec,
    small_model,
    triclinic_water,
)

from lorem_torch import LoremCalculator, from_jax_params
from lorem_torch.data import atoms_to_graph
from lorem_torch.errors import MissingAPTHeadError
from lorem_torch.models import BECModel, EnergyModel, Lorem, LoremBEC, acoustic_sum_rule
from lorem_torch.models.bec import apply_acoustic_sum_rule, field_forces


@pytest.fixture(scope="module")
def model():
    return small_bec(num_message_passing=1)


def test_defaults_are_lorem_jax_lorembec():
    model = LoremBEC()
    assert model.hyperparameters["equivariant_message_passing"] is False
    assert model.hyperparameters["initialize_node_features"] is False
    assert model.config()["kind"] == "bec"


def test_apt_is_of_order_one_and_sums_to_zero(model):
    atoms_list = [triclinic_water(), cluster(), nacl()]
    out = bec_outputs(model, atoms_list)
    apt = out["apt"].detach()
    assert apt.shape == (sum(len(a) for a in atoms_list), 3, 3)
    assert float(apt.abs().max()) > 0.1
    offsets = np.cumsum([0] + [len(a) for a in atoms_list])
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        torch.testing.assert_close(
            apt[a:b].sum(0), torch.zeros(3, 3, dtype=apt.dtype), atol=1e-12, rtol=0
        )
    # the rule removes the mean of each structure and nothing else
    raw = model.forward_bec(**atoms_to_graph(atoms_list, model.cutoff, dtype=torch.float64))[3]
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        torch.testing.assert_close(
            apt[a:b], (raw[a:b] - raw[a:b].mean(0)).detach(), atol=1e-12, rtol=0
        )


@pytest.mark.parametrize("make", [cluster, triclinic_water, nacl])
def test_apt_rotates_as_a_rank_two_tensor(model, make):
    atoms = make()
    rotation = random_rotation(4)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.all():
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    a = bec_outputs(model, [atoms], field=FIELD)
    b = bec_outputs(model, [rotated], field=rotation @ np.asarray(FIELD))
    r = torch.tensor(rotation)
    z_a, z_b = a["apt"].detach(), b["apt"].detach()
    torch.testing.assert_close(z_b, r @ z_a @ r.T, rtol=0, atol=1e-9)
    # the forces, field term included, rotate as vectors when the field rotates too
    torch.testing.assert_close(b["forces"], a["forces"] @ r.T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_apt_is_even_under_inversion(model, make):
    """Z* = dF/dE is a proper tensor: inversion flips F and E, so Z* is unchanged
    (its antisymmetric part is a pseudovector, even under inversion)."""
    atoms = make()
    inverted = atoms.copy()
    inverted.positions = -atoms.positions
    if atoms.pbc.all():
        inverted.set_cell(-atoms.cell.array, scale_atoms=False)
    z_a = bec_outputs(model, [atoms])["apt"].detach()
    z_b = bec_outputs(model, [inverted])["apt"].detach()
    torch.testing.assert_close(z_b, z_a, rtol=0, atol=1e-9)
    antisymmetric = z_a - z_a.transpose(1, 2)
    assert float(antisymmetric.abs().max()) > 1e-3  # the pseudovector part is exercised


def test_field_forces_equal_apt_times_field(model):
    atoms_list = [triclinic_water(), cluster()]
    plain = bec_outputs(model, atoms_list, stress=True)
    fields = torch.tensor([[0.3, -0.5, 0.7], [-0.2, 0.1, 0.4]], dtype=torch.float64)
    with_field = bec_outputs(model, atoms_list, field=fields, stress=True)
    apt = plain["apt"].detach()
    structure = atoms_to_graph(atoms_list, model.cutoff)["atom_structure"]
    expected = plain["forces"] + torch.einsum("nab,nb->na", apt, fields[structure])
    torch.testing.assert_close(with_field["forces"], expected, rtol=0, atol=1e-12)
    # the field does not touch the energy or the stress (lorem-jax's convention)
    torch.testing.assert_close(with_field["energy"], plain["energy"], rtol=0, atol=0)
    torch.testing.assert_close(with_field["stress"], plain["stress"], rtol=0, atol=0)
    # the total field force on a structure vanishes with the acoustic sum rule
    n = len(atoms_list[0])
    extra = (with_field["forces"] - plain["forces"])[:n].sum(0)
    torch.testing.assert_close(extra, torch.zeros(3, dtype=extra.dtype), atol=1e-12, rtol=0)


def test_energy_path_is_that_of_lorem(model):
    """forward() of LoremBEC (what EnergyModel and the export use) gives the energies
    and forces of forward_bec(); a Lorem with the same backbone weights agrees too."""
    atoms = triclinic_water()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    a = EnergyModel(model)(**graph, compute_stress=True)
    b = BECModel(model)(**graph, compute_stress=True)
    for key in ("energy", "forces", "virial", "charges"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-13)
    backbone = Lorem(**model.hyperparameters).double()
    missing, unexpected = backbone.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("apt_") for k in unexpected)
    c = EnergyModel(backbone)(**graph, compute_stress=True)
    torch.testing.assert_close(c["forces"], a["forces"], rtol=0, atol=1e-13)


def test_apt_loss_has_finite_weight_gradients(model):
    """The APT feeds the training loss: every head weight gets a finite gradient."""
    graph = atoms_to_graph([cluster()], model.cutoff, dtype=torch.float64)
    out = BECModel(model)(**graph, create_graph=True)  # as in training
    loss = (out["apt"] ** 2).sum()
    loss.backward()
    grads = [p.grad for p in model.apt_initial.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_staged_acoustic_sum_rule_matches_the_batch_rule(model):
    """What a multi-rank run does: sum the raw APT over all ranks, then subtract."""
    atoms = triclinic_water()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    raw = model.forward_bec(**graph)[3].detach()
    whole = acoustic_sum_rule(raw, graph["atom_structure"], 1)
    ranks = [raw[:2], raw[2:5], raw[5:]]  # three "ranks"
    total = sum(part.sum(0) for part in ranks)
    staged = torch.cat([apply_acoustic_sum_rule(part, total, len(atoms)) for part in ranks])
    torch.testing.assert_close(staged, whole, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        field_forces(whole, torch.tensor(FIELD, dtype=torch.float64)),
        torch.einsum("nab,b->na", whole, torch.tensor(FIELD, dtype=torch.float64)),
    )


def test_scripted_bec_model_matches_eager(model):
    atoms = triclinic_water()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    field = torch.tensor(FIELD, dtype=torch.float64)
    eager = BECModel(model)(**graph, electric_field=field)
    scripted = torch.jit.script(BECModel(model))(**graph, electric_field=field)
    for key in ("energy", "forces", "apt"):
        torch.testing.assert_close(scripted[key], eager[key], rtol=0, atol=1e-13)


# -- the calculator --


def test_calculator_born_charges_and_field(model):
    atoms = triclinic_water()
    reference = bec_outputs(model, [atoms], field=FIELD, stress=True)
    atoms.calc = LoremCalculator(model, electric_field=FIELD)
    np.testing.assert_allclose(atoms.get_forces(), reference["forces"].detach().numpy(), atol=1e-12)
    bec = atoms.calc.get_property("born_effective_charges", atoms)
    assert bec.shape == (len(atoms), 3, 3)
    np.testing.assert_allclose(bec, reference["apt"].detach().numpy(), atol=1e-12)
    zero_field = LoremCalculator(model)
    energy = zero_field.get_potential_energy(atoms)
    assert atoms.get_potential_energy() == energy
    np.testing.assert_array_equal(atoms.get_stress(), zero_field.get_stress(atoms))
    np.testing.assert_allclose(
        atoms.get_forces() - zero_field.get_forces(atoms), bec @ np.asarray(FIELD), atol=1e-12
    )
    atoms.calc.electric_field = None  # switched off: the zero-field forces again
    np.testing.assert_allclose(atoms.get_forces(), zero_field.get_forces(atoms), atol=1e-14)


def test_field_needs_the_apt_head():
    from conftest import small_model

    with pytest.raises(MissingAPTHeadError, match="Born-effective-charge"):
        LoremCalculator(small_model(), electric_field=FIELD)
    calc = LoremCalculator(small_model())
    with pytest.raises(MissingAPTHeadError):
        calc.electric_field = FIELD
    with pytest.raises(ValueError, match="three numbers"):
        LoremCalculator(small_bec(), electric_field=(1.0, 2.0))
    atoms = cluster()
    atoms.calc = calc
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError, match="APT head"):
        atoms.calc.get_property("born_effective_charges", atoms)


# -- checkpoints --


def test_checkpoint_round_trips_the_kind(tmp_path, model):
    from lorem_torch.checkpoint import model_from_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "bec.pt", model)
    loaded = model_from_checkpoint(tmp_path / "bec.pt")
    assert isinstance(loaded, LoremBEC)
    atoms = cluster()
    torch.testing.assert_close(
        bec_outputs(loaded, [atoms])["apt"], bec_outputs(model, [atoms])["apt"]
    )


# -- parity with lorem-jax --

BEC_FIXTURES = sorted((FIXTURES / "jax_bec").glob("*.npz"))


def load_fixture(path):
    data = np.load(path)
    hyperparameters = json.loads(str(data["hyperparameters"]))
    params = {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
    structures = sorted({k.split(":")[0] for k in data.files if k.startswith("s")})
    return data, hyperparameters, params, structures


def test_bec_fixtures_cover_periodic_and_not_and_the_options():
    names = {p.stem for p in BEC_FIXTURES}
    assert {"bec_default", "bec_mp1_equivariant", "bec_mp1_scalar_lr_off"} <= names
    data, *_ = load_fixture(BEC_FIXTURES[0])
    assert {bool(data[f"s{i}:pbc"].all()) for i in range(3)} == {True, False}


@pytest.mark.parametrize("path", BEC_FIXTURES, ids=lambda p: p.stem)
def test_parity_with_lorem_jax(path):
    data, hyperparameters, params, structures = load_fixture(path)
    model = from_jax_params(params, hyperparameters, dtype=torch.float64, kind="bec")
    field = torch.tensor(data["electric_field"])
    for name in structures:
        p = name + ":"
        atoms = Atoms(
            numbers=data[p + "numbers"],
            positions=data[p + "positions"],
            cell=data[p + "cell"],
            pbc=data[p + "pbc"],
        )
        periodic = bool(atoms.pbc.all())
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
        out = BECModel(model)(**graph, compute_stress=periodic)
        with_field = BECModel(model)(**graph, electric_field=field)
        # the reference runs in float32: tolerances as in test_jax_parity.py
        assert float(out["energy"][0]) == pytest.approx(float(data[p + "energy"]), rel=1e-5)
        np.testing.assert_allclose(
            out["energies"].detach().numpy(), data[p + "atomic_energies"], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(out["forces"].numpy(), data[p + "forces"], atol=1e-4)
        if periodic:
            # float32 round-off of the reference's sum of r_i (x) dE/dr_i: up to 7.4e-5 of
            # the largest component here (our virial is checked against finite
            # differences in test_model_physics.py)
            reference = data[p + "virial_like"]
            np.testing.assert_allclose(
                out["virial"][0].numpy(), reference, atol=1e-4 * np.abs(reference).max()
            )
        # the APT, before and after the acoustic sum rule, to 5e-5 of its largest entry
        for key, ours in (("apt", out["apt"]), ("apt_raw", None)):
            reference = data[p + key]
            if ours is None:
                ours = model.forward_bec(**graph)[3]
            np.testing.assert_allclose(
                ours.detach().numpy(), reference, atol=5e-5 * np.abs(reference).max()
            )
        reference = data[p + "forces_field"]
        tolerance = 1e-4 + 5e-5 * np.abs(reference).max()
        np.testing.assert_allclose(with_field["forces"].detach().numpy(), reference, atol=tolerance)
        # the field term is exercised: it moves the forces far beyond the tolerance
        assert np.abs(reference - data[p + "forces"]).max() > 20 * tolerance


def test_unknown_jax_model_kind_is_named():
    data, hyperparameters, params, _ = load_fixture(BEC_FIXTURES[0])
    from lorem_torch.interop.jax import JaxParameterError, UnsupportedJaxOptionError

    with pytest.raises(UnsupportedJaxOptionError, match="kind"):
        from_jax_params(params, hyperparameters, kind="dipole")
    # the BEC weights do not fit a plain Lorem: the heads are left over, by name
    with pytest.raises(JaxParameterError, match="PerParticleTensorPredictor"):
        from_jax_params(params, hyperparameters, kind="lorem")


def test_export_of_a_bec_checkpoint_carries_the_apt_head(tmp_path, model):
    """lorem-export of a LoremBEC: energies, forces, Z* and field forces of the export
    equal the model's; its contract grants the electric field."""
    from lorem_torch.checkpoint import save_checkpoint
    from lorem_torch.export import read_metadata
    from lorem_torch.export.archive import export_main

    save_checkpoint(tmp_path / "bec.pt", model)
    export_main([str(tmp_path / "bec.pt"), "-o", str(tmp_path / "export.pt"), "--dtype", "float64"])
    contract = read_metadata(tmp_path / "export.pt")["contract"]
    assert contract["capabilities"]["electric_field"]
    assert "born_effective_charges" in contract["outputs"]
    atoms = triclinic_water()
    exported = LoremCalculator(str(tmp_path / "export.pt"), electric_field=FIELD)
    eager = LoremCalculator(model, electric_field=FIELD)
    np.testing.assert_allclose(exported.get_forces(atoms), eager.get_forces(atoms), atol=1e-12)
    np.testing.assert_allclose(
        exported.get_property("born_effective_charges", atoms),
        eager.get_property("born_effective_charges", atoms),
        atol=1e-12,
    )


def test_field_refused_by_the_contract_of_a_plain_export(tmp_path):
    from lorem_torch.export import export_model

    export_model(small_model(species=[1, 8]), tmp_path / "plain.pt", "float64")
    with pytest.raises(MissingAPTHeadError, match="no Born effective charge head"):
        LoremCalculator(str(tmp_path / "plain.pt"), electric_field=FIELD)


def test_import_lorem_jax_bec_checkpoint(tmp_path):
    """A LoremBEC checkpoint folder written by lorem-jax's checkpoint code, through
    lorem-import-jax; predictions of lorem-jax's own calculator on two water boxes."""
    from lorem_torch.checkpoint import model_from_checkpoint
    from lorem_torch.interop.jax import import_jax_main

    folder = FIXTURES / "jax_bec_checkpoint"
    import_jax_main([str(folder), "-o", str(tmp_path / "imported.pt")])
    model = model_from_checkpoint(tmp_path / "imported.pt", dtype=torch.float64)
    assert isinstance(model, LoremBEC) and model.species == [1, 8]
    reference = np.load(folder / "reference.npz")
    calculator = LoremCalculator(model)
    for index in range(2):
        p = f"s{index}:"
        atoms = Atoms(
            numbers=reference[p + "numbers"],
            positions=reference[p + "positions"],
            cell=reference[p + "cell"],
            pbc=True,
        )
        atoms.calc = calculator
        # float32 reference: the energy (baseline included, -4e4 eV) to 1e-6 relative
        energy = float(reference[p + "energy"])
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), reference[p + "forces"], atol=1e-4)
        bec = reference[p + "born_effective_charges"]
        assert np.abs(bec).max() > 1.0
        np.testing.assert_allclose(
            calculator.results["born_effective_charges"], bec, atol=5e-5 * np.abs(bec).max()
        )


def test_float32_born_charges_sum_to_zero_in_a_large_box(tmp_path):
    """The acoustic sum rule in float64, rounded once: in float32 a sum over N atoms and N
    subtractions of a rounded mean left sum Z* at 9e-4 for 3,072 atoms (1e-6 now), a net
    force on the whole system in a field. The model, its export and the C++ runtime."""
    from conftest import cpp_evaluate
    from lorem_torch._core import Model

    from lorem_torch.export import export_model

    model = small_bec(species=[1, 8])
    atoms = triclinic_water() * (8, 8, 8)
    apt = bec_outputs(model.to(torch.float32), [atoms], field=[FIELD])["apt"].detach()
    assert apt.dtype == torch.float32 and float(apt.abs().max()) > 1e-3
    assert float(apt.double().sum(0).abs().max()) < 1e-5
    path = tmp_path / "bec32.pt"
    export_model(model.to(torch.float64), path, "float32")
    out = cpp_evaluate(Model(str(path)), atoms, electric_field=FIELD, born_effective_charges=True)
    assert np.abs(out["born_effective_charges"].sum(axis=0)).max() < 1e-5
