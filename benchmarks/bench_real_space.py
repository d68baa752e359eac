"""The real-space sum of Ewald and PME, fused (lorem::pair_sum_form) against the plain
PyTorch path, on random pairs of the size of water 4,104's neighbour list (237,616 pairs,
10 channels): potentials, then their gradients in the distances and charges.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_real_space.py
        [--pairs 237616] [--atoms 4104] [--channels 10] [--dtype float32] [--rounds 7]
"""

import argparse
import sys

import torch
from timing import best_ms

from lorem_torch.long_range.terms import real_space_potentials


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=237_616)
    parser.add_argument("--atoms", type=int, default=4_104)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    n, p, c = args.atoms, args.pairs, args.channels
    centers = torch.sort(torch.randint(0, n, (p,))).values  # a neighbour list's order
    others = torch.randint(0, n, (p,))
    distances = 1.0 + 4.0 * torch.rand(p, dtype=dtype)
    charges = torch.randn(n, c, dtype=dtype)
    weights = torch.randn(n, c, dtype=dtype)

    def step(fused: bool):
        d = distances.clone().requires_grad_()
        q = charges.clone().requires_grad_()
        potentials = real_space_potentials(q, n, centers, others, d, 1.25, fused)
        return torch.autograd.grad((potentials * weights).sum(), [d, q])

    fused, plain = step(True), step(False)
    difference = max(float((a - b).abs().max()) for a, b in zip(fused, plain, strict=True))
    print(
        f"real space, {p} pairs, {n} atoms, {c} channels, {args.dtype}, "
        f"{torch.get_num_threads()} thread(s); gradients max |fused - plain| {difference:.1e}"
    )
    # alternate the two paths, so that a change of load hits both
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for path in (True, False):
            times[path].append(best_ms(lambda path=path: step(path), 1))
    for path, name in ((True, "fused (pair_sum_form)"), (False, "plain PyTorch")):
        print(f"  {name:22s} potentials + gradients {min(times[path]):7.1f} ms (best)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
