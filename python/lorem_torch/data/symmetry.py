"""Atoms on symmetric sites, where the model's energy has a kink.

The spherical features of an atom are sums over its neighbours of radial functions
times Y_lm. On an inversion centre every odd degree vanishes; on a cubic site degree 2
as well; and so on. A vanished block enters the energy through its norm, |x|, which
has no derivative at zero: moving the atom off the centre, or straining the cell,
changes the energy linearly in either direction (a kink). The model returns the
central-difference value there (nn.spherical.degree_wise_norm); a relaxation that
starts on such a point feels no force to leave it.

The test is geometric and independent of the weights: the same sums with a generic
radial weight, compared with the sum of the weights' magnitudes, in float64.
"""

import numpy as np
import torch
from e3nn import o3

# relative size of a degree's sum below which it vanishes by symmetry (float64 round-off
# is ~1e-16; a rattle of 1e-3 A leaves degree 1 at ~1e-3 and degree 2 at ~1e-6)
VANISHING = 1e-8


def vanishing_degrees(
    vectors: np.ndarray,
    centers: np.ndarray,
    other_numbers: np.ndarray,
    num_atoms: int,
    max_degree: int,
) -> tuple:
    """(degrees, atoms): the degrees 1..max_degree whose sum vanishes on some atom, and
    how many atoms have any vanishing degree (atoms without neighbours are left out);
    pairs given as vectors [P, 3] from centers [P] to neighbours of atomic numbers
    other_numbers [P]."""
    if len(vectors) == 0 or max_degree < 1:
        return [], 0
    vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float64))
    distances = torch.linalg.norm(vectors, dim=1)
    numbers = torch.as_tensor(np.asarray(other_numbers, dtype=np.float64))
    # any smooth weight of distance and species: symmetric neighbours weigh the same
    weights = 1.5 + torch.cos(1.37 * distances + 0.71 * numbers)
    harmonics = o3.spherical_harmonics(
        list(range(1, max_degree + 1)), vectors, normalize=True, normalization="norm"
    )
    index = torch.as_tensor(np.asarray(centers, dtype=np.int64))
    sums = torch.zeros(num_atoms, harmonics.shape[1], dtype=torch.float64)
    sums.index_add_(0, index, weights[:, None] * harmonics)
    scale = torch.zeros(num_atoms, dtype=torch.float64).index_add_(0, index, weights.abs())
    on_a_site = torch.zeros(num_atoms, dtype=torch.bool)
    degrees = []
    first = 0
    for degree in range(1, max_degree + 1):
        block = sums[:, first : first + 2 * degree + 1]
        first += 2 * degree + 1
        vanished = (torch.linalg.norm(block, dim=1) <= VANISHING * scale) & (scale > 0)
        if bool(vanished.any()):
            degrees.append(degree)
            on_a_site |= vanished
    return degrees, int(on_a_site.sum())


def symmetric_sites_message(degrees, atoms_on_sites: int, num_atoms: int, formula: str) -> str:
    """One line for a warning, from vanishing_degrees' result."""
    return (
        f"{formula}: {atoms_on_sites} of {num_atoms} atoms sit on symmetric sites (their "
        f"features of degree {', '.join(map(str, degrees))} vanish by symmetry): the energy "
        "has a kink there, forces and stress are its central-difference values, and a "
        "relaxation from here cannot break the symmetry; rattle the atoms "
        "(atoms.rattle(1e-3)) if it should"
    )
