"""Reference driver of the staged contract, for one or several (simulated) ranks.

The algorithm the C++ runtime runs on every MPI rank (cpp/src/model.cpp), written for
all ranks at once in lockstep so that it can be tested in one process: every
collective below (sum over ranks, ghost exchange, all-gather) is where the C++ code
calls its Communicator, and both use the same stages in the same order.

Forward, on every rank (local atoms first, then ghosts one cutoff deep):
  stage 0    initial_features -> energies, features of local atoms
  stage t    (t = 1..T) ghosts get their owners' features (forward exchange), then
             message_passing_step t-1 -> energy term, new features of local atoms;
             every stage sees its inputs as leaves, so that its graph stands alone
  charges    of the local atoms from the final features
  long range S(k) and Q summed over ranks, ghost charges exchanged, potentials of local
             atoms (or, non-periodic, all-gathered positions and charges), readout;
             a slab: S(k) over slab_cell(cell), Q with the moments M, S along z in one sum,
             slab_potentials added
Backward, with E_r the energy of rank r's local atoms:
  1. autograd of the long-range energy to positions, strain, charges (local and ghost),
     the summed S(k) and Q, and the final features (all leaves);
  2. dE/dS and dE/dQ summed over ranks and pushed through this rank's S(k) and Q;
     dE/dq of ghosts sent back to their owners (reverse exchange);
  3. stages T..0: autograd of the stage's outputs with their gradients to positions,
     strain and the stage's input leaves; gradients of ghost features go back to
     their owners (reverse exchange) and join those of the local features.
Forces on ghosts go back to their owners (LAMMPS: reverse communication, newton on).
"""

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch

from ..vocabulary import EWALD, NO_LONG_RANGE


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


class SimulatedRanks:
    """The collectives of the staged contract over ranks held in one process."""

    def __init__(self, systems: List[RankSystem]):
        self.systems = systems

    def forward_ghosts(self, local_values: List[torch.Tensor]) -> List[torch.Tensor]:
        """[n_local_r, ...] per rank -> the owners' values on each rank's ghosts."""
        out = []
        for system, values in zip(self.systems, local_values, strict=True):
            rows = [
                local_values[o][i]
                for o, i in zip(
                    system.ghost_rank.tolist(), system.ghost_index.tolist(), strict=True
                )
            ]
            shape = values.shape[1:]
            out.append(torch.stack(rows) if rows else values.new_zeros((0,) + tuple(shape)))
        return out

    def reverse_ghosts(self, ghost_values: List[torch.Tensor], like: List[torch.Tensor]):
        """Values on ghosts -> summed onto their owners' local atoms."""
        out = [torch.zeros_like(x) for x in like]
        for system, values in zip(self.systems, ghost_values, strict=True):
            for k, (o, i) in enumerate(
                zip(system.ghost_rank.tolist(), system.ghost_index.tolist(), strict=True)
            ):
                out[o][i] += values[k]
        return out

    @staticmethod
    def all_reduce_sum(values: List[torch.Tensor]) -> torch.Tensor:
        return sum(v.detach() for v in values)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _grad(outputs, seeds, inputs):
    """Gradients of outputs (with seeds; None: ones) to inputs, zeros where unused."""
    seeds = seeds if seeds is not None else [None] * len(outputs)
    pairs = [(o, s) for o, s in zip(outputs, seeds, strict=True) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], inputs, [s for _, s in pairs], allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]


def evaluate_ranks(
    module,
    contract: Dict[str, Any],
    systems: List[RankSystem],
    cell: torch.Tensor,
    periodic: bool,
    slab: bool = False,
) -> List[RankResult]:
    """Energies, forces and virial shares of every rank, by the staged contract; slab: a 2D
    slab (periodic along x and y; `periodic` True), Ewald over module.slab_cell(cell), the
    moments summed over ranks with the total charge, the dipole correction added."""
    from .contract import CapabilityError, require

    require(contract, "domain_decomposition", "the simulated-ranks driver")
    shape = "slab" if slab else "periodic" if periodic else "non_periodic"
    require(contract, shape, "the simulated-ranks driver")
    if periodic and contract["long_range"]["method"] not in (EWALD, NO_LONG_RANGE):
        raise CapabilityError(
            "the simulated-ranks driver runs the Ewald stages only (the distributed PME mesh "
            "lives in the C++ runtime, cpp/src/mesh.cpp): export with long_range ewald"
        )
    comm = SimulatedRanks(systems)
    ranks = range(len(systems))
    dtype = systems[0].positions.dtype
    layers = int(contract["num_message_passing"])
    has_long_range = contract["long_range"]["method"] != NO_LONG_RANGE
    positions = [_leaf(s.positions) for s in systems]
    strains = [torch.zeros(3, 3, dtype=dtype, requires_grad=True) for _ in systems]
    for s in systems:
        module.check_species(s.atomic_numbers)

    # -- forward: stages of the short range; stage_inputs[t][r] are the leaves of stage t
    stages: List[List[tuple]] = []  # [stage][rank] -> (energy, scalar, spherical)
    stage_inputs: List[List[List[torch.Tensor]]] = []
    stages.append(
        [
            module.initial_features(
                positions[r], s.atomic_numbers, s.centers, s.others, strains[r], s.n_local
            )
            for r, s in zip(ranks, systems, strict=True)
        ]
    )
    stage_inputs.append([[] for _ in ranks])
    for layer in range(layers):
        local_scalar = [_leaf(stages[-1][r][1]) for r in ranks]
        local_spherical = [_leaf(stages[-1][r][2]) for r in ranks]
        ghost_scalar = [_leaf(g) for g in comm.forward_ghosts(local_scalar)]
        ghost_spherical = [_leaf(g) for g in comm.forward_ghosts(local_spherical)]
        stage_inputs.append(
            [
                [local_scalar[r], local_spherical[r], ghost_scalar[r], ghost_spherical[r]]
                for r in ranks
            ]
        )
        stages.append(
            [
                module.message_passing_step(
                    layer,
                    positions[r],
                    s.centers,
                    s.others,
                    strains[r],
                    torch.cat([local_scalar[r], ghost_scalar[r]]),
                    torch.cat([local_spherical[r], ghost_spherical[r]]),
                    s.n_local,
                )
                for r, s in zip(ranks, systems, strict=True)
            ]
        )
    short_energies = [sum(stage[r][0] for stage in stages).detach() for r in ranks]
    final = stages[-1]
    charges = [module.charges(final[r][1], final[r][2]) for r in ranks]

    # -- long range: everything it sees is a leaf
    grad_positions = [torch.zeros_like(p) for p in positions]
    grad_strains = [torch.zeros_like(s) for s in strains]
    grad_charges = [torch.zeros_like(q) for q in charges]
    grad_scalar = [torch.zeros_like(final[r][1]) for r in ranks]
    grad_spherical = [torch.zeros_like(final[r][2]) for r in ranks]
    long_energies = [torch.zeros_like(e) for e in short_energies]
    if has_long_range:
        q = [_leaf(c) for c in charges]
        scalar = [_leaf(final[r][1]) for r in ranks]
        spherical = [_leaf(final[r][2]) for r in ranks]
        if periodic:
            kcell = module.slab_cell(cell) if slab else cell
            grid = module.grid_shape(kcell)
            partial_sf = [
                module.structure_factors(positions[r][: s.n_local], q[r], kcell, strains[r], grid)
                for r, s in zip(ranks, systems, strict=True)
            ]
            total_sf = _leaf(comm.all_reduce_sum(partial_sf))
            if slab:  # Q, M, S in the one sum over ranks that carries Q
                partial_m = [
                    module.slab_moments(positions[r][: s.n_local], q[r], kcell, strains[r])
                    for r, s in zip(ranks, systems, strict=True)
                ]
                total_m = _leaf(comm.all_reduce_sum(partial_m))
                total_q = total_m[0]
            else:
                total_m = _leaf(comm.all_reduce_sum([x.sum(dim=0) for x in q]))
                total_q = total_m
            ghost_q = [_leaf(g) for g in comm.forward_ghosts([x.detach() for x in q])]
            first = []
            for r, s in zip(ranks, systems, strict=True):
                pot = module.potentials(
                    positions[r],
                    torch.cat([q[r], ghost_q[r]]),
                    total_sf,
                    total_q,
                    kcell,
                    strains[r],
                    grid,
                    s.centers,
                    s.others,
                    s.n_local,
                )
                if slab:
                    pot = pot + module.slab_potentials(
                        positions[r][: s.n_local], total_m, kcell, strains[r]
                    )
                energy = module.readout(scalar[r], spherical[r], pot)
                long_energies[r] = energy.detach()
                inputs = [positions[r], strains[r], q[r], ghost_q[r], total_sf, total_m]
                first.append(_grad([energy.sum()], None, inputs + [scalar[r], spherical[r]]))
            grad_sf = comm.all_reduce_sum([f[4] for f in first])
            grad_m = comm.all_reduce_sum([f[5] for f in first])
            from_ghosts = comm.reverse_ghosts([f[3] for f in first], q)
            for r in ranks:
                through_sf = _grad([partial_sf[r]], [grad_sf], [positions[r], strains[r], q[r]])
                grad_positions[r] += first[r][0] + through_sf[0]
                grad_strains[r] += first[r][1] + through_sf[1]
                grad_charges[r] = first[r][2] + from_ghosts[r] + through_sf[2]
                if slab:
                    through_m = _grad([partial_m[r]], [grad_m], [positions[r], strains[r], q[r]])
                    grad_positions[r] += through_m[0]
                    grad_strains[r] += through_m[1]
                    grad_charges[r] = grad_charges[r] + through_m[2]
                else:
                    grad_charges[r] = grad_charges[r] + grad_m
                grad_scalar[r], grad_spherical[r] = first[r][6], first[r][7]
        else:
            all_positions = torch.cat(
                [p[: s.n_local].detach() for p, s in zip(positions, systems, strict=True)]
            )
            all_charges = torch.cat([x.detach() for x in q])  # MPI all-gather
            first = []
            for r, s in zip(ranks, systems, strict=True):
                p_leaf, c_leaf = _leaf(all_positions), _leaf(all_charges)
                receivers = torch.arange(s.global_offset, s.global_offset + s.n_local)
                pot = module.direct_potentials(p_leaf, c_leaf, strains[r], receivers)
                energy = module.readout(scalar[r], spherical[r], pot)
                long_energies[r] = energy.detach()
                first.append(
                    _grad(
                        [energy.sum()], None, [strains[r], p_leaf, c_leaf, scalar[r], spherical[r]]
                    )
                )
            position_grad = comm.all_reduce_sum([f[1] for f in first])
            charge_grad = comm.all_reduce_sum([f[2] for f in first])
            for r, s in zip(ranks, systems, strict=True):
                rows = slice(s.global_offset, s.global_offset + s.n_local)
                grad_positions[r][: s.n_local] += position_grad[rows]
                grad_strains[r] += first[r][0]
                grad_charges[r] = charge_grad[rows]
                grad_scalar[r], grad_spherical[r] = first[r][3], first[r][4]

    # -- backward through the stages, last first
    for t in range(layers, -1, -1):
        input_grads = []
        for r in ranks:
            energy, scalar, spherical = stages[t][r]
            outputs = [energy.sum(), scalar, spherical]
            seeds = [torch.ones_like(outputs[0]), grad_scalar[r], grad_spherical[r]]
            if t == layers:
                outputs.append(charges[r])
                seeds.append(grad_charges[r])
            grads = _grad(outputs, seeds, [positions[r], strains[r]] + stage_inputs[t][r])
            grad_positions[r] += grads[0]
            grad_strains[r] += grads[1]
            input_grads.append(grads[2:])  # local scalar, spherical, ghost scalar, spherical
        if t > 0:  # gradients of ghost features go back to their owners
            local_scalar = [stage_inputs[t][r][0] for r in ranks]
            local_spherical = [stage_inputs[t][r][1] for r in ranks]
            back_scalar = comm.reverse_ghosts([g[2] for g in input_grads], local_scalar)
            back_spherical = comm.reverse_ghosts([g[3] for g in input_grads], local_spherical)
            grad_scalar = [input_grads[r][0] + back_scalar[r] for r in ranks]
            grad_spherical = [input_grads[r][1] + back_spherical[r] for r in ranks]

    # -- forces: ghost rows go back to their owners
    forces = [-g for g in grad_positions]
    local_forces = [f[: s.n_local].clone() for f, s in zip(forces, systems, strict=True)]
    returned = comm.reverse_ghosts(
        [f[s.n_local :] for f, s in zip(forces, systems, strict=True)], local_forces
    )
    results = []
    for r in ranks:
        energies = short_energies[r] + long_energies[r]
        results.append(
            RankResult(
                energy=float(energies.sum()),
                energies=energies,
                forces=(local_forces[r] + returned[r]).detach(),
                virial=grad_strains[r].detach(),
            )
        )
    return results


def split_into_ranks(
    atoms, cutoff: float, rank_of_atom: np.ndarray, dtype=torch.float64
) -> List[RankSystem]:
    """Distribute a structure over ranks as a domain decomposition would: each rank
    owns some atoms and holds as ghosts every image (periodic or on another rank)
    that its atoms see within the cutoff."""
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
