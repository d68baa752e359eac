"""The k-space part of the long range alone: Ewald (reference grid and cut by accuracy)
against smooth PME, 10 charge channels, energy and gradients, float32, CPU.

    OMP_NUM_THREADS=2 nice -n 19 .venv/bin/python benchmarks/bench_long_range.py
    OMP_NUM_THREADS=2 nice -n 19 .venv/bin/python benchmarks/bench_long_range.py --calibrate

Prints, per rock-salt NaCl cell (and a water-density cell), the k-vectors of the
reference grid and of the accuracy cut, the PME mesh and order, and seconds per
evaluation (forward and backward) of each. --calibrate fits the cost model of
method "auto" (long_range/settings.py) to these timings and prints the crossover.
"""

import argparse
import math
import time

import numpy as np
import torch

from lorem_torch.errors import LongRangeTooLargeError
from lorem_torch.long_range import PME, Ewald
from lorem_torch.long_range.settings import (
    DEFAULT_ACCURACY,
    EWALD_SECONDS_PER_ATOM_KVECTOR,
    PME_SECONDS_PER_MESH_POINT,
    PME_SECONDS_PER_STENCIL_POINT,
    prefer_pme,
)

SMEARING, WAVELENGTH, CHANNELS = 1.25, 0.625, 10


def nacl_cell(atoms: int, density: float):
    """A cubic cell of `atoms` random points at `density` atoms/A^3 (the k-space cost
    depends only on the number of atoms and the cell)."""
    side = (atoms / density) ** (1 / 3)
    rng = np.random.default_rng(0)
    positions = torch.tensor(rng.uniform(0, side, size=(atoms, 3)), dtype=torch.float32)
    cell = torch.eye(3, dtype=torch.float32) * side
    charges = torch.tensor(rng.normal(size=(atoms, CHANNELS)), dtype=torch.float32)
    return positions, charges, cell


CLOCK = time.perf_counter
DEVICE = torch.device("cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def seconds(function, repeats: int) -> float:
    """The best of `repeats` timings (after a warm-up), by CLOCK."""
    function()
    synchronize()
    best = math.inf
    for _ in range(repeats):
        start = CLOCK()
        function()
        synchronize()
        best = min(best, CLOCK() - start)
    return best


def ewald_step(ewald: Ewald, positions, charges, cell):
    def run():
        r = positions.clone().requires_grad_(True)
        q = charges.clone().requires_grad_(True)
        shape = ewald.grid_shape(cell)
        s = ewald.structure_factors(r, q, cell, shape)
        v = ewald.kspace_potentials(r, s, cell, shape)
        torch.autograd.grad((v * q).sum(), [r, q])

    return run


def pme_step(pme: PME, positions, charges, cell):
    def run():
        r = positions.clone().requires_grad_(True)
        q = charges.clone().requires_grad_(True)
        v = pme.kspace_potentials(r, q, cell)
        torch.autograd.grad((v * q).sum(), [r, q])

    return run


def kvectors(ewald: Ewald, cell) -> int:
    """The k-vectors of an Ewald sum of the cell; a huge number where its grid would be
    refused for memory (then Ewald is not timed)."""
    try:
        return ewald.num_kvectors(ewald.grid_shape(cell))
    except LongRangeTooLargeError:
        return 10**18


def measure(
    atoms: int,
    density: float,
    accuracy: float,
    repeats: int,
    reference_limit: int,
    ewald_limit: float,
):
    positions, charges, cell = (x.to(DEVICE) for x in nacl_cell(atoms, density))
    reference = Ewald(SMEARING, WAVELENGTH, channels=CHANNELS)
    cut = Ewald(SMEARING, WAVELENGTH, accuracy=accuracy, channels=CHANNELS)
    pme = PME(SMEARING, accuracy=accuracy, channels=CHANNELS)
    row = {
        "atoms": atoms,
        "side": float(cell[0, 0]),
        "k_reference": kvectors(reference, cell),
        "k_cut": kvectors(cut, cell),
        "mesh": pme.mesh_shape(cell),
        "order": pme.order,
    }
    row["t_reference"] = (
        seconds(ewald_step(reference, positions, charges, cell), repeats)
        if atoms <= reference_limit and atoms * row["k_reference"] < ewald_limit
        else math.nan
    )
    row["t_cut"] = (
        seconds(ewald_step(cut, positions, charges, cell), repeats)
        if atoms * row["k_cut"] < ewald_limit
        else math.nan
    )
    row["t_pme"] = seconds(pme_step(pme, positions, charges, cell), repeats)
    return row


def fit(rows):
    """Least-squares cost constants (per channel) of long_range/settings.py."""
    ewald = [(r["atoms"] * r["k_cut"], r["t_cut"]) for r in rows if not math.isnan(r["t_cut"])]
    per_atom_kvector = sum(x * t for x, t in ewald) / sum(x * x for x, _ in ewald) / CHANNELS
    design = np.array(
        [[np.prod(r["mesh"]), r["atoms"] * r["order"] ** 3] for r in rows], dtype=float
    )
    times = np.array([r["t_pme"] for r in rows])
    # relative least squares: every size counts alike
    weights = 1.0 / times
    (per_mesh_point, per_stencil_point), *_ = np.linalg.lstsq(
        design * weights[:, None], times * weights, rcond=None
    )
    return per_atom_kvector, per_mesh_point / CHANNELS, per_stencil_point / CHANNELS


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 216, 512, 1000, 4096, 32768])
    parser.add_argument("--accuracy", type=float, default=DEFAULT_ACCURACY)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reference-limit", type=int, default=4096)
    parser.add_argument(
        "--ewald-limit",
        type=float,
        default=2e9,
        help="skip Ewald where atoms x k-vectors exceed this (minutes of CPU beyond)",
    )
    parser.add_argument("--no-water", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (wall seconds, synchronised)")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="process CPU time instead of wall time (steadier on a shared machine)",
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    print(
        f"k-space only, {CHANNELS} channels, float32, forward + backward, "
        f"{args.device}, {torch.get_num_threads()} threads, accuracy {args.accuracy:g}, "
        f"{'CPU' if args.cpu_time else 'wall'} seconds"
    )
    print(
        f"{'system':>12} {'atoms':>6} {'side A':>7} {'K ref':>9} {'K cut':>9} {'mesh':>12} "
        f"{'p':>2} {'ewald ref s':>11} {'ewald cut s':>11} {'pme s':>8} {'auto':>6}"
    )
    rows = []
    systems = [("nacl", n, 8 / 5.64**3) for n in args.sizes]
    if not args.no_water:
        systems += [("water", n, 0.1003) for n in args.sizes if n <= 4096]
    for name, atoms, density in systems:
        row = measure(
            atoms, density, args.accuracy, args.repeats, args.reference_limit, args.ewald_limit
        )
        rows.append(row)
        choice = (
            "pme"
            if prefer_pme(atoms, row["k_cut"], int(np.prod(row["mesh"])), row["order"])
            else "ewald"
        )
        print(
            f"{name:>12} {atoms:>6} {row['side']:>7.1f} {row['k_reference']:>9} {row['k_cut']:>9} "
            f"{'x'.join(map(str, row['mesh'])):>12} {row['order']:>2} {row['t_reference']:>11.3f} "
            f"{row['t_cut']:>11.3f} {row['t_pme']:>8.3f} {choice:>6}",
            flush=True,
        )
    if args.calibrate:
        per_atom_kvector, per_mesh_point, per_stencil_point = fit(rows)
        print("cost model (seconds per channel), fitted / in settings.py:")
        print(
            f"  Ewald per atom x k-vector {per_atom_kvector:.3g} / {EWALD_SECONDS_PER_ATOM_KVECTOR:.3g}"
        )
        print(
            f"  PME per mesh point        {per_mesh_point:.3g} / {PME_SECONDS_PER_MESH_POINT:.3g}"
        )
        print(
            f"  PME per atom x p^3        {per_stencil_point:.3g} / {PME_SECONDS_PER_STENCIL_POINT:.3g}"
        )
    for name, density in (("nacl", 8 / 5.64**3), ("water", 0.1003)):
        crossover = None
        for atoms in range(8, 20000, 8):
            positions, charges, cell = nacl_cell(8, density)
            cell = torch.eye(3) * (atoms / density) ** (1 / 3)
            ewald = Ewald(SMEARING, WAVELENGTH, accuracy=args.accuracy, channels=CHANNELS)
            pme = PME(SMEARING, accuracy=args.accuracy, channels=CHANNELS)
            mesh = pme.mesh_of(cell)
            if prefer_pme(
                atoms, ewald.num_kvectors(ewald.cut_grid(cell)), int(np.prod(mesh)), pme.order
            ):
                crossover = atoms
                break
        print(f"auto switches to PME for {name} density at {crossover} atoms")


if __name__ == "__main__":
    main()
