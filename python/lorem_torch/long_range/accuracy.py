"""From an accuracy target to the resolution of the k-space: Ewald's k cutoff, PME's mesh.

The accuracy epsilon bounds the error that the k-space approximation makes in the
potential and in the field created by ONE unit charge, relative to the natural scales
of the smeared charge: the potential sqrt(2 / pi) / sigma and the field
sqrt(2 / pi) / sigma^2 (the potential and the field scale of a Gaussian of width
sigma at its centre). With G(k) = 4 pi exp(-sigma^2 k^2 / 2) / k^2 and e(k) the
relative error the method makes in the plane wave k (1 where k is left out):

    potential error <= (1 / (2 pi)^3) integral d^3k G(k) e(k)         / (sqrt(2 / pi) / sigma)
    field error     <= (1 / (2 pi)^3) integral d^3k |k| G(k) e_F(k)   / (sqrt(2 / pi) / sigma^2)

(the sum over k as an integral, its terms added with the same sign: an upper bound
for one source, whatever the cell). The errors of the energies and forces of a
structure are sums of such one-source errors with signs that vary from source to
source; the tests measure them against the reference sum.

Ewald: the k-vectors with |k| > k_c are left out; the field bound
sqrt(2 / pi) exp(-sigma^2 k_c^2 / 2) is the larger of the two, so
k_c = sqrt(2 ln(sqrt(2 / pi) / epsilon)) / sigma.

Smooth PME (B-splines of even order p, mesh spacing h): the mesh represents the plane
waves inside its Nyquist sphere |k| < pi / h (outside: left out, as in Ewald); inside,
spreading and interpolation each add aliases k + 2 pi l / h of relative amplitude
A_p(x) = sum_{l != 0} |x / (x + l)|^p, x = k_a h / (2 pi) per axis (the Fourier
transform of a B-spline is sinc^p); the gradient of the interpolation raises the
power of the aliases by one: e(k) = 2 sum_a A_p(x_a), e_F(k) = sum_a A_p + A_{p-1}.
The mesh of a cell has N_a = ceil(|a_a| / h) points along a_a, so its spacing along
every lattice vector is at most h.
"""

import functools
import math
from typing import List, Tuple

import torch

from ..vocabulary import MAX_ACCURACY

# even orders only: for odd p the B-spline moduli |b(m)|^2 diverge at the Nyquist frequency
PME_ORDERS = (4, 6, 8, 10)

# work of one channel on one mesh point (FFTs, kernel, copies) relative to the work of
# one channel on one stencil point of one atom (spreading, interpolation): the ratio of
# PME_SECONDS_PER_MESH_POINT to PME_SECONDS_PER_STENCIL_POINT in settings.py (measured
# with benchmarks/bench_long_range.py --calibrate), and the atom density the choice of
# the order assumes (liquid water ~0.1 atoms/A^3)
MESH_POINT_COST = 7.6
TYPICAL_DENSITY = 0.1


def check_accuracy(accuracy: float) -> float:
    """The accuracy target as a float, or a ValueError that says what is allowed."""
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        raise ValueError(
            f"long-range accuracy must be a number in (0, {MAX_ACCURACY:g}], got {accuracy!r}"
        )
    value = float(accuracy)
    if not 0.0 < value <= MAX_ACCURACY or not math.isfinite(value):
        raise ValueError(
            f"long-range accuracy must lie in (0, {MAX_ACCURACY:g}] (relative error of the "
            f"potentials and fields), got {accuracy!r}"
        )
    return value


def ewald_kspace_cutoff(smearing: float, accuracy: float) -> float:
    """k_c [1/A] such that the left-out k-vectors change potentials and fields by at
    most `accuracy` (relative, see the module notes)."""
    accuracy = check_accuracy(accuracy)
    return math.sqrt(2.0 * math.log(math.sqrt(2.0 / math.pi) / accuracy)) / smearing


def _aliasing(x: torch.Tensor, power: int, images: int = 6) -> torch.Tensor:
    """A_power(x) = sum_{l != 0, |l| <= images} |x / (x + l)|^power for |x| <= 1/2."""
    total = torch.zeros_like(x)
    for l in range(1, images + 1):
        total = total + torch.abs(x / (x + l)) ** power + torch.abs(x / (x - l)) ** power
    return total


@functools.cache
def _radial_aliasing(order: int, radii: int = 160, angles: int = 24) -> Tuple[torch.Tensor, ...]:
    """Radii r in (0, 1/2] of x = k h / (2 pi), their quadrature weights, and the
    octant integrals over directions of e(x) and e_F(x) (module notes) at each radius."""
    r = (torch.arange(radii, dtype=torch.float64) + 0.5) * (0.5 / radii)
    weight_r = torch.full_like(r, 0.5 / radii)
    theta = (torch.arange(angles, dtype=torch.float64) + 0.5) * (0.5 * math.pi / angles)
    phi = (torch.arange(angles, dtype=torch.float64) + 0.5) * (0.5 * math.pi / angles)
    t, f = torch.meshgrid(theta, phi, indexing="ij")
    direction = torch.stack(
        [torch.sin(t) * torch.cos(f), torch.sin(t) * torch.sin(f), torch.cos(t)], dim=-1
    ).reshape(-1, 3)
    solid_angle = (torch.sin(t) * (0.5 * math.pi / angles) ** 2).reshape(-1)  # sums to pi / 2
    x = r[:, None, None] * direction[None, :, :]  # [radii, directions, 3]
    alias_p = _aliasing(x, order).sum(dim=-1)
    alias_f = alias_p + _aliasing(x, order - 1).sum(dim=-1)
    potential = 8.0 * (2.0 * alias_p * solid_angle).sum(dim=-1)  # all 8 octants
    field = 8.0 * (alias_f * solid_angle).sum(dim=-1)
    return r, weight_r, potential, field


def pme_error(smearing: float, spacing: float, order: int) -> float:
    """The larger of the potential and field error bounds of smooth PME (module notes)."""
    r, weight_r, potential, field = _radial_aliasing(order)
    scale = 2.0 * math.pi * smearing / spacing  # sigma |k| = scale * |x|
    kappa = scale * r
    gaussian = torch.exp(-0.5 * kappa**2)
    # d^3 kappa = kappa^2 d kappa d Omega, d kappa = scale d r
    prefactor = 4.0 * math.pi / ((2.0 * math.pi) ** 3 * math.sqrt(2.0 / math.pi)) * scale
    inside_potential = prefactor * float((weight_r * gaussian * potential).sum())
    inside_field = prefactor * float((weight_r * gaussian * kappa * field).sum())
    nyquist = math.pi * smearing / spacing / math.sqrt(2.0)  # sigma k_N / sqrt(2)
    outside_potential = math.erfc(nyquist)
    outside_field = math.sqrt(2.0 / math.pi) * math.exp(-(nyquist**2))
    return max(inside_potential + outside_potential, inside_field + outside_field)


def pme_spacing(smearing: float, order: int, accuracy: float) -> float:
    """The largest mesh spacing [A] whose error bound at this order meets `accuracy`
    (0 if even a spacing of sigma / 100 does not)."""
    accuracy = check_accuracy(accuracy)
    low, high = 0.01 * smearing, 2.0 * smearing  # spacing / error bound: increasing
    if pme_error(smearing, low, order) > accuracy:
        return 0.0
    for _ in range(30):
        middle = 0.5 * (low + high)
        if pme_error(smearing, middle, order) <= accuracy:
            low = middle
        else:
            high = middle
    return low


@functools.lru_cache(maxsize=64)
def pme_parameters(
    smearing: float, accuracy: float, orders: Tuple[int, ...] = PME_ORDERS
) -> Tuple[float, int]:
    """(mesh spacing [A], B-spline order) meeting `accuracy` at the least estimated work
    per unit volume: MESH_POINT_COST / h^3 for the mesh, TYPICAL_DENSITY p^3 for the atoms."""
    best: List[Tuple[float, float, int]] = []
    for order in orders:
        spacing = pme_spacing(smearing, order, accuracy)
        if spacing > 0:
            work = MESH_POINT_COST / spacing**3 + TYPICAL_DENSITY * order**3
            best.append((work, spacing, order))
    if not best:
        raise ValueError(f"no PME mesh of orders {orders} reaches accuracy {accuracy:g}")
    work, spacing, order = min(best)
    return spacing, order
