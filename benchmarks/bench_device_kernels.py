"""The device kernel of message_form and coupling_form (docs/design.md section 1.11) against
the chunked torch path that CUDA runs without it, one call per target, on random factors of
a water box's size (default 12,288 atoms, 58 edges per atom, L = 6, s = 8, float32); and
first, in float64 on a smaller problem, the kernel against the CPU kernel (max |diff|,
relative to the largest value: the issue's bound is 1e-12).

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


if __name__ == "__main__":
    main()
