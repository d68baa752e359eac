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
from .coupling_ops import product_entries
from .spherical import degree_of_component

# factor slots of lorem::message_form; the target's slot is None
HARMONICS, COEFFICIENTS, WEIGHTS, FEATURES, GRADIENT = 0, 1, 2, 3, 4


def sparse_coupling(max_degree: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nonzero coupling coefficients of the l x l -> l product with even l1 + l2 + l3
    (6,460 for L = 6): nn/coupling_ops.product_entries, in the order the message kernel
    walks them.

    Returns entries [E, 5] int64 rows (m1, m2, m3, path, l1), sorted by path, then m2,
    m3, m1; coefficients [E] float64; and path_index [paths] int64, the flat index
    (l1 * (L+1) + l2) * (L+1) + l3 of each path into a kernel [L+1, L+1, L+1, s].
    """
    entries, coupling, path_index = product_entries(max_degree, max_degree, max_degree)
    m1, m2, m3, path = entries.unbind(1)
    size = (max_degree + 1) ** 2
    order = torch.argsort(((path * size + m2) * size + m3) * size + m1)
    degree = degree_of_component(max_degree)
    entries = torch.stack([m1, m2, m3, path, degree[m1]], dim=1)[order]
    return entries.contiguous(), coupling[order].contiguous(), path_index


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
