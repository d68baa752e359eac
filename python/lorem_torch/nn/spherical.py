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

import functools
import math
from typing import List, NamedTuple, Tuple

import torch
from e3nn import o3

from .. import _core  # noqa: F401  (registers torch.ops.lorem.*, the harmonics among them)
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
    return _clebsch_gordan(max_degree1, max_degree2, max_degree3).clone()


@functools.cache
def _clebsch_gordan(max_degree1: int, max_degree2: int, max_degree3: int) -> torch.Tensor:
    # cached: a model builds several products of the same degrees, and e3nn's
    # wigner_3j takes seconds for l = 6
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


NUM_REFLECTION_CLASSES = 8


def reflection_classes(max_degree: int) -> torch.Tensor:
    """[(L+1)**2] the class 0..7 of each component under the mirror planes x, y, z = 0.

    Every e3x basis function is even or odd under each of the three reflections
    (x -> -x, ...); bit a of the class is set when it is odd under the reflection of
    coordinate a. A product of two components only couples to outputs of class
    class1 XOR class2, which makes the coupling tensor block-sparse. Derived from the
    harmonics themselves (float64, generic points), so it holds for the basis in use.
    """
    harmonics = SphericalHarmonics(max_degree).double()
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(64, 3, dtype=torch.float64, generator=generator)
    points = points / points.norm(dim=1, keepdim=True)
    values = harmonics(points)  # [64, C]
    classes = torch.zeros(values.shape[1], dtype=torch.long)
    for axis in range(3):
        mirrored = points.clone()
        mirrored[:, axis] = -mirrored[:, axis]
        sign = (harmonics(mirrored) * values).sum(0) / (values * values).sum(0)
        if not torch.allclose(sign.abs(), torch.ones_like(sign), rtol=0, atol=1e-9):
            raise RuntimeError("a basis function is neither even nor odd under a reflection")
        classes += (sign < 0).long() << axis
    return classes


class CouplingBlocks(NamedTuple):
    """The parity-allowed Clebsch-Gordan tensor as dense blocks between reflection classes.

    Components of each input and of the output are sorted by class (`order*`: the
    natural component at each sorted position). Block i couples class `class1[i]` of
    input 1 and `class2[i]` of input 2 into class `class3[i]` (= their XOR); blocks
    are grouped by `class3`. Its `entries[i]` coefficients are stored flat,
    [class3 components, class2 components, class1 components] in sorted order, with
    `entry_path` the flat (l1, l2, l3) index of each into a kernel [L1+1, L2+1, L3+1].
    """

    order1: torch.Tensor  # [C1] long
    order2: torch.Tensor  # [C2] long
    inverse_order3: torch.Tensor  # [C3] long: sorted position of each natural output component
    class_sizes1: List[int]  # [8]
    class_sizes2: List[int]
    class_sizes3: List[int]
    class1: List[int]  # [blocks]
    class2: List[int]
    class3: List[int]
    entries: List[int]
    entry_path: torch.Tensor  # [E] long
    entry_coefficient: torch.Tensor  # [E] float64


def coupling_blocks(
    max_degree1: int, max_degree2: int, max_degree3: int, even_output: bool = False
) -> CouplingBlocks:
    """Block-sparse form of the coupling used by the tensor product: the paths with even
    l1 + l2 + l3, or with `even_output` those with even l1 + l2 (TensorProduct).

    Every class triple is examined, so no coefficient can be missed whatever the
    selection rule; by the reflection symmetry only g XOR j XOR k = 0 (even l1 + l2 + l3)
    or 7 (odd) hold any."""
    degree = [degree_of_component(L) for L in (max_degree1, max_degree2, max_degree3)]
    classes = reflection_classes(max(max_degree1, max_degree2, max_degree3))
    class1, class2, class3 = (classes[: d.shape[0]] for d in degree)
    degree_sum = degree[0][:, None, None] + degree[1][None, :, None]
    if not even_output:
        degree_sum = degree_sum + degree[2]
    cg = clebsch_gordan(max_degree1, max_degree2, max_degree3) * (degree_sum % 2 == 0)

    orders = [torch.argsort(c, stable=True) for c in (class1, class2, class3)]
    sizes = [
        torch.bincount(c, minlength=NUM_REFLECTION_CLASSES).tolist()
        for c in (class1, class2, class3)
    ]
    members: List[List[torch.Tensor]] = [
        list(torch.split(order, size)) for order, size in zip(orders, sizes, strict=True)
    ]
    blocks: List[Tuple[int, int, int, int]] = []
    paths: List[torch.Tensor] = []
    coefficients: List[torch.Tensor] = []
    for k in range(NUM_REFLECTION_CLASSES):
        for g in range(NUM_REFLECTION_CLASSES):
            for j in range(NUM_REFLECTION_CLASSES):
                c1, c2, c3 = members[0][g], members[1][j], members[2][k]
                # [class3 components, class2 components, class1 components]
                block = cg[c1][:, c2][:, :, c3].permute(2, 1, 0)
                if block.numel() == 0 or not bool((block != 0).any()):
                    continue
                index3, index2, index1 = torch.meshgrid(c3, c2, c1, indexing="ij")
                path = (degree[0][index1] * (max_degree2 + 1) + degree[1][index2]) * (
                    max_degree3 + 1
                ) + degree[2][index3]
                blocks.append((g, j, k, block.numel()))
                paths.append(path.reshape(-1))
                coefficients.append(block.reshape(-1))
    return CouplingBlocks(
        order1=orders[0],
        order2=orders[1],
        inverse_order3=torch.argsort(orders[2]),
        class_sizes1=sizes[0],
        class_sizes2=sizes[1],
        class_sizes3=sizes[2],
        class1=[b[0] for b in blocks],
        class2=[b[1] for b in blocks],
        class3=[b[2] for b in blocks],
        entries=[b[3] for b in blocks],
        entry_path=torch.cat(paths) if paths else torch.zeros(0, dtype=torch.long),
        entry_coefficient=torch.cat(coefficients)
        if coefficients
        else torch.zeros(0, dtype=torch.float64),
    )


def empty_coupling_blocks() -> CouplingBlocks:
    """No blocks (what a dense TensorProduct holds in their place)."""
    empty = torch.zeros(0, dtype=torch.long)
    return CouplingBlocks(
        order1=empty,
        order2=empty,
        inverse_order3=empty,
        class_sizes1=[],
        class_sizes2=[],
        class_sizes3=[],
        class1=[],
        class2=[],
        class3=[],
        entries=[],
        entry_path=empty,
        entry_coefficient=torch.zeros(0, dtype=torch.float64),
    )


@functools.cache
def _harmonic_polynomials(max_degree: int) -> Tuple[torch.Tensor, torch.Tensor]:
    harmonics = _e3nn_harmonics_e3x(max_degree)
    generator = torch.Generator().manual_seed(0)
    terms: List[List[int]] = []
    coefficients: List[float] = []
    for l in range(max_degree + 1):
        exponents = [(a, b, l - a - b) for a in range(l, -1, -1) for b in range(l - a, -1, -1)]
        points = torch.randn(8 * len(exponents) + 16, 3, dtype=torch.float64, generator=generator)
        points = points / points.norm(dim=1, keepdim=True)
        values = harmonics(points)[:, l * l : (l + 1) ** 2]
        monomials = torch.stack([points.pow(torch.tensor(e)).prod(dim=1) for e in exponents], 1)
        solution = torch.linalg.lstsq(monomials, values, driver="gelsd").solution
        residual = float((monomials @ solution - values).abs().max())
        if residual > 1e-12:
            raise RuntimeError(
                f"degree {l}: the harmonics are not fitted by monomials ({residual})"
            )
        for k, (a, b, c) in enumerate(exponents):
            for m in range(2 * l + 1):
                if abs(float(solution[k, m])) > 1e-13:
                    terms.append([l * l + m, a, b, c])
                    coefficients.append(float(solution[k, m]))
    return torch.tensor(terms, dtype=torch.long), torch.tensor(coefficients, dtype=torch.float64)


def harmonic_polynomials(max_degree: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The e3x-basis harmonics Y[m] as homogeneous polynomials sum_t k_t x^a y^b z^c:
    terms [T, 4] int64 rows (m, a, b, c) and coefficients k [T] float64 (172 terms for
    L = 6). Fitted in float64 to the e3nn polynomials (homogeneous of degree l, so the
    monomials of degree l represent them exactly; the fit is checked to 1e-12)."""
    terms, coefficients = _harmonic_polynomials(max_degree)
    return terms.clone(), coefficients.clone()


def _e3nn_harmonics_e3x(max_degree: int):
    e3nn_harmonics = o3.SphericalHarmonics(
        list(range(max_degree + 1)), normalize=False, normalization="norm"
    )
    basis_t = e3x_basis_change(max_degree).T.contiguous()
    return lambda vectors: e3nn_harmonics(vectors) @ basis_t


class SphericalHarmonics(ConstantsModule):
    """Unit vectors [P, 3] -> [P, (L+1)**2] real spherical harmonics, e3x basis.

    `fused_harmonics` (default True): the C++ operator lorem::harmonics over the
    polynomial terms (cpp/src/ops/harmonics_ops.cpp), which keeps only the vectors for the
    backward; False: e3nn's generated polynomial code and the basis change, the
    reference.
    """

    fused_harmonics: bool

    def __init__(self, max_degree: int):
        super().__init__()
        self.max_degree = max_degree
        self.num_components = num_components(max_degree)
        self.e3nn_harmonics = o3.SphericalHarmonics(
            list(range(max_degree + 1)), normalize=False, normalization="norm"
        )
        # Y_e3x = Y_e3nn @ basis.T; a buffer so that it follows .to(dtype/device)
        self.register_constant("basis_t", e3x_basis_change(max_degree).T.contiguous())
        terms, coefficients = harmonic_polynomials(max_degree)
        self.register_buffer("polynomial_terms", terms, persistent=False)
        self.register_constant("polynomial_coefficients", coefficients)
        self.fused_harmonics = True

    def forward(self, unit_vectors: torch.Tensor) -> torch.Tensor:
        if self.fused_harmonics:
            return torch.ops.lorem.harmonics(
                unit_vectors,
                self.polynomial_terms,
                self.polynomial_coefficients,
                self.num_components,
            )
        return self.e3nn_harmonics(unit_vectors) @ self.basis_t


def degree_wise_norm(x: torch.Tensor, max_degree: int) -> torch.Tensor:
    """[N, (L+1)**2, F] -> [N, L+1, F] Euclidean norm of each degree block.

    Twice differentiable everywhere: at a vanishing block the value, the gradient and
    the second derivative are taken as zero (the reference's custom JVP does the same
    at exactly zero), elsewhere they are exact. The double `where` keeps the unused
    branch from producing NaN gradients.

    A block that vanishes by symmetry (an atom on an inversion centre or a cubic site)
    comes out of the sums as round-off, whose direction differs between code paths
    (Python, C++, LAMMPS, ranks, dtypes), and the norm's gradient x / |x| would turn
    it into forces and stresses of order one in that direction. Blocks below a
    tolerance relative to the atom's whole norm count as zero (degrees 1 and up):
    every path then returns the same derivative at the kink, the central difference
    (docs/design.md, "Kinks at symmetric structures"). Degree 0, an invariant, is
    |x0| with no tolerance.
    """
    # Degree 0 is |x0|, with no tolerance: an invariant never vanishes by symmetry, and
    # |x0| has its kink wherever a channel's x0 crosses zero, in any structure. A
    # tolerance there zeroed genuine values and their gradient sign(x0): in float32,
    # forces off by up to 7e-2 eV/A on a few atoms per thousand of a trained water model
    # (docs/design.md 1.1). abs: sign(0) = 0 at an exact zero, as in the reference.
    degree_zero = x[:, :1, :].abs()
    if max_degree == 0:
        return degree_zero
    squares = x * x
    # split, not one slice per degree: the backward of a slice is a zero-filled copy of
    # the whole [N, (L+1)**2, F] per degree, that of split one concatenation
    sizes = [2 * l + 1 for l in range(max_degree + 1)]
    blocks: List[torch.Tensor] = []
    for block in squares.split(sizes, dim=1):
        blocks.append(block.sum(dim=1))
    sum_of_squares = torch.stack(blocks, dim=1)
    # Relative to the norm of all the atom's blocks. Round-off measured (in the dtype's
    # epsilon): up to ~20 in the short range and in the long-range products of 1- and
    # 8-atom cells, ~1000 in those of a 64-atom NaCl cell (it grows with the sums).
    # float64: 1e-10 (4.5e5 epsilon; a genuine block that small moves energies by ~1e-10
    # relative); float32: 3e-5 (250 epsilon). A 3-component block that small by chance
    # is rare (~(3e-5)^3), unlike a scalar near zero.
    relative = 1e-10 if x.dtype == torch.float64 else 3e-5
    whole = sum_of_squares.sum(dim=2, keepdim=True).sum(dim=1, keepdim=True)
    higher = sum_of_squares[:, 1:]
    positive = higher > relative * relative * whole
    safe = torch.where(positive, higher, torch.ones_like(higher))
    norms = torch.where(positive, torch.sqrt(safe), torch.zeros_like(higher))
    return torch.cat([degree_zero, norms], dim=1)
