"""pair_style lorem with message-passing models: ghosts one cutoff deep whose features
are refreshed from their owners before every layer (LAMMPS forward communication) and
whose gradients go back after it (reverse communication), on 1 to 4 ranks, against the
Python model; lorem-jax's own numbers through LAMMPS; what LAMMPS refuses and why."""

import json
import re

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import FIXTURES, evaluate, rewrite_metadata, small_model, triclinic_water
from lammps_run import (
    cluster_in_box,
    compare,
    header,
    read_single_point,
    run,
    single_point_script,
    water_box,
    wrapped,
    write_data,
)

from lorem_torch import from_jax_params
from lorem_torch.export import export_model

SPECIES = ["O", "H", "Na", "Cl"]
MODELS = {
    "mp1_lr_equivariant": (1, True, True),
    "mp2_lr_scalar": (2, True, False),
    "mp1_short_equivariant": (1, False, True),
    "mp2_short_scalar": (2, False, False),
}


@pytest.fixture(scope="module")
def mp_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_mp_models")
    files = {}
    for name, (layers, lr, equivariant) in MODELS.items():
        model = small_model(
            species=[1, 8, 11, 17],
            num_message_passing=layers,
            lr=lr,
            equivariant_message_passing=equivariant,
        )
        files[name] = (model, folder / f"{name}.pt")
        export_model(model, files[name][1], "float64")
    return files


def single_point(model, path, atoms, tmp_path, ranks, boundary="p p p", extra=""):
    periodic = boundary == "p p p"
    reference_atoms = atoms.copy()
    reference_atoms.pbc = periodic
    reference = evaluate(model, [reference_atoms], stress=periodic)
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(
        tmp_path, single_point_script("system.data", path, SPECIES, boundary, extra), ranks
    )
    assert "2 message-passing layers" in output or "1 message-passing layers" in output
    return read_single_point(tmp_path, output), reference, output


# (ranks, processors grid): one layout per rank count by default
LAYOUTS = [(1, ""), (2, ""), (3, "processors 3 1 1"), (4, "processors 2 2 1")]


@pytest.mark.parametrize("ranks, grid", LAYOUTS, ids=[str(r) for r, _ in LAYOUTS])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_message_passing_matches_python(mp_files, tmp_path, name, ranks, grid):
    """The triclinic water box is smaller than 2 x T x cutoff along every direction."""
    model, path = mp_files[name]
    atoms = wrapped(triclinic_water())
    result, reference, _ = single_point(model, path, atoms, tmp_path, ranks, extra=grid)
    compare(result, reference, True, 1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["processors 4 1 1", "processors 2 2 1", "processors 1 1 4"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_message_passing_processor_grids(mp_files, tmp_path, name, grid):
    model, path = mp_files[name]
    atoms = water_box((2, 1, 2))
    result, reference, _ = single_point(model, path, atoms, tmp_path, 4, extra=grid)
    compare(result, reference, True, 1e-8)


def test_message_passing_grids_and_open_boundaries(mp_files, tmp_path):
    model, path = mp_files["mp2_lr_scalar"]
    atoms = water_box((2, 1, 2))
    for grid in ("processors 4 1 1", "processors 1 1 4"):
        folder = tmp_path / grid.replace(" ", "_")
        result, reference, _ = single_point(model, path, atoms, folder, 4, extra=grid)
        compare(result, reference, True, 1e-8)
    result, reference, _ = single_point(
        model, path, cluster_in_box(), tmp_path / "open", 3, boundary="f f f"
    )
    compare(result, reference, False, 1e-8)


def test_message_passing_with_an_empty_rank(mp_files, tmp_path):
    model, path = mp_files["mp1_lr_equivariant"]
    atoms = water_box((2, 1, 1))
    atoms.positions[:, 1] = 0.4 * atoms.positions[:, 1]  # all in the lower part along y
    atoms.wrap()
    result, reference, output = single_point(
        model, path, atoms, tmp_path, 2, extra="processors 1 2 1"
    )
    assert re.search(r"Nlocal:\s+\S+ ave\s+\S+ max\s+0 min", output), "one rank should own no atoms"
    compare(result, reference, True, 1e-8)


@pytest.mark.parametrize("ranks", [1, 2])
def test_short_range_in_chunks(mp_files, tmp_path, ranks):
    """pair_style lorem ... chunk 5: each rank's short range five local atoms at a time,
    computed again in the backward; the same numbers as the Python model."""
    model, path = mp_files["mp2_lr_scalar"]
    atoms = wrapped(triclinic_water() * (2, 1, 1))
    reference = evaluate(model, [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES)
    assert script.count("pair_style lorem") == 1
    _, output = run(tmp_path, script.replace("pair_style lorem", "pair_style lorem chunk 5"), ranks)
    assert "the short range in chunks of 5 local atoms" in output
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def test_a_negative_chunk_is_refused(mp_files, tmp_path):
    _, path = mp_files["mp1_lr_equivariant"]
    write_data(wrapped(triclinic_water()), tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES)
    code, output = run(
        tmp_path, script.replace("pair_style lorem", "pair_style lorem chunk -2"), 1, check=False
    )
    assert code != 0
    assert "chunk must be a number of local atoms >= 0" in output


def test_message_passing_nve_drift(mp_files, tmp_path):
    _, path = mp_files["mp1_lr_equivariant"]
    atoms = water_box((1, 1, 1))
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = (
        header("system.data", path, SPECIES)
        + """
mass * 2.0
velocity all create 300 4928459 mom yes rot no dist gaussian
timestep 0.0005
fix integrate all nve
thermo 10
thermo_style custom step temp pe etotal
thermo_modify format float %.12g
run 400
"""
    )
    _, output = run(tmp_path, script, 2)
    rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output)
    total = np.array([float(r[3]) for r in rows])
    assert len(total) == 41
    # bound: 1 meV per atom over 0.2 ps of 0.5 fs steps (deuterated: mass 2 for all)
    assert total.max() - total.min() < 1e-3 * len(atoms), total.max() - total.min()


@pytest.mark.parametrize("fixture", ["mp1_equivariant", "mp2_scalar", "lr_off"])
def test_lorem_jax_fixtures_through_lammps(tmp_path, fixture):
    """lorem-jax's own numbers for message-passing models, reproduced by LAMMPS on 2 ranks."""
    data = np.load(FIXTURES / "jax" / f"{fixture}.npz")
    hyperparameters = json.loads(str(data["hyperparameters"]))
    params = {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
    numbers = sorted({int(z) for k in data.files if k.endswith(":numbers") for z in data[k]})
    model = from_jax_params(params, hyperparameters, dtype=torch.float64, species=numbers)
    path = tmp_path / "model.pt"
    export_model(model, path, "float64")
    from ase.data import chemical_symbols

    symbols = [chemical_symbols[z] for z in numbers]
    for index in (0, 1, 2):
        p = f"s{index}:"
        atoms = Atoms(numbers=data[p + "numbers"], positions=data[p + "positions"])
        periodic = bool(data[p + "pbc"].all())
        if periodic:
            atoms.set_cell(data[p + "cell"])
            atoms.pbc = True
            atoms.wrap()
        else:
            atoms.positions += 20.0 - atoms.positions.mean(axis=0)
            atoms.set_cell([40.0, 40.0, 40.0])
        folder = tmp_path / f"s{index}"
        folder.mkdir()
        write_data(atoms, folder / "system.data", symbols)
        boundary = "p p p" if periodic else "f f f"
        _, output = run(
            folder, single_point_script("system.data", path, symbols, boundary), ranks=2
        )
        result = read_single_point(folder, output)
        order = result["ids"] - 1
        assert result["energy"] == pytest.approx(float(data[p + "energy"]), rel=1e-5)
        np.testing.assert_allclose(
            result["energies"], data[p + "atomic_energies"][order], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(result["forces"], data[p + "forces"][order], atol=1e-4)


def test_plugin_refuses_what_the_contract_refuses(mp_files, tmp_path):
    _, path = mp_files["mp1_short_equivariant"]

    def edit(metadata):
        metadata["contract"]["capabilities"]["periodic"] = False
        metadata["contract"]["limitations"]["periodic"] = "this test model refuses periodic cells"
        return metadata

    refusing = rewrite_metadata(path, tmp_path / "refusing.pt", edit)
    write_data(wrapped(triclinic_water()), tmp_path / "system.data", SPECIES)
    code, output = run(
        tmp_path, single_point_script("system.data", refusing, SPECIES), 2, check=False
    )
    assert code != 0
    assert "this test model refuses periodic cells" in output


@pytest.mark.parametrize("ranks", [1, 2])
def test_coincident_atoms_stop_lammps(mp_files, tmp_path, ranks):
    _, path = mp_files["mp1_lr_equivariant"]
    atoms = wrapped(triclinic_water())
    atoms.positions[5] = atoms.positions[2]  # two atoms at the same place
    write_data(atoms, tmp_path / "system.data", SPECIES)
    code, output = run(
        tmp_path, single_point_script("system.data", path, SPECIES), ranks, check=False
    )
    assert code != 0
    assert re.search(
        r"atoms [36] and [36] are 0\.000000 A apart, closer than the model's minimum 0\.1 A", output
    ), output[-2000:]
