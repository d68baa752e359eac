"""The PME mesh operators' CPU kernels (lorem::mesh_spread, mesh_interpolate,
mesh_gradient; cpp/src/ops/mesh_ops.cpp), plain and directional (the forms the backward
and force training call), on the shapes of water 4,104 with the default PME settings.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mesh_ops.py [--atoms 4104] \
        [--mesh 70] [--channels 10] [--order 8] [--dtype float32]

Atoms are uniform in the periodic mesh (the whole mesh is the brick, as on one rank).
Each figure is the minimum over --rounds calls after one warm-up call, in ms and in ns
per atom, stencil point and channel (the multiply-adds the operator cannot avoid).
"""

import argparse

import torch
from timing import best_ms

import lorem_torch  # noqa: F401  (registers torch.ops.lorem.*)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--atoms", type=int, default=4104)
    parser.add_argument("--mesh", type=int, default=70)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--order", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    n, c, p = args.atoms, args.channels, args.order
    mesh = [args.mesh] * 3
    lo = [0, 0, 0]
    u = torch.rand(n, 3, dtype=torch.float64).mul(args.mesh).to(dtype)
    q = torch.randn(n, c, dtype=dtype)
    h = torch.randn(n, 3, dtype=dtype)
    brick = torch.randn(c, *mesh, dtype=dtype)
    ops = torch.ops.lorem
    cases = {
        "spread": lambda d: ops.mesh_spread(q, u, d, lo, mesh, mesh, p),
        "interpolate": lambda d: ops.mesh_interpolate(brick, u, d, lo, mesh, p),
        "gradient": lambda d: ops.mesh_gradient(brick, q, u, d, lo, mesh, p),
    }
    work = n * p**3 * c
    print(
        f"{n} atoms, mesh {mesh}, {c} channels, order {p}, {args.dtype}, "
        f"{torch.get_num_threads()} threads; min of {args.rounds}"
    )
    print(f"{'operator':<14}{'plain ms':>10}{'ns/entry':>10}{'directional ms':>16}{'ns/entry':>10}")
    for name, function in cases.items():
        plain = best_ms(lambda f=function: f(None), args.rounds)
        directional = best_ms(lambda f=function: f(h), args.rounds)
        print(
            f"{name:<14}{plain:>10.2f}{plain * 1e6 / work:>10.3f}"
            f"{directional:>16.2f}{directional * 1e6 / work:>10.3f}"
        )


if __name__ == "__main__":
    main()
