"""Training and evaluating LoremBEC on APT labels (bundled water boxes, tiny models)."""

import json

import ase.io
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lorem_torch.data import atoms_to_graph
from lorem_torch.models import BECModel, LoremBEC
from lorem_torch.train import ConfigError, DataError, evaluate_checkpoint, resolve, train
from lorem_torch.train.cli import eval_main
from lorem_torch.train.data import LabelKeys, load_samples

WATER = ROOT / "examples" / "data" / "water-64.xyz"
# num_radial stays at 16: fewer, larger Bernstein functions blow up the spherical
# features, and the APT head (a polynomial of them without normalisation) with them
TINY_BEC = dict(kind="bec", num_features=8, max_degree=2, num_spherical_features=2, num_radial=16)


def bec_config(tmp_path, name, **training):
    settings = dict(epochs=2, batch_size=1, output=str(tmp_path / name), progress=False)
    settings.update(training)
    return {
        "model": dict(TINY_BEC),
        "data": {"train": str(WATER), "index": ":3", "split": [2, 1], "seed": 0},
        "training": settings,
    }


def test_bec_kind_takes_lorem_jax_lorembec_defaults():
    resolved = resolve({"model": {"kind": "LoremBEC"}, "data": {"train": "x.xyz"}})
    assert resolved["model"]["kind"] == "bec"
    assert resolved["model"]["initialize_node_features"] is False
    assert resolved["model"]["equivariant_message_passing"] is False
    assert resolved["training"]["loss_weights"]["apt"] == 1.0
    own = resolve(
        {"model": {"kind": "bec", "initialize_node_features": True}, "data": {"train": "x.xyz"}}
    )
    assert own["model"]["initialize_node_features"] is True
    plain = resolve({"data": {"train": "x.xyz"}})
    assert plain["model"]["kind"] == "lorem" and plain["training"]["loss_weights"]["apt"] == 0
    assert plain["model"]["initialize_node_features"] is True
    # a resolved configuration resolves to itself (config.yaml of a run can be reused)
    assert resolve(resolved) == resolved and resolve(plain) == plain


def test_bad_kind_and_apt_weight_without_the_head_are_named():
    with pytest.raises(ConfigError, match="model.kind 'dipole'"):
        resolve({"model": {"kind": "dipole"}, "data": {"train": "x.xyz"}})
    with pytest.raises(ConfigError, match="no APT head"):
        resolve({"data": {"train": "x.xyz"}, "training": {"loss_weights": {"apt": 1.0}}})


def test_bec_training_evaluation_and_checkpoints(tmp_path):
    result = train(bec_config(tmp_path, "run"), log=lambda m: None)
    assert len(result["history"]) == 2
    row = result["history"][-1]
    assert np.isfinite(row["valid_apt_mae"]) and row["valid_apt_mae"] > 0
    run = tmp_path / "run"
    assert "valid_apt_mae" in (run / "log.csv").read_text().splitlines()[0]
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["model"]["kind"] == "bec"
    assert load_checkpoint(run / "best.pt")["model"]["kind"] == "bec"
    model = model_from_checkpoint(run / "best.pt", dtype=torch.float64)
    assert isinstance(model, LoremBEC)

    # lorem-eval: APT errors in the table and metrics, parity plot of the components
    out = tmp_path / "eval"
    eval_main([str(run / "best.pt"), str(WATER), "-o", str(out), "--dtype", "float64"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "parity_apt.png").is_file()
    # the reported MAE is that of the model's APT against the labels, recomputed here
    frames = ase.io.read(WATER, ":")
    errors = []
    for atoms in frames:
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
        apt = BECModel(model)(**graph, compute_forces=False)["apt"].detach().numpy()
        errors.append(np.abs(apt - atoms.arrays["apt"].reshape(-1, 3, 3)).ravel())
    expected = float(np.concatenate(errors).mean())
    assert metrics["errors"]["all"]["apt_mae_e"] == pytest.approx(expected, rel=1e-9)


def test_resume_keeps_the_bec_kind(tmp_path):
    train(bec_config(tmp_path, "run", epochs=1), log=lambda m: None)
    resumed = train(bec_config(tmp_path, "run", epochs=2), resume=True, log=lambda m: None)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    assert isinstance(model_from_checkpoint(tmp_path / "run" / "last.pt"), LoremBEC)


def test_apt_label_of_the_wrong_shape_is_named():
    frames = ase.io.read(WATER, ":1")
    atoms = frames[0]
    atoms.arrays["apt"] = atoms.arrays["apt"][:, :6].copy()
    with pytest.raises(DataError, match=r"APT label 'apt' of shape \(192, 6\)"):
        load_samples(frames, 5.0, LabelKeys(apt="apt"), "water")
    atoms.info["bec"] = np.zeros(5)
    with pytest.raises(DataError, match=r"APT label 'bec' of shape \(5,\)"):
        load_samples(frames, 5.0, LabelKeys(apt="bec"), "water")
    # 9 n values in info are accepted, row-major
    atoms.info["bec"] = np.arange(9 * len(atoms), dtype=float)
    sample = load_samples(frames, 5.0, LabelKeys(apt="bec"), "water")[0]
    assert sample.apt.shape == (192, 3, 3) and sample.apt[1, 0, 2] == 11.0


def test_forces_under_a_field_are_fitted_with_the_field_term(tmp_path):
    """Labels computed under a field: a BEC model evaluated with the field reproduces
    them; a model without APT head refuses such data."""
    torch.manual_seed(0)
    model = LoremBEC(num_features=8, max_degree=2, num_spherical_features=2, num_radial=16)
    model = model.double()
    with torch.no_grad():  # an APT of order one
        for head in (model.apt_initial, model.apt_long_range):
            head.coupling.tensor.kernel.mul_(1000.0)
    save_checkpoint(tmp_path / "bec.pt", model)
    field = np.array([0.2, -0.1, 0.3])
    frames = ase.io.read(WATER, ":2")
    for atoms in frames:
        calc = LoremCalculator(model, electric_field=field)
        atoms.arrays["forces"] = calc.get_forces(atoms)
        atoms.info["energy"] = calc.get_potential_energy(atoms)
        atoms.info["electric_field"] = field
        atoms.calc = None  # the labels are the arrays and info written above
        field_term = np.abs(calc.results["born_effective_charges"] @ field).max()
    assert field_term > 0.01  # the field term is there to be missed
    path = tmp_path / "field.xyz"
    ase.io.write(path, frames)
    keys = LabelKeys(apt=None, electric_field="electric_field")
    with_field = evaluate_checkpoint(str(tmp_path / "bec.pt"), str(path), label_keys=keys)
    # (the file holds the labels to 1e-8: the write precision of extxyz)
    assert with_field["errors"]["all"]["forces_mae_meV_per_A"] < 1e-4
    ignored = LabelKeys(apt=None, electric_field=None)
    without = evaluate_checkpoint(str(tmp_path / "bec.pt"), str(path), label_keys=ignored)
    assert without["errors"]["all"]["forces_mae_meV_per_A"] > 1.0

    from lorem_torch.models import Lorem

    plain = Lorem(num_features=8, max_degree=2, num_spherical_features=2, num_radial=16)
    save_checkpoint(tmp_path / "plain.pt", plain)
    with pytest.raises(DataError, match="non-zero electric field"):
        evaluate_checkpoint(str(tmp_path / "plain.pt"), str(path), label_keys=keys)
