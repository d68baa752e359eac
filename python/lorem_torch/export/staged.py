"""The exported module: the whole-batch forward and the staged methods of docs/design.md section 4.

Staged inputs describe one system as a simulation engine holds it on one rank: the
local atoms first, then ghost atoms (periodic images or atoms of other ranks), so
positions [n_all, 3] with n_local <= n_all, and pairs i <- j with i local. A
homogeneous strain [3, 3] (zeros) applied to positions and cell inside every stage
gives the virial by autograd.

Stages (all tensors; the caller communicates between them; the order and the
collectives are docs/design.md section 4, run by the C++ runtime, cpp/src/staged/):
  initial_features   -> short-range energies and features of local atoms
  message_passing_step (x T) -> energy term and new features of local atoms, from the
                        features of local and ghost atoms (ghosts refreshed by the caller
                        from their owners before every layer)
  charges            -> charges of local atoms from the final features
  structure_factors  -> partial S(k) [C, K, 2] of local atoms   (sum over ranks)
  potentials         -> potentials of local atoms from S, Q and pairs with ghosts
  direct_potentials  -> non-periodic: potentials from all atoms (all-gathered)
  pme_mesh, pme_brick, pme_spread, pme_kernel, pme_interpolate, pme_combine
                     -> the same with a mesh spread over ranks (section 4.1; the atoms
                        visit the ranks that hold their mesh points); pme_potentials is
                        pme_combine(pme_interpolate) in one call
  readout            -> long-range energies of local atoms
  stage_apt, long_range_apt -> a LoremBEC's Born effective charges (section 4.2)
A 2D slab (an export with slab) runs the periodic stages over slab_cell(cell), sums
slab_moments over ranks (the total charge is their first row) and adds slab_potentials.
"""

from typing import Dict, List, Tuple

import torch

from .. import keys
from ..long_range import direct_potentials as direct_sum
from ..long_range import slab_moments, slab_potentials
from ..models import Lorem, LoremBEC
from ..models.outputs import output_model


class ExportedLorem(torch.nn.Module):
    """What lorem-export scripts: a Lorem with the batch forward and the staged methods."""

    def __init__(self, model: Lorem):
        super().__init__()
        self.model = model
        # EnergyModel, or BECModel for a LoremBEC (the same signature; APT too)
        self.energy_model = output_model(model)
        # a plain attribute, not `model.long_range is None`: TorchScript folds that for a
        # short-range model and would type _pme() as returning None
        self.has_long_range: bool = model.long_range is not None

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
        slab: torch.Tensor | None = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-atom energies, charges and potentials of a batch (keys.py inputs; slab:
        keys.SLAB, for an export whose contract grants slab)."""
        return self.model(
            positions,
            atomic_numbers,
            cell,
            pbc,
            centers,
            others,
            cell_shifts,
            atom_structure,
            structure_offsets,
            slab,
        )

    @torch.jit.export
    def energy_forces_virial(
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
        slab: torch.Tensor | None = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Total energies [S], per-atom energies [N], forces [N, 3], virials [S, 3, 3],
        charges [N, C] and potentials [N, C]."""
        out = self.energy_model(
            positions,
            atomic_numbers,
            cell,
            pbc,
            centers,
            others,
            cell_shifts,
            atom_structure,
            structure_offsets,
            True,
            True,
            False,
            None,
            slab,
        )
        return (
            out["energy"].detach(),
            out["energies"].detach(),
            out["forces"],
            out["virial"],
            out["charges"].detach(),
            out["potentials"].detach(),
        )

    @torch.jit.export
    def compute(
        self,
        graph: Dict[str, torch.Tensor],
        compute_stress: bool,
        electric_field: torch.Tensor | None = None,
    ) -> Dict[str, torch.Tensor]:
        """The eager model's outputs of a graph (keys.py names; lorem_torch.predict):
        energy, energies, forces, charges, potentials, and virial and stress with
        compute_stress; with the Born-charge head (LoremBEC) apt [N, 3, 3] too, and
        electric_field [S, 3] or [3] (V/A) adds Z*_i E to the forces; a model without the
        head refuses a field."""
        out = self.energy_model(
            graph[keys.POSITIONS],
            graph[keys.ATOMIC_NUMBERS],
            graph[keys.CELL],
            graph[keys.PBC],
            graph[keys.CENTERS],
            graph[keys.OTHERS],
            graph[keys.CELL_SHIFTS],
            graph[keys.ATOM_STRUCTURE],
            graph[keys.STRUCTURE_OFFSETS],
            True,
            compute_stress,
            False,
            electric_field,
            graph.get(keys.SLAB),
        )
        return {key: value.detach() for key, value in out.items()}

    # -- staged --

    @torch.jit.export
    def check_species(self, atomic_numbers: torch.Tensor) -> None:
        self.model.check_species(atomic_numbers)

    @torch.jit.export
    def grid_shape(self, cell: torch.Tensor) -> List[int]:
        return self.model.ewald.grid_shape(cell)

    def _edges(
        self,
        positions: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        strain: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        deformed = positions @ (torch.eye(3, dtype=strain.dtype, device=strain.device) + strain)
        return self.model.edge_basis(
            deformed.index_select(0, others) - deformed.index_select(0, centers)
        )

    @torch.jit.export
    def initial_features(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        strain: torch.Tensor,
        n_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energies with baseline [n_local] (float64), scalar [n_local, d] and spherical
        [n_local, (L+1)**2, s] features of the local atoms after the initial block
        (ghosts lend their species to the edges; centres must be local)."""
        radial, harmonics = self._edges(positions, centers, others, strain)
        energy, scalar, spherical = self.model.initial_features(
            atomic_numbers, radial, harmonics, centers, others, n_local
        )
        # float64 per-atom energies: the baseline (hundreds of eV) is added in float64
        baseline = self.model.baseline[atomic_numbers[:n_local]]
        return energy.to(torch.float64) + baseline, scalar, spherical

    @torch.jit.export
    def message_passing_step(
        self,
        layer: int,
        positions: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        strain: torch.Tensor,
        scalar: torch.Tensor,
        spherical: torch.Tensor,
        n_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer `layer` (0-based): features of local atoms then ghosts ([n_all, d],
        [n_all, (L+1)**2, s]; ghosts hold their owners' features of the previous layer)
        -> energy term [n_local] and the new features of the local atoms."""
        radial, harmonics = self._edges(positions, centers, others, strain)
        return self.model.message_passing_step(
            layer, scalar, spherical, radial, harmonics, centers, others, n_local
        )

    @torch.jit.export
    def charges(self, scalar: torch.Tensor, spherical: torch.Tensor) -> torch.Tensor:
        """Learned charges [n, C] from the final features."""
        return self.model.charges(scalar, spherical)

    @torch.jit.export
    def structure_factors(
        self,
        positions_local: torch.Tensor,
        charges_local: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
        grid: List[int],
    ) -> torch.Tensor:
        """Partial structure factors [C, K, 2] of the local atoms (sum them over ranks)."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return self.model.ewald.structure_factors(
            positions_local @ deformation, charges_local, cell @ deformation, grid
        )

    @torch.jit.export
    def potentials(
        self,
        positions: torch.Tensor,
        charges_all: torch.Tensor,
        structure_factors: torch.Tensor,
        total_charge: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
        grid: List[int],
        centers: torch.Tensor,
        others: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        """Periodic: potentials [n_local, C] of the local atoms from the summed S and Q,
        and real-space pairs i <- j (i local, j local or ghost, charges_all [n_all, C])."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        deformed = positions @ deformation
        distances = torch.linalg.norm(deformed[others] - deformed[centers], dim=-1)
        real_space = self.model.ewald.real_space_potentials(
            charges_all, n_local, centers, others, distances
        )
        return self.model.ewald.potentials(
            deformed[:n_local],
            charges_all[:n_local],
            structure_factors,
            total_charge,
            cell @ deformation,
            grid,
            real_space,
        )

    # -- 2D slabs (long_range/slab.py): the k-space methods above and below run over
    # slab_cell(cell); the moments are summed over ranks; slab_potentials is added --

    @torch.jit.export
    def slab_cell(self, cell: torch.Tensor) -> torch.Tensor:
        """The k-space cell of a slab [3, 3]: c times slab_factor (refuses a cell whose a, b
        leave the xy plane or c is not along z, and a model exported without slab)."""
        return self.model.slab_cell(cell)

    @torch.jit.export
    def slab_moments(
        self,
        positions_local: torch.Tensor,
        charges_local: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
    ) -> torch.Tensor:
        """[3, C] total charge, dipole and second moment along z of the local atoms (sum
        them over ranks, together: the total charge is the first row); cell: slab_cell's."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return slab_moments(positions_local @ deformation, charges_local, cell @ deformation)

    @torch.jit.export
    def slab_potentials(
        self,
        positions_local: torch.Tensor,
        moments: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
    ) -> torch.Tensor:
        """The dipole correction [n_local, C] to the local atoms' potentials from the
        summed moments and the k-space cell (slab_cell)."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return slab_potentials(
            positions_local @ deformation,
            moments,
            cell @ deformation,
            self.model.ewald.prefactor,
        )

    # -- particle-mesh Ewald on a mesh spread over ranks (cpp/src/mesh.cpp moves it) --

    def _pme(self):
        if not self.has_long_range:
            raise ValueError("this model has no long range, hence no PME")
        return self.model.pme

    @torch.jit.export
    def prefer_pme(self, cell: torch.Tensor, num_atoms: float) -> bool:
        """Method auto: whether PME is estimated faster than Ewald for num_atoms (all ranks)."""
        return self.model.prefers_pme(cell, int(num_atoms))

    @torch.jit.export
    def pme_mesh(self, cell: torch.Tensor) -> List[int]:
        """[N0, N1, N2] of the cell (refuses, before allocating, meshes over the memory limit)."""
        return self._pme().mesh_shape(cell)

    @torch.jit.export
    def pme_brick(
        self, positions_local: torch.Tensor, cell: torch.Tensor, mesh: List[int]
    ) -> Tuple[List[int], List[int]]:
        """(lo, shape) of the mesh indices the local atoms' stencils touch (not wrapped)."""
        return self._pme().brick_of_atoms(positions_local.detach(), cell.detach(), mesh)

    @torch.jit.export
    def pme_spread(
        self,
        positions_local: torch.Tensor,
        charges_local: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
        brick_lo: List[int],
        brick_shape: List[int],
        mesh: List[int],
    ) -> torch.Tensor:
        """The local atoms' charges on their brick [C, b0, b1, b2] (sum over ranks: remap)."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return self._pme().spread(
            positions_local @ deformation,
            charges_local,
            cell @ deformation,
            brick_lo,
            brick_shape,
            mesh,
        )

    @torch.jit.export
    def pme_kernel(
        self, cell: torch.Tensor, strain: torch.Tensor, mesh: List[int], ranges: List[List[int]]
    ) -> torch.Tensor:
        """The Ewald kernel on this rank's block of the spectrum [r0, r1, r2] (unnormalised
        FFTs both ways), differentiable in the strain (the k-space virial)."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return self._pme().kernel(cell @ deformation, mesh, ranges)

    @torch.jit.export
    def pme_interpolate(
        self,
        positions: torch.Tensor,
        potential_brick: torch.Tensor,
        brick_lo: List[int],
        mesh: List[int],
        cell: torch.Tensor,
        strain: torch.Tensor,
    ) -> torch.Tensor:
        """The k-space part [n, C] at these atoms (any rank's, positions as given) from a
        brick of the potential mesh around them. Linear in the brick: a brick holding only
        this rank's part of the mesh gives this rank's share, summed over ranks by the
        caller (the atoms visit the ranks that hold their mesh points)."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        return self._pme().interpolate(
            positions @ deformation, potential_brick, cell @ deformation, brick_lo, mesh
        )

    @torch.jit.export
    def pme_combine(
        self,
        positions: torch.Tensor,
        charges_all: torch.Tensor,
        kspace: torch.Tensor,
        total_charge: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        """Potentials [n_local, C] of the local atoms from their k-space part [n_local, C]
        (pme_interpolate, summed over ranks), plus real space over pairs with local and
        ghost charges, self and background terms."""
        pme = self._pme()
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        deformed = positions @ deformation
        distances = torch.linalg.norm(deformed[others] - deformed[centers], dim=-1)
        real_space = pme.real_space_potentials(charges_all, n_local, centers, others, distances)
        return pme.potentials(
            kspace, charges_all[:n_local], total_charge, cell @ deformation, real_space
        )

    @torch.jit.export
    def pme_potentials(
        self,
        positions: torch.Tensor,
        charges_all: torch.Tensor,
        potential_brick: torch.Tensor,
        brick_lo: List[int],
        mesh: List[int],
        total_charge: torch.Tensor,
        cell: torch.Tensor,
        strain: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        n_local: int,
    ) -> torch.Tensor:
        """pme_combine of pme_interpolate from a brick around the local atoms (one
        call; what runtimes before pme_combine called)."""
        kspace = self.pme_interpolate(
            positions[:n_local], potential_brick, brick_lo, mesh, cell, strain
        )
        return self.pme_combine(
            positions, charges_all, kspace, total_charge, cell, strain, centers, others, n_local
        )

    @torch.jit.export
    def direct_potentials(
        self,
        positions_all: torch.Tensor,
        charges_all: torch.Tensor,
        strain: torch.Tensor,
        receivers: torch.Tensor,
    ) -> torch.Tensor:
        """Non-periodic: potentials [n, C] of atoms `receivers` (indices into the
        all-gathered positions_all [M, 3] and charges_all [M, C]) from all others."""
        deformed = positions_all @ (torch.eye(3, dtype=strain.dtype, device=strain.device) + strain)
        full = direct_sum(deformed, charges_all, self.model.ewald.prefactor)
        return full[receivers]

    @torch.jit.export
    def readout(
        self, scalar: torch.Tensor, spherical: torch.Tensor, potentials: torch.Tensor
    ) -> torch.Tensor:
        """Long-range energies [n_local] of the local atoms."""
        return self.model.readout(scalar, spherical, potentials)


class ExportedLoremBEC(ExportedLorem):
    """An ExportedLorem of a LoremBEC: the Born effective charges too, whole and staged.

    Staged (docs/design.md section 4): stage_apt on the local features of every stage,
    long_range_apt with the potentials, their sum over the local atoms and the atom count
    summed over ranks (the acoustic sum rule is global), then Z*_i - total / N and the
    field forces Z*_i E. The APT takes no part in the energy: no backward pass."""

    def __init__(self, model: LoremBEC):
        super().__init__(model)
        self.bec = model

    @torch.jit.export
    def born_effective_charges(
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
        slab: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N, 3, 3] Z* of a batch, acoustic sum rule applied per structure."""
        out = self.energy_model(
            positions,
            atomic_numbers,
            cell,
            pbc,
            centers,
            others,
            cell_shifts,
            atom_structure,
            structure_offsets,
            False,
            False,
            False,
            None,
            slab,
        )
        return out["apt"].detach()

    @torch.jit.export
    def stage_apt(self, stage: int, spherical: torch.Tensor) -> torch.Tensor:
        """[n, 3, 3] APT of a stage's head (0: initial block, t: message-passing layer t)."""
        return self.bec.stage_apt(stage, spherical.detach()).detach()

    @torch.jit.export
    def long_range_apt(self, spherical: torch.Tensor, potentials: torch.Tensor) -> torch.Tensor:
        """[n, 3, 3] APT of the long-range head from the final features and potentials."""
        return self.bec.long_range_apt(spherical.detach(), potentials.detach()).detach()
