"""The fused radial basis (cpp/src/ops/basis_ops.cpp): Bernstein polynomials times the
cosine cutoff, against nn/radial.py's plain PyTorch, against its own torch-op kernel,
and its first and second derivatives."""

import pytest
import torch

from lorem_torch.nn.radial import BernsteinBasis, cosine_cutoff, radial_basis_with_cutoff

NUM, CUTOFF = 8, 5.0


def distances(dtype, count=200):
    torch.manual_seed(0)
    r = torch.rand(count, dtype=dtype) * 6.0
    # the end points and the cutoff, where the plain basis switches branches
    extra = torch.tensor([0.0, 1e-20, CUTOFF, CUTOFF - 1e-9, CUTOFF + 1e-3, 2.5], dtype=dtype)
    return torch.cat([r, extra])


def plain(r):
    return BernsteinBasis(NUM, CUTOFF).to(r.dtype)(r) * cosine_cutoff(r, CUTOFF)[:, None]


def values_and_derivatives(r, g, d):
    """The CPU kernels' values, vjp, jvp and hvp (the order of _radial_basis_composite's kinds)."""
    ops = torch.ops.lorem
    return [
        ops.radial_basis(r, NUM, CUTOFF, CUTOFF),
        ops.radial_basis_vjp(r, g, NUM, CUTOFF, CUTOFF),
        ops.radial_basis_jvp(r, d, NUM, CUTOFF, CUTOFF),
        ops.radial_basis_hvp(r, g, d, NUM, CUTOFF, CUTOFF),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_derivatives_equal_plain_torch(dtype):
    r = distances(dtype).requires_grad_()
    fused = radial_basis_with_cutoff(r, NUM, CUTOFF, CUTOFF)
    reference = plain(r)
    tolerance = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fused, reference, rtol=0, atol=tolerance)
    weights = torch.randn_like(reference)
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), r, create_graph=True)
    (g_plain,) = torch.autograd.grad((reference * weights).sum(), r, create_graph=True)
    scale = float(g_plain.abs().max())
    torch.testing.assert_close(g_fused, g_plain, rtol=0, atol=tolerance * scale)
    # force training: the gradient differentiated once more, in r and in the weights
    weights.requires_grad_()
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), r, create_graph=True)
    (g_plain,) = torch.autograd.grad((reference * weights).sum(), r, create_graph=True)
    second_fused = torch.autograd.grad((g_fused**2).sum(), [r, weights])
    second_plain = torch.autograd.grad((g_plain**2).sum(), [r, weights])
    for a, b in zip(second_fused, second_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance * float(b.abs().max()))


def test_cpu_kernel_equals_the_torch_op_kernel():
    r = distances(torch.float64)
    g = torch.randn(r.shape[0], NUM, dtype=torch.float64)
    d = torch.randn(r.shape[0], dtype=torch.float64)
    ops = torch.ops.lorem
    cpu = values_and_derivatives(r, g, d)
    for kind, value in enumerate(cpu):
        composite = ops._radial_basis_composite(kind, r, g, d, NUM, CUTOFF, CUTOFF)
        torch.testing.assert_close(value, composite, rtol=0, atol=1e-12, msg=str(kind))


def test_gradcheck_and_gradgradcheck():
    r = (torch.rand(12, dtype=torch.float64) * 4.5 + 0.2).requires_grad_()
    function = lambda r: radial_basis_with_cutoff(r, NUM, CUTOFF, CUTOFF)  # noqa: E731
    assert torch.autograd.gradcheck(function, (r,))
    assert torch.autograd.gradgradcheck(function, (r,))


def test_many_radial_functions():
    """No fixed buffer size: 300 functions as the plain basis gives them."""
    r = distances(torch.float64)
    fused = radial_basis_with_cutoff(r, 300, CUTOFF, CUTOFF)
    reference = BernsteinBasis(300, CUTOFF).double()(r) * cosine_cutoff(r, CUTOFF)[:, None]
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-14)


def test_refusals():
    r = distances(torch.float64).requires_grad_()
    with pytest.raises(RuntimeError, match="num_radial must be at least 2"):
        torch.ops.lorem.radial_basis(r, 1, CUTOFF, CUTOFF)
    with pytest.raises(RuntimeError, match=r"distances must be \[P\]"):
        torch.ops.lorem.radial_basis(r[:, None], NUM, CUTOFF, CUTOFF)
    values = radial_basis_with_cutoff(r, NUM, CUTOFF, CUTOFF)
    (first,) = torch.autograd.grad(values.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives of the radial basis"):
        torch.autograd.grad(second.sum(), r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 3, 4, 5, 9, 1001])
def test_cpu_lanes_equal_the_torch_op_kernel_at_every_block_size(dtype, count):
    """The CPU kernel takes four distances at a time (the last block partly empty), the
    blocks in parallel, and a block with a distance at the basis' ends edge by edge:
    every count, with and without such a distance, on two threads."""
    generator = torch.Generator().manual_seed(count)
    r = (0.1 + 5.5 * torch.rand(count, dtype=torch.float64, generator=generator)).to(dtype)
    g = torch.randn(count, NUM, dtype=torch.float64, generator=generator).to(dtype)
    d = torch.randn(count, dtype=torch.float64, generator=generator).to(dtype)
    ops = torch.ops.lorem
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for with_end in (False, True):
            if with_end:
                r = r.clone()
                r[count // 2] = 0.0  # this block takes the edge-by-edge path
            lanes = values_and_derivatives(r, g, d)
            for kind, value in enumerate(lanes):
                # float32 against the float64 reference of the same inputs
                reference = ops._radial_basis_composite(
                    kind, r.double(), g.double(), d.double(), NUM, CUTOFF, CUTOFF
                )
                scale = float(reference.abs().max())
                tolerance = (1e-5 if dtype == torch.float32 else 1e-12) * scale
                torch.testing.assert_close(value.double(), reference, rtol=0, atol=tolerance)
    finally:
        torch.set_num_threads(threads)
