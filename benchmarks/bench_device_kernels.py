"""The device kernels (docs/design.md section 1.11) against what CUDA runs without them,
one call per target, on random factors of a water box's size (default 12,288 atoms, 58
edges per atom, L = 6, s = 8): message_form, coupling_form and pair_sum_form (290 pairs
per atom, 10 channels) against their chunked torch paths; the edge harmonics and their
derivatives (one thread per edge) and the PME mesh operators (one thread per atom) against
their torch-op kernels over chunks; and the first
block (pair_form, 4 pair types of which each centre sees 2, 32 radial functions): the
node sum with the gradients forces need by the group blocks, by the per-value threads and
by the blocked torch path, side by side. First, in float64 on a smaller problem, each
kernel against the CPU kernel (max |diff| relative to the largest value: the issue's bound
is 1e-12).

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
    """Two species, so 4 pair types of which each centre sees 2 (as in water), and the
    default model's 32 radial functions."""
    generator = torch.Generator().manual_seed(seed)
    edges, degrees, radial = atoms * edges_per_atom, max_degree + 1, 32

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    factors = [
        rand(edges, radial),
        rand(4, radial, degrees, channels),
        rand(edges, degrees**2),
        rand(atoms, degrees**2, channels),
    ]
    centers = torch.arange(atoms).repeat_interleave(edges_per_atom)
    species = torch.randint(0, 2, (atoms,), generator=generator)
    others = torch.randint(0, atoms, (edges,), generator=generator)
    pair_type = species[centers] * 2 + species[others]
    return factors, [pair_type.to(device), centers.to(device)]


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
        ("pair_form, threads", pair_form_problem(200, 15, 6, 8, torch.float64, "cpu"),
         "pair_form", PAIR_FORM_TARGETS),
        ("pair_sum_form", pair_sum_problem(200, 40, 10, torch.float64, "cpu"), "pair_sum_form",
         PAIR_SUM_TARGETS),
    ):  # fmt: skip
        kernel = getattr(ops, f"_{op}_threads_device" if "threads" in name else f"_{op}_device")
        worst = 0.0
        for target in range(len(targets)):
            expected = call(getattr(ops, op), target, factors, fixed)
            moved = [f.to(device) for f in factors], [f.to(device) for f in fixed]
            actual = call(kernel, target, *moved).cpu()
            scale = max(expected.abs().max().item(), 1.0)
            worst = max(worst, (actual - expected).abs().max().item() / scale)
        print(f"  {name}: {worst:.1e} over {len(targets)} targets")
    worst = 0.0
    problem = harmonics_problem(3000, torch.float64, "cpu")
    for kind in range(4):
        call_args = harmonics_args(kind, *problem)
        expected = [ops.harmonics, ops.harmonics_vjp, ops.harmonics_jvp, ops.harmonics_hvp][kind](
            *[a for a in call_args[1:] if a is not None]
        )
        moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in call_args]
        actual = ops._harmonics_device(*moved).cpu()
        scale = max(expected.abs().max().item(), 1.0)
        worst = max(worst, (actual - expected).abs().max().item() / scale)
    print(f"  harmonics: {worst:.1e} over 4 kinds")
    worst = 0.0
    coordinates, charges, directions, brick = mesh_problem(300, torch.float64, "cpu")
    for name in ("spread", "interpolate", "gradient"):
        for h in (None, directions):
            call_args = mesh_args(name, coordinates, charges, h, brick)
            expected = {  # the CPU kernel
                "spread": lambda: ops.mesh_spread(charges, coordinates, h, [0] * 3, MESH, MESH, 6),
                "interpolate": lambda: ops.mesh_interpolate(
                    brick, coordinates, h, [0] * 3, MESH, 6
                ),
                "gradient": lambda: ops.mesh_gradient(
                    brick, charges, coordinates, h, [0] * 3, MESH, 6
                ),
            }[name]()
            moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in call_args]
            actual = ops._mesh_op_device(*moved).cpu()
            scale = max(expected.abs().max().item(), 1.0)
            worst = max(worst, (actual - expected).abs().max().item() / scale)
    print(f"  mesh operators: {worst:.1e} over 3 operators with and without directions")


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
    edge_harmonics(args, dtype, device)
    mesh_operators(args, dtype, device)
    first_block(args, dtype, device)


MESH = [48, 48, 48]  # about 1 A spacing for 12,288 water atoms


def mesh_problem(atoms, dtype, device, channels=9, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).to(dtype).to(device)

    coordinates = rand(atoms, 3) * torch.tensor(MESH, dtype=dtype, device=device)
    charges, directions = rand(atoms, channels) - 0.5, rand(atoms, 3) - 0.5
    brick = rand(channels, *MESH) - 0.5
    return coordinates, charges, directions, brick


def mesh_args(name, coordinates, charges, directions, brick, order=6):
    first, second = (charges, None) if name == "spread" else (brick, charges)
    if name == "interpolate":
        second = None
    return name, first, second, coordinates, directions, [0, 0, 0], MESH, MESH, order


def mesh_operators(args, dtype, device):
    """The PME mesh operators (order 6, 9 channels, the whole periodic mesh), with and
    without directions: one thread per atom against the torch-op kernel over chunks of
    atoms (what CUDA runs without the kernels; its own chunk length)."""
    coordinates, charges, directions, brick = mesh_problem(args.atoms, dtype, device)
    chunk = max(1, (1 << 22) // (6**3 * charges.shape[1]))
    for name in ("spread", "interpolate", "gradient"):
        for h in (None, directions):
            call_args = mesh_args(name, coordinates, charges, h, brick)
            fast = seconds(lambda: ops._mesh_op_device(*call_args), device, args.repeats)
            slow = seconds(lambda: ops._mesh_op_by_chunks(*call_args, chunk), device, args.repeats)
            label = f"{name}{' with directions' if h is not None else ''}"
            print(f"| mesh | {label} | {1e3 * fast:.2f} | {1e3 * slow:.2f} | {slow / fast:.2f}x |")


def harmonics_problem(edges, dtype, device, seed=0):
    from lorem_torch.nn.spherical import harmonic_polynomials

    terms, coefficients = harmonic_polynomials(6)
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    vectors = torch.nn.functional.normalize(rand(edges, 3), dim=1)
    return (
        vectors,
        rand(edges, 49),
        rand(edges, 3),
        terms.to(device),
        coefficients.to(dtype).to(device),
    )


HARMONICS_KINDS = ("values", "vjp", "jvp", "hvp")


def harmonics_args(kind, vectors, gradient, direction, terms, coefficients):
    return (
        kind,
        vectors,
        gradient if kind in (1, 3) else None,
        direction if kind in (2, 3) else None,
        terms,
        coefficients,
        49,
    )


def edge_harmonics(args, dtype, device):
    """The edge harmonics and their derivatives: one thread per edge against the torch-op
    kernel over chunks of 65,536 edges (what CUDA runs without the kernels)."""
    problem = harmonics_problem(args.atoms * args.edges_per_atom, dtype, device)
    for kind, label in enumerate(HARMONICS_KINDS):
        call_args = harmonics_args(kind, *problem)
        fast = seconds(lambda: ops._harmonics_device(*call_args), device, args.repeats)
        slow = seconds(lambda: ops.harmonics_chunked(*call_args), device, args.repeats)
        print(f"| harmonics | {label} | {1e3 * fast:.2f} | {1e3 * slow:.2f} | {slow / fast:.2f}x |")


def first_block(args, dtype, device):
    """The first block's node sum and the backward that forces need (radial and harmonic
    gradients): pair_form as a LOREM_CUDA_KERNELS build runs it on CUDA (the group blocks,
    one per centre), the sparse-form threads for the same targets, and the blocked path of
    torch operations that CUDA runs without the kernels
    (lorem::_edges_to_nodes_by_pair_type_blocks)."""
    factors, (pair_type, centers) = pair_form_problem(
        args.atoms, args.edges_per_atom, 6, 8, dtype, device
    )
    radial, table, harmonics, node_grad = factors
    leaves = [t.clone().requires_grad_() for t in (radial, harmonics)]

    def groups():
        out = ops._pair_form_device(
            3, list(node_grad.shape), *factors[:3], None, pair_type, centers
        )
        ops._pair_form_adjoints_device(*factors, pair_type, centers, [True, False, True])
        return out

    def threads():
        out = ops._pair_form_threads_device(
            3, list(node_grad.shape), *factors[:3], None, pair_type, centers
        )
        for target in (0, 2):
            slots = [None if k == target else f for k, f in enumerate(factors)]
            ops._pair_form_threads_device(
                target, list(factors[target].shape), *slots, pair_type, centers
            )
        return out

    def blocked():
        out = ops._edges_to_nodes_by_pair_type_blocks(
            leaves[0], table, pair_type, leaves[1], centers, args.atoms
        )
        return torch.autograd.grad(out, leaves, node_grad)

    times = [seconds(f, device, args.repeats) for f in (groups, threads, blocked)]
    print(
        "\n| first block (pair_form): node sum + radial and harmonic gradients | group blocks |"
        " sparse-form threads | blocked torch path |\n| --- | ---: | ---: | ---: |\n"
        f"| ms | {1e3 * times[0]:.2f} | {1e3 * times[1]:.2f} | {1e3 * times[2]:.2f} |"
    )
    if device.type == "cuda":
        peaks = []
        for f in (groups, threads, blocked):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            f()
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        print(f"| peak MB | {peaks[0]:.0f} | {peaks[1]:.0f} | {peaks[2]:.0f} |")


if __name__ == "__main__":
    main()
