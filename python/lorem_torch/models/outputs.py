"""Energy -> forces and virial/stress. The one place that calls autograd for outputs.

The virial is dE/d(strain) for a homogeneous strain applied to positions and cell
together (r -> r (1 + eps), cell -> cell (1 + eps)): W = sum_i r_i (x) dE/dr_i +
cell^T dE/dcell, and ASE's stress is W / V (V of the cell as given, also for a 2D slab,
whose k-space runs over an extended cell: docs/design.md section 2.1).

BECModel does the same for LoremBEC and adds the Born effective charges and field forces.
"""

from typing import Dict, Tuple

import torch

from .. import keys
from .bec import acoustic_sum_rule, field_forces


def strained_inputs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    atom_structure: torch.Tensor,
    compute_forces: bool,
    compute_stress: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions leaf, strain [S, 3, 3] zeros, strained positions, strained cell): the
    leaves that forces and virial differentiate against, and the inputs built on them."""
    num_structures = cell.shape[0]
    strain = torch.zeros(num_structures, 3, 3, dtype=positions.dtype, device=positions.device)
    if compute_stress:
        strain.requires_grad_(True)
    if compute_forces or compute_stress:
        positions = positions.detach().requires_grad_(True)
    identity = torch.eye(3, dtype=positions.dtype, device=positions.device)
    deformation = identity[None] + strain
    strained_positions = torch.bmm(
        positions[:, None, :], deformation.index_select(0, atom_structure)
    ).squeeze(1)
    strained_cell = torch.bmm(cell, deformation)
    return positions, strain, strained_positions, strained_cell


def add_derivatives(
    results: Dict[str, torch.Tensor],
    energy: torch.Tensor,
    positions: torch.Tensor,
    strain: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    compute_forces: bool,
    compute_stress: bool,
    create_graph: bool,
) -> None:
    """Forces -dE/dr, and with compute_stress the virial dE/d(strain) and stress, into results."""
    if compute_forces or compute_stress:
        inputs = [positions, strain] if compute_stress else [positions]
        grads = torch.autograd.grad(
            [energy.sum()], inputs, create_graph=create_graph, allow_unused=True
        )
        gradient = grads[0]
        if gradient is None:
            gradient = torch.zeros_like(positions)
        results[keys.FORCES] = -gradient
        if compute_stress:
            virial = grads[1]
            if virial is None:
                virial = torch.zeros_like(strain)
            volume = torch.abs(torch.linalg.det(cell))
            results[keys.VIRIAL] = virial
            results[keys.STRESS] = torch.where(
                pbc[:, None, None], virial / volume[:, None, None], torch.zeros_like(virial)
            )


class EnergyModel(torch.nn.Module):
    """Wraps a model whose forward returns per-atom energies (first output) and adds
    total energies, forces, virial and stress. Scriptable."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        cell_shifts: torch.Tensor,
        atom_structure: torch.Tensor,
        structure_offsets: torch.Tensor,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
        electric_field: torch.Tensor | None = None,
        slab: torch.Tensor | None = None,
    ) -> Dict[str, torch.Tensor]:
        if electric_field is not None:  # BECModel's signature, so that either can stand in
            raise ValueError(
                "[lorem:field] an electric field needs a model with the Born-charge (APT) head"
            )
        positions, strain, strained_positions, strained_cell = strained_inputs(
            positions, cell, atom_structure, compute_forces, compute_stress
        )
        energies, charges, potentials = self.model(
            strained_positions,
            atomic_numbers,
            strained_cell,
            pbc,
            centers,
            others,
            cell_shifts,
            atom_structure,
            structure_offsets,
            slab,
        )
        energy = torch.zeros(cell.shape[0], dtype=energies.dtype, device=energies.device)
        energy = energy.index_add(0, atom_structure, energies)
        results: Dict[str, torch.Tensor] = {
            keys.ENERGY: energy,
            keys.ENERGIES: energies,
            keys.CHARGES: charges,
            keys.POTENTIALS: potentials,
        }
        add_derivatives(
            results,
            energy,
            positions,
            strain,
            cell,
            pbc,
            compute_forces,
            compute_stress,
            create_graph,
        )
        return results


class BECModel(torch.nn.Module):
    """EnergyModel's outputs for a LoremBEC, plus the Born effective charges keys.APT
    [N, 3, 3] with the acoustic sum rule applied per structure, and, given an electric
    field (per structure [S, 3], or [3] for all), the field forces Z*_i E added to the
    forces (energy, virial and stress are those without field, as in lorem-jax).
    Scriptable."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        cell_shifts: torch.Tensor,
        atom_structure: torch.Tensor,
        structure_offsets: torch.Tensor,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
        electric_field: torch.Tensor | None = None,
        slab: torch.Tensor | None = None,
    ) -> Dict[str, torch.Tensor]:
        positions, strain, strained_positions, strained_cell = strained_inputs(
            positions, cell, atom_structure, compute_forces, compute_stress
        )
        energies, charges, potentials, apt = self.model.forward_bec(
            strained_positions,
            atomic_numbers,
            strained_cell,
            pbc,
            centers,
            others,
            cell_shifts,
            atom_structure,
            structure_offsets,
            slab,
        )
        energy = torch.zeros(cell.shape[0], dtype=energies.dtype, device=energies.device)
        energy = energy.index_add(0, atom_structure, energies)
        apt = acoustic_sum_rule(apt, atom_structure, cell.shape[0])
        results: Dict[str, torch.Tensor] = {
            keys.ENERGY: energy,
            keys.ENERGIES: energies,
            keys.CHARGES: charges,
            keys.POTENTIALS: potentials,
            keys.APT: apt,
        }
        add_derivatives(
            results,
            energy,
            positions,
            strain,
            cell,
            pbc,
            compute_forces,
            compute_stress,
            create_graph,
        )
        if electric_field is not None and keys.FORCES in results:
            field = electric_field.to(apt.dtype)
            if field.dim() == 2:
                field = field[atom_structure]
            results[keys.FORCES] = results[keys.FORCES] + field_forces(apt, field)
        return results


def output_model(model: torch.nn.Module) -> EnergyModel | BECModel:
    """The wrapper that computes a model's outputs: BECModel (APT too) for a LoremBEC."""
    from .bec import LoremBEC

    return BECModel(model) if isinstance(model, LoremBEC) else EnergyModel(model)
