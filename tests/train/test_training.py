"""Training and evaluation on a handful of frames (tiny models, a few seconds)."""

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import BUNDLED, shared_file

from lorem_torch.checkpoint import load_checkpoint, model_from_checkpoint
from lorem_torch.train import ConfigError, DataError, MissingKeyError, evaluate_checkpoint, train
from lorem_torch.train.cli import eval_main, train_main
from lorem_torch.train.data import LabelKeys, fit_baseline, load_samples

TINY = dict(num_features=8, max_degree=2, num_radial=4, num_spherical_features=2, num_species=4)
DATA = BUNDLED / "cumulene-rattled.xyz"  # = lorem-jax train-mlp_data.xyz


def config(tmp_path, name, **training):
    settings = dict(epochs=4, batch_size=4, output=str(tmp_path / name), progress=False)
    settings.update(training)
    return {
        "model": TINY,
        "data": {"train": str(DATA), "split": [0.8, 0.2], "seed": 1},
        "training": settings,
    }


def test_training_lowers_the_loss(tmp_path):
    settings = config(tmp_path, "run", epochs=8, learning_rate=3e-3, batch_size=2, ema_decay=0.0)
    history = train(settings, log=lambda m: None)["history"]
    assert len(history) == 8
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    assert history[-1]["valid_loss"] < 0.95 * history[0]["valid_loss"]
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "log.csv", "learning_curve.png", "config.yaml", "train.log"):
        assert (run / name).is_file(), name
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 9 and rows[0].startswith("epoch,")


class Crash(RuntimeError):
    pass


def crash_after_epoch(epoch):
    def log(message):
        if message.startswith(f"epoch {epoch:4d}"):
            raise Crash(message)

    return log


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight = train(config(tmp_path, "straight"), log=lambda m: None)
    with pytest.raises(Crash):
        train(config(tmp_path, "split"), log=crash_after_epoch(2))
    resumed = train(config(tmp_path, "split"), resume=True, log=lambda m: None)
    assert without_timing(resumed["history"]) == without_timing(straight["history"])
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["training"]["raw_state_dict"].items():
        assert torch.equal(value, b["training"]["raw_state_dict"][key]), key


def test_baseline_fit_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    truth = {1: -13.6, 6: -1029.5, 8: -2041.2}
    frames = []
    for _ in range(12):
        numbers = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        positions = np.arange(len(numbers))[:, None] * np.array([1.5, 0.0, 0.0])
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.info["energy"] = sum(truth[int(z)] for z in numbers) + rng.normal(0, 1e-3)
        frames.append(atoms)
    samples = load_samples(frames, 5.0, LabelKeys("energy", None))
    fitted = fit_baseline(samples)
    for z, value in truth.items():
        assert fitted[z] == pytest.approx(value, abs=5e-3)


def test_evaluation_equals_hand_computation(tmp_path):
    train(config(tmp_path, "run", epochs=1), log=lambda m: None)
    checkpoint = tmp_path / "run" / "best.pt"
    result = evaluate_checkpoint(checkpoint, str(DATA), output=str(tmp_path / "eval"))
    model = model_from_checkpoint(checkpoint, dtype=torch.float64)
    from lorem_torch import LoremCalculator

    frames = ase.io.read(DATA, ":")
    energy_errors, force_errors = [], []
    for atoms in frames:
        reference_energy, reference_forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = LoremCalculator(model)
        energy_errors.append((atoms.get_potential_energy() - reference_energy) / len(atoms))
        force_errors.append((atoms.get_forces() - reference_forces).ravel())
    energy_errors = 1000 * np.array(energy_errors)
    force_errors = 1000 * np.concatenate(force_errors)
    errors = result["errors"]["all"]
    assert errors["structures"] == len(frames)
    assert errors["energy_mae_meV_per_atom"] == pytest.approx(
        np.abs(energy_errors).mean(), rel=1e-9
    )
    assert errors["energy_rmse_meV_per_atom"] == pytest.approx(
        np.sqrt((energy_errors**2).mean()), rel=1e-9
    )
    assert errors["forces_mae_meV_per_A"] == pytest.approx(np.abs(force_errors).mean(), rel=1e-9)
    assert (tmp_path / "eval" / "parity_energy.png").is_file()
    assert (tmp_path / "eval" / "parity_forces.png").is_file()
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert stored["errors"]["all"]["structures"] == len(frames)


def test_evaluation_splits_by_config_type(tmp_path):
    frames = ase.io.read(DATA, ":6")
    for index, atoms in enumerate(frames):
        atoms.info["config_type"] = "even" if index % 2 == 0 else "odd"
    path = tmp_path / "typed.xyz"
    ase.io.write(path, frames)
    train(config(tmp_path, "run", epochs=1), log=lambda m: None)
    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", str(path))
    assert result["errors"]["even"]["structures"] == 3
    assert result["errors"]["odd"]["structures"] == 3
    assert result["errors"]["all"]["structures"] == 6


def test_command_lines(tmp_path, capsys):
    train_main(
        [
            "--train",
            str(DATA),
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "cli"),
            "--no-progress",
            "--model",
            "num_features=8",
            "max_degree=2",
            "num_radial=4",
            "num_spherical_features=2",
        ]
    )
    eval_main([str(tmp_path / "cli" / "best.pt"), str(DATA)])
    printed = capsys.readouterr().out
    assert "best validation loss" in printed and "meV/atom" in printed


def test_missing_key_lists_the_keys(tmp_path):
    frames = ase.io.read(
        shared_file("datasets/spice_dipeptides_dipolar/cace_lr_fit_spice-dipep-dipolar_val.xyz"),
        ":2",
    )
    with pytest.raises(MissingKeyError, match="has no per-atom label 'forces'.*force"):
        load_samples(frames, 5.0, LabelKeys("energy", "forces"))
    # with the right key it loads
    assert len(load_samples(frames, 5.0, LabelKeys("energy", "force"))) == 2


def test_nan_labels(tmp_path):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.8, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=np.nan, forces=np.zeros((2, 3)))
    with pytest.raises(DataError, match="NaN"):
        load_samples([atoms], 5.0, LabelKeys())


def test_bad_structures_name_their_file(tmp_path):
    """A structure that cannot be evaluated (NaN positions) is named with its file, as a
    bad label is."""
    from lorem_torch.errors import NonFiniteError

    atoms = Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)))
    with pytest.raises(NonFiniteError, match=r"^train.xyz: structure 0 \(H2\) has NaN"):
        load_samples([atoms], 5.0, LabelKeys(), source="train.xyz")


def test_empty_split(tmp_path):
    frames = ase.io.read(DATA, ":2")
    path = tmp_path / "two.xyz"
    ase.io.write(path, frames)
    settings = config(tmp_path, "run")
    settings["data"] = {"train": str(path), "split": [0.9, 0.1]}
    with pytest.raises(DataError, match="empty"):
        train(settings, log=lambda m: None)


def test_element_absent_from_training(tmp_path):
    train(config(tmp_path, "run", epochs=1), log=lambda m: None)
    water = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    water.calc = SinglePointCalculator(water, energy=-10.0, forces=np.zeros((3, 3)))
    path = tmp_path / "water.xyz"
    ase.io.write(path, [water])
    with pytest.raises(DataError, match=r"elements \[8\]"):
        evaluate_checkpoint(tmp_path / "run" / "best.pt", str(path))


def test_unknown_config_entry(tmp_path):
    settings = config(tmp_path, "run")
    settings["training"]["learnig_rate"] = 1e-3
    with pytest.raises(ConfigError, match="learnig_rate"):
        train(settings, log=lambda m: None)
