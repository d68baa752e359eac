"""The device kernel of message_form, coupling_form, pair_form and pair_sum_form
(docs/design.md section 1.11) against what CUDA runs without it, one call per target, on
random factors of a water box's size (default 12,288 atoms, 58 edges per atom, L = 6,
s = 8, 4 pair types, 8 radial functions; the real-space sum over 290 pairs per atom, 10
channels; float32): the chunked torch paths, and for the first block (pair_form) the
blocked path of edges_to_nodes_by_pair_type with its backward. First, in float64 on a
smaller problem, each kernel against the CPU kernel (max |diff| relative to the largest
value: the issue's bound is 1e-12).

    python benchmarks/bench_device_kernels.py [--device cuda] [--atoms 12288]

On a GPU this needs a library built with LOREM_CUDA_KERNELS=ON (benchmarks/gpu_batch.sh
builds one). On the CPU the "kernel" column runs the kernel's threads one after another:
a check, not a speed (use small --atoms).
"""

import argparse
import time

import torch

import lorem_torch  # noqa: F401  (loads the operators)
from lorem_torch.nn.coupling_ops import product_entries
from lorem_torch.nn.message_ops import sparse_coupling

ops = torch.ops.lorem
MESSAGE_TARGETS = ("d/d harmonics", "d/d coefficients", "d/d weights", "d/d features", "messages")
COUPLING_TARGETS = ("d/d input1", "d/d input2", "d/d weights", "product")


def message_problem(atoms, edges_per_atom, max_degree, channels, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    entries, coupling, path_index = sparse_coupling(max_degree)
    edges = atoms * edges_per_atom
    components = (max_degree + 1) ** 2

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    factors = [
        rand(edges, components),
        rand(edges, max_degree + 1, channels),
        rand(path_index.shape[0], channels),
        rand(atoms, components, channels),
        rand(atoms, components, channels),
    ]
    # centres in order, as a neighbour list gives them; senders at random
    centers = torch.arange(atoms).repeat_interleave(edges_per_atom).to(device)
    others = torch.randint(0, atoms, (edges,), generator=generator).to(device)
    fixed = [centers, others, entries.to(device), coupling.to(dtype).to(device)]
    return factors, fixed


def coupling_problem(atoms, max_degree, channels, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    entries, coupling, path_index = product_entries(max_degree, max_degree, max_degree, False)
    components = (max_degree + 1) ** 2

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    factors = [
        rand(atoms, components, channels),
        rand(atoms, components, channels),
        rand(path_index.shape[0], channels),
        rand(atoms, components, channels),
    ]
    return factors, [entries.to(device), coupling.to(dtype).to(device)]


def pair_form_problem(atoms, edges_per_atom, max_degree, channels, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    edges, degrees = atoms * edges_per_atom, max_degree + 1

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    factors = [
        rand(edges, 8),
        rand(4, 8, degrees, channels),
        rand(edges, degrees**2),
        rand(atoms, degrees**2, channels),
    ]
    centers = torch.arange(atoms).repeat_interleave(edges_per_atom).to(device)
    pair_type = torch.randint(0, 4, (edges,), generator=generator).to(device)
    return factors, [pair_type, centers]


def pair_sum_problem(atoms, pairs_per_atom, channels, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pairs = atoms * pairs_per_atom

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    factors = [rand(pairs), rand(atoms, channels), rand(atoms, channels)]
    centers = torch.arange(atoms).repeat_interleave(pairs_per_atom).to(device)
    others = torch.randint(0, atoms, (pairs,), generator=generator).to(device)
    return factors, [centers, others]


PAIR_FORM_TARGETS = ("d/d radial", "d/d table", "d/d harmonics", "node sum")
PAIR_SUM_TARGETS = ("d/d pair values", "d/d sources", "potentials")


def call(op, target, factors, fixed):
    slots = [None if k == target else f for k, f in enumerate(factors)]
    return op(target, list(factors[target].shape), *slots, *fixed)


def seconds(function, device, repeats):
    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    function()
    synchronise()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronise()
        best = min(best, time.perf_counter() - start)
    return best


def check_against_cpu(device):
    print("float64, kernel on", device, "against the CPU kernel (max |diff| / max |value|):")
    for name, (factors, fixed), op, targets in (
        ("message_form", message_problem(200, 15, 6, 8, torch.float64, "cpu"), "message_form",
         MESSAGE_TARGETS),
        ("coupling_form", coupling_problem(300, 6, 8, torch.float64, "cpu"), "coupling_form",
         COUPLING_TARGETS),
        ("pair_form", pair_form_problem(200, 15, 6, 8, torch.float64, "cpu"), "pair_form",
         PAIR_FORM_TARGETS),
        ("pair_sum_form", pair_sum_problem(200, 40, 10, torch.float64, "cpu"), "pair_sum_form",
         PAIR_SUM_TARGETS),
    ):  # fmt: skip
        kernel = getattr(ops, f"_{op}_device")
        worst = 0.0
        for target in range(len(targets)):
            expected = call(getattr(ops, op), target, factors, fixed)
            moved = [f.to(device) for f in factors], [f.to(device) for f in fixed]
            actual = call(kernel, target, *moved).cpu()
            scale = max(expected.abs().max().item(), 1.0)
            worst = max(worst, (actual - expected).abs().max().item() / scale)
        print(f"  {name}: {worst:.1e} over {len(targets)} targets")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--atoms", type=int, default=12_288)
    parser.add_argument("--edges-per-atom", type=int, default=58)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not ops.cuda_kernels_compiled():
        raise SystemExit(
            "this lorem-torch was built without its CUDA kernels: rebuild with "
            "CMAKE_ARGS=-DLOREM_CUDA_KERNELS=ON (needs nvcc)"
        )
    check_against_cpu(device)
    dtype = getattr(torch, args.dtype)
    print(
        f"\n{args.atoms} atoms, {args.edges_per_atom} edges per atom, L = 6, s = 8, {args.dtype},"
        f" {device}: ms per call (best of {args.repeats})"
    )
    print("| operator | target | kernel | chunked torch | chunked / kernel |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (factors, fixed), targets in (
        ("message_form",
         message_problem(args.atoms, args.edges_per_atom, 6, 8, dtype, device), MESSAGE_TARGETS),
        ("coupling_form", coupling_problem(args.atoms, 6, 8, dtype, device), COUPLING_TARGETS),
        ("pair_sum_form", pair_sum_problem(args.atoms, 290, 10, dtype, device), PAIR_SUM_TARGETS),
    ):  # fmt: skip
        kernel, chunked = getattr(ops, f"_{name}_device"), getattr(ops, f"{name}_chunked")
        for target, label in enumerate(targets):
            fast = seconds(lambda: call(kernel, target, factors, fixed), device, args.repeats)
            slow = seconds(lambda: call(chunked, target, factors, fixed), device, args.repeats)
            print(
                f"| {name} | {label} | {1e3 * fast:.2f} | {1e3 * slow:.2f} | {slow / fast:.2f}x |"
            )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call(kernel, len(targets) - 1, factors, fixed)
            kernel_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
            torch.cuda.reset_peak_memory_stats()
            call(chunked, len(targets) - 1, factors, fixed)
            chunked_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
            print(f"| {name} | peak MB, last target | {kernel_mb:.0f} | {chunked_mb:.0f} | |")
    first_block(args, dtype, device)


def first_block(args, dtype, device):
    """The first block's sum and its backward: pair_form's kernel (what
    edges_to_nodes_by_pair_type runs where one serves the device) against the blocked path
    of torch operations (lorem::_edges_to_nodes_by_pair_type_blocks)."""
    factors, (pair_type, centers) = pair_form_problem(
        args.atoms, args.edges_per_atom, 6, 8, dtype, device
    )
    radial, table, harmonics, node_grad = factors
    leaves = [t.clone().requires_grad_() for t in (radial, table, harmonics)]

    def kernel():
        out = ops._pair_form_device(
            3, list(node_grad.shape), *factors[:3], None, pair_type, centers
        )
        for target in range(3):
            slots = [None if k == target else f for k, f in enumerate(factors)]
            ops._pair_form_device(target, list(factors[target].shape), *slots, pair_type, centers)
        return out

    def blocked():
        out = ops._edges_to_nodes_by_pair_type_blocks(
            leaves[0], leaves[1], pair_type, leaves[2], centers, args.atoms
        )
        return torch.autograd.grad(out, leaves, node_grad)

    fast, slow = seconds(kernel, device, args.repeats), seconds(blocked, device, args.repeats)
    print(
        f"| pair_form | node sum + its backward | {1e3 * fast:.2f} | {1e3 * slow:.2f}"
        f" (blocked path) | {slow / fast:.2f}x |"
    )


if __name__ == "__main__":
    main()
