"""The parts of the Ewald split that every k-space method shares (one implementation each).

Conventions (docs/design.md section 2): Coulomb 1/r with a prefactor, Gaussian smearing
sigma; the real-space part erfc(r / (sqrt(2) sigma)) / r over a full neighbour list;
the self term -q sqrt(2 / pi) / sigma; the neutralising background -2 pi sigma^2 Q / V;
potentials carry the overall factor 1/2, so that the energy of a channel is
sum_i q_i V_i.
"""

import math
from typing import List

import torch

from .. import _core  # noqa: F401  (registers torch.ops.lorem.pair_sum_form)
from ..errors import LongRangeTooLargeError, NotPeriodicError

# warn (once per model) about a k-space estimated slower than this per evaluation: Ewald
# from about 140 A cubic cells, whatever the atoms (a molecule in a 200 A box: 17 s)
COST_WARNING_SECONDS = 5.0


def real_space_potentials(
    charges_all: torch.Tensor,
    num_receivers: int,
    centers: torch.Tensor,
    others: torch.Tensor,
    distances: torch.Tensor,
    smearing: float,
    fused: bool = True,
) -> torch.Tensor:
    """[num_receivers, C]: sum_j q_j erfc(r_ij / (sqrt(2) sigma)) / r_ij / 2 over a full list.

    centers index the receivers, others index charges_all (which may hold ghosts).
    fused (the default): the sum over pairs is lorem::pair_sum_form (cpp/src/ops/
    pair_sum_ops.cpp), which keeps no [P, C] tensor for the backward; False: gather,
    multiply and index_add in PyTorch, the reference.
    """
    pair = torch.erfc(distances / (math.sqrt(2.0) * smearing)) / distances
    if fused:
        receivers = [num_receivers, charges_all.shape[1]]
        # slot 2 (receivers) is the target: V = dF/dG of F = sum_p f_p q[others_p] . G[centers_p]
        summed = torch.ops.lorem.pair_sum_form(
            2, receivers, pair, charges_all, None, centers, others
        )
        return summed / 2.0
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
            "[lorem:cell] "  # errors.CELL_CODE: TorchScript takes no global strings
            + method
            + " needs a periodic cell with a finite, non-zero volume (got volume "
            + str(volume)
            + " A^3); non-periodic structures use the direct sum"
        )


def check_cost(
    what: str,
    elements: float,
    unit: str,
    bytes_per_element: float,
    seconds_per_element: float,
    limit_bytes: float,
    warning_seconds: float,
    is_pme: bool,
) -> str:
    """Before anything is allocated: refuse (LongRangeTooLargeError) a long-range grid
    whose estimated peak memory exceeds `limit_bytes`; return a warning (one line, code
    [lorem:cost]) when its estimated time per evaluation is above `warning_seconds`,
    "" otherwise. `elements` counts the grid points (`unit`: k-vectors or mesh points).

    The advice ends in "a higher memory limit": callers that know where the user sets
    it add the name of that setting (errors.with_advice)."""
    needed = elements * bytes_per_element
    seconds = elements * seconds_per_element
    remedies: List[str] = [] if is_pme else ["PME"]
    remedies.append("a coarser accuracy")
    estimate = (
        _count(elements) + " " + unit + " (~" + _gigabytes(needed) + ", ~" + _seconds(seconds)
    )
    if needed > limit_bytes:
        raise LongRangeTooLargeError(
            "[lorem:memory] "  # errors.MEMORY_CODE
            + what
            + " needs "
            + estimate
            + " per evaluation), more than the memory limit of "
            + _gigabytes(limit_bytes)
            + ": "
            + _advice(remedies + ["a higher memory limit"])
        )
    if seconds > warning_seconds:
        return (
            "[lorem:cost] " + what + " needs " + estimate + " per evaluation): " + _advice(remedies)
        )
    return ""


def _advice(remedies: List[str]) -> str:
    listed = remedies[-1]
    if len(remedies) > 1:
        listed = ", ".join(remedies[:-1]) + " or " + listed
    return (
        "for an isolated molecule or cluster use non-periodic boundaries (the direct sum); "
        + "for a large periodic cell, "
        + listed
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


def _seconds(seconds: float) -> str:
    return str(int(math.ceil(seconds))) + " s on one CPU core"
