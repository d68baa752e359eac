"""The fused edge -> atom operators of the C++ library (cpp/src/ops/edge_ops.cpp).

Importing this module loads lorem_torch._core, whose runtime library registers
torch.ops.lorem.*, so that models using them run eagerly, script and load.

Shapes: P edges i <- j, N atoms, L max degree, s channels.
"""

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.*)


def edges_to_nodes(
    coefficients: torch.Tensor, harmonics: torch.Tensor, centers: torch.Tensor, num_nodes: int
) -> torch.Tensor:
    """out[i, m, c] = sum over edges p with centre i of coefficients[p, l(m), c] harmonics[p, m].

    coefficients [P, L+1, s], harmonics [P, (L+1)**2], centers [P] -> [num_nodes, (L+1)**2, s],
    without forming the per-edge products [P, (L+1)**2, s], forward or backward; twice
    differentiable in coefficients and harmonics.
    """
    return torch.ops.lorem.edges_to_nodes(coefficients, harmonics, centers, num_nodes)


def edges_to_nodes_by_pair_type(
    radial: torch.Tensor,
    table: torch.Tensor,
    pair_type: torch.Tensor,
    harmonics: torch.Tensor,
    centers: torch.Tensor,
    num_nodes: int,
) -> torch.Tensor:
    """edges_to_nodes of the coefficients radial[p] @ table[pair_type[p]].

    radial [P, R], table [T, R, L+1, s], pair_type [P] int64 in [0, T) ->
    [num_nodes, (L+1)**2, s]; the backward recomputes the coefficients (matrix products
    over blocks of one pair type's edges) instead of keeping them; twice differentiable.
    """
    return torch.ops.lorem.edges_to_nodes_by_pair_type(
        radial, table, pair_type, harmonics, centers, num_nodes
    )


def edges_to_nodes_reference(
    coefficients: torch.Tensor, harmonics: torch.Tensor, centers: torch.Tensor, num_nodes: int
) -> torch.Tensor:
    """The same sum in plain PyTorch, with the per-edge products formed (tests)."""
    max_degree = coefficients.shape[1] - 1
    degree = torch.repeat_interleave(
        torch.arange(max_degree + 1, device=coefficients.device),
        torch.arange(max_degree + 1, device=coefficients.device) * 2 + 1,
    )
    products = coefficients[:, degree, :] * harmonics[:, :, None]
    return products.new_zeros(num_nodes, products.shape[1], products.shape[2]).index_add(
        0, centers, products
    )
