"""pair_style lorem with boundary p p f (2D slabs, exports made with long_range slab):
LAMMPS on 1, 2 and 4 ranks against the Python model in float64, Ewald and PME; the
refusal of exports without slab; energy conservation in a short NVE run."""

import re

import numpy as np
import pytest
from conftest import evaluate, small_model, water_slab
from lammps_run import compare, header, read_single_point, run, single_point_script, write_data

from lorem_torch.export import export_model

SPECIES = ["O", "H"]


@pytest.fixture(scope="module")
def slab_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_slab_models")
    models = {
        "ewald": small_model(species=[1, 8], long_range={"slab": True}),
        "pme": small_model(species=[1, 8], long_range={"method": "pme", "slab": True}),
        "ewald_mp1": small_model(species=[1, 8], long_range={"slab": True}, num_message_passing=1),
        "plain": small_model(species=[1, 8]),
    }
    files = {}
    for name, model in models.items():
        files[name] = (model, folder / f"{name}.pt")
        export_model(model, files[name][1], "float64")
    return files


def lammps_slab():
    atoms = water_slab()
    atoms.wrap()  # along x and y only: z stays in the box (boundary f)
    return atoms


CASES = [
    ("ewald", 1, ""),
    ("ewald", 2, ""),
    ("ewald", 4, "processors 2 1 2"),
    ("pme", 1, ""),
    ("pme", 2, "processors 1 1 2"),
    pytest.param("pme", 4, "processors 2 2 1", marks=pytest.mark.slow),
    ("ewald_mp1", 2, "processors 2 1 1"),
]


def _case_id(case):
    name, ranks, grid = case.values if hasattr(case, "values") else case
    return f"{name}-{ranks}{grid[10:]}"


@pytest.mark.parametrize("name, ranks, grid", CASES, ids=[_case_id(c) for c in CASES])
def test_slab_matches_python(slab_files, tmp_path, name, ranks, grid):
    model, path = slab_files[name]
    atoms = lammps_slab()
    reference = evaluate(model, [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES, boundary="p p f", extra=grid)
    _, output = run(tmp_path, script, ranks)
    assert "pair_style lorem: " in output
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


def refused_output(slab_files, folder, name, boundary):
    """LAMMPS' output for the slab with export `name` in `boundary`, which must stop."""
    _, path = slab_files[name]
    folder.mkdir(exist_ok=True)
    write_data(lammps_slab(), folder / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES, boundary=boundary)
    code, output = run(folder, script, 1, check=False)
    assert code != 0
    return output


def test_slab_is_refused_without_a_slab_export(slab_files, tmp_path):
    output = refused_output(slab_files, tmp_path / "plain", "plain", "p p f")
    assert "need an export made with slab (lorem-export --slab" in output
    # and a slab export takes only boundary p p f of the partial ones
    output = refused_output(slab_files, tmp_path / "shrink", "ewald", "p p s")
    assert "or, for a 2D slab, boundary p p f" in output
    # and a box that no export takes is not sent to lorem-export --slab
    output = refused_output(slab_files, tmp_path / "mixed", "plain", "p s p")
    assert "or, for a 2D slab, boundary p p f" in output and "--slab" not in output


@pytest.mark.slow
def test_nve_conserves_energy(slab_files, tmp_path):
    """300 steps of 0.25 fs of the water slab on 2 ranks: the total energy's drift and
    spread stay far below the kinetic energy's fluctuations."""
    _, path = slab_files["ewald"]
    write_data(lammps_slab(), tmp_path / "system.data", SPECIES)
    script = (
        header("system.data", path, SPECIES, boundary="p p f")
        + """
velocity all create 300.0 4928459 mom yes rot no dist gaussian
fix nve all nve
timestep 0.00025
thermo_style custom step pe ke etotal
thermo_modify format float %.12g
thermo 10
run 300
"""
    )
    _, output = run(tmp_path, script, 2)
    rows = re.findall(r"(?m)^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output)
    table = np.array([[float(x) for x in row] for row in rows])
    assert len(table) == 31 and table[-1, 0] == 300
    total, kinetic = table[:, 3], table[:, 2]
    drift = abs(total[-1] - total[0])
    spread = np.ptp(total)
    print(
        f"NVE slab: drift {drift:.3g} eV, spread {spread:.3g} eV, kinetic ptp {np.ptp(kinetic):.3g}"
    )
    assert spread < 1e-3 * np.ptp(kinetic) + 1e-5


@pytest.mark.parametrize("net_charge", [0.0, 0.37])
def test_point_charges_match_lammps_kspace_slab(tmp_path, net_charge):
    """Our slab Ewald (long_range/slab.py) against LAMMPS' own `kspace_style ewald` with
    `kspace_modify slab 3.0` (coul/long, units lj: Coulomb prefactor 1), neutral and
    with a net charge (the same Ballenegger terms). LAMMPS refuses the Ewald slab
    correction in triclinic boxes: an orthogonal cell here."""
    from slab_systems import kspace_method, point_charge_slab, slab_potentials_of

    positions, charges, cell = point_charge_slab()
    cell[1, 0] = 0.0
    positions[:, 0] %= cell[0, 0]
    charges = charges + net_charge
    rows = [
        f"{i + 1} 1 {q:.17g} {x:.17g} {y:.17g} {z:.17g}"
        for i, (q, (x, y, z)) in enumerate(zip(charges, positions, strict=True))
    ]
    lengths = [float(x) for x in np.diag(cell)]
    (tmp_path / "system.data").write_text(
        f"point charges\n\n{len(charges)} atoms\n1 atom types\n\n0 {lengths[0]!r} xlo xhi\n"
        f"0 {lengths[1]!r} ylo yhi\n0 {lengths[2]!r} zlo zhi\n\nMasses\n\n1 1.0\n\n"
        "Atoms # charge\n\n" + "\n".join(rows) + "\n"
    )
    script = """units lj
atom_style charge
atom_modify map yes
boundary p p f
read_data system.data
pair_style coul/long 12.0
pair_coeff * *
kspace_style ewald 1e-12
kspace_modify slab 3.0
thermo_modify norm no
dump forces all custom 1 forces.dump id fx fy fz
dump_modify forces format float %.16g sort id
run 0
print "RESULT $(pe:%.17g)"
"""
    _, output = run(tmp_path, script, 1)
    energy = float(re.findall(r"(?m)^RESULT (.*)$", output)[-1])
    lines = (tmp_path / "forces.dump").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    forces = np.array([line.split()[1:] for line in lines[start + 1 :]], dtype=float)
    _, ours, our_forces = slab_potentials_of(kspace_method("ewald"), positions, charges, cell, 3.0)
    assert energy == pytest.approx(ours[0], rel=1e-6)
    np.testing.assert_allclose(forces, our_forces[..., 0], atol=1e-6 * np.abs(forces).max())
