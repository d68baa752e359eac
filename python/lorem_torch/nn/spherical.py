"""Real spherical harmonics and Clebsch-Gordan coupling in the e3x basis.

Spherical features are stored as ``[..., (max_degree + 1)**2, features]`` with the
components of degree l at ``l**2 : (l + 1)**2``, in the basis of e3x (lorem-jax's
library: Racah normalisation, Cartesian order). The harmonics and coupling
coefficients come from e3nn and are rotated into that basis once, here:

    Y_e3x[l] = P[l] @ Y_e3nn[l]            (P[l] orthogonal, see _e3x_basis.py)
    CG_e3x[l1, l2, l3] = sqrt(2 l3 + 1) * (P[l1] x P[l2] x P[l3]) wigner_3j(l1, l2, l3)

Keeping e3x's basis (rather than e3nn's) means lorem-jax weights load unchanged
and the l = 2 charges mean the same thing in both implementations.
"""

import math
from typing import List

import torch
from e3nn import o3

from ._e3x_basis import E3X_FROM_E3NN
from .constants import ConstantsModule


def num_components(max_degree: int) -> int:
    return (max_degree + 1) ** 2


def degree_of_component(max_degree: int) -> torch.Tensor:
    """[(max_degree + 1)**2] degree l of each component."""
    return torch.repeat_interleave(
        torch.arange(max_degree + 1), torch.tensor([2 * l + 1 for l in range(max_degree + 1)])
    )


def e3x_basis_change(max_degree: int, dtype=torch.float64) -> torch.Tensor:
    """[(L+1)**2, (L+1)**2] block-diagonal P with Y_e3x = Y_e3nn @ P.T."""
    if max_degree >= len(E3X_FROM_E3NN):
        raise ValueError(
            f"max_degree {max_degree} is above {len(E3X_FROM_E3NN) - 1}, the largest "
            "degree whose e3x basis is tabulated (tools/derive_e3x_basis.py)"
        )
    return torch.block_diag(
        *[torch.tensor(E3X_FROM_E3NN[l], dtype=dtype) for l in range(max_degree + 1)]
    )


def clebsch_gordan(max_degree1: int, max_degree2: int, max_degree3: int) -> torch.Tensor:
    """[(L1+1)**2, (L2+1)**2, (L3+1)**2] e3x-convention coupling coefficients (float64)."""
    cg = torch.zeros(
        num_components(max_degree1),
        num_components(max_degree2),
        num_components(max_degree3),
        dtype=torch.float64,
    )
    for l1 in range(max_degree1 + 1):
        p1 = torch.tensor(E3X_FROM_E3NN[l1], dtype=torch.float64)
        for l2 in range(max_degree2 + 1):
            p2 = torch.tensor(E3X_FROM_E3NN[l2], dtype=torch.float64)
            for l3 in range(abs(l1 - l2), min(l1 + l2, max_degree3) + 1):
                p3 = torch.tensor(E3X_FROM_E3NN[l3], dtype=torch.float64)
                w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
                block = torch.einsum("ai,bj,ck,ijk->abc", p1, p2, p3, w3j)
                cg[l1**2 : (l1 + 1) ** 2, l2**2 : (l2 + 1) ** 2, l3**2 : (l3 + 1) ** 2] = (
                    math.sqrt(2 * l3 + 1) * block
                )
    return cg


class SphericalHarmonics(ConstantsModule):
    """Unit vectors [P, 3] -> [P, (L+1)**2] real spherical harmonics, e3x basis."""

    def __init__(self, max_degree: int):
        super().__init__()
        self.max_degree = max_degree
        self.e3nn_harmonics = o3.SphericalHarmonics(
            list(range(max_degree + 1)), normalize=False, normalization="norm"
        )
        # Y_e3x = Y_e3nn @ basis.T; a buffer so that it follows .to(dtype/device)
        self.register_constant("basis_t", e3x_basis_change(max_degree).T.contiguous())

    def forward(self, unit_vectors: torch.Tensor) -> torch.Tensor:
        return self.e3nn_harmonics(unit_vectors) @ self.basis_t


def degree_wise_norm(x: torch.Tensor, max_degree: int) -> torch.Tensor:
    """[N, (L+1)**2, F] -> [N, L+1, F] Euclidean norm of each degree block.

    Twice differentiable everywhere: at an exactly vanishing block the value, the
    gradient and the second derivative are taken as zero (the reference's custom
    JVP does the same), elsewhere they are exact. The double `where` keeps the
    unused branch from producing NaN gradients.
    """
    squares = x * x
    blocks: List[torch.Tensor] = []
    for l in range(max_degree + 1):
        blocks.append(squares[:, l * l : (l + 1) * (l + 1), :].sum(dim=1))
    sum_of_squares = torch.stack(blocks, dim=1)
    positive = sum_of_squares > 0
    safe = torch.where(positive, sum_of_squares, torch.ones_like(sum_of_squares))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(sum_of_squares))
