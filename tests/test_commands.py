"""The command lines as a user meets them: no lost run, one line naming the problem for
bad input, Ctrl-C and the time budget with an exact resume, lorem-eval on checkpoints,
exports and unlabelled data, --help and --version, file permissions."""

import os
import re
import signal
import stat
import warnings

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import BUNDLED, FIXTURES, ROOT, small_model

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lorem_torch.export import export_model
from lorem_torch.export.archive import export_main
from lorem_torch.interop.jax import import_jax_main
from lorem_torch.lammps import main as plugin_path_main
from lorem_torch.train import Trainer, evaluate_checkpoint, resolve
from lorem_torch.train.cli import eval_main, train_main

CUMULENE = BUNDLED / "cumulene-rattled.xyz"
WATER = BUNDLED / "water-64.xyz"
TINY = ["num_features=8", "max_degree=2", "num_radial=4", "num_spherical_features=2"]
TINY_MODEL = dict(num_features=8, max_degree=2, num_radial=4, num_spherical_features=2)


def run(main, arguments, capsys):
    """(exit code, stdout, stderr) of a command line run in this process."""
    try:
        main([str(a) for a in arguments])
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_arguments(folder, *extra, epochs=1):
    return [
        "--train",
        CUMULENE,
        "--epochs",
        epochs,
        "--output",
        folder,
        "--no-progress",
        *extra,
        "--model",
        *TINY,
    ]


def snapshot(folder):
    """Contents of every file in a folder, to show that nothing changed."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_one_line_error(code, err, program, *phrases):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{program}: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on the bundled cumulenes: (run folder, its files)."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    config = {
        "model": TINY_MODEL,
        "data": {"train": str(CUMULENE), "split": [0.8, 0.2], "seed": 1},
        "training": {"epochs": 1, "batch_size": 4, "output": str(folder), "progress": False},
    }
    Trainer(config, log=lambda m: None).run()
    return folder


# -- lost work --


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    folder = tmp_path / "run"
    code, _, err = run(train_main, train_arguments(folder), capsys)
    assert code == 0, err
    before = snapshot(folder)
    code, _, err = run(train_main, train_arguments(folder), capsys)
    assert_one_line_error(
        code, err, "lorem-train", str(folder), "best.pt", "last.pt", "log.csv", "--resume"
    )
    assert "--overwrite" in err
    assert snapshot(folder) == before
    # --overwrite replaces the run
    code, _, err = run(train_main, train_arguments(folder, "--overwrite", "--seed", "5"), capsys)
    assert code == 0, err
    assert load_checkpoint(folder / "last.pt")["metadata"]["config"]["training"]["seed"] == 5
    assert (folder / "train.log").read_text().count("training, ") == 1  # a fresh log


def test_resume_refuses_changed_settings(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run(train_main, train_arguments(folder), capsys)[0] == 0
    before = snapshot(folder)
    changed = train_arguments(folder, "--resume", "--learning-rate", "0.01")
    changed[changed.index("num_features=8")] = "num_features=16"
    code, _, err = run(train_main, changed, capsys)
    assert_one_line_error(
        code,
        err,
        "lorem-train",
        "cannot resume",
        "model.num_features 8 -> 16",
        "training.learning_rate 0.001 -> 0.01",
    )
    assert snapshot(folder) == before
    # how long to train may change: two more epochs
    code, out, err = run(train_main, train_arguments(folder, "--resume", epochs=3), capsys)
    assert code == 0, err
    assert load_checkpoint(folder / "last.pt")["training"]["epoch"] == 3
    assert "resumed from" in out


def run_config(output, epochs=2):
    return {
        "model": TINY_MODEL,
        "data": {"train": str(CUMULENE), "split": [0.8, 0.2], "seed": 1},
        "training": {"epochs": epochs, "batch_size": 4, "output": str(output), "progress": False},
    }


def straight_run(tmp_path, epochs=2):
    config = run_config(tmp_path / "straight", epochs)
    return config, Trainer(config, log=lambda m: None).run()


def assert_same_run(a_folder, b_folder):
    a, b = load_checkpoint(a_folder / "last.pt"), load_checkpoint(b_folder / "last.pt")
    for key, value in a["training"]["raw_state_dict"].items():
        assert torch.equal(value, b["training"]["raw_state_dict"][key]), key
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["training"]["history"]]
    assert strip == [
        {k: v for k, v in row.items() if k != "seconds"} for row in b["training"]["history"]
    ]


class FakeClock:
    """One second per reading."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_time_budget_is_checked_every_batch_and_resumes_exactly(tmp_path):
    config, straight = straight_run(tmp_path)
    config["training"]["output"] = str(tmp_path / "budget")
    config["training"]["time_budget"] = 2.5
    # 17 training structures in batches of 4: 5 batches per epoch; the fake clock
    # passes the budget after the third batch
    trainer = Trainer(config, log=lambda m: None, clock=FakeClock())
    result = trainer.run()
    assert "time budget" in result["stop_reason"]
    assert (result["epochs"], result["step"], result["steps_per_epoch"]) == (0, 3, 5)
    state = load_checkpoint(tmp_path / "budget" / "last.pt")["training"]
    assert (state["epoch"], state["step"]) == (0, 3)
    config["training"]["time_budget"] = None
    resumed = Trainer(config, resume=True, log=lambda m: None).run()
    assert resumed["finished"] and resumed["epochs"] == 2
    assert_same_run(tmp_path / "straight", tmp_path / "budget")


def test_time_budget_on_the_command_line(tmp_path, capsys):
    folder = tmp_path / "run"
    code, out, err = run(train_main, train_arguments(folder, "--time-budget", "1e-3"), capsys)
    assert code == 0, err
    assert "time budget of 0.001 s is spent" in out and "batch 1 of 5" in out
    assert out.strip().splitlines()[-1].strip().endswith("--resume")
    assert load_checkpoint(folder / "last.pt")["training"]["step"] == 1


def test_ctrl_c_saves_the_state_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    straight_run(tmp_path)
    import lorem_torch.train.loop as loop

    make_batch = loop.make_batch
    calls = []

    def interrupted_make_batch(*args, **kwargs):
        calls.append(1)
        # 5 training batches and 1 validation batch per epoch: the first batch of the
        # second epoch; Ctrl-C lets it finish
        if len(calls) == 7:
            signal.raise_signal(signal.SIGINT)
        return make_batch(*args, **kwargs)

    monkeypatch.setattr(loop, "make_batch", interrupted_make_batch)
    folder = tmp_path / "interrupted"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(run_config(folder)))
    arguments = [config_file]
    code, _, err = run(train_main, arguments, capsys)
    assert code == 130, err
    assert "interrupted" in err and str(folder / "last.pt") in err
    command = err.strip().splitlines()[-1].split()
    assert command[0] == "lorem-train" and command[-1] == "--resume"
    state = load_checkpoint(folder / "last.pt")["training"]
    assert (state["epoch"], state["step"]) == (1, 1)
    monkeypatch.setattr(loop, "make_batch", make_batch)
    code, _, err = run(train_main, command[1:], capsys)
    assert code == 0, err
    # the split run equals the straight one (same seed, data split and batches)
    assert_same_run(tmp_path / "straight", folder)


def test_interrupt_at_once_names_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import lorem_torch.train.loop as loop

    folder = tmp_path / "run"
    assert run(train_main, train_arguments(folder), capsys)[0] == 0

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "make_batch", second_ctrl_c)
    before = snapshot(folder)
    code, _, err = run(train_main, train_arguments(folder, "--resume", epochs=2), capsys)
    assert code == 130
    assert str(folder / "last.pt") in err and "--resume" in err
    assert snapshot(folder)["last.pt"] == before["last.pt"]


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    folder = tmp_path / "typo"
    code, _, err = run(train_main, train_arguments(folder, "--resume"), capsys)
    assert_one_line_error(code, err, "lorem-train", "nothing to resume", str(folder))
    assert "--resume-if-present" in err
    assert not folder.exists()
    # --resume-if-present starts the run there, and continues it the next time
    code, out, err = run(train_main, train_arguments(folder, "--resume-if-present"), capsys)
    assert code == 0, err
    assert f"nothing to resume in {folder}: starting afresh" in out
    arguments = train_arguments(folder, "--resume-if-present", epochs=2)
    code, out, err = run(train_main, arguments, capsys)
    assert code == 0, err
    assert "resumed from" in out
    assert load_checkpoint(folder / "last.pt")["training"]["epoch"] == 2


def test_stop_messages_agree(tmp_path, capsys):
    """The training log and the command's closing message say where it stopped in the
    same words (they once said 'after epoch 1 and batch 1 of epoch 2' and 'after epoch
    2, batch 1 of 5')."""
    folder = tmp_path / "run"
    assert run(train_main, train_arguments(folder), capsys)[0] == 0
    arguments = train_arguments(folder, "--resume", "--time-budget", "1e-3", epochs=2)
    code, out, err = run(train_main, arguments, capsys)
    assert code == 0, err
    places = re.findall(r"stopped after (.+?)(?::| \()", out)
    assert places == ["batch 1 of 5 of epoch 2"] * 2, out


# -- one line naming the problem --


@pytest.mark.parametrize(
    "content, phrases",
    [
        (None, ["config file", "does not exist"]),
        ("model: [num_features: 8\n", ["not valid YAML", "line"]),
        ("- a\n- list\n", ["must hold a mapping"]),
        ("model:\n  num_features: eight\n", ["model.num_features must be an integer", "'eight'"]),
        ("model:\n  lr: maybe\n", ["model.lr must be true or false"]),
        ("training:\n  learning_rate: fast\n", ["training.learning_rate must be a number"]),
        ("training:\n  epochs: 0\n", ["training.epochs must be at least 1"]),
        ("data:\n  split: 0.9\n", ["data.split must be a list"]),
        ("trainig:\n  epochs: 3\n", ["unknown configuration section 'trainig'"]),
    ],
    ids=[
        "missing",
        "malformed",
        "list",
        "string_for_int",
        "string_for_bool",
        "string_for_float",
        "zero_epochs",
        "bad_split",
        "typo",
    ],
)
def test_bad_config_files(tmp_path, capsys, content, phrases):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    code, _, err = run(train_main, [path, "--train", CUMULENE, "--output", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "lorem-train", *phrases)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "option, value, phrase",
    [
        ("--batch-size", "0", "training.batch_size must be at least 1, got 0"),
        ("--epochs", "0", "training.epochs must be at least 1, got 0"),
        ("--time-budget", "-5", "training.time_budget must be greater than 0"),
    ],
)
def test_bad_numbers_on_the_command_line(tmp_path, capsys, option, value, phrase):
    folder = tmp_path / "run"
    code, _, err = run(train_main, train_arguments(folder, option, value), capsys)
    assert_one_line_error(code, err, "lorem-train", phrase)
    assert not folder.exists()


def test_missing_training_file(tmp_path, capsys):
    code, _, err = run(
        train_main, ["--train", tmp_path / "nothing.xyz", "--output", tmp_path / "r"], capsys
    )
    assert_one_line_error(code, err, "lorem-train", "nothing.xyz")


def truncated(path, target):
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_export_bad_files(tmp_path, capsys, trained):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    export = tmp_path / "model.pt"
    export_model(trained / "best.pt", export)
    # a checkpoint whose hyperparameters do not describe its weights
    payload = load_checkpoint(trained / "best.pt")
    payload["model"]["num_features"] = 16
    resized = tmp_path / "resized.pt"
    torch.save(payload, resized)
    cases = [
        (tmp_path / "missing.pt", ["missing.pt", "does not exist"]),
        (text, ["not a lorem-torch checkpoint or export"]),
        (tmp_path / "empty.pt", ["is empty"]),
        (truncated(trained / "best.pt", tmp_path / "cut.pt"), ["truncated or corrupt"]),
        (export, ["is an exported model (TorchScript), not a training checkpoint"]),
        (resized, ["hyperparameters", "num_features 16", "do not match its weights"]),
        (trained, ["is a folder"]),
    ]
    (tmp_path / "empty.pt").write_bytes(b"")
    for path, phrases in cases:
        output = tmp_path / "out.pt"
        output.write_bytes(b"keep me")
        code, _, err = run(export_main, [path, "-o", output], capsys)
        assert_one_line_error(code, err, "lorem-export", *phrases)
        assert output.read_bytes() == b"keep me"


def test_export_long_range_options(tmp_path, capsys, trained):
    """lorem-export --long-range/--accuracy set the export's contract; the default is the
    checkpoint's own; bad values are one-line errors that leave no file."""
    from lorem_torch.export.archive import read_metadata

    plain, chosen = tmp_path / "plain.pt", tmp_path / "pme.pt"
    code, out, _ = run(export_main, [trained / "best.pt", "-o", plain], capsys)
    assert code == 0 and "long range ewald (accuracy 1e-06)" in out
    arguments = ["--long-range", "pme", "--accuracy", "1e-5", "--max-memory-gb", "2"]
    code, out, _ = run(export_main, [trained / "best.pt", "-o", chosen, *arguments], capsys)
    assert code == 0 and "long range pme (accuracy 1e-05)" in out
    settings = read_metadata(chosen)["contract"]["long_range"]
    assert settings["method"] == "pme" and settings["accuracy"] == 1e-5
    assert read_metadata(plain)["contract"]["long_range"]["method"] == "ewald"
    for bad, phrase in ((["--accuracy", "2"], "accuracy"), (["--max-memory-gb", "-1"], "memory")):
        output = tmp_path / "bad.pt"
        code, _, err = run(export_main, [trained / "best.pt", "-o", output, *bad], capsys)
        assert_one_line_error(code, err, "lorem-export", phrase)
        assert not output.exists()


def test_calculator_on_a_truncated_checkpoint(tmp_path, trained):
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LoremCalculator(truncated(trained / "best.pt", tmp_path / "cut.pt"))
    export = tmp_path / "model.pt"
    export_model(trained / "best.pt", export)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LoremCalculator(truncated(export, tmp_path / "cut-export.pt"))


def test_import_jax_prints_no_torch_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy arrays that are not writable, and the like
        import_jax_main([str(FIXTURES / "jax_checkpoint"), "-o", str(tmp_path / "m.ckpt")])
    assert (tmp_path / "m.ckpt").is_file()


def test_eval_index_out_of_range(capsys, trained):
    frames = len(ase.io.read(CUMULENE, ":"))
    code, _, err = run(eval_main, [trained / "best.pt", CUMULENE, "--index", "99"], capsys)
    assert_one_line_error(
        code, err, "lorem-eval", "index 99 is out of range", f"holds {frames} frames"
    )


def test_import_jax_bad_folder(tmp_path, capsys):
    code, _, err = run(import_jax_main, [tmp_path, "-o", tmp_path / "x.pt"], capsys)
    assert_one_line_error(code, err, "lorem-import-jax", "model.yaml is missing")


# -- lorem-eval --


def relabelled(frames, energy_key, forces_key):
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info[energy_key] = energy
        atoms.arrays[forces_key] = forces
    return frames


def test_eval_reuses_the_label_keys_of_the_training(tmp_path, capsys):
    data = tmp_path / "ref.xyz"
    ase.io.write(data, relabelled(ase.io.read(CUMULENE, ":"), "REF_energy", "REF_forces"))
    folder = tmp_path / "run"
    arguments = train_arguments(folder, "--energy-key", "REF_energy", "--forces-key", "REF_forces")
    arguments[arguments.index("--train") + 1] = data
    assert run(train_main, arguments, capsys)[0] == 0
    code, out, err = run(eval_main, [folder / "best.pt", data], capsys)
    assert code == 0, err
    assert "meV/atom" in out
    plain = run(
        eval_main,
        [folder / "best.pt", CUMULENE, "--energy-key", "energy", "--forces-key", "forces"],
        capsys,
    )
    # same labels under other names: the same table
    assert plain[1] == out


def test_eval_on_an_export_equals_eval_on_the_checkpoint(tmp_path, trained):
    export = tmp_path / "model.pt"
    export_model(trained / "best.pt", export, "float64")
    from_checkpoint = evaluate_checkpoint(trained / "best.pt", str(CUMULENE))
    from_export = evaluate_checkpoint(export, str(CUMULENE))
    for key, value in from_checkpoint["errors"]["all"].items():
        assert from_export["errors"]["all"][key] == pytest.approx(value, rel=1e-9), key
    with pytest.raises(ValueError, match="exported in float64"):
        evaluate_checkpoint(export, str(CUMULENE), dtype=torch.float32)


def water_frames(count):
    return ase.io.read(WATER, f":{count}")


@pytest.fixture(scope="module")
def water_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("water")
    model = small_model(species=[1, 8], **TINY_MODEL)
    save_checkpoint(folder / "water.pt", model)
    return folder / "water.pt", model


def test_eval_stress_errors(tmp_path, capsys, water_model):
    """Stress labels off the model's own stress by 2 meV/A^3 in every component."""
    checkpoint, model = water_model
    frames = water_frames(2)
    for atoms in frames:
        atoms.calc = LoremCalculator(model)
        stress = atoms.get_stress() + 2e-3
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
        )
        atoms.info["REF_stress"] = stress
    data = tmp_path / "stressed.xyz"
    ase.io.write(data, frames)
    code, out, err = run(eval_main, [checkpoint, data, "--stress-key", "REF_stress"], capsys)
    assert code == 0, err
    assert "S MAE" in out
    result = evaluate_checkpoint(checkpoint, str(data), label_keys={"stress": "REF_stress"})
    errors = result["errors"]["all"]
    assert errors["stress_mae_meV_per_A3"] == pytest.approx(2.0, abs=1e-6)
    assert errors["energy_mae_meV_per_atom"] == pytest.approx(0.0, abs=1e-9)


def test_eval_predicts_on_unlabelled_data(tmp_path, capsys, monkeypatch, water_model):
    checkpoint, model = water_model
    frames = water_frames(2)
    cluster = ase.io.read(CUMULENE, "0")
    cluster.numbers[cluster.numbers == 6] = 8  # species the water model knows
    frames.append(cluster)
    for atoms in frames:
        atoms.calc = None
        for key in list(atoms.arrays):
            if key not in ("numbers", "positions"):
                del atoms.arrays[key]
        atoms.info.clear()
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "unlabelled.xyz"
    ase.io.write(data, frames)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(eval_main, [checkpoint, data], capsys)
    assert code == 0, err
    assert "has no 'energy' labels: predicted 3 frames" in out
    # next to the input, not in the working folder
    written = tmp_path / "data" / "unlabelled.predictions.xyz"
    assert str(written) in out and list(elsewhere.iterdir()) == []
    predicted = ase.io.read(written, ":")
    for atoms, original in zip(predicted, frames, strict=True):
        original.calc = LoremCalculator(model)
        assert atoms.info["lorem_energy"] == pytest.approx(
            original.get_potential_energy(), abs=1e-8
        )
        np.testing.assert_allclose(atoms.arrays["lorem_forces"], original.get_forces(), atol=1e-8)
        if original.pbc.all():
            np.testing.assert_allclose(atoms.info["lorem_stress"], original.get_stress(), atol=1e-9)
        else:
            assert "lorem_stress" not in atoms.info
    # a second run does not write over the first predictions
    before = written.read_bytes()
    code, _, err = run(eval_main, [checkpoint, data], capsys)
    assert_one_line_error(code, err, "lorem-eval", "exists already", "--output")
    assert written.read_bytes() == before
    # with --output it goes there
    code, _, err = run(eval_main, [checkpoint, data, "-o", tmp_path / "out"], capsys)
    assert code == 0 and (tmp_path / "out" / "predictions.xyz").is_file()


def test_eval_with_an_explicit_missing_key_is_an_error(capsys, water_model):
    checkpoint, _ = water_model
    code, _, err = run(eval_main, [checkpoint, WATER, "--energy-key", "REF_energy"], capsys)
    assert_one_line_error(code, err, "lorem-eval", "no label 'REF_energy'", "it has")


# -- help, version, example config, permissions --


def test_help_shows_defaults_and_model_options(capsys):
    code, out, _ = run(train_main, ["--help"], capsys)
    assert code == 0
    for text in ("num_features: 128", "max_degree: 6", "cutoff: 5.0", "(default: 100)"):
        assert text in out, text
    assert "--overwrite" in out and "--resume" in out
    code, out, _ = run(eval_main, ["--help"], capsys)
    assert code == 0 and "--stress-key" in out and "(default: 4)" in out
    code, out, _ = run(export_main, ["--help"], capsys)
    assert code == 0 and "(default: float32)" in out
    assert "None" not in out


@pytest.mark.parametrize(
    "main, program",
    [
        (train_main, "lorem-train"),
        (eval_main, "lorem-eval"),
        (export_main, "lorem-export"),
        (import_jax_main, "lorem-import-jax"),
        (plugin_path_main, "lorem-plugin-path"),
    ],
)
def test_version(capsys, main, program):
    from lorem_torch import __version__

    code, out, _ = run(main, ["--version"], capsys)
    assert code == 0
    assert out.strip() == f"{program}: lorem-torch {__version__} (torch {torch.__version__})"


def test_example_config_resolves():
    path = ROOT / "examples" / "configs" / "water.yaml"
    config = resolve(yaml.safe_load(path.read_text()))
    assert (ROOT / config["data"]["train"]).is_file()
    assert config["training"]["learning_rate"] == 3e-3
    from lorem_torch import Lorem

    options = dict(config["model"])
    assert options.pop("kind") == "lorem"
    model = Lorem(**options)
    assert model.hyperparameters["num_features"] == 32


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_respect_the_umask(tmp_path, umask, mode, trained):
    previous = os.umask(umask)
    try:
        model = small_model(species=[1, 6], **TINY_MODEL)
        save_checkpoint(tmp_path / "model.ckpt", model)
        export_model(model, tmp_path / "model.pt")
        evaluate_checkpoint(trained / "best.pt", str(CUMULENE), output=str(tmp_path / "eval"))
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "model.ckpt",
        tmp_path / "model.pt",
        tmp_path / "eval" / "metrics.json",
        tmp_path / "eval" / "predictions.xyz",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
