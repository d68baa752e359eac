"""A molecule in a huge periodic box: the long-range cost is estimated before anything is
allocated, and what the user reads is one line saying what happens and what to do, with
the setting that exists where the user is (LoremCalculator, lorem-export, lorem-train,
pair_style), never a TorchScript traceback.

One water molecule in a 200 A box: Ewald needs 9.3 M k-vectors (~17 s per evaluation,
measured 17 to 28 s): a warning, once; PME's 400^3 mesh needs ~26 GB: refused.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from ase.build import molecule
from conftest import BUNDLED, cpp_evaluate, small_model
from lammps_run import run, single_point_script, write_data

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import save_checkpoint
from lorem_torch.errors import LongRangeTooLargeError, coded_line
from lorem_torch.export import export_model, load_exported

SPECIES = ["O", "H"]


def water_in_vacuum(length=200.0):
    atoms = molecule("H2O")
    atoms.set_cell([length] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def tiny(long_range):
    options = dict(num_features=8, num_radial=8, max_degree=2, num_spherical_features=2)
    return small_model(torch.float32, species=[1, 8], long_range=long_range, **options)


@pytest.fixture(scope="module")
def pme_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vacuum")
    model = tiny("pme")
    save_checkpoint(folder / "model.ckpt", model)
    export_model(model, folder / "model.pt")
    return model, folder / "model.ckpt", folder / "model.pt"


def assert_one_line(message, setting):
    assert message.startswith("[lorem:memory] the PME mesh 400x400x400"), message
    assert "\n" not in message and "Traceback" not in message, message
    assert "non-periodic boundaries" in message
    assert "use PME" not in message and ", PME" not in message  # it is PME already
    assert message.endswith(f"({setting})"), message


def test_calculator_memory_error_is_one_line(pme_files):
    model, checkpoint, exported = pme_files
    atoms = water_in_vacuum()
    for source in (model, checkpoint):
        atoms.calc = LoremCalculator(source)
        with pytest.raises(LongRangeTooLargeError) as error:
            atoms.get_potential_energy()
        assert_one_line(str(error.value), "LoremCalculator(..., long_range={'max_memory_gb': ...})")
    atoms.calc = LoremCalculator(exported)
    with pytest.raises(LongRangeTooLargeError) as error:
        atoms.get_potential_energy()
    assert_one_line(
        str(error.value),
        "the memory limit is fixed in the export: export again with lorem-export --max-memory-gb",
    )


def test_cpp_runtime_memory_error_is_one_line(pme_files):
    from lorem_torch._core import LoremError
    from lorem_torch._core import Model as CppModel

    _, _, exported = pme_files
    with pytest.raises(LoremError) as error:
        cpp_evaluate(CppModel(str(exported), "cpu"), water_in_vacuum())
    assert_one_line(
        str(error.value),
        "the memory limit is fixed in the export: export again with lorem-export --max-memory-gb",
    )


def test_lammps_memory_error_is_one_line(pme_files, tmp_path):
    _, _, exported = pme_files
    write_data(water_in_vacuum(), tmp_path / "system.data", SPECIES)
    code, output = run(
        tmp_path, single_point_script("system.data", exported, SPECIES), 1, check=False
    )
    assert code != 0
    lines = {line for line in output.splitlines() if "[lorem:memory]" in line}
    assert len(lines) == 1, output
    assert "Traceback" not in output and "terms.py" not in output
    assert "lorem-export --max-memory-gb" in lines.pop()


def test_lorem_train_names_its_setting(tmp_path):
    """A memory limit too small for the training cells: the advice names the config entry."""
    command = [
        str(Path(sys.executable).parent / "lorem-train"), "--train", str(BUNDLED / "water-64.xyz"),
        "--epochs", "1", "--output", str(tmp_path / "run"), "--no-progress",
        "--model", "num_features=8", "max_degree=1", "max_degree_lr=1", "num_radial=4",
        "long_range.method=pme", "long_range.max_memory_gb=1e-5",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "[lorem:memory] the PME mesh" in line
    assert line.endswith("(model.long_range.max_memory_gb)"), line


def test_slow_ewald_warns_once_before_allocating():
    """Ewald's 9.3 M k-vectors: estimated, not computed (grid_shape allocates nothing)."""
    model = tiny("ewald")
    cell = torch.tensor(water_in_vacuum().cell.array, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.ewald.grid_shape(cell)
        model.ewald.grid_shape(cell)
    (warning,) = [w for w in caught if "[lorem:" in str(w.message)]
    text = str(warning.message)
    assert text.startswith("[lorem:cost] the Ewald k-space (265x265x265 grid)"), text
    assert "9.3 M k-vectors" in text and "~17 s" in text
    assert "non-periodic boundaries" in text and "PME" in text
    # a cell of ordinary size says nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny("ewald").ewald.grid_shape(torch.eye(3) * 30.0)
    assert not [w for w in caught if "[lorem:" in str(w.message)]


def test_slow_ewald_warns_from_an_export(tmp_path):
    export_model(tiny("ewald"), tmp_path / "model.pt")
    module, _ = load_exported(tmp_path / "model.pt")
    cell = torch.tensor(water_in_vacuum().cell.array, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.grid_shape(cell)
        module.grid_shape(cell)
    assert len([w for w in caught if str(w.message).startswith("[lorem:cost]")]) == 1


def test_coded_line_skips_quoted_source():
    text = (
        "The following operation failed in the TorchScript interpreter.\n"
        '            "[lorem:memory] "  # errors.MEMORY_CODE\n'
        "lorem_torch.errors.LongRangeTooLargeError: [lorem:memory] the PME mesh is big\n"
    )
    assert coded_line(text) == "[lorem:memory] the PME mesh is big"
    assert coded_line("no code here") is None
