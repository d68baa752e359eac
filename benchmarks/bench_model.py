"""Energy + forces of the default LOREM model, float32, CPU: time and peak memory.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_model.py [--systems nacl64 ...]
        [--long-range ewald|pme|auto] [--accuracy 1e-6]

Each system runs in its own subprocess so that the peak resident memory (ru_maxrss)
belongs to it alone. Times are the best of --repeats, wall clock and process CPU time
(the sum over threads; steadier than wall time on a shared machine). "short range" is the same model with lr switched off; "long
range" is the difference (charges, Ewald, readout and their gradients).
"""

import argparse
import json
import math
import subprocess
import sys
import time


def build(system: str):
    import numpy as np
    from ase.build import bulk, molecule

    if system.startswith("nacl"):
        n = int(system[4:])
        reps = round((n / 8) ** (1 / 3))
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (reps, reps, reps)
        atoms.rattle(0.05, seed=0)
    elif system == "water513":
        rng = np.random.default_rng(0)
        side = (171 * 29.9) ** (1 / 3)  # 1 g/cm^3
        grid = int(np.ceil(171 ** (1 / 3)))
        spacing = side / grid
        positions, numbers = [], []
        count = 0
        water = molecule("H2O")
        for i in range(grid):
            for j in range(grid):
                for k in range(grid):
                    if count == 171:
                        break
                    rotated = water.copy()
                    rotated.rotate(rng.uniform(0, 360), rng.normal(size=3))
                    positions.extend(rotated.positions + spacing * (np.array([i, j, k]) + 0.5))
                    numbers.extend(rotated.numbers)
                    count += 1
        from ase import Atoms

        atoms = Atoms(numbers=numbers, positions=positions, cell=[side] * 3, pbc=True)
    elif system == "cluster100":
        rng = np.random.default_rng(0)
        from ase import Atoms

        points = []
        while len(points) < 100:
            p = rng.uniform(-6, 6, size=3)
            if all(np.linalg.norm(p - q) > 1.6 for q in points):
                points.append(p)
        atoms = Atoms(numbers=[6, 1, 8, 1] * 25, positions=points, pbc=False)
    else:
        raise ValueError(system)
    return atoms


def run_one(system: str, repeats: int, long_range: dict) -> dict:
    import resource

    import torch

    from lorem_torch import EnergyModel, Lorem
    from lorem_torch.data import atoms_to_graph

    torch.manual_seed(0)
    atoms = build(system)
    result = {"system": system, "atoms": len(atoms)}
    for label, lr in (("total", True), ("short_range", False)):
        model = EnergyModel(Lorem(lr=lr, long_range=long_range))
        graph = atoms_to_graph([atoms], 5.0, dtype=torch.float32)
        out = model(**graph)  # warm-up
        times, cpu_times = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(**graph)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        result[label + "_s"] = min(times)
        result[label + "_cpu_s"] = min(cpu_times)
        del out
    result["long_range_s"] = result["total_s"] - result["short_range_s"]
    result["long_range_cpu_s"] = result["total_cpu_s"] - result["short_range_cpu_s"]
    result["pairs"] = int(graph["centers"].shape[0])
    if atoms.pbc.all():
        lorem = Lorem(long_range=long_range)
        cell = graph["cell"][0]
        result["method"] = "pme" if lorem.uses_pme(cell, len(atoms)) else "ewald"
    else:
        result["method"] = "direct"
    result["peak_memory_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["nacl64", "nacl216", "nacl512", "nacl1000", "water513", "cluster100", "nacl4096"],
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-range", default="ewald", choices=["ewald", "pme", "auto"])
    parser.add_argument("--accuracy", type=float, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    long_range = {"method": args.long_range}
    if args.accuracy is not None:
        long_range["accuracy"] = args.accuracy
    if args.one:
        print(json.dumps(run_one(args.one, args.repeats, long_range)))
        return
    print(f"long_range {long_range}")
    header = (
        f"{'system':>10} {'atoms':>6} {'pairs':>8} {'method':>7} {'total s':>8} {'short s':>8} "
        f"{'long s':>8} {'peak GB':>8} {'total cpu':>9} {'short cpu':>9} {'long cpu':>9}"
    )
    print(header)
    totals = {}
    for system in args.systems:
        command = [sys.executable, __file__, "--one", system, "--repeats", str(args.repeats)]
        command += ["--long-range", args.long_range]
        if args.accuracy is not None:
            command += ["--accuracy", str(args.accuracy)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{system:>10} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{r['system']:>10} {r['atoms']:>6} {r['pairs']:>8} {r['method']:>7} "
            f"{r['total_s']:>8.3f} {r['short_range_s']:>8.3f} {r['long_range_s']:>8.3f} "
            f"{r['peak_memory_GB']:>8.2f} {r['total_cpu_s']:>9.3f} {r['short_range_cpu_s']:>9.3f} "
            f"{r['long_range_cpu_s']:>9.3f}",
            flush=True,
        )
        if system.startswith("nacl"):
            totals[r["atoms"]] = r["total_s"]
    sizes = sorted(totals)
    for small, large in zip(sizes, sizes[1:], strict=False):
        exponent = math.log(totals[large] / totals[small]) / math.log(large / small)
        print(f"cost exponent of the total from {small} to {large} atoms: {exponent:.2f}")


if __name__ == "__main__":
    main()
