"""Exports written before a fix of the model's numbers run, and every consumer says what
they get wrong: the contract's "numerics" lists the fixes an export's code carries.

exact-scalar-norms: degree-0 norms without a tolerance. A float32 export without it
gives forces off by up to ~0.07 eV/A on a few atoms per thousand (tests/models/
test_float32_kinks.py); a float64 one is off only in a 1e-10 band, so it is not warned."""

import warnings

import numpy as np
import pytest
from conftest import small_model, triclinic_water
from lammps_run import run, single_point_script, write_data
from lorem_torch._core import Model

from lorem_torch import LoremCalculator
from lorem_torch.export import (
    StaleExportWarning,
    evaluate_ranks,
    export_model,
    load_exported,
    read_metadata,
    split_into_ranks,
)
from lorem_torch.vocabulary import EXACT_SCALAR_NORMS

SPECIES = [1, 8]


def without_numerics(metadata):
    contract = {k: v for k, v in metadata["contract"].items() if k != "numerics"}
    return {**metadata, "contract": contract}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from conftest import rewrite_metadata

    folder = tmp_path_factory.mktemp("stale")
    model = small_model(species=SPECIES)
    paths = {}
    for dtype in ("float32", "float64"):
        paths[dtype] = folder / f"{dtype}.pt"
        export_model(model, paths[dtype], dtype)
        paths[f"old_{dtype}"] = rewrite_metadata(
            paths[dtype], folder / f"old_{dtype}.pt", without_numerics
        )
    return paths


def test_new_exports_carry_the_fix_and_load_quietly(exports):
    for dtype in ("float32", "float64"):
        assert EXACT_SCALAR_NORMS in read_metadata(exports[dtype])["contract"]["numerics"]
        with warnings.catch_warnings():
            warnings.simplefilter("error", StaleExportWarning)
            load_exported(exports[dtype])
            LoremCalculator(exports[dtype])
            water = triclinic_water()
            systems = split_into_ranks(water, 5.0, np.zeros(len(water), dtype=int))
            evaluate_ranks(exports[dtype], systems, water.cell.array, True)
        assert Model(str(exports[dtype])).advisories == []


def test_an_old_float32_export_is_named_by_every_consumer(exports):
    path = exports["old_float32"]
    with pytest.warns(StaleExportWarning, match="float32 export written before the fix"):
        load_exported(path)
    with pytest.warns(StaleExportWarning, match="export the checkpoint again with lorem-export"):
        calculator = LoremCalculator(path)
    atoms = triclinic_water()
    atoms.calc = calculator
    assert abs(atoms.get_potential_energy()) > 0  # it runs
    (advisory,) = Model(str(path)).advisories
    assert str(path) in advisory and "lorem-export" in advisory
    systems = split_into_ranks(atoms, 5.0, np.arange(len(atoms)) % 2)
    with pytest.warns(StaleExportWarning, match="written before the fix"):
        evaluate_ranks(path, systems, atoms.cell.array, True)


def test_an_old_float64_export_is_not_warned(exports):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleExportWarning)
        load_exported(exports["old_float64"])
    assert Model(str(exports["old_float64"])).advisories == []


def test_lammps_warns_once_for_an_old_float32_export(exports, tmp_path):
    atoms = triclinic_water()
    atoms.wrap()
    write_data(atoms, tmp_path / "water.data", ["O", "H"])
    for name, expected in (("float32", 0), ("old_float32", 1)):
        script = single_point_script(tmp_path / "water.data", exports[name], ["O", "H"])
        code, output = run(tmp_path, script, ranks=2)
        assert code == 0, output
        lines = [
            line
            for line in output.splitlines()
            if line.startswith("WARNING") and "written before the fix" in line
        ]
        assert len(lines) == expected, output
