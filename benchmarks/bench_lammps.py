"""LAMMPS pair_style lorem: timesteps per second and microseconds per atom-step for
water boxes on 1 and 2 ranks, the split into short range / long range / backward /
communication (from the runtime's own timers), and the same model's step in Python.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lammps.py [--replicas 1 2 4]

The model is the default LOREM (float32) with random weights; the box is the last
frame of examples/data/water-64.xyz (192 atoms) replicated n x n x n.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def python_step(model, atoms, repeats=2) -> float:
    from lorem_torch import EnergyModel
    from lorem_torch.data import atoms_to_graph

    energy_model = EnergyModel(model)
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float32)
    energy_model(**graph, compute_stress=True)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float32)  # a step rebuilds it
        energy_model(**graph, compute_stress=True)
        best = min(best, time.perf_counter() - start)
    return best


def lammps_run(folder: Path, model_file: Path, atoms, ranks: int, steps: int) -> dict:
    from lorem_torch.lammps import plugin_path

    ase.io.write(
        folder / "water.data", atoms, format="lammps-data", specorder=["O", "H"], masses=True
    )
    (folder / "in.bench").write_text(
        f"""units metal
atom_style atomic
read_data water.data
plugin load {plugin_path()}
pair_style lorem
pair_coeff * * {model_file} O H
velocity all create 300 1 mom yes rot no
timestep 0.0005
fix integrate all nve
thermo {steps}
run 1
run {steps}
"""
    )
    command = [str(BIN / "lmp"), "-in", "in.bench"]
    if ranks > 1:
        command = [str(BIN / "mpirun"), "-np", str(ranks)] + command
    env = dict(os.environ, OMP_NUM_THREADS="1", LOREM_TIMING="1")
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)
    seconds, count = float(loops[-1][0]), int(loops[-1][1])
    timing = re.findall(
        r"calls, s\): short range (\S+) long range (\S+) backward (\S+) communication (\S+)",
        proc.stdout,
    )
    parts = [float(x) for x in timing[-1]] if timing else [float("nan")] * 4
    total = sum(parts)
    return {
        "steps_per_second": count / seconds,
        "us_per_atom_step": seconds / count / len(atoms) * 1e6,
        "fractions": [p / total for p in parts],
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from lorem_torch import Lorem
    from lorem_torch.export import export_model

    torch.manual_seed(0)
    model = Lorem(species=[1, 8])
    base = ase.io.read(ROOT / "examples/data/water-64.xyz", "-1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_file = folder / "model.pt"
        export_model(model, model_file, "float32")
        print(
            f"{'atoms':>6} {'ranks':>5} {'steps/s':>8} {'us/atom-step':>13} "
            f"{'short':>6} {'long':>6} {'backw':>6} {'comm':>6} {'python s/step':>14} {'lammps/python':>13}"
        )
        for n in args.replicas:
            atoms = base * (n, n, n)
            steps = max(2, args.steps // n**3)
            python_seconds = python_step(model, atoms)
            for ranks in args.ranks:
                r = lammps_run(folder, model_file, atoms, ranks, steps)
                f = r["fractions"]
                ratio = (1 / r["steps_per_second"]) / python_seconds
                print(
                    f"{len(atoms):>6} {ranks:>5} {r['steps_per_second']:>8.3f} {r['us_per_atom_step']:>13.1f} "
                    f"{f[0]:>6.2f} {f[1]:>6.2f} {f[2]:>6.2f} {f[3]:>6.2f} {python_seconds:>14.3f} {ratio:>13.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
