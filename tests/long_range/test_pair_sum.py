"""lorem::pair_sum_form (cpp/src/ops/pair_sum_ops.cpp), the real-space sum of Ewald and
PME: its CPU kernel against its chunked torch-op kernel and against plain PyTorch, its
first and second derivatives, the real-space potentials fused and plain, and its
refusals."""

import math

import pytest
import torch

from lorem_torch.long_range.terms import real_space_potentials

PAIR_VALUES, SOURCES, RECEIVERS = 0, 1, 2


def problem(num_pairs=200, num_receivers=13, num_sources=21, channels=3, dtype=torch.float64):
    """Random pairs with unsorted centres, sources beyond the receivers (ghosts), and
    atoms of either kind that no pair touches."""
    generator = torch.Generator().manual_seed(num_pairs + channels)
    centers = torch.randint(0, num_receivers - 1, (num_pairs,), generator=generator)
    others = torch.randint(0, num_sources - 1, (num_pairs,), generator=generator)
    factors = [
        torch.randn(num_pairs, dtype=dtype, generator=generator),
        torch.randn(num_sources, channels, dtype=dtype, generator=generator),
        torch.randn(num_receivers, channels, dtype=dtype, generator=generator),
    ]
    return factors, centers, others


def plain(target, factors, centers, others):
    """dF/d(factor target) of F = sum_p f_p q[others_p] . G[centers_p], by autograd."""
    leaves = [f.detach().clone().requires_grad_() for f in factors]
    f, q, g = leaves
    form = (f[:, None] * q[others] * g[centers]).sum()
    return torch.autograd.grad(form, leaves[target])[0]


def call(op, target, factors, centers, others):
    inputs = list(factors)
    shape = list(inputs[target].shape)
    inputs[target] = None
    return op(target, shape, *inputs, centers, others)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3, 10])
@pytest.mark.parametrize("target", [PAIR_VALUES, SOURCES, RECEIVERS])
def test_cpu_kernel_equals_chunked_and_plain(target, channels, dtype):
    factors, centers, others = problem(channels=channels, dtype=dtype)
    fused = call(torch.ops.lorem.pair_sum_form, target, factors, centers, others)
    chunked = call(torch.ops.lorem.pair_sum_form_chunked, target, factors, centers, others)
    reference = plain(target, factors, centers, others)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-13
    assert fused.dtype == dtype and fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, rtol=0, atol=tolerance)
    torch.testing.assert_close(chunked, reference, rtol=0, atol=tolerance)
    # atoms that no pair writes to come out zero, not uninitialised
    if target != PAIR_VALUES:
        index = others if target == SOURCES else centers
        untouched = torch.ones(fused.shape[0], dtype=torch.bool)
        untouched[index] = False
        assert untouched.any() and (fused[untouched] == 0).all()


def test_no_pairs():
    factors, centers, others = problem(num_pairs=0)
    for target in (PAIR_VALUES, SOURCES, RECEIVERS):
        out = call(torch.ops.lorem.pair_sum_form, target, factors, centers, others)
        assert out.shape == factors[target].shape and (out == 0).all()


@pytest.mark.parametrize("target", [PAIR_VALUES, SOURCES, RECEIVERS])
def test_first_and_second_derivatives(target):
    factors, centers, others = problem(num_pairs=30, num_receivers=5, num_sources=7)
    leaves = [f.requires_grad_() for i, f in enumerate(factors) if i != target]
    shape = list(factors[target].shape)

    def op(*given):
        inputs = list(given)
        inputs.insert(target, None)
        return torch.ops.lorem.pair_sum_form(target, shape, *inputs, centers, others)

    assert torch.autograd.gradcheck(op, leaves)
    assert torch.autograd.gradgradcheck(op, leaves)


def real_space_inputs(dtype):
    torch.manual_seed(1)
    num_atoms, num_ghosts, num_pairs = 12, 5, 90
    centers = torch.randint(0, num_atoms, (num_pairs,))
    others = torch.randint(0, num_atoms + num_ghosts, (num_pairs,))
    distances = (1.0 + 4.0 * torch.rand(num_pairs, dtype=dtype)).requires_grad_()
    charges = torch.randn(num_atoms + num_ghosts, 4, dtype=dtype, requires_grad=True)
    return charges, num_atoms, centers, others, distances


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_space_potentials_fused_equal_plain_with_derivatives(dtype):
    """Values, gradients in distances and charges, and the second derivative that force
    training takes (the gradient of a loss on the distance gradient)."""
    charges, num_atoms, centers, others, distances = real_space_inputs(dtype)
    weights = torch.randn(num_atoms, 4, dtype=dtype)
    results = {}
    for fused in (True, False):
        potentials = real_space_potentials(
            charges, num_atoms, centers, others, distances, 1.25, fused
        )
        energy = (potentials * weights).sum()
        d_distances, d_charges = torch.autograd.grad(
            energy, [distances, charges], create_graph=True
        )
        (second,) = torch.autograd.grad((d_distances**2).sum(), [charges])
        results[fused] = (potentials, d_distances, d_charges, second)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-13
    for fused_value, plain_value in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(fused_value, plain_value, rtol=0, atol=tolerance)


def test_real_space_of_one_pair_is_analytic():
    """Two atoms in both orders of a full list: V_0 = q_1 erfc(r / (sqrt(2) sigma)) / r / 2."""
    r, sigma = 2.3, 1.25
    charges = torch.tensor([[0.7, -1.1], [-0.4, 2.0]], dtype=torch.float64)
    distances = torch.tensor([r, r], dtype=torch.float64)
    potentials = real_space_potentials(
        charges, 2, torch.tensor([0, 1]), torch.tensor([1, 0]), distances, sigma
    )
    pair = math.erfc(r / (math.sqrt(2.0) * sigma)) / r / 2.0
    expected = torch.stack([charges[1] * pair, charges[0] * pair])
    torch.testing.assert_close(potentials, expected, rtol=0, atol=1e-15)


def test_refusals_name_the_problem():
    factors, centers, others = problem()
    f, q, g = factors
    op = torch.ops.lorem.pair_sum_form
    with pytest.raises(RuntimeError, match=r"others\[\d+\] = 99 is outside \[0, 21\)"):
        bad = others.clone()
        bad[3] = 99
        op(RECEIVERS, list(g.shape), f, q, None, centers, bad)
    with pytest.raises(RuntimeError, match=r"centers\[\d+\] = -1 is outside"):
        bad = centers.clone()
        bad[0] = -1
        op(SOURCES, list(q.shape), f, None, g, bad, others)
    with pytest.raises(RuntimeError, match="target's slot \\(receivers\\) must be None"):
        op(RECEIVERS, list(g.shape), f, q, g, centers, others)
    with pytest.raises(RuntimeError, match="sources differs"):
        op(RECEIVERS, list(g.shape), f, q.float(), None, centers, others)
    with pytest.raises(
        RuntimeError, match="inconsistent channels: receivers has 2 where an earlier factor has 3"
    ):
        op(PAIR_VALUES, list(f.shape), None, q, g[:, :2], centers, others)
    with pytest.raises(RuntimeError, match="centers and others must be \\[200\\]"):
        op(RECEIVERS, list(g.shape), f, q, None, centers[:5], others)
    with pytest.raises(RuntimeError, match="must be int64"):
        op(RECEIVERS, list(g.shape), f, q, None, centers.int(), others.int())


@pytest.mark.parametrize("op", ["pair_sum_form", "pair_sum_form_chunked"])
def test_bad_indices_are_refused_with_nothing_to_sum(op):
    """No channels: nothing to sum, but an index outside its range is still refused (as
    the plain path and the backward refuse it), by both kernels."""
    factors, centers, others = problem(channels=0)
    bad = others.clone()
    bad[1] = 99
    function = getattr(torch.ops.lorem, op)
    for target in (SOURCES, RECEIVERS):
        with pytest.raises(RuntimeError, match="others.*outside \\[0, 21\\)"):
            call(function, target, factors, centers, bad)
    with pytest.raises(RuntimeError, match="negative size"):
        torch.ops.lorem.pair_sum_form(
            RECEIVERS, [-1, 0], factors[0], factors[1], None, centers, others
        )
