"""The parts of the Ewald split that every k-space method shares (one implementation each).

Conventions (DESIGN.md section 2): Coulomb 1/r with a prefactor, Gaussian smearing
sigma; the real-space part erfc(r / (sqrt(2) sigma)) / r over a full neighbour list;
the self term -q sqrt(2 / pi) / sigma; the neutralising background -2 pi sigma^2 Q / V;
potentials carry the overall factor 1/2, so that the energy of a channel is
sum_i q_i V_i.
"""

import math

import torch

from ..errors import LongRangeTooLargeError, NotPeriodicError


def real_space_potentials(
    charges_all: torch.Tensor,
    num_receivers: int,
    centers: torch.Tensor,
    others: torch.Tensor,
    distances: torch.Tensor,
    smearing: float,
) -> torch.Tensor:
    """[num_receivers, C]: sum_j q_j erfc(r_ij / (sqrt(2) sigma)) / r_ij / 2 over a full list.

    centers index the receivers, others index charges_all (which may hold ghosts).
    """
    pair = torch.erfc(distances / (math.sqrt(2.0) * smearing)) / distances
    contributions = charges_all.index_select(0, others) * pair[:, None]
    out = torch.zeros(
        num_receivers, charges_all.shape[1], dtype=charges_all.dtype, device=charges_all.device
    )
    return out.index_add(0, centers, contributions) / 2.0


def combine_potentials(
    kspace: torch.Tensor,
    charges: torch.Tensor,
    total_charge: torch.Tensor,
    cell: torch.Tensor,
    real_space: torch.Tensor,
    smearing: float,
    prefactor: float,
) -> torch.Tensor:
    """Potentials [N, C] of the receiving atoms from their k-space part
    sum_k G(k) Re(exp(-i k.r) S(k)) / V [N, C] (full k-sum, before the factor 1/2),
    their charges [N, C], the total charge [C] and their real-space part [N, C]."""
    volume = torch.abs(torch.linalg.det(cell))
    pot = kspace - charges * math.sqrt(2.0 / math.pi) / smearing
    pot = pot - 2.0 * math.pi * smearing**2 * total_charge[None, :] / volume
    return prefactor * (pot / 2.0 + real_space)


def check_periodic_cell(cell: torch.Tensor, method: str) -> None:
    """A k-space method needs a cell with a volume; non-periodic structures are summed
    directly (direct_potentials)."""
    volume = float(torch.abs(torch.linalg.det(cell.detach().to(torch.float64))))
    lengths = torch.linalg.norm(cell.detach().to(torch.float64), dim=-1)
    if not volume > 1e-6 * float(lengths.prod()) or not math.isfinite(volume):
        raise NotPeriodicError(
            method
            + " needs a periodic cell with a finite, non-zero volume (got volume "
            + str(volume)
            + " A^3); non-periodic structures use the direct sum"
        )


def check_memory(
    what: str, elements: float, unit: str, bytes_per_element: float, limit_bytes: float
) -> None:
    """Refuse, before anything is allocated, a long-range grid that would need more than
    `limit_bytes`; `elements` counts the grid points (`unit`: k-vectors or mesh points)."""
    needed = elements * bytes_per_element
    if needed > limit_bytes:
        raise LongRangeTooLargeError(
            what
            + " needs "
            + _count(elements)
            + " "
            + unit
            + " (~"
            + _gigabytes(needed)
            + "), more than the limit of "
            + _gigabytes(limit_bytes)
            + ". Use long_range method 'pme' for large cells, a larger (coarser) accuracy, "
            + "or raise max_memory_gb in the long_range settings if the machine has the memory"
        )


def one_decimal(x: float) -> str:
    """x with one decimal ("17.8"), the same eager and in TorchScript."""
    tenths = int(math.floor(x * 10.0 + 0.5))
    return str(tenths // 10) + "." + str(tenths % 10)


def _count(elements: float) -> str:
    if elements >= 1e9:
        return one_decimal(elements / 1e9) + " G"
    if elements >= 1e6:
        return one_decimal(elements / 1e6) + " M"
    return str(int(elements))


def _gigabytes(size: float) -> str:
    return one_decimal(size / 1e9) + " GB"
