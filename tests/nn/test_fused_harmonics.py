"""The spherical harmonics operators (lorem::harmonics and its derivatives,
cpp/src/ops/harmonics_ops.cpp): the polynomial terms against e3nn, every operator
against autograd of the reference, the CPU kernel against the torch-op kernel, first and
second derivatives, and the third refused by name."""

import pytest
import torch

from lorem_torch.nn.spherical import SphericalHarmonics, harmonic_polynomials

M = 49


def vectors(count, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(count, 3, dtype=dtype, generator=generator)
    return v / v.norm(dim=1, keepdim=True)


def reference_module(dtype=torch.float64):
    module = SphericalHarmonics(6).to(dtype)
    module.fused_harmonics = False
    return module


def test_polynomials_reproduce_e3nn_at_every_degree():
    terms, coefficients = harmonic_polynomials(6)
    assert terms.shape == (172, 4)
    assert torch.equal(terms[:, 1:].sum(1), torch.sqrt(terms[:, 0].double()).floor().long())
    u = vectors(500)
    fused = SphericalHarmonics(6).double()
    torch.testing.assert_close(fused(u), reference_module()(u), rtol=0, atol=2e-14)
    # homogeneous polynomials: the same off the sphere (the derivatives see that extension)
    scaled = 1.7 * u
    scale = 1.7 ** torch.sqrt(torch.arange(M).double()).floor()
    torch.testing.assert_close(fused(scaled), reference_module()(u) * scale, rtol=0, atol=1e-12)


def test_every_operator_equals_autograd_of_the_reference():
    terms, k = harmonic_polynomials(6)
    u = vectors(37, seed=1).requires_grad_(True)
    G = torch.randn(37, M, dtype=torch.float64)
    D = torch.randn(37, 3, dtype=torch.float64)
    Y = reference_module()(u)
    (vjp,) = torch.autograd.grad((Y * G).sum(), u, create_graph=True)
    (hvp,) = torch.autograd.grad((vjp * D).sum(), u)
    # jvp: the directional derivative, by forward-mode through the reference
    _, jvp = torch.func.jvp(lambda x: reference_module()(x), (u.detach(),), (D,))
    expected = {0: Y.detach(), 1: vjp.detach(), 2: jvp, 3: hvp}
    for kind, result in (
        (0, torch.ops.lorem.harmonics(u.detach(), terms, k, M)),
        (1, torch.ops.lorem.harmonics_vjp(u.detach(), G, terms, k, M)),
        (2, torch.ops.lorem.harmonics_jvp(u.detach(), D, terms, k, M)),
        (3, torch.ops.lorem.harmonics_hvp(u.detach(), G, D, terms, k, M)),
    ):
        scale = float(expected[kind].abs().max())
        torch.testing.assert_close(result, expected[kind], rtol=0, atol=1e-13 * scale)
        chunked = torch.ops.lorem.harmonics_chunked(
            kind,
            u.detach(),
            G if kind in (1, 3) else None,
            D if kind in (2, 3) else None,
            terms,
            k,
            M,
        )
        torch.testing.assert_close(chunked, expected[kind], rtol=0, atol=1e-13 * scale)


def test_first_and_second_derivatives():
    module = SphericalHarmonics(3).double()
    u = vectors(5, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(module, (u,))
    assert torch.autograd.gradgradcheck(module, (u,))


def test_third_derivative_is_refused_by_name():
    module = SphericalHarmonics(2).double()
    u = vectors(3, seed=3).requires_grad_(True)
    (g,) = torch.autograd.grad(module(u).pow(2).sum(), u, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives of the spherical harmonics"):
        torch.autograd.grad(h.sum(), u)


def test_float32_and_bad_input():
    terms, k = harmonic_polynomials(6)
    u = vectors(100, seed=4)
    exact = torch.ops.lorem.harmonics(u, terms, k, M)
    single = torch.ops.lorem.harmonics(u.float(), terms, k.float(), M)
    torch.testing.assert_close(single.double(), exact, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"vectors must be \[P, 3\]"):
        torch.ops.lorem.harmonics(u[:, :2], terms, k, M)
    with pytest.raises(RuntimeError, match="gradient must be"):
        torch.ops.lorem.harmonics_vjp(u, torch.zeros(100, 9, dtype=torch.float64), terms, k, M)
    assert torch.ops.lorem.harmonics(u[:0], terms, k, M).shape == (0, M)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("count", [1, 3, 4, 5, 8, 9, 17, 1001])
def test_cpu_lanes_equal_the_torch_op_kernel_at_every_block_size(dtype, count):
    """The CPU kernel takes the edges in blocks of one vector register (8 float32 or 4
    float64 edges, the last block partly empty) and the blocks in parallel: every count,
    on two threads, against the torch-op kernel."""
    terms, k = harmonic_polynomials(6)
    u = (1.3 * vectors(count, seed=count)).to(dtype)  # off the sphere: every monomial counts
    generator = torch.Generator().manual_seed(count)
    G = torch.randn(count, M, dtype=torch.float64, generator=generator).to(dtype)
    D = torch.randn(count, 3, dtype=torch.float64, generator=generator).to(dtype)
    k = k.to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lanes = [
            torch.ops.lorem.harmonics(u, terms, k, M),
            torch.ops.lorem.harmonics_vjp(u, G, terms, k, M),
            torch.ops.lorem.harmonics_jvp(u, D, terms, k, M),
            torch.ops.lorem.harmonics_hvp(u, G, D, terms, k, M),
        ]
    finally:
        torch.set_num_threads(threads)
    for kind, result in enumerate(lanes):
        # float32 against the float64 reference of the same inputs
        reference = torch.ops.lorem.harmonics_chunked(
            kind,
            u.double(),
            G.double() if kind in (1, 3) else None,
            D.double() if kind in (2, 3) else None,
            terms,
            k.double(),
            M,
        )
        scale = float(reference.abs().max())
        tolerance = (1e-5 if dtype == torch.float32 else 1e-13) * scale
        torch.testing.assert_close(result.double(), reference, rtol=0, atol=tolerance)
