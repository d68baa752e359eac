"""Point charges in a 2D slab and the k-space methods applied to them, shared by the slab
tests of the long range and of LAMMPS."""

import numpy as np
import torch

from lorem_torch.data import neighbor_list
from lorem_torch.long_range import PME, Ewald

# a real-space list this long leaves erfc(r / (sqrt(2) 1.25 A)) ~ 1e-21 behind: the
# comparisons test the slab terms, not the model's 5 A truncation of the real space
LONG_CUTOFF = 12.0


def point_charge_slab(seed=0, num=8):
    rng = np.random.default_rng(seed)
    cell = np.array([[7.3, 0.0, 0.0], [1.1, 6.8, 0.0], [0.0, 0.0, 10.0]])
    positions = np.zeros((num, 3))
    positions[:, :2] = rng.uniform(0, 1, size=(num, 2)) @ cell[:2, :2]
    positions[:, 2] = rng.uniform(3.0, 7.0, num)
    charges = rng.normal(size=num)
    return positions, charges - charges.mean(), cell


def kspace_method(name, smearing=1.25):
    if name == "ewald":
        return Ewald(smearing, 0.625, accuracy=None)  # the whole reference grid
    return PME(smearing, accuracy=1e-9)


def slab_potentials_of(method, positions, charges, cell, slab_factor, shift=0.0):
    """Potentials [N, C] and E = sum q V by `method` (Ewald/PME forward, slab), and the
    forces of fixed charges, over a LONG_CUTOFF list."""
    shifted = positions + np.array([0.0, 0.0, shift])
    nl = neighbor_list(shifted, cell, True, LONG_CUTOFF, slab=True)
    r = torch.tensor(shifted, requires_grad=True)
    q = torch.tensor(charges).reshape(len(positions), -1)
    centers = torch.tensor(nl["centers"], dtype=torch.int64)
    others = torch.tensor(nl["others"], dtype=torch.int64)
    shifts = torch.tensor(nl["cell_shifts"], dtype=torch.float64) @ torch.tensor(cell)
    distances = torch.linalg.norm(r[others] - r[centers] + shifts, dim=-1)
    pot = method(r, q, torch.tensor(cell), centers, others, distances, slab_factor=slab_factor)
    energy = (q * pot).sum(dim=0)
    forces = [-torch.autograd.grad(e, r, retain_graph=True)[0].numpy() for e in energy]
    return pot.detach().numpy(), energy.detach().numpy(), np.stack(forces, axis=-1)
