"""The feature-wise tensor product of two spherical inputs as one operator over the
nonzero Clebsch-Gordan entries (lorem::coupling_form, C++: cpp/src/ops/coupling_ops.cpp).

    z[n, m3, c] = sum_e cg_e W[path_e, c] x1[n, m1_e, c] x2[n, m2_e, c]

For L = 6 x 6 -> 6 that is 6,460 entries where the dense product forms and keeps all
49 x 49 products per atom and channel (docs/design.md section 1.4). Its derivatives
are the same operator with other targets, so it is differentiable any number of times.
"""

from typing import Tuple

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.*)
from .spherical import clebsch_gordan, degree_of_component

# the basis change leaves round-off (~1e-17) where a coefficient is exactly zero
ROUND_OFF = 1e-12

# factor slots of lorem::coupling_form
INPUT1, INPUT2, WEIGHTS, GRADIENT = 0, 1, 2, 3


def product_entries(
    max_degree1: int, max_degree2: int, max_degree3: int, even_output: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nonzero coefficients of the product's allowed paths: even l1 + l2 + l3, or
    with `even_output` even l1 + l2 (TensorProduct's two parities).

    Returns entries [E, 4] int64 rows (m1, m2, m3, path), coefficients [E] float64, and
    path_index [paths] int64: the flat index (l1 * (L2+1) + l2) * (L3+1) + l3 of each
    path into the kernel [L1+1, L2+1, L3+1, s].
    """
    d1, d2, d3 = (degree_of_component(L) for L in (max_degree1, max_degree2, max_degree3))
    cg = clebsch_gordan(max_degree1, max_degree2, max_degree3)
    l1, l2, l3 = d1[:, None, None], d2[None, :, None], d3[None, None, :]
    degree_sum = l1 + l2 if even_output else l1 + l2 + l3
    allowed = (degree_sum % 2 == 0) & (cg.abs() > ROUND_OFF)
    m1, m2, m3 = torch.nonzero(allowed, as_tuple=True)
    flat_path = (d1[m1] * (max_degree2 + 1) + d2[m2]) * (max_degree3 + 1) + d3[m3]
    path_index, path = torch.unique(flat_path, return_inverse=True)
    entries = torch.stack([m1, m2, m3, path], dim=1)
    return entries.contiguous(), cg[m1, m2, m3].contiguous(), path_index


def coupled_product(
    x1: torch.Tensor,
    x2: torch.Tensor,
    weights: torch.Tensor,
    entries: torch.Tensor,
    coupling: torch.Tensor,
    out_components: int,
) -> torch.Tensor:
    """[N, C3, s] product of x1 [N, C1, s] and x2 [N, C2, s] with path weights [paths, s]."""
    return torch.ops.lorem.coupling_form(
        3,  # GRADIENT: the product is dF/dG (TorchScript takes no global constants)
        [x1.shape[0], out_components, x1.shape[2]],
        x1,
        x2,
        weights,
        None,
        entries,
        coupling,
    )
