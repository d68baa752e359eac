"""Parity with the reference implementation (lorem-jax 0.2.0).

../shared/reference/lorem_jax_default.npz: default hyperparameters; tests/fixtures/jax:
other hyperparameters, written by tools/make_jax_fixtures.py with lorem-jax.
"""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import FIXTURES, shared_file

from lorem_torch import EnergyModel, from_jax_params
from lorem_torch.data import atoms_to_graph
from lorem_torch.interop.jax import JaxParameterError, UnsupportedJaxOptionError


def load(path):
    data = np.load(path)
    hyperparameters = json.loads(str(data["hyperparameters"]))
    params = {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
    structures = sorted({k.split(":")[0] for k in data.files if k.startswith("s")})
    return data, hyperparameters, params, structures


def run(model, data, prefix):
    atoms = Atoms(
        numbers=data[prefix + "numbers"],
        positions=data[prefix + "positions"],
        cell=data[prefix + "cell"],
        pbc=data[prefix + "pbc"],
    )
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    periodic = bool(atoms.pbc.all())
    out = EnergyModel(model)(**graph, compute_stress=periodic)
    return atoms, graph, out


def check(out, data, prefix, periodic):
    energy = float(data[prefix + "energy"])
    assert float(out["energy"][0]) == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(
        out["energies"].detach().numpy(), data[prefix + "atomic_energies"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(out["forces"].numpy(), data[prefix + "forces"], atol=1e-4)
    if periodic:
        # the reference is float32: its isotropic virial part scatters by up to 3.5e-5
        # of the largest component (our own float32 result stays within 2e-6)
        reference = data[prefix + "virial_like"]
        np.testing.assert_allclose(
            out["virial"][0].numpy(), reference, atol=5e-5 * np.abs(reference).max()
        )


def test_default_model_reference():
    data, hyperparameters, params, structures = load(shared_file("reference/lorem_jax_default.npz"))
    model = from_jax_params(params, hyperparameters, dtype=torch.float64)
    assert len(structures) == 4
    for name in structures:
        p = name + ":"
        atoms, graph, out = run(model, data, p)
        check(out, data, p, bool(atoms.pbc.all()))
        reference_charges = data[p + "charges"]
        charges = out["charges"].detach().numpy()
        # the nine spherical charges (l = 0, 1, 2 in e3x order); the file's kernel was
        # scaled by 1e5 after initialisation, which amplifies the float32 round-off of
        # the reference to 1.6e-5 of the largest charge
        scale = np.abs(reference_charges[:, 1:]).max()
        np.testing.assert_allclose(charges[:, 1:], reference_charges[:, 1:], atol=2e-5 * scale)
        # column 0 of this file is not the scalar charge: its "charges_from" names
        # MLP_2, which is the last energy head (MLP_1 is the charge MLP[2d, 1]), so it
        # holds the per-atom long-range energy term; check that it is exactly that
        assert "MLP_2" in str(data[p + "charges_from"])
        long_range_energies = model.readout(*model_state(model, graph)[1:3], out["potentials"])
        np.testing.assert_allclose(
            long_range_energies.detach().numpy(), reference_charges[:, 0], atol=1e-5
        )


def model_state(model, graph):
    vectors = (
        graph["positions"][graph["others"]]
        - graph["positions"][graph["centers"]]
        + graph["cell_shifts"] @ graph["cell"][0]
    )
    return model.encode(graph["atomic_numbers"], vectors, graph["centers"], graph["others"])


@pytest.mark.parametrize("path", sorted((FIXTURES / "jax").glob("*.npz")), ids=lambda p: p.stem)
def test_other_hyperparameters(path):
    data, hyperparameters, params, structures = load(path)
    model = from_jax_params(params, hyperparameters, dtype=torch.float64)
    largest_spherical_charge = 0.0
    for name in structures:
        p = name + ":"
        atoms, _, out = run(model, data, p)
        check(out, data, p, bool(atoms.pbc.all()))
        if hyperparameters["lr"]:
            reference = data[p + "charges"]
            np.testing.assert_allclose(
                out["charges"].detach().numpy(), reference, atol=2e-5 * np.abs(reference).max()
            )
            largest_spherical_charge = max(largest_spherical_charge, np.abs(reference[:, 1:]).max())
    if hyperparameters["lr"]:
        assert largest_spherical_charge > 0.01  # the spherical charges are exercised


def test_fixtures_cover_the_required_options():
    names = {p.stem for p in (FIXTURES / "jax").glob("*.npz")}
    assert {"mp1_equivariant", "mp2_scalar", "lr_off", "cutoff4_degree4"} <= names


def test_unsupported_options_are_named():
    data, hyperparameters, params, _ = load(FIXTURES / "jax" / "lr_off.npz")
    with pytest.raises(UnsupportedJaxOptionError, match="inputs"):
        from_jax_params(params, {**hyperparameters, "inputs": ["charge"]})
    with pytest.raises(UnsupportedJaxOptionError, match="use_attention"):
        from_jax_params(params, {**hyperparameters, "use_attention": True})
    with pytest.raises(ValueError, match="radial_basis"):
        from_jax_params(params, {**hyperparameters, "radial_basis": "basic_gaussian"})
    missing = dict(params)
    missing.pop("Dense_0/kernel")
    with pytest.raises(JaxParameterError, match="Dense_0/kernel"):
        from_jax_params(missing, hyperparameters)
    extra = {**params, "Dense_99/kernel": np.zeros((2, 2))}
    with pytest.raises(JaxParameterError, match="Dense_99"):
        from_jax_params(extra, hyperparameters)


def test_import_real_lorem_jax_checkpoint(tmp_path):
    """A checkpoint written by lorem-jax's trainer, through lorem-import-jax."""
    from lorem_torch.checkpoint import model_from_checkpoint
    from lorem_torch.interop.jax import import_jax_main

    folder = FIXTURES / "jax_checkpoint"
    output = tmp_path / "imported.pt"
    import_jax_main([str(folder), "-o", str(output)])
    model = model_from_checkpoint(output, dtype=torch.float64)
    assert model.species == [1, 6]
    reference = np.load(folder / "reference.npz")
    for index in range(3):
        p = f"s{index}:"
        atoms = Atoms(numbers=reference[p + "numbers"], positions=reference[p + "positions"])
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
        out = EnergyModel(model)(**graph)
        energy = float(reference[p + "energy"])
        assert float(out["energy"][0]) == pytest.approx(energy, rel=1e-5)
        np.testing.assert_allclose(out["forces"].numpy(), reference[p + "forces"], atol=1e-4)


def test_not_a_lorem_jax_checkpoint(tmp_path):
    from lorem_torch.interop.jax import import_jax_checkpoint

    with pytest.raises(FileNotFoundError, match="model.yaml"):
        import_jax_checkpoint(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.yaml").write_text("model:\n  lorem.LoremDipole: {}\n")
    (tmp_path / "model" / "model.msgpack").write_bytes(b"")
    with pytest.raises(UnsupportedJaxOptionError, match="LoremDipole"):
        import_jax_checkpoint(tmp_path)
