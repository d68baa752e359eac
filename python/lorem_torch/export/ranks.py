"""A system split over ranks as a domain decomposition would split it, and evaluated by
the C++ runtime over ranks simulated in one process (lorem_torch._core: one thread per
rank, the collectives of the MPI runtime over shared memory). So the tests run the code
LAMMPS runs, every stage of docs/design.md section 4 (Ewald, PME, direct sum, slabs,
message passing, Born effective charges), without MPI.
"""

import warnings
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from .archive import StaleExportWarning


@dataclass
class RankSystem:
    """One rank's view: local atoms first, then ghosts."""

    positions: torch.Tensor  # [n_all, 3]
    atomic_numbers: torch.Tensor  # [n_all]
    n_local: int
    centers: torch.Tensor  # [P] local indices (< n_local)
    others: torch.Tensor  # [P] indices into positions
    ghost_rank: torch.Tensor  # [n_all - n_local] owner rank of each ghost
    ghost_index: torch.Tensor  # [n_all - n_local] local index on the owner
    global_offset: int = 0  # position of this rank's local atoms in the global order


@dataclass
class RankResult:
    energy: float
    energies: torch.Tensor  # [n_local]
    forces: torch.Tensor  # [n_local, 3] (ghost contributions already returned)
    virial: torch.Tensor  # [3, 3] this rank's share
    born_effective_charges: torch.Tensor | None = None  # [n_local, 3, 3] when computed
    # through the collectives: per-atom values and sums as float64, the mesh in the model's dtype
    bytes_sent: float = 0.0


def evaluate_ranks(
    model,
    systems: List[RankSystem],
    cell,
    periodic: bool,
    slab: bool = False,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    electric_field: Sequence[float] | None = None,
    born_effective_charges: bool = False,
) -> List[RankResult]:
    """Energies, forces, virial shares (and Born effective charges) of every rank, by the
    C++ runtime's staged algorithm over simulated ranks. model: a lorem_torch._core.Model
    or the path of an export (its long-range method as set on the Model); slab: a 2D slab
    (periodic along x and y; `periodic` True as well)."""
    from .. import _core

    if not isinstance(model, _core.Model):
        model = _core.Model(str(model))
    for advisory in model.advisories:
        warnings.warn(advisory, StaleExportWarning, stacklevel=2)
    ranks = [
        {
            "positions": s.positions.detach().double().numpy(),
            "atomic_numbers": s.atomic_numbers.numpy(),
            "n_local": int(s.n_local),
            "centers": s.centers.numpy(),
            "others": s.others.numpy(),
            "ghost_rank": s.ghost_rank.numpy(),
            "ghost_index": s.ghost_index.numpy(),
        }
        for s in systems
    ]
    out = model.compute_ranks(
        ranks,
        np.asarray(cell, dtype=float),
        bool(periodic),
        origin=tuple(float(x) for x in origin),
        electric_field=None if electric_field is None else tuple(map(float, electric_field)),
        born_effective_charges=born_effective_charges,
        slab=slab,
    )
    return [
        RankResult(
            energy=float(r["energy"]),
            energies=torch.from_numpy(r["energies"]),
            forces=torch.from_numpy(r["forces"]),
            virial=torch.from_numpy(r["virial"]),
            born_effective_charges=(
                torch.from_numpy(r["born_effective_charges"])
                if "born_effective_charges" in r
                else None
            ),
            bytes_sent=float(r["bytes_sent"]),
        )
        for r in out
    ]


def split_into_ranks(
    atoms, cutoff: float, rank_of_atom: np.ndarray, dtype=torch.float64
) -> List[RankSystem]:
    """Distribute a structure over ranks as a domain decomposition would: each rank
    owns some atoms and holds as ghosts every image (periodic or on another rank)
    that its atoms see within the cutoff. Rank r's domain (its share of a PME mesh) is
    the slab r/R <= x < (r+1)/R of the cell: any tiling gives the same numbers."""
    from ..data import is_slab, neighbor_list

    slab = is_slab(atoms)  # periodic along x and y only (a 2D slab)
    periodic = bool(atoms.pbc.all()) or slab
    cell = atoms.cell.array if periodic else np.zeros((3, 3))
    nl = neighbor_list(atoms.positions, cell, periodic, cutoff, slab)
    ranks = int(rank_of_atom.max()) + 1 if len(rank_of_atom) else 1
    local_index = np.zeros(len(atoms), dtype=int)
    owned = [np.where(rank_of_atom == r)[0] for r in range(ranks)]
    for r in range(ranks):
        local_index[owned[r]] = np.arange(len(owned[r]))
    systems, offset = [], 0
    for r in range(ranks):
        mine = owned[r]
        positions = [atoms.positions[mine]]
        ghost_key = {}
        ghost_positions, ghost_rank, ghost_index = [], [], []
        centers, others = [], []
        for p in np.where(rank_of_atom[nl["centers"]] == r)[0]:
            i, j, shift = nl["centers"][p], nl["others"][p], tuple(nl["cell_shifts"][p])
            if rank_of_atom[j] == r and shift == (0, 0, 0):
                other = local_index[j]
            else:
                key = (j, shift)
                if key not in ghost_key:
                    ghost_key[key] = len(mine) + len(ghost_positions)
                    ghost_positions.append(atoms.positions[j] + np.array(shift) @ cell)
                    ghost_rank.append(rank_of_atom[j])
                    ghost_index.append(local_index[j])
                other = ghost_key[key]
            centers.append(local_index[i])
            others.append(other)
        all_positions = np.concatenate(positions + [np.reshape(ghost_positions, (-1, 3))])
        numbers = np.concatenate(
            [atoms.numbers[mine], atoms.numbers[[k[0] for k in ghost_key]]]
        ).astype(np.int64)
        systems.append(
            RankSystem(
                positions=torch.tensor(all_positions, dtype=dtype),
                atomic_numbers=torch.tensor(numbers),
                n_local=len(mine),
                centers=torch.tensor(centers, dtype=torch.int64),
                others=torch.tensor(others, dtype=torch.int64),
                ghost_rank=torch.tensor(ghost_rank, dtype=torch.int64),
                ghost_index=torch.tensor(ghost_index, dtype=torch.int64),
                global_offset=offset,
            )
        )
        offset += len(mine)
    return systems
