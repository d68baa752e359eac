"""The long-range settings README documents, where users set them: lorem-train's model
config (YAML or --model long_range.KEY=VALUE), carried through the checkpoint into the
export and LAMMPS; LoremCalculator's dtype and device strings."""

import numpy as np
import pytest
import torch
from conftest import BUNDLED, small_model, triclinic_water

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import load_checkpoint, model_from_checkpoint
from lorem_torch.export import export_model, read_metadata
from lorem_torch.train.config import ConfigError, resolve

WATER = str(BUNDLED / "water-64.xyz")


def config_with(long_range):
    return {"data": {"train": WATER}, "model": {"long_range": long_range}}


def test_config_takes_long_range_settings():
    settings = resolve(config_with({"method": "pme", "accuracy": "1e-5"}))["model"]["long_range"]
    assert settings == {
        "method": "pme",
        "accuracy": 1e-5,
        "max_memory_gb": 8.0,
        "slab": False,
        "slab_factor": 3.0,
    }
    assert resolve(config_with("auto"))["model"]["long_range"]["method"] == "auto"
    assert resolve({"data": {"train": WATER}})["model"]["long_range"]["method"] == "ewald"


@pytest.mark.parametrize(
    "long_range, message",
    [
        ({"method": "p3m"}, "model.long_range: long_range method must be one of"),
        ({"max_memory": 4}, "model.long_range: unknown long_range settings ['max_memory']"),
        (
            {"max_memory_gb": -1},
            "model.long_range: long_range max_memory_gb must be a positive number",
        ),
        (3, "model.long_range: long_range must be a method name"),
    ],
)
def test_config_refuses_bad_long_range_settings(long_range, message):
    with pytest.raises(ConfigError) as error:
        resolve(config_with(long_range))
    assert str(error.value).startswith(message), str(error.value)


@pytest.fixture(scope="module")
def trained_pme(tmp_path_factory):
    """One epoch of a tiny model on the bundled water with --model long_range.method=pme
    (through the command line's parsing)."""
    from lorem_torch.train import cli

    folder = tmp_path_factory.mktemp("pme_run")
    argv = [
        "--train", WATER, "--epochs", "1", "--output", str(folder / "run"), "--no-progress",
        "--model", "num_features=8", "max_degree=2", "num_radial=8",
        "num_spherical_features=2", "long_range.method=pme", "long_range.accuracy=1e-5",
    ]  # fmt: skip
    cli.train_main(argv)
    return folder / "run"


def test_trained_pme_model_is_exported_with_pme(trained_pme, tmp_path):
    checkpoint = trained_pme / "best.pt"
    assert load_checkpoint(checkpoint)["model"]["long_range"]["method"] == "pme"
    model = model_from_checkpoint(checkpoint)
    assert model.long_range_method == "pme" and model.pme.accuracy == 1e-5
    export_model(checkpoint, tmp_path / "model.pt", "float64")
    contract = read_metadata(tmp_path / "model.pt")["contract"]
    assert contract["long_range"]["method"] == "pme"
    assert contract["long_range"]["accuracy"] == 1e-5


def test_trained_pme_export_in_lammps(trained_pme, tmp_path):
    from lammps_run import read_single_point, run, single_point_script, wrapped, write_data

    export_model(trained_pme / "best.pt", tmp_path / "model.pt", "float64")
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", ["O", "H"])
    _, output = run(tmp_path, single_point_script("system.data", tmp_path / "model.pt", ["O", "H"]))
    lammps = read_single_point(tmp_path, output)
    atoms.calc = LoremCalculator(trained_pme / "best.pt", dtype="float64")
    assert lammps["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    forces = lammps["forces"][np.argsort(lammps["ids"])]
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64", torch.float32, torch.float64])
def test_calculator_takes_the_commands_dtype_strings(dtype):
    atoms = triclinic_water()
    atoms.calc = LoremCalculator(small_model(), dtype=dtype)
    assert np.isfinite(atoms.get_potential_energy())
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert atoms.calc.dtype == expected


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dtype": "float16"}, "dtype must be 'float32' or 'float64'"),
        ({"dtype": "64"}, "dtype must be 'float32' or 'float64'"),
        ({"device": "float64"}, "device must be 'cpu', 'cuda' or 'cuda:N', got 'float64'"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ],
)
def test_calculator_names_the_bad_argument(options, message):
    with pytest.raises(ValueError) as error:
        LoremCalculator(small_model(), **options)
    assert str(error.value).startswith(message), str(error.value)
