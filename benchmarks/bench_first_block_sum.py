"""The first block's node sum from the species-pair table alone
(lorem::edges_to_nodes_by_pair_type): on CPU the grouped kernels of lorem::pair_form,
against the blocked path that sorts the edges by pair type (what other devices run,
lorem::_edges_to_nodes_by_pair_type_blocks), side by side in one process.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_first_block_sum.py [--atoms 4104]

The edges are random with water 4,104's counts (237,616 edges, 58 per atom, four pair
types, L = 6, s = 8, 32 radial functions, float32); each figure is the minimum over
--rounds calls after one warm-up call: the forward, the forward and backward into radial
and harmonics (forces), and with the table as well (training's first backward).
"""

import argparse

import torch
from timing import best_ms

import lorem_torch  # noqa: F401  (registers torch.ops.lorem.*)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--atoms", type=int, default=4104)
    parser.add_argument("--edges-per-atom", type=int, default=58)
    parser.add_argument("--pair-types", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    N, T, R, D, S = args.atoms, args.pair_types, 32, 7, 8
    P = N * args.edges_per_atom
    radial = torch.rand(P, R, generator=generator, dtype=dtype).requires_grad_()
    table = torch.randn(T, R, D, S, generator=generator, dtype=dtype).requires_grad_()
    harmonics = torch.randn(P, D * D, generator=generator, dtype=dtype).requires_grad_()
    centers = torch.sort(torch.randint(0, N, (P,), generator=generator)).values
    pair_type = torch.randint(0, T, (P,), generator=generator)
    node_grad = torch.randn(N, D * D, S, generator=generator, dtype=dtype)
    paths = {
        "grouped (CPU default)": torch.ops.lorem.edges_to_nodes_by_pair_type,
        "blocked by pair type": torch.ops.lorem._edges_to_nodes_by_pair_type_blocks,
    }
    print(
        f"{N} atoms, {P} edges, {T} pair types, L = {D - 1}, s = {S}, {args.dtype}, "
        f"{torch.get_num_threads()} threads; ms, min of {args.rounds}"
    )
    print(f"{'path':<24} {'forward':>9} {'+ forces':>9} {'+ table':>9}")
    for name, op in paths.items():

        def forward(op=op):
            with torch.no_grad():
                op(radial, table, pair_type, harmonics, centers, N)

        def forces(op=op):
            out = op(radial, table, pair_type, harmonics, centers, N)
            torch.autograd.grad(out, (radial, harmonics), node_grad)

        def training(op=op):
            out = op(radial, table, pair_type, harmonics, centers, N)
            torch.autograd.grad(out, (radial, table, harmonics), node_grad)

        figures = [best_ms(f, args.rounds) for f in (forward, forces, training)]
        print(f"{name:<24} " + " ".join(f"{x:>9.1f}" for x in figures))


if __name__ == "__main__":
    main()
