"""Radial basis functions and cutoff functions (e3x definitions)."""

import math

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.radial_basis)
from .constants import ConstantsModule


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """[P] -> [P]: 0.5 cos(pi r / cutoff) + 0.5 below the cutoff, 0 beyond."""
    x = r / cutoff
    return torch.where(x < 1, 0.5 * torch.cos(math.pi * x) + 0.5, torch.zeros_like(x))


def radial_basis_with_cutoff(
    distances: torch.Tensor, num: int, limit: float, cutoff: float
) -> torch.Tensor:
    """[P] -> [P, num]: BernsteinBasis(num, limit)(r) * cosine_cutoff(r, cutoff)[:, None] as
    one operator (cpp/src/ops/basis_ops.cpp) that keeps only the distances for its
    backward, twice differentiable."""
    return torch.ops.lorem.radial_basis(distances, num, limit, cutoff)


class BernsteinBasis(ConstantsModule):
    """[P] -> [P, num] Bernstein polynomials binom(n, k) x^k (1 - x)^(n - k), x = r / limit.

    e3x's `basic_bernstein`: evaluated in log space, zero outside [0, 1] except
    the end-point polynomials, which are one at their end point.
    """

    def __init__(self, num: int, limit: float):
        super().__init__()
        if num < 2:
            raise ValueError(f"num_radial must be at least 2, got {num}")
        self.num = num
        self.limit = limit
        degree = num - 1
        k = torch.arange(num, dtype=torch.float64)
        log_binomial = math.lgamma(degree + 1) - torch.lgamma(k + 1) - torch.lgamma(degree - k + 1)
        self.register_constant("k", k)
        self.register_constant("log_binomial", log_binomial)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        degree = self.num - 1
        x = (r / self.limit).unsqueeze(-1)
        # e3x's margin is finfo(dtype).epsneg (torch.finfo is not scriptable)
        eps = 1.1102230246251565e-16 if x.dtype == torch.float64 else 5.960464477539063e-08
        below = x < eps
        above = x > 1 - eps
        outside = below | above
        safe_x = torch.where(outside, torch.full_like(x, 0.5), x)
        y = torch.exp(
            self.log_binomial
            + self.k * torch.log(safe_x)
            + (degree - self.k) * torch.log1p(-safe_x)
        )
        y = torch.where(outside, torch.zeros_like(y), y)
        y = torch.where(below & (self.k == 0), torch.ones_like(y), y)
        y = torch.where(above & (self.k == degree), torch.ones_like(y), y)
        return y
