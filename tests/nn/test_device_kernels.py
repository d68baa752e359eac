"""The device kernel of message_form, coupling_form, pair_form and pair_sum_form
(docs/design.md section 1.11).

Its threads (cpp/src/ops/sparse_form_threads.hpp) run on the CPU one after another
through `lorem::_message_form_device`, `_coupling_form_device`, `_pair_form_threads_device`
and `_pair_sum_form_device`, and pair_form's group blocks (pair_group_blocks.hpp) through
`_pair_form_device` and `_pair_form_adjoints_device` (pair_form as CUDA runs it); all must
equal the CPU kernels for every target: the arithmetic and indexing a CUDA build runs. On a machine
with a GPU and a library built with LOREM_CUDA_KERNELS, the CUDA kernels themselves are
held to the CPU kernels in float64 to 1e-12 (benchmarks/gpu_batch.sh, step `kernels`).
"""

import contextlib
import warnings

import pytest
import torch
from conftest import evaluate, small_model, triclinic_water
from test_fused_messages import FACTORS, force_loss_gradients
from test_fused_messages import call as message_call
from test_fused_messages import random_problem as message_problem
from test_fused_products import SLOTS
from test_fused_products import call as coupling_call
from test_fused_products import random_problem as coupling_problem

import lorem_torch  # noqa: F401  (loads the operators)
from lorem_torch.nn.edge_ops import edges_to_nodes_by_pair_type

ops = torch.ops.lorem
CUDA_KERNELS = torch.cuda.is_available() and ops.cuda_kernels_compiled()


def assert_close(actual, expected, tolerance):
    assert actual.shape == expected.shape
    if expected.numel() == 0:
        return
    scale = max(expected.abs().max().item(), 1.0)
    assert (actual - expected).abs().max().item() <= tolerance * scale


def on(values, device):
    return [v.to(device) for v in values]


def message_problem_on(problem, device):
    moved = dict(problem)
    for key in (*FACTORS, "centers", "others", "entries", "coupling"):
        moved[key] = problem[key].to(device)
    return moved


@pytest.mark.parametrize(
    "max_degree, channels, num_edges, num_atoms",
    [(2, 3, 13, 5), (2, 8, 40, 9), (3, 1, 7, 12), (1, 5, 1, 1)],
)
@pytest.mark.parametrize("target", range(5))
def test_message_threads_equal_the_cpu_kernel(max_degree, channels, num_edges, num_atoms, target):
    problem = message_problem(max_degree, channels, num_edges, num_atoms, seed=target)
    values = [problem[name] for name in FACTORS]
    expected = message_call(ops.message_form, problem, target, values)
    actual = message_call(ops._message_form_device, problem, target, values)
    assert_close(actual, expected, 1e-12)
    problem32 = message_problem(max_degree, channels, num_edges, num_atoms, target, torch.float32)
    values32 = [problem32[name] for name in FACTORS]
    assert_close(
        message_call(ops._message_form_device, problem32, target, values32),
        message_call(ops.message_form, problem32, target, values32),
        1e-5,
    )


@pytest.mark.parametrize(
    "degrees, channels, num_atoms, even_output",
    [((2, 2, 2), 3, 5, False), ((1, 2, 3), 8, 70, False), ((2, 2, 2), 1, 3, True)],
)
@pytest.mark.parametrize("target", range(4))
def test_coupling_threads_equal_the_cpu_kernel(degrees, channels, num_atoms, even_output, target):
    # 70 atoms: the weights' blocks of 64 atoms meet in one row
    problem = coupling_problem(degrees, channels, num_atoms, even_output, seed=target)
    values = [problem[name] for name in SLOTS]
    expected = coupling_call(ops.coupling_form, problem, target, values)
    actual = coupling_call(ops._coupling_form_device, problem, target, values)
    assert_close(actual, expected, 1e-12)


def test_nothing_to_sum_gives_zeros():
    problem = message_problem(2, 3, 0, 4)
    values = [problem[name] for name in FACTORS]
    for target in range(5):
        out = message_call(ops._message_form_device, problem, target, values)
        assert out.shape == problem[FACTORS[target]].shape and not out.any()
    problem = coupling_problem((2, 2, 2), 3, 4)
    problem["entries"] = problem["entries"][:0]
    problem["coupling"] = problem["coupling"][:0]
    values = [problem[name] for name in SLOTS]
    assert not coupling_call(ops._coupling_form_device, problem, 3, values).any()


def test_bad_indices_are_named():
    problem = message_problem(2, 3, 4, 3)
    problem["centers"] = problem["centers"].clone()
    problem["centers"][2] = 7
    values = [problem[name] for name in FACTORS]
    for target in (0, 3, 4):  # the centres are read, or group the edges
        with pytest.raises(RuntimeError, match=r"centers\[2\] = 7 is outside \[0, 3\)"):
            message_call(ops._message_form_device, problem, target, values)
    problem = coupling_problem((2, 2, 2), 3, 4)
    problem["entries"] = problem["entries"].clone()
    problem["entries"][5, 0] = 40
    values = [problem[name] for name in SLOTS]
    with pytest.raises(RuntimeError, match="entry 5 indexes outside"):
        coupling_call(ops._coupling_form_device, problem, 3, values)


def test_the_cpu_dispatch_stays_on_the_cpu_kernel():
    """Without a GPU nothing changes: coupling_form on the CPU is the CPU kernel, and a
    library built without LOREM_CUDA_KERNELS says so."""
    if not torch.cuda.is_available():
        assert isinstance(ops.cuda_kernels_compiled(), bool)
    problem = coupling_problem((2, 2, 2), 8, 5)
    values = [problem[name] for name in SLOTS]
    assert_close(
        coupling_call(ops.coupling_form, problem, 3, values),
        coupling_call(ops.coupling_form_chunked, problem, 3, values),
        1e-12,
    )


def pair_form_problem(num_edges, num_nodes, num_types, num_radial, degrees, channels, seed=0):
    """Unsorted centres and pair types, the last atoms without edges."""
    generator = torch.Generator().manual_seed(seed)

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    factors = [
        random(num_edges, num_radial),
        random(num_types, num_radial, degrees, channels),
        random(num_edges, degrees**2),
        random(num_nodes, degrees**2, channels),
    ]
    pair_type = torch.randint(0, num_types, (num_edges,), generator=generator)
    centers = torch.randint(0, max(num_nodes - 2, 1), (num_edges,), generator=generator)
    return factors, pair_type, centers


def pair_form_call(op, target, factors, pair_type, centers):
    slots = [None if k == target else f for k, f in enumerate(factors)]
    return op(target, list(factors[target].shape), *slots, pair_type, centers)


@pytest.mark.parametrize(
    "num_edges, num_nodes, num_types, num_radial, degrees, channels",
    # 300 edges of 2 types: the table's blocks of 64 edges cross a change of pair type
    [(13, 5, 3, 4, 3, 2), (300, 40, 2, 8, 7, 8), (1, 1, 1, 1, 1, 1), (0, 3, 2, 4, 3, 5)],
)
@pytest.mark.parametrize("target", range(4))
@pytest.mark.parametrize("kernel", ["_pair_form_threads_device", "_pair_form_device"])
def test_pair_form_threads_equal_the_cpu_kernel(
    num_edges, num_nodes, num_types, num_radial, degrees, channels, target, kernel
):
    """The sparse-form threads for every target, and pair_form as CUDA runs it (the node
    sum and the edge gradients by the group blocks, the table by the threads)."""
    factors, pair_type, centers = pair_form_problem(
        num_edges, num_nodes, num_types, num_radial, degrees, channels, seed=target
    )
    expected = pair_form_call(ops.pair_form, target, factors, pair_type, centers)
    actual = pair_form_call(getattr(ops, kernel), target, factors, pair_type, centers)
    assert_close(actual, expected, 1e-12)


@pytest.mark.parametrize(
    "num_edges, num_nodes, num_types, num_radial, degrees, channels",
    [(13, 5, 3, 4, 3, 2), (300, 40, 2, 8, 7, 8), (1, 1, 1, 1, 1, 1), (0, 3, 2, 4, 3, 5)],
)
@pytest.mark.parametrize(
    "needed",
    [
        (True, True, True),
        (True, False, True),
        (False, False, True),
        (True, False, False),
        (False, True, False),
    ],
)
def test_pair_form_adjoints_as_cuda_runs_them(
    num_edges, num_nodes, num_types, num_radial, degrees, channels, needed
):
    """The backward of the node sum as CUDA runs it: the radial and harmonic gradients in
    one pass of the group blocks, the table's by the threads; what is not needed is None."""
    factors, pair_type, centers = pair_form_problem(
        num_edges, num_nodes, num_types, num_radial, degrees, channels
    )
    expected = ops.pair_form_adjoints(*factors, pair_type, centers, list(needed))
    actual = ops._pair_form_adjoints_device(*factors, pair_type, centers, list(needed))
    for k in range(3):
        if needed[k]:
            assert_close(actual[k], expected[k], 1e-12)
        else:
            assert actual[k] is None


def test_group_blocks_with_no_channels():
    """No channels: an empty node sum, and zero edge gradients (H sums no channel)."""
    factors, pair_type, centers = pair_form_problem(30, 6, 3, 4, 3, 0)
    for target in (0, 2, 3):
        expected = pair_form_call(ops.pair_form, target, factors, pair_type, centers)
        actual = pair_form_call(ops._pair_form_device, target, factors, pair_type, centers)
        assert actual.shape == expected.shape
        assert_close(actual, expected, 1e-12)
    adjoints = ops._pair_form_adjoints_device(*factors, pair_type, centers, [True, False, True])
    assert adjoints[0].abs().max() == 0 and adjoints[2].abs().max() == 0


def test_group_blocks_sum_each_centre_by_pair_type():
    """A centre whose edges alternate between pair types, a centre of one edge and atoms
    without edges: the group blocks take each centre's runs of one type (many groups)."""
    factors, _, _ = pair_form_problem(12, 6, 3, 5, 4, 3, seed=3)
    centers = torch.tensor([2, 0, 2, 2, 5, 2, 0, 2, 2, 0, 2, 2])
    pair_type = torch.tensor([0, 1, 2, 0, 1, 1, 0, 2, 0, 1, 2, 1])
    for target in (0, 2, 3):
        expected = pair_form_call(ops.pair_form, target, factors, pair_type, centers)
        actual = pair_form_call(ops._pair_form_device, target, factors, pair_type, centers)
        assert_close(actual, expected, 1e-12)
    assert (
        pair_form_call(ops._pair_form_device, 3, factors, pair_type, centers)[[1, 3, 4]].abs().max()
        == 0
    )


@pytest.mark.parametrize("kernel", ["_pair_form_threads_device", "_pair_form_device"])
@pytest.mark.parametrize("target", range(4))
def test_pair_form_threads_name_bad_indices(kernel, target):
    op = getattr(ops, kernel)
    factors, pair_type, centers = pair_form_problem(13, 5, 3, 4, 3, 2)
    bad = pair_type.clone()
    bad[4] = 3
    with pytest.raises(RuntimeError, match=r"pair_type\[4\] = 3 is outside \[0, 3\)"):
        pair_form_call(op, target, factors, bad, centers)
    with pytest.raises(RuntimeError, match=r"centers\[0\] = 9 is outside \[0, 5\)"):
        pair_form_call(op, target, factors, pair_type, centers + 9 - centers[0])
    with pytest.raises(RuntimeError, match=r"centers\[0\] = 9 is outside \[0, 5\)"):
        ops._pair_form_adjoints_device(*factors, pair_type, centers + 9 - centers[0], [True] * 3)


def pair_sum_problem(num_pairs, num_receivers, num_sources, channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    factors = [
        torch.randn(num_pairs, dtype=torch.float64, generator=generator),
        torch.randn(num_sources, channels, dtype=torch.float64, generator=generator),
        torch.randn(num_receivers, channels, dtype=torch.float64, generator=generator),
    ]
    centers = torch.randint(0, max(num_receivers - 1, 1), (num_pairs,), generator=generator)
    others = torch.randint(0, max(num_sources - 1, 1), (num_pairs,), generator=generator)
    return factors, centers, others


def pair_sum_call(op, target, factors, centers, others):
    slots = [None if k == target else f for k, f in enumerate(factors)]
    return op(target, list(factors[target].shape), *slots, centers, others)


@pytest.mark.parametrize("sizes", [(200, 13, 21, 3), (50, 7, 7, 10), (1, 1, 1, 1), (0, 4, 4, 2)])
@pytest.mark.parametrize("target", range(3))
def test_pair_sum_threads_equal_the_cpu_kernel(sizes, target):
    factors, centers, others = pair_sum_problem(*sizes, seed=target)
    expected = pair_sum_call(ops.pair_sum_form, target, factors, centers, others)
    actual = pair_sum_call(ops._pair_sum_form_device, target, factors, centers, others)
    assert_close(actual, expected, 1e-12)


def test_pair_sum_threads_check_indices_with_nothing_to_sum():
    factors, centers, others = pair_sum_problem(20, 5, 6, 0)
    bad = others.clone()
    bad[3] = 6
    with pytest.raises(RuntimeError, match=r"others\[3\] = 6 is outside \[0, 6\)"):
        pair_sum_call(ops._pair_sum_form_device, 2, factors, centers, bad)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("target", range(4))
@pytest.mark.parametrize("kernel", ["pair_form", "_pair_form_threads_device"])
def test_cuda_pair_form_kernel_equals_the_cpu_kernel(target, kernel):
    """pair_form on CUDA (group blocks; the table by the threads) and the threads alone."""
    factors, pair_type, centers = pair_form_problem(20000, 400, 4, 8, 7, 8, seed=target)
    expected = pair_form_call(ops.pair_form, target, factors, pair_type, centers)
    cuda = [f.cuda() for f in factors]
    op = getattr(ops, kernel)
    actual = pair_form_call(op, target, cuda, pair_type.cuda(), centers.cuda())
    assert_close(actual.cpu(), expected, 1e-12)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cuda_pair_form_adjoints_equal_the_cpu_kernel(dtype, tolerance):
    factors, pair_type, centers = pair_form_problem(20000, 400, 4, 32, 7, 8)
    factors = [f.to(dtype) for f in factors]
    expected = ops.pair_form_adjoints(*factors, pair_type, centers, [True] * 3)
    cuda = [f.cuda() for f in factors]
    actual = ops.pair_form_adjoints(*cuda, pair_type.cuda(), centers.cuda(), [True] * 3)
    for on_cuda, on_cpu in zip(actual, expected, strict=True):
        assert_close(on_cuda.cpu(), on_cpu, tolerance)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
def test_cuda_first_block_takes_the_kernel_with_its_derivatives():
    """edges_to_nodes_by_pair_type on CUDA runs pair_form (and pair_form_adjoints in the
    backward) in a LOREM_CUDA_KERNELS build: the sum and its gradients == the CPU's."""
    factors, pair_type, centers = pair_form_problem(5000, 120, 4, 8, 7, 8)
    radial, table, harmonics, node_grad = factors
    results = []
    for device in ("cpu", "cuda"):
        leaves = [f.to(device).requires_grad_() for f in (radial, table, harmonics)]
        out = edges_to_nodes_by_pair_type(
            leaves[0], leaves[1], pair_type.to(device), leaves[2], centers.to(device), 120
        )
        grads = torch.autograd.grad(out, leaves, node_grad.to(device))
        results.append([t.detach().cpu() for t in (out, *grads)])
    for on_cuda, on_cpu in zip(results[1], results[0], strict=True):
        assert_close(on_cuda, on_cpu, 1e-12)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("target", range(3))
def test_cuda_pair_sum_kernel_equals_the_cpu_kernel(target):
    factors, centers, others = pair_sum_problem(200_000, 4000, 9000, 10, seed=target)
    expected = pair_sum_call(ops.pair_sum_form, target, factors, centers, others)
    cuda = [f.cuda() for f in factors]
    actual = pair_sum_call(ops.pair_sum_form, target, cuda, centers.cuda(), others.cuda())
    assert_close(actual.cpu(), expected, 1e-12)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("target", range(5))
def test_cuda_message_kernel_equals_the_cpu_kernel(target):
    problem = message_problem(6, 8, 3000, 200, seed=target)
    values = [problem[name] for name in FACTORS]
    expected = message_call(ops.message_form, problem, target, values)
    cuda = message_problem_on(problem, "cuda")
    actual = message_call(ops.message_form, cuda, target, on(values, "cuda"))
    assert_close(actual.cpu(), expected, 1e-12)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("target", range(4))
def test_cuda_coupling_kernel_equals_the_cpu_kernel(target):
    problem = coupling_problem((6, 6, 6), 8, 500, seed=target)
    values = [problem[name] for name in SLOTS]
    expected = coupling_call(ops.coupling_form, problem, target, values)
    cuda = dict(problem, entries=problem["entries"].cuda(), coupling=problem["coupling"].cuda())
    actual = coupling_call(ops.coupling_form, cuda, target, on(values, "cuda"))
    assert_close(actual.cpu(), expected, 1e-12)


# -- the edge harmonics: one thread per edge --


def harmonics_problem(count, dtype, device="cpu", seed=0):
    from lorem_torch.nn.spherical import harmonic_polynomials

    terms, coefficients = harmonic_polynomials(6)
    generator = torch.Generator().manual_seed(seed)

    def random(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).to(dtype)

    vectors = 1.3 * random(count, 3)  # off the sphere: every monomial counts
    gradient, direction = random(count, 49), random(count, 3)
    on_device = [
        t.to(device) for t in (vectors, gradient, direction, terms, coefficients.to(dtype))
    ]
    return on_device


HARMONICS_KINDS = {0: (False, False), 1: (True, False), 2: (False, True), 3: (True, True)}


def harmonics_call(op, kind, vectors, gradient, direction, terms, coefficients):
    with_gradient, with_direction = HARMONICS_KINDS[kind]
    if op is ops._harmonics_device:
        return op(
            kind,
            vectors,
            gradient if with_gradient else None,
            direction if with_direction else None,
            terms,
            coefficients,
            49,
        )
    named = [ops.harmonics, ops.harmonics_vjp, ops.harmonics_jvp, ops.harmonics_hvp][kind]
    middle = [t for t, used in ((gradient, with_gradient), (direction, with_direction)) if used]
    return named(vectors, *middle, terms, coefficients, 49)


@pytest.mark.parametrize("count", [0, 1, 7, 1001])
@pytest.mark.parametrize("kind", range(4))
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_harmonics_threads_equal_the_cpu_kernel(count, kind, dtype, tolerance):
    """Values, vjp, jvp and hvp by the device kernel's threads == the CPU kernel."""
    problem = harmonics_problem(count, dtype, seed=count + kind)
    expected = harmonics_call(ops.harmonics, kind, *problem)
    actual = harmonics_call(ops._harmonics_device, kind, *problem)
    assert actual.shape == expected.shape
    assert_close(actual, expected, tolerance)


def test_harmonics_threads_check_their_inputs():
    vectors, gradient, direction, terms, coefficients = harmonics_problem(5, torch.float64)
    with pytest.raises(RuntimeError, match="vectors must be \\[P, 3\\]"):
        ops._harmonics_device(0, vectors[:, :2], None, None, terms, coefficients, 49)
    with pytest.raises(RuntimeError, match="gradient must be \\[5, 49\\]"):
        ops._harmonics_device(1, vectors, gradient[:, :9], None, terms, coefficients, 49)
    with pytest.raises(RuntimeError, match="this kind takes no gradient"):
        ops._harmonics_device(0, vectors, gradient, None, terms, coefficients, 49)
    with pytest.raises(RuntimeError, match="this kind needs a direction"):
        ops._harmonics_device(3, vectors, gradient, None, terms, coefficients, 49)
    with pytest.raises(RuntimeError, match="this kind needs a gradient"):
        ops.harmonics_chunked(1, vectors, None, None, terms, coefficients, 49)
    high = terms.clone()
    high[0, 1] = 13  # x^13: more powers than a thread holds
    with pytest.raises(RuntimeError, match="powers up to 12, these terms need 13"):
        ops._harmonics_device(0, vectors, None, None, high, coefficients, 49)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("kind", range(4))
def test_cuda_harmonics_kernel_equals_the_cpu_kernel(kind):
    problem = harmonics_problem(300_001, torch.float64, seed=kind)
    expected = harmonics_call(ops.harmonics, kind, *problem)
    cuda = [t.cuda() for t in problem]
    for op in (ops.harmonics, ops._harmonics_device):  # the operator takes the kernel on CUDA
        assert_close(harmonics_call(op, kind, *cuda).cpu(), expected, 1e-12)


# -- the whole model on the kernel's threads --


HARMONICS_OPS = ("harmonics", "harmonics_vjp", "harmonics_jvp", "harmonics_hvp")


def harmonics_on_threads(kind):
    with_gradient, with_direction = HARMONICS_KINDS[kind]

    def run(vectors, *rest):
        gradient = rest[0] if with_gradient else None
        direction = rest[int(with_gradient)] if with_direction else None
        terms, coefficients, components = rest[-3:]
        return ops._harmonics_device(
            kind, vectors, gradient, direction, terms, coefficients, components
        )

    return run


def mesh_spread_on_threads(charges, coordinates, directions, lo, shape, mesh, order):
    return ops._mesh_op_device(
        "spread", charges, None, coordinates, directions, lo, shape, mesh, order
    )


def mesh_interpolate_on_threads(brick, coordinates, directions, lo, mesh, order):
    shape = list(brick.shape[1:])
    return ops._mesh_op_device(
        "interpolate", brick, None, coordinates, directions, lo, shape, mesh, order
    )


def mesh_gradient_on_threads(brick, charges, coordinates, directions, lo, mesh, order):
    shape = list(brick.shape[1:])
    return ops._mesh_op_device(
        "gradient", brick, charges, coordinates, directions, lo, shape, mesh, order
    )


MESH_OPS = {
    "mesh_spread": mesh_spread_on_threads,
    "mesh_interpolate": mesh_interpolate_on_threads,
    "mesh_gradient": mesh_gradient_on_threads,
}


@contextlib.contextmanager
def device_kernels_on_cpu():
    """Routes the CPU dispatch of the four forms (and of pair_form's adjoints), of the
    edge harmonics and of the PME mesh operators to the device kernels' threads, counting the calls; on leaving, the
    registrations go and the CPU kernels are back."""
    calls = {}

    def routed(name, device_op):
        def run(*args):
            calls[name] = calls.get(name, 0) + 1
            return device_op(*args)

        return run

    def adjoints(radial, table, harmonics, node_grad, pair_type, centers, needed):
        calls["pair_form_adjoints"] = calls.get("pair_form_adjoints", 0) + 1
        factors = (radial, table, harmonics)
        out = ops._pair_form_adjoints_device(*factors, node_grad, pair_type, centers, needed)
        # a Python kernel returns tensors only: zeros where a gradient was not needed
        return [torch.zeros_like(f) if g is None else g for f, g in zip(factors, out, strict=True)]

    library = torch.library.Library("lorem", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for name in ("message_form", "coupling_form", "pair_form", "pair_sum_form"):
                library.impl(name, routed(name, getattr(ops, f"_{name}_device")), "CPU")
            library.impl("pair_form_adjoints", adjoints, "CPU")
            for kind, name in enumerate(HARMONICS_OPS):
                library.impl(name, routed(name, harmonics_on_threads(kind)), "CPU")
            for name, device_op in MESH_OPS.items():
                library.impl(name, routed(name, device_op), "CPU")
        yield calls
    finally:
        library._destroy()


def model_step(model, atoms_list):
    out = evaluate(model, atoms_list, stress=True)
    return [out["energy"], out["forces"], out["stress"], *force_loss_gradients(model, atoms_list)]


@pytest.mark.parametrize("layers, long_range", [(0, "ewald"), (1, "ewald"), (0, "pme")])
def test_model_on_the_kernel_threads_equals_the_cpu_kernels(layers, long_range):
    """Energy, forces, stress and the force-training gradients of a model whose four forms
    and edge harmonics all run on the device kernels' threads (as a LOREM_CUDA_KERNELS build runs them on
    CUDA, first and second derivatives included) == the CPU kernels, float64."""
    model = small_model(num_message_passing=layers, long_range={"method": long_range})
    atoms_list = [triclinic_water()]
    expected = model_step(model, atoms_list)
    with device_kernels_on_cpu() as calls:
        actual = model_step(model, atoms_list)
    names = {"coupling_form", "pair_form", "pair_form_adjoints", "pair_sum_form"}
    # force training differentiates vjp in its gradient (jvp); hvp, its derivative in the
    # vectors, is not reached by parameter gradients
    names |= {"harmonics", "harmonics_vjp", "harmonics_jvp"}
    if long_range == "pme":
        names |= set(MESH_OPS)
    if layers:
        names.add("message_form")
    assert names <= set(calls), sorted(set(names) - set(calls))
    for routed, reference in zip(actual, expected, strict=True):
        assert_close(routed, reference, 1e-10)
    # and the CPU kernels are back
    with device_kernels_on_cpu() as calls:
        pass
    model_step(model, atoms_list)
    assert not calls


def test_several_bad_indices_are_named_as_the_cpu_kernel_names_them():
    problem = message_problem(2, 3, 6, 3)
    problem["centers"] = problem["centers"].clone()
    problem["others"] = problem["others"].clone()
    problem["centers"][4] = 9
    problem["others"][1] = 9
    values = [problem[name] for name in FACTORS]
    for op in (ops.message_form, ops._message_form_device):  # centres first
        with pytest.raises(RuntimeError, match=r"centers\[4\] = 9 is outside"):
            message_call(op, problem, 4, values)
    problem = message_problem(2, 3, 6, 3)
    problem["entries"] = problem["entries"].clone()
    problem["entries"][9, 0] = 50
    problem["entries"][3, 2] = -1
    values = [problem[name] for name in FACTORS]
    for op in (ops.message_form, ops._message_form_device):  # the first entry
        with pytest.raises(RuntimeError, match="entry 3 indexes outside"):
            message_call(op, problem, 4, values)


@pytest.mark.parametrize("op", [ops.message_form_chunked, ops._message_form_device])
def test_zero_channels_give_zeros(op):
    """No channels: the harmonics' gradient (which has no channel axis) is zero, and
    the chunked path no longer divides by zero on the way."""
    problem = message_problem(2, 0, 5, 3)
    values = [problem[name] for name in FACTORS]
    out = message_call(op, problem, 0, values)
    assert out.shape == (5, 9) and not out.any()
