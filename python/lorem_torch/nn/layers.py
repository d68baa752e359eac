"""Dense layers, MLPs, the Update block and the equivariant (e3x-style) layers.

Kernels are stored as [in, out] (flax's layout) so that x @ kernel is the layer
and lorem-jax parameters load without transposition.

Shapes: scalar features [N, F]; spherical features [N, (L+1)**2, F].
"""

import math
from typing import List

import torch

from .constants import ConstantsModule
from .coupling_ops import coupled_product, product_entries
from .spherical import (
    clebsch_gordan,
    coupling_blocks,
    degree_of_component,
    empty_coupling_blocks,
)


class Dense(torch.nn.Module):
    """[..., in] -> [..., out], kernel [in, out], LeCun-normal initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.kernel = torch.nn.Parameter(
            torch.randn(in_features, out_features) / math.sqrt(in_features)
        )
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.kernel
        bias = self.bias
        if bias is not None:
            y = y + bias
        return y


class MLP(torch.nn.Module):
    """Dense layers of the given widths with SiLU between them (not after the last)."""

    def __init__(self, in_features: int, features: List[int]):
        super().__init__()
        widths = [in_features] + list(features)
        self.layers = torch.nn.ModuleList(
            [Dense(widths[i], widths[i + 1]) for i in range(len(features))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index != last:
                x = torch.nn.functional.silu(x)
        return x


class LayerNorm(torch.nn.Module):
    """LayerNorm with flax's epsilon (1e-6) and parameter names (scale, bias)."""

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = torch.nn.Parameter(torch.ones(features))
        self.bias = torch.nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.scale, self.bias, self.eps)


class Update(torch.nn.Module):
    """x += MLP(y); LayerNorm; x += MLP(x); LayerNorm. x [N, F], y [N, in_features]."""

    def __init__(self, features: int, in_features: int):
        super().__init__()
        self.mlp_in = MLP(in_features, [2 * features, features])
        self.norm_in = LayerNorm(features)
        self.mlp_self = MLP(features, [2 * features, features])
        self.norm_self = LayerNorm(features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(x + self.mlp_in(y))
        return self.norm_self(x + self.mlp_self(x))


class DegreeWiseDense(torch.nn.Module):
    """e3x.nn.Dense: a separate [in, out] kernel for every degree, and optionally a
    bias [out] on the scalar (l = 0) component only (anything else breaks equivariance).

    [N, (L+1)**2, in] -> [N, (L+1)**2, out]; kernel [L+1, in, out].
    """

    def __init__(self, max_degree: int, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.max_degree = max_degree
        self.kernel = torch.nn.Parameter(
            torch.randn(max_degree + 1, in_features, out_features) / math.sqrt(in_features)
        )
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("degree", degree_of_component(max_degree), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, C, in] x [C, in, out] -> [N, C, out]; C = (L+1)**2 is small
        y = torch.einsum("ncf,cfg->ncg", x, self.kernel[self.degree])
        bias = self.bias
        if bias is not None:
            y = torch.cat([y[:, :1, :] + bias, y[:, 1:, :]], dim=1)
        return y


def gated_silu(x: torch.Tensor) -> torch.Tensor:
    """e3x.nn.silu on spherical features [N, (L+1)**2, F]: every component of a feature
    times sigmoid of that feature's scalar (l = 0) component (silu for the scalar)."""
    return torch.sigmoid(x[:, :1, :]) * x


class TensorProduct(ConstantsModule):
    """e3x.nn.Tensor on inputs without pseudotensors: feature-wise coupling of two
    spherical inputs.

    z[n, c3, f] = sum_{c1, c2} x1[n, c1, f] x2[n, c2, f] w[l1, l2, l3, f] CG[c1, c2, c3]
    over the parity-conserving paths. kernel [L1+1, L2+1, L3+1, F].

    By default the output has the natural parity (-1)^l3 of each degree (e3x's
    include_pseudotensors=False: l1 + l2 + l3 even). With `even_output`, it is e3x's
    even-parity channel (index 0 of the parity axis with include_pseudotensors=True:
    l1 + l2 even), whose l = 1 part is a pseudovector, as the antisymmetric part of a
    rank-2 tensor is.

    By default every product x1[c1] x2[c2] is formed ([N, C1*C2, F]) and contracted with
    the dense [C1*C2, C3, F] kernel times CG. With `block_sparse` the same sum is taken
    block by block: every component is even or odd under each of the three mirror planes
    (8 reflection classes, see spherical.reflection_classes), and the coefficients only
    couple classes g and j into g XOR j (g XOR j XOR 7 on paths with odd l1 + l2 + l3).
    So for each nonzero block (64 for the default parity) the outer product of the two
    class slices is contracted with the block's dense [F, C3 slice, pairs] kernel times
    CG by one batched matmul: ~8x fewer multiply-adds, about half the peak memory of a
    model step with gradients, the same result to round-off. It is not the default
    because on CPU it was not faster (benchmarks/bench_tensor_product.py): forming the
    C1*C2 products, which both ways do, dominates, not the multiply-adds.

    `fused_product` (default True): the sum runs over the nonzero coefficients alone in
    one C++ operator (nn/coupling_ops.py), with no [N, C1*C2, F] products formed or kept
    for the backward; the two paths above stay as the reference (False).
    """

    # the blocks' layout (empty when dense); declared here so that TorchScript types
    # the empty lists of a dense product
    class_sizes1: List[int]
    class_sizes2: List[int]
    class_sizes3: List[int]
    block_class1: List[int]
    block_class2: List[int]
    block_class3: List[int]
    block_entries: List[int]
    fused_product: bool

    def __init__(
        self,
        max_degree1: int,
        max_degree2: int,
        max_degree3: int,
        features: int,
        even_output: bool = False,
        block_sparse: bool = False,
    ):
        super().__init__()
        self.block_sparse = block_sparse
        self.max_degree1 = max_degree1
        self.max_degree2 = max_degree2
        self.max_degree3 = max_degree3
        self.features = features
        l1 = torch.arange(max_degree1 + 1)[:, None, None]
        l2 = torch.arange(max_degree2 + 1)[None, :, None]
        l3 = torch.arange(max_degree3 + 1)[None, None, :]
        parity = (l1 + l2) % 2 == 0 if even_output else (l1 + l2 + l3) % 2 == 0
        allowed = parity & ((l1 - l2).abs() <= l3) & (l3 <= l1 + l2)
        paths_per_output = allowed.sum(dim=(0, 1)).clamp(min=1).to(torch.get_default_dtype())
        kernel = torch.randn(max_degree1 + 1, max_degree2 + 1, max_degree3 + 1, features)
        self.kernel = torch.nn.Parameter(
            kernel * allowed[..., None] / paths_per_output.sqrt()[None, None, :, None]
        )
        self.register_constant("path_mask", allowed.to(torch.float64))
        self.register_buffer("degree1", degree_of_component(max_degree1), persistent=False)
        self.register_buffer("degree2", degree_of_component(max_degree2), persistent=False)
        self.register_buffer("degree3", degree_of_component(max_degree3), persistent=False)
        if block_sparse:
            self.register_constant("cg", torch.zeros(0))  # the blocks hold the coefficients
            blocks = coupling_blocks(max_degree1, max_degree2, max_degree3, even_output)
        else:
            self.register_constant("cg", clebsch_gordan(max_degree1, max_degree2, max_degree3))
            blocks = empty_coupling_blocks()
        self.register_buffer("order1", blocks.order1, persistent=False)
        self.register_buffer("order2", blocks.order2, persistent=False)
        self.register_buffer("inverse_order3", blocks.inverse_order3, persistent=False)
        self.register_buffer("entry_path", blocks.entry_path, persistent=False)
        self.register_constant("entry_coefficient", blocks.entry_coefficient)
        self.class_sizes1 = blocks.class_sizes1
        self.class_sizes2 = blocks.class_sizes2
        self.class_sizes3 = blocks.class_sizes3
        self.block_class1 = blocks.class1
        self.block_class2 = blocks.class2
        self.block_class3 = blocks.class3
        self.block_entries = blocks.entries
        self.fused_product = True
        self.components3 = (max_degree3 + 1) ** 2
        entries, coupling, path_index = product_entries(
            max_degree1, max_degree2, max_degree3, even_output
        )
        self.register_buffer("product_entries", entries, persistent=False)
        self.register_constant("product_coupling", coupling)
        self.register_buffer("product_paths", path_index, persistent=False)

    def check_inputs(self, x1: torch.Tensor, x2: torch.Tensor):
        """A clear error for inputs of the wrong degree, feature count or row count."""
        components1 = self.degree1.shape[0]
        components2 = self.degree2.shape[0]
        valid = x1.dim() == 3 and x2.dim() == 3
        if valid:
            num = x1.shape[0]
            valid = list(x1.shape) == [num, components1, self.features] and list(x2.shape) == [
                num,
                components2,
                self.features,
            ]
        if not valid:
            raise ValueError(
                "TensorProduct expects inputs [N, "
                + str(components1)
                + ", "
                + str(self.features)
                + "] and [N, "
                + str(components2)
                + ", "
                + str(self.features)
                + "], got "
                + str(list(x1.shape))
                + " and "
                + str(list(x2.shape))
            )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1 [N, (L1+1)**2, F], x2 [N, (L2+1)**2, F] -> [N, (L3+1)**2, F]."""
        self.check_inputs(x1, x2)
        if self.fused_product:
            weights = self.kernel.reshape(-1, self.features).index_select(0, self.product_paths)
            return coupled_product(
                x1, x2, weights, self.product_entries, self.product_coupling, self.components3
            )
        if self.block_sparse:
            return self.block_sparse_product(x1, x2)
        return self.dense_product(x1, x2)

    def expanded_weights(self) -> torch.Tensor:
        """[C1 * C2, C3, F] the kernel spread over components and times CG."""
        kernel = self.kernel * self.path_mask[..., None]
        kernel = kernel[self.degree1][:, self.degree2][:, :, self.degree3]
        weights = kernel * self.cg[..., None]
        return weights.reshape(-1, weights.shape[2], weights.shape[3])

    def dense_product(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        num = x1.shape[0]
        features = x1.shape[2]
        # [N, C1, C2, F] -> [F, N, C1 * C2] @ [F, C1 * C2, C3] -> [N, C3, F]
        outer = (x1.unsqueeze(2) * x2.unsqueeze(1)).reshape(
            num, x1.shape[1] * x2.shape[1], features
        )
        weights = self.expanded_weights().permute(2, 0, 1)
        out = torch.bmm(outer.permute(2, 0, 1), weights)
        return out.permute(1, 2, 0)

    def block_sparse_product(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        num = x1.shape[0]
        features = x1.shape[2]
        # [F, C, N], components sorted by reflection class, then split into the classes
        parts1 = torch.split(
            x1.permute(2, 1, 0).index_select(1, self.order1), self.class_sizes1, dim=1
        )
        parts2 = torch.split(
            x2.permute(2, 1, 0).index_select(1, self.order2), self.class_sizes2, dim=1
        )
        # [F, E]: kernel times CG for every block entry, then one [F, entries] per block
        entries = self.kernel.reshape(-1, features).t().index_select(1, self.entry_path)
        blocks = torch.split(entries * self.entry_coefficient, self.block_entries, dim=1)

        outputs: List[torch.Tensor] = []  # per output class [F, class size, N]
        block = 0
        for k in range(len(self.class_sizes3)):
            size3 = self.class_sizes3[k]
            if size3 == 0:
                continue
            out = x1.new_zeros(features, size3, num)
            while block < len(self.block_entries) and self.block_class3[block] == k:
                part1 = parts1[self.block_class1[block]]  # [F, n1, N]
                part2 = parts2[self.block_class2[block]]  # [F, n2, N]
                pairs = part1.shape[1] * part2.shape[1]
                # [F, n2 * n1, N] products in the block's (c2, c1) order
                outer = (part2.unsqueeze(2) * part1.unsqueeze(1)).reshape(features, pairs, num)
                weights = blocks[block].view(features, size3, pairs)
                out = torch.baddbmm(out, weights, outer)
                block += 1
            outputs.append(out)
        # [F, C3 sorted, N] -> [N, C3, F]
        return torch.cat(outputs, dim=1).index_select(1, self.inverse_order3).permute(2, 1, 0)


class TensorDense(torch.nn.Module):
    """e3x.nn.TensorDense: two degree-wise projections, then their product.

    [N, (L_in+1)**2, in] -> [N, (L_out+1)**2, out]. `bias` adds a bias to the scalar
    component of the projections; `even_output` as in TensorProduct.
    """

    def __init__(
        self,
        max_degree: int,
        in_features: int,
        out_features: int,
        max_degree_out: int,
        bias: bool = False,
        even_output: bool = False,
    ):
        super().__init__()
        self.out_features = out_features
        self.dense = DegreeWiseDense(max_degree, in_features, 2 * out_features, bias=bias)
        self.tensor = TensorProduct(
            max_degree, max_degree, max_degree_out, out_features, even_output=even_output
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.dense(x)
        return self.tensor(projected[..., : self.out_features], projected[..., self.out_features :])
