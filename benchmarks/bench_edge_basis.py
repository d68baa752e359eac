"""The edge basis operators alone: spherical harmonics (L = 6) and the radial basis
(32 Bernstein functions times the cosine cutoff), values and their three derivatives,
on the edges of a water box, in ns per edge.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_edge_basis.py [--edges 29702]

Each figure is the minimum over --rounds calls after one warm-up call (docs/design.md
1.5; cpp/src/ops/harmonics_ops.cpp and basis_ops.cpp). Random unit vectors and distances
in (0.8, 5) A stand in for the edges: the kernels' cost does not depend on the values.
"""

import argparse

import torch
from timing import best_seconds

import lorem_torch  # noqa: F401  (registers torch.ops.lorem.*)
from lorem_torch.nn.spherical import harmonic_polynomials

CUTOFF = 5.0
NUM_RADIAL = 32
MAX_DEGREE = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edges", type=int, default=29702, help="water 513's edge count")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    terms, coefficients = harmonic_polynomials(MAX_DEGREE)
    M = (MAX_DEGREE + 1) ** 2
    ops = torch.ops.lorem
    print(
        f"{args.edges} edges, {torch.get_num_threads()} threads; ns per edge (min of {args.rounds})"
    )
    print(f"{'dtype':<8} {'operator':<18} {'values':>8} {'vjp':>8} {'jvp':>8} {'hvp':>8}")
    for dtype in (torch.float32, torch.float64):
        generator = torch.Generator().manual_seed(0)
        u = torch.randn(args.edges, 3, dtype=dtype, generator=generator)
        u = u / u.norm(dim=1, keepdim=True)
        k = coefficients.to(dtype)
        G = torch.randn(args.edges, M, dtype=dtype, generator=generator)
        D = torch.randn(args.edges, 3, dtype=dtype, generator=generator)
        r = 0.8 + 4.2 * torch.rand(args.edges, dtype=dtype, generator=generator)
        g = torch.randn(args.edges, NUM_RADIAL, dtype=dtype, generator=generator)
        d = torch.randn(args.edges, dtype=dtype, generator=generator)
        radial = (NUM_RADIAL, CUTOFF, CUTOFF)
        rows = {
            "harmonics": [
                lambda: ops.harmonics(u, terms, k, M),
                lambda: ops.harmonics_vjp(u, G, terms, k, M),
                lambda: ops.harmonics_jvp(u, D, terms, k, M),
                lambda: ops.harmonics_hvp(u, G, D, terms, k, M),
            ],
            "radial basis": [
                lambda: ops.radial_basis(r, *radial),
                lambda: ops.radial_basis_vjp(r, g, *radial),
                lambda: ops.radial_basis_jvp(r, d, *radial),
                lambda: ops.radial_basis_hvp(r, g, d, *radial),
            ],
        }
        for name, functions in rows.items():
            figures = [best_seconds(f, args.rounds) / args.edges * 1e9 for f in functions]
            print(
                f"{str(dtype).replace('torch.', ''):<8} {name:<18} "
                + " ".join(f"{x:>8.1f}" for x in figures)
            )


if __name__ == "__main__":
    main()
