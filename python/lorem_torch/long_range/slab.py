"""2D slabs (periodic along x and y, open along z): the Yeh-Berkowitz correction with the
terms of Ballenegger, Arnold and Cerda (J. Chem. Phys. 131, 094107 (2009)) for a net
charge, as LAMMPS' `kspace_modify slab` (docs/design.md section 2.1).

The k-space sum (Ewald or PME, unchanged) runs over the cell extended along z by
`slab_factor` (cell rows a, b, c -> a, b, slab_factor c; V' its volume, L' = slab_factor
L_z), so that the periodic images along z sit behind vacuum; the real-space, self and
background terms are those of that extended cell. Per charge channel the dipole
correction removes the interaction of the images' dipole layers:

    E_corr = (2 pi / V') (M^2 - Q S - Q^2 L'^2 / 12),
    Q = sum_i q_i,  M = sum_i q_i z_i,  S = sum_i q_i z_i^2,

and, with the factor 1/2 of our potentials (sum_i q_i V_i = E for a quadratic energy,
so V_i = dE/dq_i / 2),

    V_i += (pi / V') (2 M z_i - S - Q z_i^2 - Q L'^2 / 6).

Both are invariant under z -> z + d for every channel, neutral or not (M^2 - Q S is), so
z may be measured from any point shared by all atoms (and MPI ranks); it must not wrap.
The cell must have a and b in the xy plane and c along z; z is computed as the height
over the plane of a and b (and L' as V' / |a x b|), which is the same there and makes
the strain derivatives those of a rotation-invariant energy (a symmetric virial).

Stages, so that atoms may be spread over MPI ranks: moments(local atoms) -> [3, C]
(Q, M, S; summed over ranks), then potentials(local atoms, summed moments, extended cell).
"""

import math

import torch


def check_slab_cell(cell: torch.Tensor) -> None:
    """Refuse ([lorem:cell]) a slab cell whose a or b leaves the xy plane, whose c is not
    along z, or whose height is not positive."""
    c = cell.detach().to(torch.float64)
    lengths = torch.linalg.norm(c, dim=-1)
    scale = float(lengths.max())
    off = max(abs(float(c[0, 2])), abs(float(c[1, 2])), abs(float(c[2, 0])), abs(float(c[2, 1])))
    height = float(c[2, 2])
    in_plane_area = abs(float(c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0]))
    if (
        not height > 0.0
        or not in_plane_area > 1e-6 * float(lengths[0] * lengths[1])
        or off > 1e-9 * scale  # a_z, b_z, c_x, c_y: zero up to round-off
    ):
        raise ValueError(
            "[lorem:cell] "  # errors.CELL_CODE: TorchScript takes no global strings
            + "a slab (periodic along x and y, open along z) needs a cell with a and b in "
            + "the xy plane and c along z with a positive height (got a_z "
            + str(float(c[0, 2]))
            + ", b_z "
            + str(float(c[1, 2]))
            + ", c "
            + str([float(c[2, 0]), float(c[2, 1]), height])
            + ")"
        )


def extended_cell(cell: torch.Tensor, slab_factor: float) -> torch.Tensor:
    """[3, 3] -> the cell with c scaled by slab_factor (differentiable in the cell)."""
    scale = torch.ones(3, 1, dtype=cell.dtype, device=cell.device)
    scale[2, 0] = slab_factor
    return cell * scale


def plane_normal(cell: torch.Tensor) -> torch.Tensor:
    """[3] the unit normal a x b / |a x b| of the periodic plane (z^ for a slab cell)."""
    normal = torch.linalg.cross(cell[0], cell[1])
    return normal / torch.linalg.norm(normal)


def slab_moments(
    positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor
) -> torch.Tensor:
    """[N, 3], [N, C] -> [3, C]: Q = sum q, M = sum q z, S = sum q z^2 of these atoms, z
    the height r . n over the periodic plane of `cell` (additive over disjoint sets of
    atoms: chunks, MPI ranks)."""
    z = (positions @ plane_normal(cell))[:, None]
    return torch.stack(
        [charges.sum(dim=0), (charges * z).sum(dim=0), (charges * z * z).sum(dim=0)], dim=0
    )


def slab_potentials(
    positions: torch.Tensor, moments: torch.Tensor, cell: torch.Tensor, prefactor: float
) -> torch.Tensor:
    """The correction [N, C] to the potentials of the atoms at `positions` [N, 3] from the
    moments [3, C] of all atoms (slab_moments, summed) and the extended cell [3, 3]
    (extended_cell); potentials with the factor 1/2, so that sum_i q_i V_i = E_corr.

    Heights are measured along the plane's normal and L' = V' / |a x b|: for a slab cell
    (c along z) z and c_z f, and under any strain of positions and cell the correction
    follows the plane, so that the virial is that of a rotation-invariant energy."""
    volume = torch.abs(torch.linalg.det(cell))
    height = volume / torch.linalg.norm(torch.linalg.cross(cell[0], cell[1]))
    total, dipole, second = moments[0], moments[1], moments[2]
    z = (positions @ plane_normal(cell))[:, None]
    pot = 2.0 * dipole[None, :] * z - second[None, :] - total[None, :] * z * z
    pot = pot - total[None, :] * height * height / 6.0
    return prefactor * math.pi * pot / volume


def slab_energy(
    positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor, prefactor: float = 1.0
) -> torch.Tensor:
    """[C] E_corr per channel, for tests: (2 pi / V') (M^2 - Q S - Q^2 L'^2 / 12)."""
    moments = slab_moments(positions, charges, cell)
    volume = torch.abs(torch.linalg.det(cell))
    height = volume / torch.linalg.norm(torch.linalg.cross(cell[0], cell[1]))
    total, dipole, second = moments[0], moments[1], moments[2]
    energy = dipole * dipole - total * second - total * total * height * height / 12.0
    return prefactor * 2.0 * math.pi * energy / volume
