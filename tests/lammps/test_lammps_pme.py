"""pair_style lorem with particle-mesh Ewald across MPI ranks: the mesh distributed the
way LAMMPS distributes atoms (owned parts of the mesh following the domains, bricks
around each rank's atoms, pencils for the FFT; cpp/src/mesh.cpp), against Python's
single-process PME; the method chosen in the export or on the pair_style line."""

import re

import numpy as np
import pytest
from conftest import nacl, small_model, triclinic_water
from lammps_run import (
    DEVICE,
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

from lorem_torch.export import export_model

SPECIES = ["O", "H", "Na", "Cl"]


@pytest.fixture(scope="module")
def pme_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_pme_models")
    models = {
        "pme": small_model(species=[1, 8, 11, 17], long_range={"method": "pme"}),
        "pme_mp1": small_model(
            species=[1, 8, 11, 17], long_range={"method": "pme"}, num_message_passing=1
        ),
        "ewald": small_model(species=[1, 8, 11, 17]),
    }
    files = {}
    for name, model in models.items():
        files[name] = (model, folder / f"{name}.pt")
        export_model(model, files[name][1], "float64")
    files["pme_float32"] = (models["pme"], folder / "pme_float32.pt")
    export_model(models["pme"], files["pme_float32"][1], "float32")
    return files


def python_reference(model, atoms, method):
    from conftest import evaluate

    return evaluate(model.with_long_range(method), [atoms], stress=True)


LAYOUTS = [
    (1, ""),
    (2, ""),
    (3, "processors 3 1 1"),
    (4, "processors 4 1 1"),
    (4, "processors 2 2 1"),
    (4, "processors 1 1 4"),
]


# (export, tolerance, ranks, processor grid): float64 on every layout; float32, whose mesh
# crosses ranks in float32 (half the bytes), to float32 round-off on 1, 2 and 4 ranks
CASES = [("pme", 1e-8, ranks, grid) for ranks, grid in LAYOUTS] + [
    ("pme_float32", 1e-4, ranks, grid)
    for ranks, grid in [(1, ""), (2, ""), (4, "processors 2 2 1")]
]


@pytest.mark.parametrize(
    "export, tolerance, ranks, grid", CASES, ids=[f"{e}-{r}{g[10:]}" for e, _, r, g in CASES]
)
def test_pme_matches_python(pme_files, tmp_path, export, tolerance, ranks, grid):
    model, path = pme_files[export]
    atoms = wrapped(nacl(2, rattle=0.1))
    reference = python_reference(model, atoms, "pme")
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(tmp_path, single_point_script("system.data", path, SPECIES, extra=grid), ranks)
    assert "long range pme" in output
    compare(read_single_point(tmp_path, output), reference, True, tolerance)


def test_pme_with_tiled_domains(pme_files, tmp_path):
    """The atoms visit the mesh by their positions, so LAMMPS' tiled decompositions
    (comm_style tiled, domains cut by recursive bisection) run PME as a grid does."""
    model, path = pme_files["pme"]
    atoms = wrapped(nacl(2, rattle=0.1))
    reference = python_reference(model, atoms, "pme")
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script(
        "system.data", path, SPECIES, extra="comm_style tiled", before_run="balance 1.0 rcb"
    )
    _, output = run(tmp_path, script, 3)
    assert "long range pme" in output
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def test_timing_table_has_pme_parts(pme_files, tmp_path):
    """The table at the end of a run splits PME's spread, convolution and interpolation
    (forward and backward, communication included), which lie within the k-space,
    backward and communication rows."""
    _, path = pme_files["pme"]
    write_data(wrapped(nacl(2, rattle=0.1)), tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES) + "run 2\n"
    _, output = run(tmp_path, script, 2)
    table = output[output.rindex("pair_style lorem timings (3 evaluations") :]
    rows = {}
    for line in table.splitlines()[3:13]:
        if "|" in line:
            name, *values = [part.strip() for part in line.split("|")]
            rows[name] = [float(v) for v in values]
    assert "PME's parts" in table, table[:1500]
    parts = ["spread", "convolve", "interpolate"]
    assert all(rows[name][1] > 0.0 for name in parts), rows
    within = sum(rows[name][1] for name in ("communication", "k-space", "backward"))
    assert sum(rows[name][1] for name in parts) <= within * 1.05 + 1e-3, rows
    assert re.search(r"(?m)^host<->device", table)


def test_float32_mesh_sends_half_the_bytes(pme_files, tmp_path, monkeypatch):
    """The runtime's counter (LOREM_TIMING) on 2 ranks: the same model exported in
    float32 sends about half the bytes of its float64 export, the mesh being most of it."""
    monkeypatch.setenv("LOREM_TIMING", "1")
    atoms = wrapped(nacl(2, rattle=0.1))
    write_data(atoms, tmp_path / "system.data", SPECIES)
    sent = {}
    for name in ("pme", "pme_float32"):
        folder = tmp_path / name
        folder.mkdir()
        write_data(atoms, folder / "system.data", SPECIES)
        _, output = run(folder, single_point_script("system.data", pme_files[name][1], SPECIES), 2)
        found = re.search(r"([0-9.e+]+) bytes sent per call", output)
        assert found, output[-2000:]
        sent[name] = float(found.group(1))
    assert 0.45 * sent["pme"] < sent["pme_float32"] < 0.75 * sent["pme"], sent
    # one rank: its ghosts are its own periodic images, nothing crosses a rank
    _, output = run(tmp_path, single_point_script("system.data", pme_files["pme"][1], SPECIES), 1)
    assert re.search(r"\b0 bytes sent per call", output), output[-2000:]


@pytest.mark.parametrize("ranks", [1, 3])
def test_pme_triclinic_message_passing(pme_files, tmp_path, ranks):
    model, path = pme_files["pme_mp1"]
    atoms = water_box((2, 1, 2))
    reference = python_reference(model, atoms, "pme")
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(tmp_path, single_point_script("system.data", path, SPECIES), ranks)
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def test_pme_with_an_empty_rank(pme_files, tmp_path):
    model, path = pme_files["pme"]
    atoms = nacl(1, rattle=0.05)
    atoms.positions[:, 1] = 0.4 * atoms.positions[:, 1] + 0.2
    atoms.wrap()
    reference = python_reference(model, atoms, "pme")
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES, extra="processors 1 2 1")
    _, output = run(tmp_path, script, 2)
    assert re.search(r"Nlocal:\s+\S+ ave\s+\S+ max\s+0 min", output), "one rank should own no atoms"
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


@pytest.mark.parametrize("method", ["pme", "auto", "ewald"])
def test_method_on_the_pair_style_line(pme_files, tmp_path, method):
    """An export carries Ewald and PME: `pair_style lorem long_range M` picks one."""
    model, path = pme_files["ewald"]
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES).replace(
        "pair_style lorem", f"pair_style lorem long_range {method}"
    )
    _, output = run(tmp_path, script, 2)
    assert f"long range {method}" in output
    # auto takes Ewald for so few atoms (the measured crossover is near a thousand)
    reference = python_reference(model, atoms, "pme" if method == "pme" else "ewald")
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def test_pme_nve_drift(pme_files, tmp_path):
    _, path = pme_files["pme"]
    atoms = wrapped(nacl(1, rattle=0.05))
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = (
        header("system.data", path, SPECIES)
        + """
velocity all create 300 4928459 mom yes rot no dist gaussian
timestep 0.001
fix integrate all nve
thermo 10
thermo_style custom step temp pe etotal
thermo_modify format float %.12g
run 300
"""
    )
    _, output = run(tmp_path, script, 2)
    rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output)
    total = np.array([float(r[3]) for r in rows])
    assert len(total) == 31
    # the same bound as Ewald's NVE test (2 meV per atom)
    assert total.max() - total.min() < 2e-3 * len(atoms), total.max() - total.min()


@pytest.mark.parametrize(
    "line, message",
    [
        ("pair_style lorem accuracy 1e-4", "accuracy 0.0001 differs from the model's 1e-06"),
        ("pair_style lorem accuracy 0.5", "accuracy must lie in (0, 0.01]"),
        ("pair_style lorem long_range p3m", "long_range must be one of ewald, pme, auto"),
        ("pair_style lorem gpu_aware maybe", "gpu_aware must be auto, on or off, not 'maybe'"),
    ],
)
def test_bad_long_range_settings(pme_files, tmp_path, line, message):
    _, path = pme_files["pme"]
    write_data(wrapped(triclinic_water()), tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES).replace("pair_style lorem", line)
    code, output = run(tmp_path, script, 1, check=False)
    assert code != 0
    assert message in output


def test_pme_refused_for_open_boundaries(pme_files, tmp_path):
    _, path = pme_files["pme"]
    write_data(cluster_in_box(), tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES, "f f f").replace(
        "pair_style lorem", "pair_style lorem long_range pme"
    )
    code, output = run(tmp_path, script, 1, check=False)
    assert code != 0
    assert "long_range pme needs a periodic box" in output


@pytest.mark.parametrize("setting", ["gpu_aware off", "gpu_aware on"])
def test_gpu_aware_setting(pme_files, tmp_path, setting):
    """gpu_aware picks where a GPU model's exchanges between ranks put their buffers: on a
    CPU it changes nothing (the numbers are the Python model's); on CUDA, off stages
    through pinned host memory and says so, and on is refused by name when the MPI is not
    CUDA-aware (the PyPI MPICH is not) and passes GPU buffers when it is."""
    model, path = pme_files["pme"]
    atoms = wrapped(nacl(2, rattle=0.1))
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES).replace(
        "pair_style lorem", f"pair_style lorem {setting}"
    )
    code, output = run(tmp_path, script, 2, check=False)
    if DEVICE != "cpu" and setting == "gpu_aware off":
        assert "gpu_aware off: exchanges between ranks stage through pinned host memory" in output
    if DEVICE != "cpu" and setting == "gpu_aware on" and "not CUDA-aware" in output:
        assert code != 0 and "use gpu_aware auto" in output
        return
    assert code == 0, output[-2000:]
    compare(read_single_point(tmp_path, output), python_reference(model, atoms, "pme"), True, 1e-8)
