"""pair_style lorem in LAMMPS against the Python model: serial and MPI (mpirun from
the venv, oversubscribed), empty ranks, deleted atoms, NVE, NPT, hybrid/overlay and
the plugin's error messages."""

import re

import numpy as np
import pytest
from ase import Atoms
from conftest import evaluate, nacl, small_model, triclinic_water
from lammps_run import (
    cluster_in_box,
    compare,
    pressure_from_stress,
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
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_models")
    model = small_model(species=[1, 8, 11, 17])
    files = {}
    for dtype in ("float64", "float32"):
        files[dtype] = folder / f"model-{dtype}.pt"
        export_model(model, files[dtype], dtype)
    return model, files


def small_box():
    atoms = Atoms(
        "OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[3.1, 3.3, 3.2], pbc=True
    )
    atoms.rattle(0.02, seed=4)
    atoms.wrap()
    return atoms


CASES = {
    "orthorhombic": (lambda: wrapped(nacl(1)), "p p p", SPECIES),
    "triclinic": (lambda: wrapped(triclinic_water()), "p p p", SPECIES),
    "small_box": (small_box, "p p p", SPECIES),
    "non_periodic": (cluster_in_box, "f f f", SPECIES),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_matches_python(model_files, tmp_path, case, ranks):
    model, files = model_files
    make, boundary, species = CASES[case]
    atoms = make()
    periodic = boundary == "p p p"
    reference_atoms = atoms.copy()
    reference_atoms.pbc = periodic
    reference = evaluate(model, [reference_atoms], stress=periodic)
    write_data(atoms, tmp_path / "system.data", species)
    _, output = run(
        tmp_path, single_point_script("system.data", files["float64"], species, boundary), ranks
    )
    assert "pair_style lorem: " in output  # the plugin really loaded and read the model
    compare(read_single_point(tmp_path, output), reference, periodic, 1e-8)


def test_float32_model(model_files, tmp_path):
    model, files = model_files
    atoms = wrapped(triclinic_water())
    reference = evaluate(model, [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(tmp_path, single_point_script("system.data", files["float32"], SPECIES), 2)
    compare(read_single_point(tmp_path, output), reference, True, 1e-4)


def test_empty_rank_with_processor_grid(model_files, tmp_path):
    model, files = model_files
    atoms = nacl(1, rattle=0.05)
    atoms.positions[:, 1] = 0.4 * atoms.positions[:, 1] + 0.2  # all in the lower half along y
    atoms.wrap()
    reference = evaluate(model, [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", files["float64"], SPECIES, extra="processors 1 2 1")
    _, output = run(tmp_path, script, 2)
    assert re.search(r"Nlocal:\s+\S+ ave\s+\S+ max\s+0 min", output), "one rank should own no atoms"
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def test_non_contiguous_atom_ids(model_files, tmp_path):
    model, files = model_files
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", SPECIES)
    removed = [2, 5]  # LAMMPS ids (1-based)
    keep = [i for i in range(len(atoms)) if i + 1 not in removed]
    reference = evaluate(model, [atoms[keep]], stress=True)
    before = f"group gone id {' '.join(map(str, removed))}\ndelete_atoms group gone compress no"
    script = single_point_script("system.data", files["float64"], SPECIES, before_run=before)
    _, output = run(tmp_path, script, 2)
    result = read_single_point(tmp_path, output)
    assert list(result["ids"]) == [i + 1 for i in keep]
    result["ids"] = np.arange(1, len(keep) + 1)
    compare(result, reference, True, 1e-8)


def test_nve_energy_drift(model_files, tmp_path):
    _, files = model_files
    atoms = wrapped(nacl(1, rattle=0.05))
    write_data(atoms, tmp_path / "system.data", SPECIES)
    from lammps_run import header

    script = (
        header("system.data", files["float64"], SPECIES)
        + """
velocity all create 300 4928459 mom yes rot no dist gaussian
timestep 0.001
fix integrate all nve
thermo 10
thermo_style custom step temp pe etotal
thermo_modify format float %.12g
run 1000
"""
    )
    _, output = run(tmp_path, script, 2)
    rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output)
    total = np.array([float(r[3]) for r in rows])
    assert len(total) == 101
    drift = total.max() - total.min()
    # bound: 2 meV per atom over 1 ps of 1 fs steps
    assert drift < 2e-3 * len(atoms), drift


def test_npt_pressure_matches_python_stress(model_files, tmp_path):
    model, files = model_files
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", SPECIES)
    from lammps_run import header

    script = (
        header("system.data", files["float64"], SPECIES)
        + """
velocity all create 200 12345 mom yes rot no
timestep 0.0002
fix barostat all npt temp 200 200 0.02 tri 0 0 0.2
compute virial all pressure NULL virial
thermo_style custom step temp press vol
run 40
unfix barostat
write_data final.data
print "FINAL $(c_virial[1]:%.17g) $(c_virial[2]:%.17g) $(c_virial[3]:%.17g) $(c_virial[4]:%.17g) $(c_virial[5]:%.17g) $(c_virial[6]:%.17g)"
"""
    )
    _, output = run(tmp_path, script, 2)
    import ase.io

    final = ase.io.read(tmp_path / "final.data", format="lammps-data", atom_style="atomic")
    assert sorted(final.numbers) == sorted(atoms.numbers)  # ASE maps the masses back to elements
    final.pbc = True
    reference = evaluate(model, [final], stress=True)
    virial_pressure = np.array(re.findall(r"(?m)^FINAL (.*)$", output)[-1].split(), dtype=float)
    assert abs(final.get_volume() - atoms.get_volume()) > 1e-6  # the box did move
    np.testing.assert_allclose(
        virial_pressure, pressure_from_stress(reference["stress"][0].numpy()), rtol=1e-6, atol=1e-3
    )


@pytest.mark.parametrize("lj_cutoff", [3.0, 8.0])
@pytest.mark.parametrize("ranks", [1, 2])
def test_hybrid_overlay_with_null_type(model_files, tmp_path, ranks, lj_cutoff):
    """Enough atoms per communication swap that a mis-sized LAMMPS buffer would overflow."""
    model, files = model_files
    atoms = water_box((4, 2, 4))
    assert len(atoms) >= 180
    write_data(atoms, tmp_path / "system.data", ["O", "H"])
    oxygen_only = atoms[[i for i, z in enumerate(atoms.numbers) if z == 8]]
    reference = evaluate(model, [oxygen_only], stress=True)
    from lammps_run import plugin

    script = f"""units metal
atom_style atomic
read_data system.data
plugin load {plugin()}
pair_style hybrid/overlay lorem lj/cut {lj_cutoff}
pair_coeff * * lorem {files["float64"]} O NULL
pair_coeff * * lj/cut 0.0 1.0
run 0
print "RESULT $(pe:%.17g)"
"""
    _, output = run(tmp_path, script, ranks)
    energy = float(re.findall(r"(?m)^RESULT (.*)$", output)[-1])
    assert energy == pytest.approx(float(reference["energy"]), abs=1e-8)


@pytest.mark.parametrize("excluded, refused", [("2 2", False), ("1 1", True)])
def test_hybrid_exclusions_of_other_styles_types(model_files, tmp_path, excluded, refused):
    """Under hybrid, excluding pairs of another style's types is that style's business;
    excluding pairs of lorem's own types is refused."""
    model, files = model_files
    atoms = water_box((1, 1, 1))
    write_data(atoms, tmp_path / "system.data", ["O", "H"])
    oxygen_only = atoms[[i for i, z in enumerate(atoms.numbers) if z == 8]]
    from lammps_run import plugin

    script = f"""units metal
atom_style atomic
read_data system.data
plugin load {plugin()}
pair_style hybrid/overlay lorem lj/cut 3.0
pair_coeff * * lorem {files["float64"]} O NULL
pair_coeff * * lj/cut 0.0 1.0
neigh_modify exclude type {excluded}
run 0
print "RESULT $(pe:%.17g)"
"""
    code, output = run(tmp_path, script, 1, check=not refused)
    if refused:
        assert code != 0 and "neigh_modify exclude type 1 1 removes pairs of its atoms" in output
        return
    energy = float(re.findall(r"(?m)^RESULT (.*)$", output)[-1])
    reference = evaluate(model, [oxygen_only])
    assert energy == pytest.approx(float(reference["energy"]), abs=1e-8)


@pytest.mark.parametrize(
    "change, message",
    [
        ("model", "does not exist"),
        ("element", "element U (type 2) is not among the model's species"),
        ("units", "requires units metal or real"),
        ("newton", "requires newton pair on"),
        ("checkpoint", "is a training checkpoint, not an export: run `lorem-export"),
        ("slab", "2D slabs (periodic along x and y only) need an export made with slab"),
        ("exclude", "neigh_modify exclude type 1 2 removes pairs of its atoms"),
        ("null", "type 2 is NULL in pair_coeff, but no other pair style takes it"),
    ],
)
def test_errors_end_lammps_with_the_plugins_message(model_files, tmp_path, change, message):
    _, files = model_files
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", ["O", "H"])
    script = single_point_script("system.data", files["float64"], ["O", "H"])
    if change == "model":
        script = script.replace(str(files["float64"]), str(tmp_path / "missing.pt"))
    elif change == "element":
        script = script.replace(f"{files['float64']} O H", f"{files['float64']} O U")
    elif change == "units":
        script = script.replace("units metal", "units lj")
    elif change == "newton":
        script = script.replace("atom_style atomic", "atom_style atomic\nnewton off")
    elif change == "checkpoint":
        from lorem_torch.checkpoint import save_checkpoint

        save_checkpoint(tmp_path / "model.ckpt", model_files[0])
        script = script.replace(str(files["float64"]), str(tmp_path / "model.ckpt"))
    elif change == "slab":
        script = script.replace("boundary p p p", "boundary p p f")
    elif change == "exclude":
        script = script.replace("compute pe_atom", "neigh_modify exclude type 1 2\ncompute pe_atom")
    elif change == "null":
        script = script.replace(f"{files['float64']} O H", f"{files['float64']} O NULL")
    code, output = run(tmp_path, script, 1, check=False)
    assert code != 0
    assert message in output


def test_units_real_converts(model_files, tmp_path):
    model, files = model_files
    atoms = wrapped(triclinic_water())
    reference = evaluate(model, [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", ["O", "H"])
    script = single_point_script("system.data", files["float64"], ["O", "H"]).replace(
        "units metal", "units real"
    )
    _, output = run(tmp_path, script, 1)
    result = read_single_point(tmp_path, output)
    kcal = 23.060547830619029
    assert result["energy"] == pytest.approx(kcal * float(reference["energy"]), abs=1e-7)
    np.testing.assert_allclose(result["forces"], kcal * reference["forces"].numpy(), atol=1e-7)


BONDED_WATER = """units metal
atom_style full
boundary p p p
region box block 0 9 0 9 0 9
create_box 2 box bond/types 1 extra/bond/per/atom 2 extra/special/per/atom 4
mass 1 15.999
mass 2 1.008
create_atoms 1 single 4.5 4.5 4.5
create_atoms 2 single 5.46 4.5 4.5
create_atoms 2 single 4.26 5.43 4.5
create_bonds single/bond 1 1 2
create_bonds single/bond 1 1 3
bond_style zero
bond_coeff *
{special}
{pair}
thermo_style custom step pe
thermo_modify format float %.16g
run 0
print "RESULT $(pe:%.17g)"
"""


@pytest.mark.parametrize("special", ["", "special_bonds lj/coul 0.0 0.5 1.0"])
def test_bonds_excluded_by_special_bonds_are_refused(model_files, tmp_path, special):
    """Default special_bonds (lj/coul 0 0 0) drop bonded pairs from the neighbour list:
    the model would miss the O-H pairs of a molecule with bonds, so LAMMPS stops."""
    from lammps_run import plugin

    from lorem_torch.lammps import pair_lines

    _, files = model_files
    pair = pair_lines(files["float64"], ["O", "H"], "", plugin())
    code, output = run(tmp_path, BONDED_WATER.format(special=special, pair=pair), 1, check=False)
    assert code != 0
    assert "special_bonds weights of 0 for 1-2 pairs remove bonded neighbours" in output


@pytest.mark.parametrize(
    "special",
    ["special_bonds lj/coul 1.0 1.0 1.0", "special_bonds lj 0.0 0.0 0.0 coul 1.0 1.0 1.0"],
)
def test_bonds_with_kept_pairs_match_python(model_files, tmp_path, special):
    """Weights that keep the bonded pairs in the list (any weight but lj and coul both 0):
    the model sees every pair, whatever the weights."""
    from lammps_run import plugin

    from lorem_torch.lammps import pair_lines

    model, files = model_files
    pair = pair_lines(files["float64"], ["O", "H"], "", plugin())
    script = BONDED_WATER.format(special=special, pair=pair)
    _, output = run(tmp_path, script, 1)
    energy = float(re.findall(r"(?m)^RESULT (.*)$", output)[-1])
    atoms = Atoms(
        "OH2",
        positions=[[4.5, 4.5, 4.5], [5.46, 4.5, 4.5], [4.26, 5.43, 4.5]],
        cell=[9, 9, 9],
        pbc=True,
    )
    assert energy == pytest.approx(float(evaluate(model, [atoms])["energy"]), abs=1e-10)


def test_pair_style_given_again_takes_its_new_options(model_files, tmp_path):
    """pair_style lorem given again keeps pair_coeff (LAMMPS calls only the settings):
    options left out return to their defaults and new ones reach the loaded model."""
    model, files = model_files
    atoms = wrapped(triclinic_water())
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", files["float64"], SPECIES)
    first = script.replace("pair_style lorem", "pair_style lorem long_range pme chunk 2")
    again = '\npair_style lorem\nrun 0\nprint "AGAIN $(pe:%.17g)"\n'
    _, output = run(tmp_path, first + again, 1)
    assert "long range pme" in output and "chunks of 2 local atoms" in output
    assert output.count("the short range in chunks of") == 1  # chunk back to 0
    assert "long range ewald" in output.split("AGAIN")[0].split("RESULT")[-1]
    pme = float(re.findall(r"(?m)^RESULT (\S+)", output)[-1])
    ewald = float(re.findall(r"(?m)^AGAIN (\S+)", output)[-1])
    reference_pme = float(evaluate(model.with_long_range("pme"), [atoms])["energy"])
    reference_ewald = float(evaluate(model, [atoms])["energy"])
    assert abs(reference_pme - reference_ewald) > 1e-9  # the two methods differ
    assert pme == pytest.approx(reference_pme, abs=1e-11)
    assert ewald == pytest.approx(reference_ewald, abs=1e-11)
