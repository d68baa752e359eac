"""lorem::message_form's CPU kernel alone, one call per target (the layer's messages
and the four derivatives a force or training step asks of it), on random factors of
the size of water 513's edges (29,702 edges, 513 atoms, L = 6, s = 8). Prints seconds per
call (median of --repeats) and nanoseconds per edge and coupling entry.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_message_form.py
        [--edges 29702] [--atoms 513] [--dtype float32] [--repeats 5]
"""

import argparse
import statistics
import sys
import time

import torch

from lorem_torch.nn.message_ops import (
    COEFFICIENTS,
    FEATURES,
    GRADIENT,
    HARMONICS,
    WEIGHTS,
    sparse_coupling,
)

NAMES = {
    GRADIENT: "messages",
    FEATURES: "d/d features",
    HARMONICS: "d/d harmonics",
    COEFFICIENTS: "d/d coefficients",
    WEIGHTS: "d/d weights",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=29_702)
    parser.add_argument("--atoms", type=int, default=513)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--max-degree", type=int, default=6)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    L, S, P, N = args.max_degree, args.channels, args.edges, args.atoms
    entries, coupling, path_index = sparse_coupling(L)
    M = (L + 1) ** 2
    factors = [
        torch.randn(P, M, dtype=dtype),
        torch.randn(P, L + 1, S, dtype=dtype),
        torch.randn(path_index.shape[0], S, dtype=dtype),
        torch.randn(N, M, S, dtype=dtype),
        torch.randn(N, M, S, dtype=dtype),
    ]
    centers = torch.sort(torch.randint(0, N, (P,))).values
    others = torch.randint(0, N, (P,))
    coupling = coupling.to(dtype)
    print(
        f"lorem::message_form, {P} edges, {N} atoms, L = {L}, s = {S}, {entries.shape[0]} "
        f"entries, {args.dtype}, {torch.get_num_threads()} thread(s)"
    )
    total = 0.0
    for target in (GRADIENT, FEATURES, HARMONICS, COEFFICIENTS, WEIGHTS):
        inputs = list(factors)
        shape = list(inputs[target].shape)
        inputs[target] = None
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            torch.ops.lorem.message_form(target, shape, *inputs, centers, others, entries, coupling)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        total += seconds
        per_entry = seconds / (P * entries.shape[0]) * 1e9
        print(f"  {NAMES[target]:18s} {seconds:7.3f} s   {per_entry:5.2f} ns per edge-entry")
    print(f"  {'all five':18s} {total:7.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
