"""The reference of the slab tests: a direct Coulomb sum over the in-plane images of a 2D
slab (periodic along a and b, open along z), float64 numpy, independent of the Ewald code.

Whole image cells n = n1 a + n2 b are summed with a smooth weight w(|n|) (1 up to R, 0
from 2R), and the rest, 1 - w, is added as a continuum (each atom's images as a uniform
sheet of density q_j / A, expanded in (rho, dz) = r_i - r_j, in-plane and along z):
  field:                     sum_j (q_j / A) [2 pi dz I(dz) z^ - pi rho I2]
  potential (neutral only):  sum_j (q_j / A) (pi / 2) (rho^2 - 2 dz^2) I2
with I2 = int (1 - w) / r^2 dr and I(dz) = int (1 - w) r / (r^2 + dz^2)^(3/2) dr. A smooth
weight makes the lattice sum and the integral differ by next to nothing, so what remains
falls off as 1 / R^2 or faster: the callers check convergence by comparing two radii. Forces are physical for charged sets
too (the field of a charged 2D lattice is finite); the potentials and the energy only for
neutral ones (a charged lattice's potential diverges with R).

Potentials carry the factor 1/2 of the model's convention: E = sum_i q_i V_i.
"""

import numpy as np


def lattice_points(cell: np.ndarray, radius: float) -> np.ndarray:
    """[M, 3] in-plane lattice vectors n1 a + n2 b with |n| <= radius."""
    a, b = cell[0], cell[1]
    area = abs(a[0] * b[1] - a[1] * b[0])
    # |n1| <= radius |b| / area bounds every point of the disc (and likewise n2)
    m1 = int(np.ceil(radius * np.linalg.norm(b) / area)) + 1
    m2 = int(np.ceil(radius * np.linalg.norm(a) / area)) + 1
    n1, n2 = np.meshgrid(np.arange(-m1, m1 + 1), np.arange(-m2, m2 + 1), indexing="ij")
    points = n1.reshape(-1, 1) * a + n2.reshape(-1, 1) * b
    return points[np.linalg.norm(points, axis=1) <= radius]


def _switch(t: np.ndarray) -> np.ndarray:
    """A smooth (C-infinity) step: 0 for t <= 0, 1 for t >= 1."""
    t = np.clip(t, 0.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        f = np.where(t > 0.0, np.exp(-1.0 / np.where(t > 0.0, t, 1.0)), 0.0)
        g = np.where(t < 1.0, np.exp(-1.0 / np.where(t < 1.0, 1.0 - t, 1.0)), 0.0)
    return f / (f + g)


def _weight(r: np.ndarray, radius: float) -> np.ndarray:
    """Weight of the image cell at in-plane distance r: 1 up to radius, 0 from 2 radius."""
    return 1.0 - _switch(r / radius - 1.0)


def direct_slab(positions: np.ndarray, charges: np.ndarray, cell: np.ndarray, radius: float):
    """Potentials [N] or [N, C] (factor 1/2; meaningful for channels with sum(q) = 0) and
    forces [N, 3] or [N, 3, C] of point charges [N] or [N, C] (independent channels) in a
    slab, by the direct sum over in-plane image cells weighted by w(|n|) (1 within
    `radius`, 0 beyond twice it, smooth between) plus the continuum weighted by 1 - w."""
    positions = np.asarray(positions, dtype=np.float64)
    charges = np.asarray(charges, dtype=np.float64)
    single = charges.ndim == 1
    q = charges[:, None] if single else charges
    cell = np.asarray(cell, dtype=np.float64)
    area = abs(cell[0, 0] * cell[1, 1] - cell[0, 1] * cell[1, 0])
    points = lattice_points(cell, 2.0 * radius)
    weights = _weight(np.linalg.norm(points, axis=1), radius)
    origin = np.all(points == 0.0, axis=1)
    # radial integrals of the continuum: int (1 - w) / r^2 dr, and per dz
    # int (1 - w) r / (r^2 + dz^2)^(3/2) dr, on a fine grid (the integrand is smooth)
    r = np.linspace(radius, 2.0 * radius, 20001)
    outer = 1.0 - _weight(r, radius)
    inverse_square = np.trapezoid(outer / r**2, r) + 1.0 / (2.0 * radius)
    num = len(positions)
    kernel = np.zeros((num, num))  # potential at i of a unit charge at j (and its images)
    field = np.zeros((num, num, 3))  # field at i of the same
    for i in range(num):
        for j in range(num):
            d = positions[i] - positions[j]
            vectors = d[None, :] - points  # r_i - (r_j + n)
            w = weights
            if i == j:
                vectors, w = vectors[~origin], w[~origin]
            dist = np.linalg.norm(vectors, axis=1)
            kernel[i, j] = np.sum(w / dist)
            field[i, j] = np.sum(w[:, None] * vectors / dist[:, None] ** 3, axis=0)
            # the continuum of images, weighted 1 - w
            rho2 = d[0] ** 2 + d[1] ** 2
            dz = d[2]
            kernel[i, j] += np.pi / 2.0 * (rho2 - 2.0 * dz * dz) * inverse_square / area
            field[i, j, :2] -= np.pi * d[:2] * inverse_square / area
            beyond = 1.0 / np.sqrt(dz * dz + 4.0 * radius * radius)  # int_2R^inf r/(r^2+dz^2)^1.5
            ramp = np.trapezoid(outer * r / (r * r + dz * dz) ** 1.5, r)
            field[i, j, 2] += 2.0 * np.pi * dz * (ramp + beyond) / area
    potentials = kernel @ q / 2.0  # [N, C]
    forces = q[:, None, :] * np.einsum("ijx,jc->ixc", field, q)  # [N, 3, C]
    if single:
        return potentials[:, 0], forces[:, :, 0]
    return potentials, forces
