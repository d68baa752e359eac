"""The device kernel of message_form and coupling_form (docs/design.md section 1.11).

Its threads (cpp/src/ops/sparse_form_threads.hpp) run on the CPU one after another
through `lorem::_message_form_device` / `_coupling_form_device`, and must equal the CPU
kernels for every target: the arithmetic and indexing a CUDA build runs. On a machine
with a GPU and a library built with LOREM_CUDA_KERNELS, the CUDA kernels themselves are
held to the CPU kernels in float64 to 1e-12 (benchmarks/gpu_batch.sh, step `kernels`).
"""

import pytest
import torch
from test_fused_messages import FACTORS
from test_fused_messages import call as message_call
from test_fused_messages import random_problem as message_problem
from test_fused_products import SLOTS
from test_fused_products import call as coupling_call
from test_fused_products import random_problem as coupling_problem

import lorem_torch  # noqa: F401  (loads the operators)

ops = torch.ops.lorem
CUDA_KERNELS = torch.cuda.is_available() and ops.cuda_kernels_compiled()


def assert_close(actual, expected, tolerance):
    scale = max(expected.abs().max().item(), 1.0)
    assert actual.shape == expected.shape
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
