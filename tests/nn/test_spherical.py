"""The e3x basis of spherical harmonics and Clebsch-Gordan coefficients, and the
degree-wise norm."""

import numpy as np
import torch
from conftest import FIXTURES

from lorem_torch.nn.spherical import SphericalHarmonics, clebsch_gordan, degree_wise_norm


def test_harmonics_and_coupling_match_e3x():
    # values written by e3x itself (tools/derive_e3x_basis.py dump)
    data = np.load(FIXTURES / "e3x_spherical.npz")
    harmonics = SphericalHarmonics(6).double()(torch.tensor(data["r"]))
    np.testing.assert_allclose(harmonics.numpy(), data["sh"], atol=1e-12)
    np.testing.assert_allclose(clebsch_gordan(6, 6, 6).numpy(), data["cg"], atol=1e-12)


def test_harmonics_exact_after_dtype_round_trip():
    module = SphericalHarmonics(6).float().double()
    data = np.load(FIXTURES / "e3x_spherical.npz")
    np.testing.assert_allclose(module(torch.tensor(data["r"])).numpy(), data["sh"], atol=1e-12)


def test_norm_has_finite_first_and_second_derivatives_at_zero():
    x = torch.zeros(2, 49, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 7, 3, dtype=torch.float64)
    (first,) = torch.autograd.grad((degree_wise_norm(x, 6) * weights).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad((first * first).sum(), x)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    # and away from zero, the gradient is the unit vector of the block
    y = torch.randn(1, 49, 1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(degree_wise_norm(y, 6)[0, 2, 0], y)
    block = y.detach()[0, 4:9, 0]
    torch.testing.assert_close(grad[0, 4:9, 0], block / block.norm())


def test_degree_zero_norm_has_no_tolerance():
    # a scalar channel at 1e-6 of the features' norm is genuine: its norm is |x0| and its
    # gradient sign(x0), in float32 as in float64 (degree 0 never vanishes by symmetry)
    x = torch.randn(1, 49, 2, dtype=torch.float64)
    x[0, 0, 0] = -1e-6 * x.norm()
    for dtype in (torch.float64, torch.float32):
        y = x.to(dtype).clone().requires_grad_(True)
        norms = degree_wise_norm(y, 6)
        (grad,) = torch.autograd.grad(norms[0, 0, 0], y)
        assert float(norms[0, 0, 0].detach()) == abs(float(y[0, 0, 0].detach()))
        assert float(grad[0, 0, 0]) == -1.0
    # an exact zero stays the central difference, 0
    x[0, 0, 0] = 0.0
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(degree_wise_norm(y, 6)[0, 0, 0], y)
    assert float(grad[0, 0, 0]) == 0.0


def test_norm_with_max_degree_zero_is_abs():
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor([[[-2.0, 0.5, 1e-6, -1e-7]]], dtype=dtype)  # small ones are genuine
        torch.testing.assert_close(degree_wise_norm(x, 0), x.abs(), rtol=0, atol=0)
