"""The equivariant message of a layer as one operator (lorem::message_form, C++:
cpp/src/ops/message_ops.cpp): gather -> sparse Clebsch-Gordan product -> scatter.

The layer's filtered edge input is Y[p, m1] a[p, l(m1), c] (the degree-wise filter
commutes with multiplying by Y), so its message is

    m[i, m3, c] = sum_{p: centre i} sum_e cg_e Y[p, m1] a[p, l1, c] W[path, c] x[j_p, m2, c]

over the nonzero coefficients e = (m1, m2, m3) of the allowed paths (6,460 of the
117,649 dense entries for L = 6), with no per-edge tensor of width (L+1)**2 x s formed
or kept; the backward recomputes (docs/design.md section 1.3).
"""

from typing import Tuple

import torch

from .. import _core  # noqa: F401  (loads the lorem:: operators before any use or scripting)
from .spherical import clebsch_gordan, degree_of_component

# factor slots of lorem::message_form; the target's slot is None
ROUND_OFF = 1e-12

HARMONICS, COEFFICIENTS, WEIGHTS, FEATURES, GRADIENT = 0, 1, 2, 3, 4


def sparse_coupling(max_degree: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nonzero coupling coefficients of the l x l -> l product with even l1 + l2 + l3
    (6,460 for L = 6).

    Returns entries [E, 5] int64 rows (m1, m2, m3, path, l1), sorted by path, then m2,
    m3, m1; coefficients [E] float64; and path_index [paths] int64, the flat index
    (l1 * (L+1) + l2) * (L+1) + l3 of each path into a kernel [L+1, L+1, L+1, s].
    """
    num_l = max_degree + 1
    degree = degree_of_component(max_degree)
    cg = clebsch_gordan(max_degree, max_degree, max_degree)
    l1, l2, l3 = degree[:, None, None], degree[None, :, None], degree[None, None, :]
    # the basis change leaves round-off (~1e-17) where a coefficient is exactly zero:
    # those are zeros, not entries
    allowed = ((l1 + l2 + l3) % 2 == 0) & (cg.abs() > ROUND_OFF)
    m1, m2, m3 = torch.nonzero(allowed, as_tuple=True)
    flat_path = (degree[m1] * num_l + degree[m2]) * num_l + degree[m3]
    path_index, path = torch.unique(flat_path, return_inverse=True)
    size = degree.shape[0]
    order = torch.argsort(((path * size + m2) * size + m3) * size + m1)
    entries = torch.stack([m1, m2, m3, path, degree[m1]], dim=1)[order]
    return entries.contiguous(), cg[m1, m2, m3][order].contiguous(), path_index


def equivariant_messages(
    harmonics: torch.Tensor,
    coefficients: torch.Tensor,
    weights: torch.Tensor,
    features: torch.Tensor,
    centers: torch.Tensor,
    others: torch.Tensor,
    entries: torch.Tensor,
    coupling: torch.Tensor,
    num_centers: int,
) -> torch.Tensor:
    """[num_centers, (L+1)**2, s] messages from harmonics [P, (L+1)**2], filtered
    per-degree coefficients [P, L+1, s], path weights [paths, s] and the features of
    every atom [N, (L+1)**2, s] (edge p from others[p] to centers[p])."""
    return torch.ops.lorem.message_form(
        4,  # GRADIENT: the messages are dF/dG (TorchScript takes no global constants)
        [num_centers, features.shape[1], features.shape[2]],
        harmonics,
        coefficients,
        weights,
        features,
        None,
        centers,
        others,
        entries,
        coupling,
    )
