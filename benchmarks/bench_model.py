"""Energy + forces of the default LOREM model, float32, CPU: time and peak memory.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_model.py [--systems nacl64 ...]
        [--long-range ewald|pme|auto] [--accuracy 1e-6] [--eager] [--short-range-only]

--eager runs every system a second time on the eager reference path of the initial
block (Lorem.use_fused_operators(False)), side by side with the fused default.
--short-range-only skips the lr model, so that the peak memory is the short range's;
with water513 and water4104 both run, the growth of the peak per atom between them is
printed.

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
    elif system.startswith("water") and system != "water513":
        # water513 replicated: water4104 = 2 x 2 x 2
        copies = round((int(system[5:]) / 513) ** (1 / 3))
        if 513 * copies**3 != int(system[5:]):
            raise ValueError(f"{system}: water sizes are 513 times a cube")
        atoms = build("water513") * (copies, copies, copies)
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


def run_one(
    system: str, repeats: int, long_range: dict, fused: bool, short_range_only: bool
) -> dict:
    import resource

    import torch

    from lorem_torch import EnergyModel, Lorem
    from lorem_torch.data import atoms_to_graph

    torch.manual_seed(0)
    atoms = build(system)
    result = {"system": system, "atoms": len(atoms), "path": "fused" if fused else "eager"}
    variants = (
        [("short_range", False)] if short_range_only else [("total", True), ("short_range", False)]
    )
    for label, lr in variants:
        model = EnergyModel(Lorem(lr=lr, long_range=long_range).use_fused_operators(fused))
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
    if short_range_only:
        for key in ("total_s", "total_cpu_s"):
            result[key] = math.nan
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
    parser.add_argument(
        "--eager", action="store_true", help="also run the eager initial block, side by side"
    )
    parser.add_argument(
        "--short-range-only", action="store_true", help="skip the lr model (peak = short range)"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument(
        "--path", default="fused", choices=["fused", "eager"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    long_range = {"method": args.long_range}
    if args.accuracy is not None:
        long_range["accuracy"] = args.accuracy
    if args.one:
        result = run_one(
            args.one, args.repeats, long_range, args.path == "fused", args.short_range_only
        )
        print(json.dumps(result))
        return
    print(f"long_range {long_range}")
    paths = ["fused", "eager"] if args.eager else ["fused"]
    header = (
        f"{'system':>10} {'path':>6} {'atoms':>6} {'pairs':>8} {'method':>7} {'total s':>8} {'short s':>8} "
        f"{'long s':>8} {'peak GB':>8} {'total cpu':>9} {'short cpu':>9} {'long cpu':>9}"
    )
    print(header)
    totals = {}
    peaks = {}
    for system in args.systems:
        for path in paths:
            command = [sys.executable, __file__, "--one", system, "--repeats", str(args.repeats)]
            command += ["--long-range", args.long_range, "--path", path]
            if args.accuracy is not None:
                command += ["--accuracy", str(args.accuracy)]
            if args.short_range_only:
                command += ["--short-range-only"]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{system:>10} {path:>6} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            peaks[(system, path)] = (r["atoms"], r["peak_memory_GB"])
            print(
                f"{r['system']:>10} {path:>6} {r['atoms']:>6} {r['pairs']:>8} {r['method']:>7} "
                f"{r['total_s']:>8.3f} {r['short_range_s']:>8.3f} {r['long_range_s']:>8.3f} "
                f"{r['peak_memory_GB']:>8.2f} {r['total_cpu_s']:>9.3f} {r['short_range_cpu_s']:>9.3f} "
                f"{r['long_range_cpu_s']:>9.3f}",
                flush=True,
            )
            if system.startswith("nacl") and path == "fused" and not args.short_range_only:
                totals[r["atoms"]] = r["total_s"]
    sizes = sorted(totals)
    for small, large in zip(sizes, sizes[1:], strict=False):
        exponent = math.log(totals[large] / totals[small]) / math.log(large / small)
        print(f"cost exponent of the total from {small} to {large} atoms: {exponent:.2f}")
    for path in paths:
        if ("water513", path) in peaks and ("water4104", path) in peaks:
            (n0, m0), (n1, m1) = peaks[("water513", path)], peaks[("water4104", path)]
            growth = (m1 - m0) * 1e3 / (n1 - n0)
            print(f"peak memory growth per atom, water513 -> water4104, {path}: {growth:.3f} MB")


if __name__ == "__main__":
    main()
