"""Energy -> forces and virial/stress. The one place that calls autograd for outputs.

The virial is dE/d(strain) for a homogeneous strain applied to positions and cell
together (r -> r (1 + eps), cell -> cell (1 + eps)): W = sum_i r_i (x) dE/dr_i +
cell^T dE/dcell, and ASE's stress is W / V.
"""

from typing import Dict

import torch

from .. import keys


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
    ) -> Dict[str, torch.Tensor]:
        num_structures = cell.shape[0]
        strain = torch.zeros(num_structures, 3, 3, dtype=positions.dtype, device=positions.device)
        if compute_stress:
            strain.requires_grad_(True)
        if compute_forces or compute_stress:
            positions = positions.detach().requires_grad_(True)
        identity = torch.eye(3, dtype=positions.dtype, device=positions.device)
        deformation = identity[None] + strain
        strained_positions = torch.bmm(positions[:, None, :], deformation[atom_structure]).squeeze(
            1
        )
        strained_cell = torch.bmm(cell, deformation)
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
        )
        energy = torch.zeros(num_structures, dtype=energies.dtype, device=energies.device)
        energy = energy.index_add(0, atom_structure, energies)
        results: Dict[str, torch.Tensor] = {
            keys.ENERGY: energy,
            keys.ENERGIES: energies,
            keys.CHARGES: charges,
            keys.POTENTIALS: potentials,
        }
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
        return results
