"""Message-passing models stage by stage: the export contract's feature exchange over
simulated ranks and in one process of the C++ runtime, against the whole model;
and refusal by the contract in every consumer."""

import numpy as np
import pytest
from ase import Atoms
from conftest import (
    RUNTIME_DEVICE,
    cluster,
    cpp_evaluate,
    evaluate,
    nacl,
    rewrite_metadata,
    small_model,
    triclinic_water,
)
from lorem_torch._core import LoremError, Model

from lorem_torch import LoremCalculator
from lorem_torch.export import (
    CapabilityError,
    evaluate_ranks,
    export_model,
    load_exported,
    split_into_ranks,
)

SPECIES = [1, 6, 8, 11, 17]
# (layers, long range, equivariant messages)
MODELS = {
    "mp1_lr_equivariant": (1, True, True),
    "mp2_lr_scalar": (2, True, False),
    "mp1_short_equivariant": (1, False, True),
    "mp2_short_scalar": (2, False, False),
}
STRUCTURES = {
    "triclinic": triclinic_water,
    "orthorhombic": lambda: nacl(1) * (2, 1, 1),
    "non_periodic": cluster,
}


@pytest.fixture(scope="module")
def mp_exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp_exports")
    out = {}
    for name, (layers, lr, equivariant) in MODELS.items():
        model = small_model(
            species=SPECIES,
            num_message_passing=layers,
            lr=lr,
            equivariant_message_passing=equivariant,
        )
        path = folder / f"{name}.pt"
        export_model(model, path, "float64")
        out[name] = (model, path)
    return out


def slab_ranks(atoms, ranks):
    periodic = bool(atoms.pbc.all())
    fractional = (
        atoms.get_scaled_positions(wrap=True)[:, 0]
        if periodic
        else np.argsort(np.argsort(atoms.positions[:, 0])) / len(atoms)
    )
    return np.minimum((fractional * ranks).astype(int), ranks - 1)


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_staged_equals_whole_over_ranks(mp_exports, model_name, structure):
    model, path = mp_exports[model_name]
    atoms = STRUCTURES[structure]()
    periodic = bool(atoms.pbc.all())
    reference = evaluate(model, [atoms], stress=periodic)
    for ranks in (1, 3):
        rank_of_atom = slab_ranks(atoms, ranks)
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        results = evaluate_ranks(path, systems, atoms.cell.array, periodic)
        energy = sum(r.energy for r in results)
        assert energy == pytest.approx(float(reference["energy"].detach()), abs=1e-10)
        forces = np.zeros((len(atoms), 3))
        for r, result in enumerate(results):
            forces[np.where(rank_of_atom == r)[0]] = result.forces.numpy()
        np.testing.assert_allclose(forces, reference["forces"].numpy(), atol=1e-10)
        if periodic:
            virial = sum(r.virial for r in results)
            np.testing.assert_allclose(virial.numpy(), reference["virial"][0].numpy(), atol=1e-10)


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_cpp_runtime_matches_python(mp_exports, model_name, structure):
    model, path = mp_exports[model_name]
    atoms = STRUCTURES[structure]()
    periodic = bool(atoms.pbc.all())
    reference = evaluate(model, [atoms], stress=periodic)
    result = cpp_evaluate(Model(str(path), RUNTIME_DEVICE), atoms)
    scale = max(1.0, abs(float(reference["energy"].detach())))
    assert result["energy"] == pytest.approx(float(reference["energy"].detach()), abs=1e-10 * scale)
    np.testing.assert_allclose(
        result["energies"], reference["energies"].detach().numpy(), atol=1e-10 * scale
    )
    np.testing.assert_allclose(result["forces"], reference["forces"].numpy(), atol=1e-10 * scale)
    if periodic:
        np.testing.assert_allclose(
            result["virial"], reference["virial"][0].numpy(), atol=1e-10 * scale
        )
    # the calculator on the export agrees too
    atoms.calc = LoremCalculator(path)
    assert atoms.get_potential_energy() == pytest.approx(result["energy"], abs=1e-10 * scale)


def test_contract_describes_the_model(mp_exports):
    _, path = mp_exports["mp2_lr_scalar"]
    contract = load_exported(path)[1]["contract"]
    assert contract["num_message_passing"] == 2
    assert contract["interaction_range"] == pytest.approx(3 * 5.0)
    # features exchanged per layer: num_features + (max_degree + 1)**2 * spherical features
    assert contract["feature_exchange"] == {"layers": 2, "width": 16 + 49 * 4}
    assert contract["species"]["symbols"] == ["H", "C", "O", "Na", "Cl"]
    assert contract["long_range"]["method"] == "ewald"
    for method in ("initial_features", "message_passing_step", "charges", "potentials"):
        assert method in contract["methods"]


def refusing_periodic(path, target):
    def edit(metadata):
        contract = metadata["contract"]
        contract["capabilities"]["periodic"] = False
        contract["limitations"]["periodic"] = "this test model refuses periodic cells"
        return metadata

    return rewrite_metadata(path, target, edit)


def test_every_consumer_refuses_what_the_contract_refuses(mp_exports, tmp_path):
    model, path = mp_exports["mp1_lr_equivariant"]
    refusing = refusing_periodic(path, tmp_path / "refusing.pt")
    atoms = triclinic_water()
    # the calculator
    atoms.calc = LoremCalculator(refusing)
    with pytest.raises(CapabilityError, match="this test model refuses periodic cells"):
        atoms.get_potential_energy()
    # the runtime over simulated ranks
    systems = split_into_ranks(atoms, 5.0, np.zeros(len(atoms), dtype=int))
    with pytest.raises(LoremError, match="this test model refuses periodic cells"):
        evaluate_ranks(refusing, systems, atoms.cell.array, True)
    # the C++ runtime
    with pytest.raises(LoremError, match="this test model refuses periodic cells"):
        cpp_evaluate(Model(str(refusing)), atoms)
    # and what it grants still works
    cluster_atoms = cluster()
    reference = evaluate(model, [cluster_atoms])
    assert cpp_evaluate(Model(str(refusing), RUNTIME_DEVICE), cluster_atoms)[
        "energy"
    ] == pytest.approx(float(reference["energy"].detach()), abs=1e-10)


def test_slabs_are_refused_without_a_slab_export(mp_exports):
    """An export made without long_range slab refuses pbc (True, True, False) with the
    contract's reason (tests/long_range/test_slab.py runs slab exports)."""
    _, path = mp_exports["mp1_short_equivariant"]
    atoms = triclinic_water()
    atoms.pbc = [True, True, False]
    atoms.calc = LoremCalculator(path)
    with pytest.raises(CapabilityError, match="2D slabs .* need an export made with slab"):
        atoms.get_potential_energy()
    with pytest.raises(LoremError, match="need an export made with slab"):
        cpp_evaluate(Model(str(path), RUNTIME_DEVICE), atoms)


def test_runtime_reads_the_contract_with_a_real_parser(mp_exports, tmp_path):
    _, path = mp_exports["mp1_short_equivariant"]
    broken = rewrite_metadata(path, tmp_path / "broken.pt", lambda m: '{"format": "lorem-torch-')
    with pytest.raises(LoremError, match="malformed JSON at character"):
        Model(str(broken))

    # strings with escapes and unicode survive (a real parser, not a pattern match)
    def escaped(metadata):
        metadata["contract"]["limitations"]["slab"] = 'quote " backslash \\ \u00e9 \U0001f600'
        return metadata

    Model(str(rewrite_metadata(path, tmp_path / "escaped.pt", escaped)))
    missing = rewrite_metadata(
        path,
        tmp_path / "missing.pt",
        lambda m: {**m, "contract": {**m["contract"], "cutoff": None}},
    )
    with pytest.raises(LoremError, match="cutoff must be a number"):
        Model(str(missing))


def test_atoms_too_close_are_refused_by_the_runtime(mp_exports):
    from lorem_torch._core import AtomsTooCloseError

    _, path = mp_exports["mp1_lr_equivariant"]
    atoms = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0.96, 0, 0]])
    with pytest.raises(AtomsTooCloseError, match="atoms 1 and 2 are 0.000000 A apart"):
        cpp_evaluate(Model(str(path), RUNTIME_DEVICE), atoms)


def test_float32_far_from_the_origin(tmp_path):
    """The runtime subtracts a common origin in float64 before casting to float32."""
    model = small_model(species=SPECIES, num_message_passing=1)
    path = tmp_path / "model32.pt"
    export_model(model, path, "float32")
    atoms = cluster()
    near = cpp_evaluate(Model(str(path), RUNTIME_DEVICE), atoms)
    far = atoms.copy()
    far.positions += 1.0e6
    shifted = cpp_evaluate(Model(str(path), RUNTIME_DEVICE), far, origin=far.positions.mean(axis=0))
    assert shifted["energy"] == pytest.approx(near["energy"], abs=1e-5)
    np.testing.assert_allclose(shifted["forces"], near["forces"], atol=1e-4)
