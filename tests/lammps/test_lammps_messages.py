"""What pair_style lorem says in LAMMPS about its input: masses that do not fit the
elements of pair_coeff, per-atom virials, a damaged model file. Each run's exit code
is checked."""

import re

import pytest
from conftest import small_model, triclinic_water
from lammps_run import header, run, single_point_script, write_data

from lorem_torch.export import export_model

ELEMENTS = ["O", "H"]


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_messages")
    export_model(small_model(species=[1, 8]), folder / "model.pt", "float64")
    atoms = triclinic_water()
    atoms.wrap()
    write_data(atoms, folder / "water.data", ELEMENTS)  # type 1 O (15.999), type 2 H (1.008)
    return folder


def warnings_of(output):
    return [line for line in output.splitlines() if line.startswith("WARNING")]


def lorem_mass_warnings(output):
    return [line for line in warnings_of(output) if "in pair_coeff (standard mass" in line]


def single_point(folder, tmp_path, elements, before_run=""):
    data = folder / "water.data"
    script = single_point_script(data, folder / "model.pt", elements, before_run=before_run)
    return run(tmp_path, script, check=False)


def test_right_element_order_gives_no_mass_warning(water, tmp_path):
    code, output = single_point(water, tmp_path, ["O", "H"])
    assert code == 0, output
    assert lorem_mass_warnings(output) == []


def test_swapped_elements_are_named_with_both_masses(water, tmp_path):
    code, output = single_point(water, tmp_path, ["H", "O"])
    assert code == 0, output  # a warning, not an error
    found = lorem_mass_warnings(output)
    assert len(found) == 2, output
    assert "type 1 is H in pair_coeff (standard mass 1.008) but has mass 16" in found[0]
    assert "closer to O (16)" in found[0]
    assert "type 2 is O in pair_coeff (standard mass 16) but has mass 1.008" in found[1]
    assert "closer to H (1.008)" in found[1]
    # once per type: a second run of the same input says nothing more
    script = single_point_script(water / "water.data", water / "model.pt", ["H", "O"]) + "run 0\n"
    code, output = run(tmp_path / "twice", script, check=False)
    assert code == 0 and len(lorem_mass_warnings(output)) == 2, output


def test_deuterium_gets_a_note_not_a_warning(water, tmp_path):
    code, output = single_point(water, tmp_path, ["O", "H"], before_run="mass 2 2.014")
    assert code == 0, output
    assert lorem_mass_warnings(output) == []
    assert "type 2 (H) has mass 2.014: a hydrogen isotope or repartitioned mass" in output


def test_stress_atom_defined_but_unused_runs(water, tmp_path):
    plain = single_point(water, tmp_path / "plain", ["O", "H"])
    assert plain[0] == 0, plain[1]
    before = "compute unused all stress/atom NULL\nrun 2"
    code, output = single_point(water, tmp_path / "defined", ["O", "H"], before_run=before)
    assert code == 0, output
    energy = float(re.findall(r"(?m)^RESULT (\S+)", output)[-1])
    assert energy == pytest.approx(float(re.findall(r"(?m)^RESULT (\S+)", plain[1])[-1]), abs=1e-12)


def test_stress_atom_used_is_refused(water, tmp_path):
    script = (
        header(water / "water.data", water / "model.pt", ["O", "H"])
        + """
compute per_atom all stress/atom NULL
compute total all reduce sum c_per_atom[1]
thermo_style custom step pe c_total
thermo 1
run 2
"""
    )
    code, output = run(tmp_path, script, check=False)
    assert code != 0
    assert "pair_style lorem computes no per-atom virial, but step 1 asks for it" in output
    # the setup step's values are NaN, and the plugin said so
    assert any("computes no per-atom virial" in line for line in warnings_of(output))


def test_truncated_model_is_one_line(water, tmp_path):
    data = (water / "model.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    script = single_point_script(water / "water.data", cut, ["O", "H"])
    code, output = run(tmp_path, script, check=False)
    assert code != 0
    # the log and stdout both hold it: one distinct line
    (error,) = {line for line in output.splitlines() if line.startswith("ERROR")}
    assert f"'{cut}' cannot be loaded: it is truncated or corrupt" in error
    assert "miniz" not in output and "checkpoint" not in output


TABLE = re.compile(r"pair_style lorem timings \((\d+) evaluations")
STAGES = ["short range", "communication", "k-space", "backward", "host<->device", "plugin (host)"]


def timing_rows(output, table_start):
    """{stage: (min, avg, max, percent)} of the table that starts at table_start."""
    rows = {}
    for line in output[table_start:].splitlines()[3 : 3 + len(STAGES)]:
        name, *values = [part.strip() for part in line.split("|")]
        rows[name] = tuple(float(v) for v in values)
    return rows


def test_timing_table_after_every_run(water, tmp_path):
    script = single_point_script(water / "water.data", water / "model.pt", ELEMENTS) + "run 2\n"
    code, output = run(tmp_path, script, ranks=2, check=False)
    assert code == 0, output
    tables = list(TABLE.finditer(output))
    # run 0: the setup's evaluation; run 2: setup and two steps (counted since the last table)
    assert [int(t.group(1)) for t in tables] == [1, 3], output
    for table in tables:
        rows = timing_rows(output, table.start())
        assert list(rows) == STAGES, output[table.start() :][:1500]
        for low, average, high, _ in rows.values():
            assert 0.0 <= low <= average + 1e-9 and average <= high + 1e-9
        assert sum(row[3] for row in rows.values()) == pytest.approx(100.0, abs=0.1)
        assert rows["short range"][2] > 0.0 and rows["backward"][2] > 0.0


def test_timers_off_leaves_the_table_out(water, tmp_path):
    script = single_point_script(water / "water.data", water / "model.pt", ELEMENTS)
    script = re.sub(r"(?m)^pair_style lorem", "pair_style lorem timers off", script)
    assert "timers off" in script
    code, output = run(tmp_path, script, check=False)
    assert code == 0, output
    assert "pair_style lorem: " in output and "RESULT" in output
    assert TABLE.search(output) is None, output
