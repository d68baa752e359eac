"""Ewald summation in stages (docs/design.md sections 2 and 4), for C independent charge channels.

Conventions (jax-pme, as used by lorem-jax): Coulomb 1/r with prefactor 1, Gaussian
smearing sigma; real space erfc(r / (sqrt(2) sigma)) / r over a full neighbour
list; k-space over the half-space grid n_a = ceil(|a_a| / lr_wavelength) with
kernel 4 pi exp(-sigma^2 k^2 / 2) / k^2 / V (k = 0 left out, each k standing for
the pair k, -k); self term -q sqrt(2 / pi) / sigma; background -2 pi sigma^2 Q / V.
The returned potentials carry the overall factor 1/2, so that the energy of a
channel is sum_i q_i V_i (terms.py: the parts shared with PME).

With an accuracy target (accuracy.py), the k-vectors with |k| > k_c are left out:
the grid shrinks to the |m_a| <= k_c |a_a| / (2 pi) that the sphere reaches (never
beyond the reference grid) and the kernel is zero outside the sphere. Without one,
the sum runs over the whole reference grid (jax-pme, torch-pme).

The stages, so that atoms may be spread over MPI ranks:
  1. structure_factors(local atoms) -> S [C, K, 2] (real, imaginary); summed over ranks
  2. total charge [C] = charges.sum(0); summed over ranks
  3. potentials(local atoms, S, Q, real-space pairs reaching ghost atoms) -> [N_local, C]

The k-sum is factorised: k = m1 b1 + m2 b2 + m3 b3, so exp(i k.r) is a product of
three one-dimensional phases and both the structure factors and the potentials
become dense matrix products over [N, n2 * n3] (no trigonometry per k-vector,
memory O(N * n2 * n3) rather than O(N * K)).
"""

import math
import warnings
from typing import List, Tuple

import torch

from .accuracy import ewald_kspace_cutoff
from .settings import DEFAULT_MAX_MEMORY_GB
from .slab import check_slab_cell, extended_cell, slab_moments, slab_potentials
from .terms import (
    COST_WARNING_SECONDS,
    check_cost,
    check_periodic_cell,
    combine_potentials,
    one_decimal,
    real_space_potentials,
)

# floats held per k-vector and channel at the peak of one evaluation with gradients:
# S(k) (2), the kernel-weighted S (2), their gradients (4); and per k-vector alone
# (kernel, |k|^2, masks and their gradients); measured: 0.40 GB for the 1.2 M k-vectors
# of one atom in a 100 A cell (float32, 10 channels), estimated 0.42 GB
KSPACE_FLOATS_PER_CHANNEL = 8.0
KSPACE_FLOATS = 8.0
# CPU seconds per k-vector and channel of one evaluation with forces and stress when the
# atoms are few (what a nearly empty cell pays); measured 1.7e-7 and 1.9e-7 for a water
# molecule in 60 and 100 A cells (float32, 10 channels, one thread, loaded machine)
KSPACE_SECONDS_PER_CHANNEL = 1.8e-7


def kgrid_shape(cell: torch.Tensor, lr_wavelength: float) -> List[int]:
    """[3, 3] -> [n1, n2, n3] = ceil(|a_a| / lr_wavelength), fixed by the raw cell."""
    lengths = torch.linalg.norm(cell.detach().to(torch.float64), dim=-1)
    shape: List[int] = torch.ceil(lengths / lr_wavelength).to(torch.int64).tolist()
    return shape


def _fft_integers(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """numpy.fft.fftfreq(n) * n as exact integers: [0, 1, ..., -2, -1]."""
    m = torch.arange(n, device=device)
    return torch.where(m < (n + 1) // 2, m, m - n).to(dtype)


def halfspace_grid(
    shape: List[int], device: torch.device, dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer coordinates m1 [n1h], m2 [n2], m3 [n3] and weights [n1h, n2, n3].

    The weight is 2 for the lexicographically positive half of the grid (each k
    stands for k and -k) and 0 elsewhere (k = 0 and the rest of the m1 = 0 plane).
    """
    n1, n2, n3 = shape[0], shape[1], shape[2]
    m1 = torch.arange((n1 - 1) // 2 + 1, device=device).to(dtype)
    m2 = _fft_integers(n2, device, dtype)
    m3 = _fft_integers(n3, device, dtype)
    in_half = (m1[:, None, None] > 0) | (
        (m1[:, None, None] == 0)
        & ((m2[None, :, None] > 0) | ((m2[None, :, None] == 0) & (m3[None, None, :] > 0)))
    )
    weight = in_half.to(dtype) * 2.0
    return m1, m2, m3, weight


def reciprocal_cell(cell: torch.Tensor) -> torch.Tensor:
    """[3, 3] -> [3, 3] reciprocal vectors b_a in rows, a_a . b_b = 2 pi delta_ab."""
    return 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)


class Ewald(torch.nn.Module):
    """Multi-channel Ewald potentials with fixed smearing and k-grid resolution."""

    def __init__(
        self,
        smearing: float,
        lr_wavelength: float,
        prefactor: float = 1.0,
        chunk_elements: int = 2**24,
        accuracy: float | None = None,
        channels: int = 1,
        max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    ):
        super().__init__()
        self.smearing = smearing
        self.lr_wavelength = lr_wavelength
        self.prefactor = prefactor
        self.accuracy = accuracy
        # |k| beyond which k-vectors are left out (infinite: the whole reference grid)
        self.kspace_cutoff = (
            math.inf if accuracy is None else ewald_kspace_cutoff(smearing, accuracy)
        )
        # the memory estimate before a grid is used assumes this many charge channels
        self.channels = int(channels)
        self.floats_per_kvector = KSPACE_FLOATS_PER_CHANNEL * self.channels + KSPACE_FLOATS
        self.max_memory_bytes = float(max_memory_gb) * 1e9
        # atoms are processed in chunks so that the per-chunk phase tables
        # [atoms, n2 n3] hold about this many elements
        self.chunk_elements = chunk_elements
        self.seconds_per_kvector = KSPACE_SECONDS_PER_CHANNEL * self.channels
        # the real-space sum over pairs by lorem::pair_sum_form (terms.py), or by gather
        # and index_add as the reference; set by Lorem.use_fused_operators
        self.fused_pairs: bool = True
        # the slow-k-space warning is given once per model
        self.cost_warning_seconds = COST_WARNING_SECONDS
        self.cost_warned = False

    def _chunk_size(self, shape: List[int]) -> int:
        return max(1, self.chunk_elements // max(1, shape[1] * shape[2]))

    def grid_shape(self, cell: torch.Tensor) -> List[int]:
        """[3, 3] -> [n1, n2, n3]: the reference grid, cut to the sphere |k| <= k_c.

        Raises before anything is allocated if the k-space would not fit in the memory limit.
        """
        check_periodic_cell(cell, "Ewald")
        shape = self.cut_grid(cell)
        lengths: List[float] = torch.linalg.norm(cell.detach().to(torch.float64), dim=-1).tolist()
        itemsize = 8.0 if cell.dtype == torch.float64 else 4.0
        warning = check_cost(
            "the Ewald k-space ("
            + "x".join([str(n) for n in shape])
            + " grid) of this "
            + " x ".join([one_decimal(x) for x in lengths])
            + " A cell",
            float(((shape[0] - 1) // 2 + 1) * shape[1] * shape[2]),
            "k-vectors",
            self.floats_per_kvector * itemsize,
            self.seconds_per_kvector,
            self.max_memory_bytes,
            self.cost_warning_seconds,
            False,
        )
        if warning != "" and not self.cost_warned:
            self.cost_warned = True
            warnings.warn(warning, stacklevel=2)
        return shape

    def cut_grid(self, cell: torch.Tensor) -> List[int]:
        """The grid of grid_shape without the checks (for cost estimates)."""
        shape = kgrid_shape(cell, self.lr_wavelength)
        if not math.isinf(self.kspace_cutoff):
            lengths: List[float] = torch.linalg.norm(
                cell.detach().to(torch.float64), dim=-1
            ).tolist()
            for a in range(3):
                reach = int(math.floor(self.kspace_cutoff * lengths[a] / (2.0 * math.pi)))
                shape[a] = min(shape[a], 2 * reach + 1)
        return shape

    def num_kvectors(self, shape: List[int]) -> int:
        """K of the structure factors [C, K, 2] on this grid (zero-weight ones included)."""
        return ((shape[0] - 1) // 2 + 1) * shape[1] * shape[2]

    def _phases(
        self, positions: torch.Tensor, cell: torch.Tensor, shape: List[int]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin of m1 theta1 [N, n1h] and real, imaginary exp(i (m2 theta2 + m3 theta3)) [N, n2 n3]."""
        m1, m2, m3, _ = halfspace_grid(shape, positions.device, positions.dtype)
        theta = positions @ reciprocal_cell(cell).transpose(0, 1)  # [N, 3]: b_a . r
        angle1 = theta[:, 0:1] * m1[None, :]
        angle2 = theta[:, 1:2] * m2[None, :]
        angle3 = theta[:, 2:3] * m3[None, :]
        c2, s2 = torch.cos(angle2)[:, :, None], torch.sin(angle2)[:, :, None]
        c3, s3 = torch.cos(angle3)[:, None, :], torch.sin(angle3)[:, None, :]
        num = positions.shape[0]
        real23 = (c2 * c3 - s2 * s3).reshape(num, c2.shape[1] * c3.shape[2])
        imag23 = (c2 * s3 + s2 * c3).reshape(num, c2.shape[1] * c3.shape[2])
        return torch.cos(angle1), torch.sin(angle1), real23, imag23

    def kernel(self, cell: torch.Tensor, shape: List[int]) -> torch.Tensor:
        """[n1h, n2 n3] weight * 4 pi exp(-sigma^2 k^2 / 2) / k^2 (differentiable in the cell)."""
        m1, m2, m3, weight = halfspace_grid(shape, cell.device, cell.dtype)
        b = reciprocal_cell(cell)
        k = (
            m1[:, None, None, None] * b[0]
            + m2[None, :, None, None] * b[1]
            + m3[None, None, :, None] * b[2]
        )
        k2 = (k * k).sum(dim=-1)
        used = weight > 0
        if not math.isinf(self.kspace_cutoff):
            used = used & (k2.detach() <= self.kspace_cutoff**2)
        safe_k2 = torch.where(used, k2, torch.ones_like(k2))
        g = 4.0 * math.pi * torch.exp(-0.5 * self.smearing**2 * safe_k2) / safe_k2
        g = torch.where(used, weight * g, torch.zeros_like(g))
        return g.reshape(g.shape[0], -1)

    def structure_factors(
        self, positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor, shape: List[int]
    ) -> torch.Tensor:
        """Partial structure factors of the given atoms: [N, 3], [N, C] -> [C, K, 2].

        S_c(k) = sum_j q_jc exp(i k . r_j); additive over disjoint sets of atoms,
        which is how chunks of atoms (and MPI ranks) combine.
        """
        chunk = self._chunk_size(shape)
        num = positions.shape[0]
        if num > chunk:
            total = self._structure_factors(positions[:chunk], charges[:chunk], cell, shape)
            for start in range(chunk, num, chunk):
                total = total + self._structure_factors(
                    positions[start : start + chunk], charges[start : start + chunk], cell, shape
                )
            return total
        return self._structure_factors(positions, charges, cell, shape)

    def _structure_factors(
        self, positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor, shape: List[int]
    ) -> torch.Tensor:
        cos1, sin1, real23, imag23 = self._phases(positions, cell, shape)
        num, channels = charges.shape[0], charges.shape[1]
        n1h = cos1.shape[1]
        b_real = (charges[:, :, None] * cos1[:, None, :]).reshape(num, channels * n1h)
        b_imag = (charges[:, :, None] * sin1[:, None, :]).reshape(num, channels * n1h)
        s_real = b_real.transpose(0, 1) @ real23 - b_imag.transpose(0, 1) @ imag23
        s_imag = b_real.transpose(0, 1) @ imag23 + b_imag.transpose(0, 1) @ real23
        return torch.stack([s_real, s_imag], dim=-1).reshape(channels, -1, 2)

    def kspace_potentials(
        self,
        positions: torch.Tensor,
        structure_factors: torch.Tensor,
        cell: torch.Tensor,
        shape: List[int],
    ) -> torch.Tensor:
        """[N, C] sum_k G(k) Re(exp(-i k . r_i) S_c(k)) / V (before the factor 1/2)."""
        g = self.kernel(cell, shape)  # [n1h, n23]
        n1h, n23 = g.shape[0], g.shape[1]
        channels = structure_factors.shape[0]
        s = structure_factors.reshape(channels, n1h, n23, 2)
        t_real = (s[..., 0] * g).reshape(channels * n1h, n23)
        t_imag = (s[..., 1] * g).reshape(channels * n1h, n23)
        volume = torch.abs(torch.linalg.det(cell))
        chunk = self._chunk_size(shape)
        pieces: List[torch.Tensor] = []
        for start in range(0, positions.shape[0], chunk):
            pieces.append(
                self._apply_kernel(
                    positions[start : start + chunk], t_real, t_imag, cell, shape, channels
                )
            )
        if len(pieces) == 0:
            return positions.new_zeros(0, channels)
        return torch.cat(pieces, dim=0) / volume

    def _apply_kernel(
        self,
        positions: torch.Tensor,
        t_real: torch.Tensor,
        t_imag: torch.Tensor,
        cell: torch.Tensor,
        shape: List[int],
        channels: int,
    ) -> torch.Tensor:
        cos1, sin1, real23, imag23 = self._phases(positions, cell, shape)
        n1h = cos1.shape[1]
        u_real = real23 @ t_real.transpose(0, 1) + imag23 @ t_imag.transpose(0, 1)
        u_imag = real23 @ t_imag.transpose(0, 1) - imag23 @ t_real.transpose(0, 1)
        num = positions.shape[0]
        pot = cos1[:, None, :] * u_real.reshape(num, channels, n1h) + sin1[
            :, None, :
        ] * u_imag.reshape(num, channels, n1h)
        return pot.sum(dim=-1)

    def real_space_potentials(
        self,
        charges_all: torch.Tensor,
        num_receivers: int,
        centers: torch.Tensor,
        others: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        """[num_receivers, C]: sum_j q_j erfc(r_ij / (sqrt(2) sigma)) / r_ij / 2 over a full list.

        centers index the receivers, others index charges_all (which may hold ghosts).
        """
        return real_space_potentials(
            charges_all, num_receivers, centers, others, distances, self.smearing, self.fused_pairs
        )

    def potentials(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        structure_factors: torch.Tensor,
        total_charge: torch.Tensor,
        cell: torch.Tensor,
        shape: List[int],
        real_space: torch.Tensor,
    ) -> torch.Tensor:
        """Potentials of the receiving atoms [N, C] from the summed S(k) and Q, plus
        their real-space part (from real_space_potentials)."""
        kspace = self.kspace_potentials(positions, structure_factors, cell, shape)
        return combine_potentials(
            kspace, charges, total_charge, cell, real_space, self.smearing, self.prefactor
        )

    def forward(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        cell: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        distances: torch.Tensor,
        slab_factor: float = 0.0,
    ) -> torch.Tensor:
        """Single process: all stages with an identity reduction. [N, 3], [N, C] -> [N, C].

        slab_factor > 0: a 2D slab (periodic along x and y; the pairs must not cross z):
        the k-space over the cell extended along z plus the dipole correction (slab.py)."""
        if slab_factor > 0.0:
            check_slab_cell(cell)
            cell = extended_cell(cell, slab_factor)
        shape = self.grid_shape(cell)
        structure_factors = self.structure_factors(positions, charges, cell, shape)
        real_space = self.real_space_potentials(
            charges, positions.shape[0], centers, others, distances
        )
        pot = self.potentials(
            positions, charges, structure_factors, charges.sum(dim=0), cell, shape, real_space
        )
        if slab_factor > 0.0:
            moments = slab_moments(positions, charges, cell)
            pot = pot + slab_potentials(positions, moments, cell, self.prefactor)
        return pot


def direct_potentials(
    positions: torch.Tensor, charges: torch.Tensor, prefactor: float = 1.0
) -> torch.Tensor:
    """Non-periodic: bare Coulomb over all pairs, [N, 3], [N, C] -> [N, C], factor 1/2."""
    num = positions.shape[0]
    diff = positions[:, None, :] - positions[None, :, :]
    d2 = (diff * diff).sum(dim=-1)
    off_diagonal = ~torch.eye(num, dtype=torch.bool, device=positions.device)
    safe = torch.where(off_diagonal, d2, torch.ones_like(d2))
    inverse = torch.where(off_diagonal, 1.0 / torch.sqrt(safe), torch.zeros_like(d2))
    return prefactor * (inverse @ charges) / 2.0
