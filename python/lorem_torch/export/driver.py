"""Reference driver of the staged contract, for one or several (simulated) ranks.

The contract the C++ runtime implements on every MPI rank (cpp/src/model.cpp),
written for all ranks at once in lockstep so that it can be tested in one process:
every collective below (sum over ranks, ghost exchange, all-gather) is where the
C++ code calls its Communicator. (The C++ code orders the same gradients so that
autograd passes through the encoder only once; the sums are the same.)

Backward pass, with E_r the energy of the local atoms of rank r:
  1. autograd of E_r to its positions, strain, the ghost charges, and the summed
     S(k) and Q (leaves), keeping the graph;
  2. dE/dS and dE/dQ summed over ranks; dE/dq of ghosts sent back to their owners;
  3. autograd of  S_r . dE/dS + Q_r . dE/dQ + q_local . dE/dq_local  (the paths
     through the structure factors and through other ranks) to positions and strain.
Forces on ghosts go back to their owners (LAMMPS: reverse communication, newton on).
"""

from dataclasses import dataclass
from typing import List

import numpy as np
import torch


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


def evaluate_ranks(
    module, systems: List[RankSystem], cell: torch.Tensor, periodic: bool
) -> List[RankResult]:
    dtype = systems[0].positions.dtype
    positions, strains, encoded = [], [], []
    for system in systems:
        pos = system.positions.detach().clone().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, requires_grad=True)
        positions.append(pos)
        strains.append(strain)
        encoded.append(
            module.encode(
                pos, system.atomic_numbers, system.centers, system.others, strain, system.n_local
            )
        )
    has_lr = bool(module.has_long_range)
    leaves: List[List[torch.Tensor]] = [[] for _ in systems]
    partial_sf: List[torch.Tensor | None] = [None] * len(systems)
    energies = []
    if has_lr and periodic:
        grid = module.grid_shape(cell)
        partial_q = [e[3].sum(dim=0) for e in encoded]
        partial_sf = [
            module.structure_factors(pos[: s.n_local], e[3], cell, strain, grid)
            for pos, e, s, strain in zip(positions, encoded, systems, strains, strict=True)
        ]
        total_sf = sum(s.detach() for s in partial_sf)  # MPI allreduce
        total_q = sum(q.detach() for q in partial_q)  # MPI allreduce
        for r, system in enumerate(systems):
            ghost_charges = (
                torch.stack(
                    [
                        encoded[o][3][i].detach()
                        for o, i in zip(
                            system.ghost_rank.tolist(), system.ghost_index.tolist(), strict=True
                        )
                    ]
                )
                if len(system.ghost_rank)
                else encoded[r][3].new_zeros(0, encoded[r][3].shape[1])
            )
            ghost_charges.requires_grad_(True)  # forward communication
            sf_leaf = total_sf.clone().requires_grad_(True)
            q_leaf = total_q.clone().requires_grad_(True)
            leaves[r] = [ghost_charges, sf_leaf, q_leaf]
            charges_all = torch.cat([encoded[r][3], ghost_charges])
            pot = module.potentials(
                positions[r],
                charges_all,
                sf_leaf,
                q_leaf,
                cell,
                strains[r],
                grid,
                system.centers,
                system.others,
                system.n_local,
            )
            energies.append(encoded[r][0] + module.readout(encoded[r][1], encoded[r][2], pot))
    elif has_lr:
        all_positions = torch.cat(
            [pos[: s.n_local].detach() for pos, s in zip(positions, systems, strict=True)]
        )
        all_charges = torch.cat([e[3].detach() for e in encoded])  # MPI all-gather
        for r, system in enumerate(systems):
            p_leaf = all_positions.clone().requires_grad_(True)
            c_leaf = all_charges.clone().requires_grad_(True)
            leaves[r] = [p_leaf, c_leaf]
            receivers = torch.arange(system.global_offset, system.global_offset + system.n_local)
            pot = module.direct_potentials(p_leaf, c_leaf, strains[r], receivers)
            energies.append(encoded[r][0] + module.readout(encoded[r][1], encoded[r][2], pot))
    else:
        energies = [e[0] for e in encoded]

    # backward 1
    first = []
    for r in range(len(systems)):
        inputs = [positions[r], strains[r]] + leaves[r]
        grads = torch.autograd.grad(energies[r].sum(), inputs, retain_graph=True, allow_unused=True)
        first.append(
            [
                g if g is not None else torch.zeros_like(x)
                for g, x in zip(grads, inputs, strict=True)
            ]
        )

    # communication of the gradients
    charge_grads = [torch.zeros_like(e[3]) for e in encoded]
    extra_forces = [torch.zeros(s.n_local, 3, dtype=dtype) for s in systems]
    sf_grad = q_grad = None
    if has_lr and periodic:
        sf_grad = sum(f[3] for f in first)  # MPI allreduce
        q_grad = sum(f[4] for f in first)
        for r, system in enumerate(systems):  # reverse communication of dE/dq_ghost
            for k, (o, i) in enumerate(
                zip(system.ghost_rank.tolist(), system.ghost_index.tolist(), strict=True)
            ):
                charge_grads[o][i] += first[r][2][k]
    elif has_lr:
        position_grad = sum(f[2] for f in first)  # MPI allreduce (or reduce-scatter)
        charge_grad = sum(f[3] for f in first)
        for r, system in enumerate(systems):
            rows = slice(system.global_offset, system.global_offset + system.n_local)
            extra_forces[r] = -position_grad[rows]
            charge_grads[r] = charge_grad[rows]

    results = []
    ghost_forces = []
    for r, system in enumerate(systems):
        grad_pos, grad_strain = first[r][0], first[r][1]
        if has_lr:
            surrogate = (encoded[r][3] * charge_grads[r]).sum()
            if periodic:
                surrogate = surrogate + (partial_sf[r] * sf_grad).sum()
                surrogate = surrogate + (encoded[r][3].sum(dim=0) * q_grad).sum()
            second = torch.autograd.grad(surrogate, [positions[r], strains[r]], allow_unused=True)
            if second[0] is not None:
                grad_pos = grad_pos + second[0]
            if second[1] is not None:
                grad_strain = grad_strain + second[1]
        forces = -grad_pos
        forces[: system.n_local] += extra_forces[r]
        ghost_forces.append(forces[system.n_local :])
        results.append(
            RankResult(
                energy=float(energies[r].detach().sum()),
                energies=energies[r].detach(),
                forces=forces[: system.n_local].detach().clone(),
                virial=grad_strain.detach(),
            )
        )
    for r, system in enumerate(systems):  # reverse communication of ghost forces
        for k, (o, i) in enumerate(
            zip(system.ghost_rank.tolist(), system.ghost_index.tolist(), strict=True)
        ):
            results[o].forces[i] += ghost_forces[r][k].detach()
    return results


def split_into_ranks(
    atoms, cutoff: float, rank_of_atom: np.ndarray, dtype=torch.float64
) -> List[RankSystem]:
    """Distribute a structure over ranks as a domain decomposition would: each rank
    owns some atoms and holds as ghosts every image (periodic or on another rank)
    that its atoms see within the cutoff."""
    from ..data import neighbor_list

    periodic = bool(atoms.pbc.all())
    cell = atoms.cell.array if periodic else np.zeros((3, 3))
    nl = neighbor_list(atoms.positions, cell, periodic, cutoff)
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
