"""Smooth particle-mesh Ewald (SPME) in stages, for C independent charge channels.

The same conventions as ewald.py (docs/design.md section 2): Coulomb with a prefactor,
Gaussian smearing sigma, real space over the model's neighbour list, self and
background terms, potentials with the overall factor 1/2 (terms.py holds the parts
both methods share). Only the k-space sum differs: instead of the structure factors,
charges are spread onto a periodic mesh with cardinal B-splines of even order p
(Essmann et al., J. Chem. Phys. 103, 8577 (1995)), the mesh is convolved with the
Ewald kernel by FFT, and the potentials are interpolated back with the same splines.

Mesh coordinates: an atom at fractional coordinates s (s = r A^-1, the cell A with
lattice vectors in rows) sits at u_a = N_a s_a on the mesh [N_0, N_1, N_2] and touches
the p^3 points floor(u_a) - p + 1 + t_a, t_a = 0..p-1. Mesh indices outside [0, N_a)
stand for their periodic images.

The stages, so that a mesh can be spread over MPI ranks, each owning a brick of it:
  1. spread(local atoms, brick)          -> charge brick [C, b0, b1, b2]     (unwrapped)
  2. fold the bricks into the periodic mesh (ghost layers summed into their owners)
  3. convolve: FFT, multiply by kernel(cell, mesh, ranges), inverse FFT
  4. unfold: the potential mesh gathered into each brick (ghost layers copied out)
  5. interpolate(local atoms, brick)     -> k-space potentials [N_local, C]
  6. potentials(k-space part, charges, Q, cell, real space) -> [N_local, C]
A brick that is the whole mesh (lo = 0, shape = mesh) is periodic: stencils wrap
around it and fold/unfold are identities. One process uses that brick.

FFT normalisation: both transforms are unnormalised (torch.fft.rfftn with
norm="backward" forward, irfftn with norm="forward" backward, i.e. no 1/N anywhere),
and the kernel carries 1/V, so that the potential mesh is
phi[n] = sum_m G(m) |b(m)|^2 / V  Q^(m) exp(2 pi i m.n / N),  Q^(m) = sum_n Q[n] exp(-2 pi i m.n / N).
A distributed complex FFT of the same mesh must use the same (unnormalised) convention.
"""

import math
import warnings
from typing import List, Tuple

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.mesh_*)
from ..vocabulary import DEFAULT_ACCURACY
from .accuracy import PME_ORDERS, check_accuracy, pme_parameters
from .bspline import spline_moduli, stencil_weights
from .ewald import reciprocal_cell
from .settings import DEFAULT_MAX_MEMORY_GB, PME_SECONDS_PER_MESH_POINT
from .slab import check_slab_cell, extended_cell, slab_moments, slab_potentials
from .terms import (
    COST_WARNING_SECONDS,
    check_cost,
    check_periodic_cell,
    combine_potentials,
    one_decimal,
    real_space_potentials,
)

# floats per mesh point and channel that one evaluation with gradients holds at its
# peak (spread brick, folded mesh, half spectrum, its product with the kernel, potential
# mesh, unfolded brick, and their gradients); measured: 7 for one atom in a 100 A cell,
# 9 with 20,000 atoms (float32, 10 channels, accuracy 1e-6)
MESH_COPIES = 10.0


def _fft_friendly(n: int) -> int:
    """The smallest m >= n whose prime factors are all 2, 3, 5 or 7 (fast FFT sizes)."""
    m = n
    found = False
    while not found:
        rest = m
        for prime in [2, 3, 5, 7]:
            while rest % prime == 0:
                rest = rest // prime
        found = rest == 1
        if not found:
            m += 1
    return m


def _fft_integers(start: int, stop: int, n: int, device: torch.device) -> torch.Tensor:
    """FFT index i in [start, stop) -> signed frequency (i < (n + 1) // 2 ? i : i - n)."""
    i = torch.arange(start, stop, device=device)
    return torch.where(i < (n + 1) // 2, i, i - n)


def _nyquist(frequencies: torch.Tensor, n: int) -> torch.Tensor:
    """Whether each signed frequency is the Nyquist frequency -n/2 of an even axis."""
    if n % 2 == 0:
        return frequencies == -(n // 2)
    return torch.zeros_like(frequencies, dtype=torch.bool)


def _periodic_segments(lo: int, extent: int, n: int) -> List[Tuple[int, int, int]]:
    """Mesh indices lo..lo+extent-1 cut where they wrap: (begin, end, target) with brick
    positions [begin, end) standing for mesh indices [target, target + end - begin)."""
    segments: List[Tuple[int, int, int]] = []
    begin = 0
    while begin < extent:
        target = (lo + begin) % n
        end = min(extent, begin + n - target)
        segments.append((begin, end, target))
        begin = end
    return segments


class PME(torch.nn.Module):
    """Multi-channel smooth PME potentials with fixed smearing, mesh spacing and order."""

    def __init__(
        self,
        smearing: float,
        accuracy: float = DEFAULT_ACCURACY,
        prefactor: float = 1.0,
        spacing: float | None = None,
        order: int | None = None,
        channels: int = 1,
        max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
        chunk_elements: int = 2**24,
    ):
        super().__init__()
        self.smearing = float(smearing)
        self.accuracy = check_accuracy(accuracy)
        self.prefactor = float(prefactor)
        if spacing is None or order is None:
            chosen_spacing, chosen_order = pme_parameters(self.smearing, self.accuracy)
            spacing = chosen_spacing if spacing is None else spacing
            order = chosen_order if order is None else order
        if order not in PME_ORDERS:
            raise ValueError(f"PME order must be one of {PME_ORDERS} (even), got {order}")
        if not spacing > 0:
            raise ValueError(f"PME mesh spacing must be positive, got {spacing}")
        self.spacing = float(spacing)
        self.order = int(order)
        self.channels = int(channels)
        self.floats_per_mesh_point = MESH_COPIES * self.channels
        self.max_memory_bytes = float(max_memory_gb) * 1e9
        # atoms are processed in chunks so that their stencil tables [atoms, p^3, C]
        # hold about this many elements
        self.chunk_elements = int(chunk_elements)
        self.seconds_per_mesh_point = PME_SECONDS_PER_MESH_POINT * self.channels
        # the slow-mesh warning is given once per model
        self.cost_warning_seconds = COST_WARNING_SECONDS
        self.cost_warned = False
        # spread and interpolate by the fused operators of cpp/src/ops/mesh_ops.cpp (no
        # [N, p^3, C] stencil tables kept for the backward) or, as the reference, by
        # index_add / index_select here; and the convolution by lorem::mesh_convolve (its
        # own backward) or autograd through torch.fft; set by Lorem.use_fused_operators
        self.fused_mesh: bool = True
        # the real-space sum over pairs by lorem::pair_sum_form (terms.py), or by gather
        # and index_add as the reference; set by Lorem.use_fused_operators
        self.fused_pairs: bool = True

    # -- sizes --

    @torch.jit.export
    def mesh_shape(self, cell: torch.Tensor) -> List[int]:
        """[3, 3] -> [N_0, N_1, N_2]: at least |a_a| / spacing and the order, FFT-friendly.

        Raises before anything is allocated if the mesh would not fit in the memory limit.
        """
        check_periodic_cell(cell, "PME")
        shape = self.mesh_of(cell)
        lengths: List[float] = torch.linalg.norm(cell.detach().to(torch.float64), dim=-1).tolist()
        itemsize = 8.0 if cell.dtype == torch.float64 else 4.0
        warning = check_cost(
            "the PME mesh "
            + "x".join([str(n) for n in shape])
            + " of this "
            + " x ".join([one_decimal(x) for x in lengths])
            + " A cell",
            float(shape[0] * shape[1] * shape[2]),
            "mesh points",
            self.floats_per_mesh_point * itemsize,
            self.seconds_per_mesh_point,
            self.max_memory_bytes,
            self.cost_warning_seconds,
            True,
        )
        if warning != "" and not self.cost_warned:
            self.cost_warned = True
            warnings.warn(warning, stacklevel=2)
        return shape

    def mesh_of(self, cell: torch.Tensor) -> List[int]:
        """The mesh of mesh_shape without the checks (for cost estimates)."""
        lengths: List[float] = torch.linalg.norm(cell.detach().to(torch.float64), dim=-1).tolist()
        shape: List[int] = []
        for length in lengths:
            shape.append(_fft_friendly(max(int(math.ceil(length / self.spacing)), self.order)))
        return shape

    @torch.jit.export
    def brick_for(
        self, frac_lo: List[float], frac_hi: List[float], mesh: List[int]
    ) -> Tuple[List[int], List[int]]:
        """(brick_lo, brick_shape) of the mesh indices that atoms with fractional
        coordinates within [frac_lo, frac_hi] (per axis) touch, the p-point stencil included."""
        lo: List[int] = []
        shape: List[int] = []
        for a in range(3):
            first = int(math.floor(frac_lo[a] * mesh[a])) - self.order + 1
            last = int(math.floor(frac_hi[a] * mesh[a]))
            lo.append(first)
            shape.append(last - first + 1)
        return lo, shape

    # -- atoms <-> brick --

    def mesh_coordinates(
        self, positions: torch.Tensor, cell: torch.Tensor, mesh: List[int]
    ) -> torch.Tensor:
        """[N, 3] u_a = N_a s_a, s = r A^-1 (the one computation every stage uses)."""
        sizes = torch.tensor(mesh, dtype=positions.dtype, device=positions.device)
        return positions @ torch.linalg.inv(cell) * sizes

    @torch.jit.export
    def brick_of_atoms(
        self, positions: torch.Tensor, cell: torch.Tensor, mesh: List[int]
    ) -> Tuple[List[int], List[int]]:
        """(brick_lo, brick_shape) that the stencils of exactly these atoms cover."""
        if positions.shape[0] == 0:
            return [0, 0, 0], [0, 0, 0]
        first = torch.floor(self.mesh_coordinates(positions, cell, mesh).detach())
        lo: List[int] = (first.min(dim=0)[0].to(torch.int64) - self.order + 1).tolist()
        hi: List[int] = first.max(dim=0)[0].to(torch.int64).tolist()
        return lo, [hi[a] - lo[a] + 1 for a in range(3)]

    def _stencils(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        brick_lo: List[int],
        brick_shape: List[int],
        mesh: List[int],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flat brick indices [N, p^3] of the stencil points and their weights [N, p^3]."""
        p = self.order
        u = self.mesh_coordinates(positions, cell, mesh)
        floor = torch.floor(u.detach())
        weights = stencil_weights(u - floor, p)  # [N, 3, p]
        start = self._stencil_start(floor, brick_lo)
        t = torch.arange(p, device=positions.device)
        i0 = start[:, 0:1] + t  # [N, p] brick index along each axis
        i1 = start[:, 1:2] + t
        i2 = start[:, 2:3] + t
        if self.is_whole_mesh(brick_lo, brick_shape, mesh):
            # the whole mesh is periodic: stencils wrap around it (fold is the identity)
            i0 = torch.remainder(i0, mesh[0])
            i1 = torch.remainder(i1, mesh[1])
            i2 = torch.remainder(i2, mesh[2])
        else:
            self._check_inside_brick(start, brick_lo, brick_shape)
        plane = i0[:, :, None] * brick_shape[1] + i1[:, None, :]  # [N, p, p]
        flat = plane[:, :, :, None] * brick_shape[2] + i2[:, None, None, :]  # [N, p, p, p]
        w = (
            weights[:, 0, :, None, None]
            * weights[:, 1, None, :, None]
            * weights[:, 2, None, None, :]
        )
        num = positions.shape[0]
        return flat.reshape(num, p * p * p), w.reshape(num, p * p * p)

    def _stencil_start(self, floor: torch.Tensor, brick_lo: List[int]) -> torch.Tensor:
        """[N, 3] brick index of each atom's first stencil point, from floor(u) [N, 3]."""
        lo = torch.tensor(brick_lo, dtype=torch.int64, device=floor.device)
        return floor.to(torch.int64) - (self.order - 1) - lo

    def _check_inside_brick(
        self, start: torch.Tensor, brick_lo: List[int], brick_shape: List[int]
    ) -> None:
        """Refuse atoms whose stencils, starting at brick index start [N, 3], leave the brick."""
        if start.shape[0] == 0:
            return
        extent = torch.tensor(brick_shape, dtype=torch.int64, device=start.device)
        outside = (start < 0) | (start + self.order > extent)
        if bool(outside.any()):
            raise ValueError(
                "PME: atoms reach mesh points outside the brick (lo "
                + str(brick_lo)
                + ", shape "
                + str(brick_shape)
                + "); compute the brick with brick_for"
            )

    def _fused_coordinates(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        brick_lo: List[int],
        brick_shape: List[int],
        mesh: List[int],
    ) -> torch.Tensor:
        """[N, 3] mesh coordinates for the fused operators, after the brick check that
        the plain path makes (so that both refuse alike, with a ValueError)."""
        u = self.mesh_coordinates(positions, cell, mesh)
        if not self.is_whole_mesh(brick_lo, brick_shape, mesh):
            start = self._stencil_start(torch.floor(u.detach()), brick_lo)
            self._check_inside_brick(start, brick_lo, brick_shape)
        return u

    def is_whole_mesh(self, brick_lo: List[int], brick_shape: List[int], mesh: List[int]) -> bool:
        """Whether a brick is the whole periodic mesh (lo = 0, shape = mesh)."""
        whole = True
        for a in range(3):
            whole = whole and brick_lo[a] == 0 and brick_shape[a] == mesh[a]
        return whole

    def _chunk_size(self, channels: int) -> int:
        return max(
            1, self.chunk_elements // (self.order * self.order * self.order * max(1, channels))
        )

    @torch.jit.export
    def spread(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        cell: torch.Tensor,
        brick_lo: List[int],
        brick_shape: List[int],
        mesh: List[int],
    ) -> torch.Tensor:
        """Charges [N, C] of the given atoms assigned to the mesh indices
        [brick_lo, brick_lo + brick_shape) (not wrapped: every stencil must lie inside
        the brick, see brick_for; except on the whole mesh, which is periodic)
        -> [C, b0, b1, b2].

        Additive over disjoint sets of atoms (chunks, MPI ranks)."""
        if self.fused_mesh:
            u = self._fused_coordinates(positions, cell, brick_lo, brick_shape, mesh)
            return torch.ops.lorem.mesh_spread(
                charges, u, None, brick_lo, brick_shape, mesh, self.order
            )
        channels = charges.shape[1]
        size = brick_shape[0] * brick_shape[1] * brick_shape[2]
        rows = torch.zeros(size, channels, dtype=charges.dtype, device=charges.device)
        order = self._spatial_order(positions, cell, mesh)
        positions = positions.index_select(0, order)
        charges = charges.index_select(0, order)
        chunk = self._chunk_size(channels)
        for begin in range(0, positions.shape[0], chunk):
            flat, w = self._stencils(
                positions[begin : begin + chunk], cell, brick_lo, brick_shape, mesh
            )
            values = w[:, :, None] * charges[begin : begin + chunk, None, :]  # [n, p^3, C]
            rows.index_add_(0, flat.reshape(-1), values.reshape(-1, channels))
        return rows.reshape(brick_shape[0], brick_shape[1], brick_shape[2], channels).permute(
            3, 0, 1, 2
        )

    @torch.jit.export
    def interpolate(
        self,
        positions: torch.Tensor,
        potential_brick: torch.Tensor,
        cell: torch.Tensor,
        brick_lo: List[int],
        mesh: List[int],
    ) -> torch.Tensor:
        """The mesh potentials [C, b0, b1, b2] of a brick at the given atoms -> [N, C]."""
        channels = potential_brick.shape[0]
        brick_shape = [potential_brick.shape[1], potential_brick.shape[2], potential_brick.shape[3]]
        if self.fused_mesh:
            u = self._fused_coordinates(positions, cell, brick_lo, brick_shape, mesh)
            return torch.ops.lorem.mesh_interpolate(
                potential_brick, u, None, brick_lo, mesh, self.order
            )
        rows = potential_brick.permute(1, 2, 3, 0).reshape(-1, channels)
        order = self._spatial_order(positions, cell, mesh)
        positions = positions.index_select(0, order)
        pieces: List[torch.Tensor] = []
        chunk = self._chunk_size(channels)
        for begin in range(0, positions.shape[0], chunk):
            flat, w = self._stencils(
                positions[begin : begin + chunk], cell, brick_lo, brick_shape, mesh
            )
            gathered = rows.index_select(0, flat.reshape(-1)).reshape(
                flat.shape[0], flat.shape[1], channels
            )
            pieces.append(torch.bmm(w[:, None, :], gathered)[:, 0, :])
        if len(pieces) == 0:
            return potential_brick.new_zeros(0, channels)
        in_order = torch.cat(pieces, dim=0)
        return torch.zeros_like(in_order).index_copy(0, order, in_order)

    def _spatial_order(
        self, positions: torch.Tensor, cell: torch.Tensor, mesh: List[int]
    ) -> torch.Tensor:
        """[N] a permutation of the atoms by mesh cell, so that the stencils of
        consecutive atoms overlap in memory (several times faster on large meshes)."""
        u = torch.floor(self.mesh_coordinates(positions.detach(), cell.detach(), mesh))
        key = (u[:, 0] * mesh[1] + u[:, 1]) * mesh[2] + u[:, 2]
        return torch.argsort(key)

    # -- brick <-> periodic mesh (one process) --

    @torch.jit.export
    def fold(self, brick: torch.Tensor, brick_lo: List[int], mesh: List[int]) -> torch.Tensor:
        """[C, b0, b1, b2] brick at mesh indices brick_lo.. -> the periodic mesh
        [C, N0, N1, N2], every index summed into its periodic image."""
        out = brick
        for a in range(3):
            if brick_lo[a] == 0 and out.shape[a + 1] == mesh[a]:
                continue  # already the periodic mesh along this axis
            segments = _periodic_segments(brick_lo[a], out.shape[a + 1], mesh[a])
            # start from a segment that covers the whole period (no copy of zeros), if any
            first = -1
            for index, (begin, end, _) in enumerate(segments):
                if first < 0 and end - begin == mesh[a]:
                    first = index
            if first >= 0:
                begin, end, target = segments[first]
                total = out.narrow(a + 1, begin, mesh[a]).clone()
            else:
                shape = list(out.shape)
                shape[a + 1] = mesh[a]
                total = torch.zeros(shape, dtype=out.dtype, device=out.device)
            for index, (begin, end, target) in enumerate(segments):
                if index != first:
                    total.narrow(a + 1, target, end - begin).add_(
                        out.narrow(a + 1, begin, end - begin)
                    )
            out = total
        return out

    @torch.jit.export
    def unfold(
        self, full_mesh: torch.Tensor, brick_lo: List[int], brick_shape: List[int]
    ) -> torch.Tensor:
        """[C, N0, N1, N2] periodic mesh -> the brick [C, b0, b1, b2] at mesh indices
        brick_lo.. (periodic gather; the adjoint of fold)."""
        out = full_mesh
        for a in range(3):
            n = full_mesh.shape[a + 1]
            if brick_lo[a] == 0 and brick_shape[a] == n:
                continue  # the brick is the periodic mesh along this axis
            pieces: List[torch.Tensor] = []
            for begin, end, target in _periodic_segments(brick_lo[a], brick_shape[a], n):
                pieces.append(out.narrow(a + 1, target, end - begin))
            out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=a + 1)
        return out

    # -- the convolution --

    @torch.jit.export
    def kernel(self, cell: torch.Tensor, mesh: List[int], ranges: List[List[int]]) -> torch.Tensor:
        """[r0, r1, r2] G(k) |b(m)|^2 / V at the FFT indices ranges[a] = [start, stop)
        (index i stands for frequency i or i - N_a), k = 0 and the Nyquist planes of even
        axes excluded (so that the kernel is even); differentiable in the cell (the virial). The single-process rfft uses [0, N2 // 2 + 1) on the last axis."""
        device = cell.device
        b = reciprocal_cell(cell)
        metric = b @ b.transpose(0, 1)  # [3, 3] b_a . b_b
        m0 = _fft_integers(ranges[0][0], ranges[0][1], mesh[0], device)
        m1 = _fft_integers(ranges[1][0], ranges[1][1], mesh[1], device)
        m2 = _fft_integers(ranges[2][0], ranges[2][1], mesh[2], device)
        f0 = m0.to(cell.dtype)[:, None, None]
        f1 = m1.to(cell.dtype)[None, :, None]
        f2 = m2.to(cell.dtype)[None, None, :]
        k2 = (
            f0 * f0 * metric[0, 0]
            + f1 * f1 * metric[1, 1]
            + f2 * f2 * metric[2, 2]
            + 2.0 * (f0 * f1 * metric[0, 1] + f0 * f2 * metric[0, 2] + f1 * f2 * metric[1, 2])
        )
        origin = (m0[:, None, None] == 0) & (m1[None, :, None] == 0) & (m2[None, None, :] == 0)
        # the Nyquist plane of an even axis stands for +N/2 and -N/2 alike, where G differs
        # in a skewed cell; it is left out (as beyond the Nyquist sphere, in the error
        # estimate), so that the kernel is exactly even, as real and packed FFTs assume
        nyquist = (
            _nyquist(m0, mesh[0])[:, None, None]
            | _nyquist(m1, mesh[1])[None, :, None]
            | _nyquist(m2, mesh[2])[None, None, :]
        )
        left_out = origin | nyquist
        safe_k2 = torch.where(left_out, torch.ones_like(k2), k2)
        g = 4.0 * math.pi * torch.exp(-0.5 * self.smearing**2 * safe_k2) / safe_k2
        moduli = (
            self._moduli(mesh[0], m0, cell)[:, None, None]
            * self._moduli(mesh[1], m1, cell)[None, :, None]
            * self._moduli(mesh[2], m2, cell)[None, None, :]
        )
        volume = torch.abs(torch.linalg.det(cell))
        return torch.where(left_out, torch.zeros_like(g), g * moduli) / volume

    def _moduli(self, size: int, frequencies: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        table = spline_moduli(size, self.order).to(device=cell.device, dtype=cell.dtype)
        return table[torch.remainder(frequencies, size)]

    @torch.jit.export
    def convolve(
        self, full_mesh: torch.Tensor, cell: torch.Tensor, mesh: List[int]
    ) -> torch.Tensor:
        """[C, N0, N1, N2] charge mesh -> potential mesh (unnormalised FFT both ways; the
        kernel carries 1/V: see the module notes).

        A distributed version may pack two channels a, b as a + i b into one complex
        mesh: the kernel is real and even (G(k) = G(-k)), so the inverse complex FFT of
        G times the complex FFT of a + i b is conv(a) + i conv(b) (tests/long_range/test_pme.py)."""
        g = self.kernel(cell, mesh, [[0, mesh[0]], [0, mesh[1]], [0, mesh[2] // 2 + 1]])
        if self.fused_mesh:
            # the same two FFTs, with the symmetric operator's own backward
            # (cpp/src/ops/convolve_ops.cpp) instead of autograd through torch.fft
            return torch.ops.lorem.mesh_convolve(full_mesh, g)
        spectrum = torch.fft.rfftn(full_mesh, dim=(1, 2, 3))  # [C, N0, N1, N2 // 2 + 1]
        return torch.fft.irfftn(spectrum * g, s=mesh, dim=(1, 2, 3), norm="forward")

    # -- totals --

    @torch.jit.export
    def real_space_potentials(
        self,
        charges_all: torch.Tensor,
        num_receivers: int,
        centers: torch.Tensor,
        others: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        """[num_receivers, C] real-space part (terms.real_space_potentials)."""
        return real_space_potentials(
            charges_all, num_receivers, centers, others, distances, self.smearing, self.fused_pairs
        )

    @torch.jit.export
    def potentials(
        self,
        kspace: torch.Tensor,
        charges: torch.Tensor,
        total_charge: torch.Tensor,
        cell: torch.Tensor,
        real_space: torch.Tensor,
    ) -> torch.Tensor:
        """Potentials [N, C] from the interpolated k-space part [N, C], the charges
        [N, C], the total charge [C] (summed over ranks) and the real-space part."""
        return combine_potentials(
            kspace, charges, total_charge, cell, real_space, self.smearing, self.prefactor
        )

    def kspace_potentials(
        self, positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Single process: [N, 3], [N, C] -> [N, C] sum_k G(k) Re(exp(-i k.r) S(k)) / V
        by spread (the whole mesh as one brick) -> fold -> convolve -> unfold -> interpolate."""
        mesh = self.mesh_shape(cell)
        # one brick that is the whole periodic mesh: the stencils wrap around it, and
        # fold and unfold are identities
        brick_lo, brick_shape = [0, 0, 0], mesh
        brick = self.spread(positions, charges, cell, brick_lo, brick_shape, mesh)
        potential_mesh = self.convolve(self.fold(brick, brick_lo, mesh), cell, mesh)
        potential_brick = self.unfold(potential_mesh, brick_lo, brick_shape)
        return self.interpolate(positions, potential_brick, cell, brick_lo, mesh)

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
        """Single process, all stages: [N, 3], [N, C] and a full neighbour list -> [N, C].

        slab_factor > 0: a 2D slab (periodic along x and y; the pairs must not cross z):
        the mesh over the cell extended along z plus the dipole correction (slab.py)."""
        if slab_factor > 0.0:
            check_slab_cell(cell)
            cell = extended_cell(cell, slab_factor)
        kspace = self.kspace_potentials(positions, charges, cell)
        real_space = self.real_space_potentials(
            charges, positions.shape[0], centers, others, distances
        )
        pot = self.potentials(kspace, charges, charges.sum(dim=0), cell, real_space)
        if slab_factor > 0.0:
            moments = slab_moments(positions, charges, cell)
            pot = pot + slab_potentials(positions, moments, cell, self.prefactor)
        return pot
