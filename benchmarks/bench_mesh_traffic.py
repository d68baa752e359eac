"""The mesh traffic of distributed PME per rank and evaluation (issue 19, item 6).

1. Measured: a water box evaluated by the C++ runtime over 1, 2, 4 and 8 ranks simulated
   in one process (the code LAMMPS runs; processor grids as LAMMPS picks them: the grid
   with the least sub-domain surface), with the bytes every rank sent through its
   Communicator (all collectives: mesh remaps, ghost charges, sums) and, from the remap
   plan of the same owned parts and bricks, the mesh part alone, with the pencils
   aligned with the domains (now) and on a square process grid (before).
2. Projected: the mesh part per rank for 64 and 512 ranks of 100,000 atoms each, from
   the same plan code: the mesh spacing and the bricks' stencil margins as measured in 1,
   the processor grid LAMMPS would pick, a cubic box of water at the same density; and
   one system of 12,288 atoms over 1 to 64 ranks (strong scaling).

    .venv/bin/python benchmarks/bench_mesh_traffic.py [--replicas 2] [--ranks 1 2 4 8]
        [--dtype float64|float32]

Bytes as the runtime counts them: the mesh in the model's dtype (--dtype, the export's;
a float32 model's mesh moves half the bytes), per-atom values and sums as float64. Time
per evaluation is that of threads sharing this machine's cores, not of MPI ranks on
their own cores.
"""

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def lammps_grid(ranks: int, lengths) -> tuple:
    """The processor grid LAMMPS' default picks: the factorisation with the least
    sub-domain surface (ties: the first in x, y, z order)."""
    best, best_area = None, math.inf
    for px in range(1, ranks + 1):
        if ranks % px:
            continue
        for py in range(1, ranks // px + 1):
            if (ranks // px) % py:
                continue
            pz = ranks // px // py
            a, b, c = lengths[0] / px, lengths[1] / py, lengths[2] / pz
            area = a * b + b * c + a * c
            if area < best_area - 1e-9:
                best, best_area = (px, py, pz), area
    return best


def domains(grid):
    """[(lo, hi)] fractional sub-domains in rank order (x fastest, as LAMMPS numbers them)."""
    out = []
    for k, j, i in itertools.product(range(grid[2]), range(grid[1]), range(grid[0])):
        index = (i, j, k)
        out.append(
            (
                tuple(index[a] / grid[a] for a in range(3)),
                tuple((index[a] + 1) / grid[a] for a in range(3)),
            )
        )
    return out


def empty_rank():
    from lorem_torch.export import RankSystem

    none = torch.zeros(0, dtype=torch.int64)
    return RankSystem(torch.zeros((0, 3), dtype=torch.float64), none, 0, none, none, none, none)


def owned_boxes(mesh, parts):
    return [
        (
            tuple(math.ceil(lo[a] * mesh[a]) for a in range(3)),
            tuple(math.ceil(hi[a] * mesh[a]) for a in range(3)),
        )
        for lo, hi in parts
    ]


def planned(mesh, ranks, length, margins, channels, value_bytes):
    """(grid, bytes per rank aligned, the same on a square grid, one rank's share) of a
    cubic box `length` A wide over `ranks` ranks, bricks = owned parts + margins."""
    from lorem_torch._core import _pme_bytes_sent

    grid = lammps_grid(ranks, (length, length, length))
    owned = owned_boxes(mesh, domains(grid))
    bricks = [
        (tuple(x - margins[0] for x in lo), tuple(x + margins[1] for x in hi)) for lo, hi in owned
    ]
    aligned = _pme_bytes_sent(mesh, owned, bricks, channels, True, value_bytes)
    square = _pme_bytes_sent(mesh, owned, bricks, channels, False, value_bytes)
    return grid, aligned, square, np.prod(mesh) * channels * value_bytes / ranks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="of the bundled 192-atom box")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--project", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--atoms-per-rank", type=int, default=100_000)
    parser.add_argument("--strong-atoms", type=int, default=12_288)
    parser.add_argument("--strong-ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    parser.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="of the export"
    )
    args = parser.parse_args(argv)

    from lorem_torch._core import Model, _pme_bytes_sent

    from lorem_torch import Lorem
    from lorem_torch.export import evaluate_ranks, export_model, load_exported, split_into_ranks

    # a small short range (the traffic is the long range's), the default charges (10
    # channels) and PME at the default accuracy
    torch.manual_seed(0)
    model = Lorem(num_features=16, num_spherical_features=4, num_radial=8).to(torch.float64)
    model = model.with_long_range("pme")
    folder = Path(tempfile.mkdtemp())
    export_model(model, folder / "pme.pt", args.dtype)
    value_bytes = 4 if args.dtype == "float32" else 8
    module, metadata = load_exported(folder / "pme.pt")
    channels = int(metadata["contract"]["num_charges"])
    cpp = Model(str(folder / "pme.pt"))

    atoms = ase.io.read(ROOT / "examples" / "data" / "water-64.xyz", index=0)
    atoms = atoms * ((args.replicas,) * 3)
    atoms.wrap()
    cell = torch.tensor(atoms.cell.array)
    lengths = atoms.cell.lengths()
    mesh = module.pme_mesh(cell)
    print(
        f"water, {len(atoms)} atoms, cell {lengths[0]:.2f} A, PME mesh {mesh} x {channels} "
        f"channels ({np.prod(mesh) * channels * value_bytes / 1e6:.1f} MB as {args.dtype})"
    )
    print(
        "ranks  grid     bytes/rank sent (max, all collectives)  mesh part, aligned  "
        "mesh part, square grid  s/evaluation"
    )
    margins = np.zeros(2, dtype=int)  # the bricks' stencil margins below and above
    for ranks in args.ranks:
        grid = lammps_grid(ranks, lengths)
        parts = domains(grid)
        fractional = atoms.get_scaled_positions(wrap=True)
        index = np.minimum((fractional * grid).astype(int), np.array(grid) - 1)
        rank_of_atom = index[:, 0] + grid[0] * (index[:, 1] + grid[1] * index[:, 2])
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        while len(systems) < ranks:  # trailing ranks without atoms
            systems.append(empty_rank())
        for system, (lo, hi) in zip(systems, parts, strict=True):
            system.domain_lo, system.domain_hi = lo, hi
        start = time.perf_counter()
        results = evaluate_ranks(cpp, systems, atoms.cell.array, True)
        seconds = time.perf_counter() - start
        owned = owned_boxes(mesh, parts)
        bricks = []
        for system, (olo, ohi) in zip(systems, owned, strict=True):
            if system.n_local == 0:
                bricks.append(((0, 0, 0), (0, 0, 0)))
                continue
            lo, shape = module.pme_brick(system.positions[: system.n_local], cell, mesh)
            hi = tuple(lo[a] + shape[a] for a in range(3))
            bricks.append((tuple(lo), hi))
            margins = np.maximum(
                margins,
                [max(olo[a] - lo[a] for a in range(3)), max(hi[a] - ohi[a] for a in range(3))],
            )
        aligned = _pme_bytes_sent(mesh, owned, bricks, channels, True, value_bytes)
        square = _pme_bytes_sent(mesh, owned, bricks, channels, False, value_bytes)
        sent = max(r.bytes_sent for r in results)
        print(
            f"{ranks:5d}  {'x'.join(map(str, grid)):7s}  {sent / 1e6:14.2f} MB"
            f"{'':26s}{max(aligned) / 1e6:8.2f} MB{'':10s}{max(square) / 1e6:8.2f} MB"
            f"{'':10s}{seconds:6.2f}"
        )

    # projection: the same plan, a cubic water box of ranks x atoms-per-rank atoms
    density = len(atoms) / atoms.get_volume()
    spacing = np.array(lengths) / np.array(mesh)
    print(
        f"\nprojected mesh traffic (plan only; water density {density:.4f} atoms/A^3, mesh "
        f"spacing {spacing.mean():.3f} A, brick margins {margins[0]} below and {margins[1]} "
        f"above the owned part, {channels} channels, {args.dtype}; per rank per evaluation):"
    )
    print("ranks  atoms        mesh           grid      aligned (max)  square grid (max)  share")
    for ranks in args.project:
        total = ranks * args.atoms_per_rank
        length = (total / density) ** (1 / 3)
        big = [int(math.ceil(length / spacing[a])) for a in range(3)]
        grid, aligned, square, share = planned(big, ranks, length, margins, channels, value_bytes)
        print(
            f"{ranks:5d}  {total:11,d}  {'x'.join(map(str, big)):13s}  {'x'.join(map(str, grid)):8s}"
            f"  {max(aligned) / 1e6:9.1f} MB   {max(square) / 1e6:9.1f} MB"
            f"      {share / 1e6:6.1f} MB"
        )
    print(
        f"share: one rank's 1/P of the mesh (all channels, {args.dtype}): the transforms move up to"
        " about twelve shares per rank and evaluation, the bricks' halos the rest."
    )

    # strong scaling: one system (the issue's 12,288 waters' box) over more ranks
    total = args.strong_atoms
    length = (total / density) ** (1 / 3)
    big = [int(math.ceil(length / spacing[a])) for a in range(3)]
    print(
        f"\nfixed system ({total:,d} atoms, mesh {'x'.join(map(str, big))}): mesh traffic per "
        "rank and evaluation from the plan, max over ranks"
    )
    print("ranks  grid      aligned        square grid    share")
    for ranks in args.strong_ranks:
        grid, aligned, square, share = planned(big, ranks, length, margins, channels, value_bytes)
        print(
            f"{ranks:5d}  {'x'.join(map(str, grid)):8s}  {max(aligned) / 1e6:8.1f} MB    "
            f"{max(square) / 1e6:8.1f} MB    {share / 1e6:6.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
