"""Cardinal B-splines for smooth particle-mesh Ewald (Essmann et al., J. Chem. Phys. 103, 8577).

M_p is the cardinal B-spline of order p: the p-fold convolution of the unit box,
supported on [0, p), a piecewise polynomial of degree p - 1 with p - 2 continuous
derivatives (so forces, and their derivatives for training on forces, are smooth
for p >= 4).
"""

import math
from typing import List

import torch


def stencil_weights(fraction: torch.Tensor, order: int) -> torch.Tensor:
    """[...] fractional parts x in [0, 1) -> [..., p] weights M_p(x + p - 1 - t), t = 0..p-1.

    A point at mesh coordinate u = floor(u) + x touches the p mesh points
    floor(u) - p + 1 + t with these weights (they sum to 1). Differentiable in x.
    """
    # values[j] = M_n(x + j), j = 0..n-1, built up from M_1 = 1 on [0, 1) by
    # M_n(t) = (t M_{n-1}(t) + (n - t) M_{n-1}(t - 1)) / (n - 1)
    values: List[torch.Tensor] = [torch.ones_like(fraction)]
    for n in range(2, order + 1):
        new: List[torch.Tensor] = []
        for j in range(n):
            term = torch.zeros_like(fraction)
            if j < n - 1:
                term = term + (fraction + j) * values[j]
            if j > 0:
                term = term + (n - fraction - j) * values[j - 1]
            new.append(term / (n - 1))
        values = new
    values.reverse()
    return torch.stack(values, dim=-1)


def spline_moduli(size: int, order: int) -> torch.Tensor:
    """[size] |b(m)|^2 = 1 / |sum_{j=0}^{p-2} M_p(j + 1) exp(2 pi i m j / size)|^2 in float64,
    for the FFT indices m = 0..size-1 (the Euler exponential spline factors of SPME)."""
    knots = stencil_weights(torch.zeros(1, dtype=torch.float64), order)[0].flip(0)
    # knots[j] = M_p(j), j = 0..p-1 (M_p(0) = 0)
    m = torch.arange(size, dtype=torch.float64)
    real = torch.zeros(size, dtype=torch.float64)
    imag = torch.zeros(size, dtype=torch.float64)
    for j in range(order - 1):
        angle = 2.0 * math.pi * m * j / size
        real = real + knots[j + 1] * torch.cos(angle)
        imag = imag + knots[j + 1] * torch.sin(angle)
    return 1.0 / (real * real + imag * imag)
