"""The traffic of distributed PME per rank and evaluation (issue 19, item 6).

The mesh is owned in slabs (x-pencils beyond a slab per mesh plane), and every atom
visits the ranks that hold its B-spline stencil (cpp/src/mesh.cpp): what crosses ranks
is the FFT's transposes and a few values per visit, no mesh halo.

1. Measured: a water box evaluated by the C++ runtime over 1, 2, 4 and 8 ranks simulated
   in one process (the code LAMMPS runs; atoms on processor grids as LAMMPS picks them:
   the grid with the least sub-domain surface), with the bytes every rank sent through
   its Communicator (all collectives: transposes, visits, ghost charges, sums) and the
   plan of the same run (`_pme_bytes_sent` with the visits of these atoms): its mesh
   part and its visits part.
2. Projected: per rank for 64 and 512 ranks of 100,000 atoms each, and one system of
   12,288 atoms over 1 to 64 ranks (strong scaling), from the same plan: the mesh spacing
   measured in 1, a cubic box of water at the same density, every visit counted as one
   to another rank, and an atom's visits along a split axis the expected number of
   blocks of thickness t that its (order + 2)-point window meets, min(p, 1 + (order + 1) / t).

    .venv/bin/python benchmarks/bench_mesh_traffic.py [--replicas 2] [--ranks 1 2 4 8]
        [--dtype float64|float32]

Bytes as the runtime counts them: the mesh and the visiting atoms in the model's dtype
(--dtype, the export's: float32 moves half the bytes), ghost values and sums as float64.
Time per evaluation is that of threads sharing this machine's cores, not of MPI ranks on
their own cores.
"""

import argparse
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


def empty_rank():
    from lorem_torch.export import RankSystem

    none = torch.zeros(0, dtype=torch.int64)
    return RankSystem(torch.zeros((0, 3), dtype=torch.float64), none, 0, none, none, none, none)


def planned(mesh, ranks, atoms_per_rank, order, channels, value_bytes):
    """(mesh part, visits part) in bytes per rank, max over ranks, of `ranks` ranks with
    atoms_per_rank atoms each, uniformly placed (the module docstring's expectation)."""
    from lorem_torch._core import _pme_bytes_sent, _pme_owned_layout

    layout = _pme_owned_layout(mesh, ranks, order)
    parts = (
        len({tuple(lo[1:2]) for lo, _ in layout}),
        len({tuple(lo[2:3]) for lo, _ in layout}),
    )
    expected = 1.0
    for axis, p in zip((1, 2), parts, strict=True):
        thickness = mesh[axis] / p
        expected *= min(p, 1 + (order + 1) / thickness) if p > 1 else 1.0
    visits = int(round(atoms_per_rank * expected)) if ranks > 1 else 0
    mesh_part = max(
        _pme_bytes_sent(mesh, ranks, order, channels, [0] * ranks, [0] * ranks, value_bytes)
    )
    total = max(
        _pme_bytes_sent(
            mesh, ranks, order, channels, [visits] * ranks, [visits] * ranks, value_bytes
        )
    )
    return mesh_part, total - mesh_part


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

    from lorem_torch._core import Model, _pme_bytes_sent, _pme_visits

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
    dtype = np.float32 if args.dtype == "float32" else np.float64
    module, metadata = load_exported(folder / "pme.pt")
    channels = int(metadata["contract"]["num_charges"])
    cpp = Model(str(folder / "pme.pt"))

    atoms = ase.io.read(ROOT / "examples" / "data" / "water-64.xyz", index=0)
    atoms = atoms * ((args.replicas,) * 3)
    atoms.wrap()
    cell = torch.tensor(atoms.cell.array)
    lengths = atoms.cell.lengths()
    mesh = module.pme_mesh(cell)
    order = int(module.pme_brick(torch.zeros(1, 3, dtype=torch.float64), cell, mesh)[1][0])
    inverse = np.linalg.inv(atoms.cell.array.astype(dtype).astype(np.float64))
    print(
        f"water, {len(atoms)} atoms, cell {lengths[0]:.2f} A, PME mesh {mesh} x {channels} "
        f"channels ({np.prod(mesh) * channels * value_bytes / 1e6:.1f} MB as {args.dtype}), "
        f"B-spline order {order}"
    )
    print(
        "ranks  atoms' grid  sent/rank (max, all collectives)  plan: mesh part  visits part"
        "  visits/atom  s/evaluation"
    )
    for ranks in args.ranks:
        grid = lammps_grid(ranks, lengths)
        fractional = atoms.get_scaled_positions(wrap=True)
        index = np.minimum((fractional * grid).astype(int), np.array(grid) - 1)
        rank_of_atom = index[:, 0] + grid[0] * (index[:, 1] + grid[1] * index[:, 2])
        systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
        while len(systems) < ranks:  # trailing ranks without atoms
            systems.append(empty_rank())
        start = time.perf_counter()
        results = evaluate_ranks(cpp, systems, atoms.cell.array, True)
        seconds = time.perf_counter() - start
        counts = []
        for system in systems:
            local = np.asarray(system.positions[: system.n_local]).astype(dtype)
            u = local.astype(np.float64) @ inverse * np.array(mesh)
            counts.append(_pme_visits(u.reshape(-1, 3), mesh, ranks, order))
        visits_out = [sum(c for d, c in enumerate(row) if d != r) for r, row in enumerate(counts)]
        visits_in = [sum(row[d] for r, row in enumerate(counts) if r != d) for d in range(ranks)]
        mesh_part = _pme_bytes_sent(
            mesh, ranks, order, channels, [0] * ranks, [0] * ranks, value_bytes
        )
        plan = _pme_bytes_sent(mesh, ranks, order, channels, visits_out, visits_in, value_bytes)
        worst = int(np.argmax([r.bytes_sent for r in results]))
        print(
            f"{ranks:5d}  {'x'.join(map(str, grid)):11s}  {results[worst].bytes_sent / 1e6:14.2f} MB"
            f"{'':18s}{mesh_part[worst] / 1e6:8.2f} MB  {(plan[worst] - mesh_part[worst]) / 1e6:8.2f} MB"
            f"  {sum(sum(row) for row in counts) / len(atoms):11.2f}  {seconds:12.2f}"
        )

    # projection: the same plan, a cubic water box of ranks x atoms-per-rank atoms
    density = len(atoms) / atoms.get_volume()
    spacing = np.array(lengths) / np.array(mesh)
    print(
        f"\nprojected (plan only; water density {density:.4f} atoms/A^3, mesh spacing "
        f"{spacing.mean():.3f} A, {channels} channels, {args.dtype}; per rank per evaluation):"
    )
    print("ranks  atoms        mesh             mesh part    visits part  total        share")
    for ranks in args.project:
        total = ranks * args.atoms_per_rank
        length = (total / density) ** (1 / 3)
        big = [int(math.ceil(length / spacing[a])) for a in range(3)]
        mesh_part, visits = planned(big, ranks, args.atoms_per_rank, order, channels, value_bytes)
        share = np.prod(big) * channels * value_bytes / ranks
        print(
            f"{ranks:5d}  {total:11,d}  {'x'.join(map(str, big)):15s}  {mesh_part / 1e6:8.1f} MB"
            f"  {visits / 1e6:8.1f} MB  {(mesh_part + visits) / 1e6:8.1f} MB  {share / 1e6:6.1f} MB"
        )
    print(
        f"share: one rank's 1/P of the mesh (all channels, {args.dtype}); the mesh part is "
        "the two convolutions' transposes, 4 (1 - 1/P) shares with slabs."
    )

    # strong scaling: one system (the issue's 12,288 waters' box) over more ranks
    total = args.strong_atoms
    length = (total / density) ** (1 / 3)
    big = [int(math.ceil(length / spacing[a])) for a in range(3)]
    print(
        f"\nfixed system ({total:,d} atoms, mesh {'x'.join(map(str, big))}): per rank and "
        "evaluation from the plan, max over ranks"
    )
    print("ranks  mesh part    visits part  total        share")
    for ranks in args.strong_ranks:
        mesh_part, visits = planned(big, ranks, total / ranks, order, channels, value_bytes)
        share = np.prod(big) * channels * value_bytes / ranks
        print(
            f"{ranks:5d}  {mesh_part / 1e6:8.1f} MB  {visits / 1e6:8.1f} MB  "
            f"{(mesh_part + visits) / 1e6:8.1f} MB  {share / 1e6:6.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
