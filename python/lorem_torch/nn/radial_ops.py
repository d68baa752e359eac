"""The per-edge radial contraction of a message-passing layer as one operator
(lorem::radial_form, C++: cpp/src/ops/radial_ops.cpp).

    out[p, f] = sum_{k, r} features[p, k] radial[p, r] weights[k, r, f]

with features the pair MLP's hidden layer (and a column of ones for the bias row of
weights): the MLP's last layer and its contraction with the radial basis, computed over
chunks of edges so that the [P, R * d] coefficients (32 x 128 per edge by default) are
neither formed whole nor kept for the backward. Differentiable any number of times.
"""

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.*)


def radial_contraction(
    features: torch.Tensor, radial: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """[P, F] from features [P, K], radial [P, R] and weights [K, R, F]."""
    return torch.ops.lorem.radial_form(
        3,  # the gradient slot: the contraction is dF/dG (TorchScript takes no globals)
        [features.shape[0], weights.shape[2]],
        features,
        radial,
        weights,
        None,
    )
