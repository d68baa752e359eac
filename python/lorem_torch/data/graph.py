"""ASE Atoms -> graph dict (see keys.py), neighbour lists, batching.

Structures are concatenated without padding; pairs never cross structures. 2D slabs
(pbc True, True, False) are accepted where the caller says the model runs them (its
long_range slab setting): their pbc entry is True and keys.SLAB marks them. Positions
are moved into the model's frame (centred, or wrapped into the cell) in float64
before anything else, so that float32 models do not depend on where a structure sits.
"""

from typing import Dict, Sequence

import numpy as np
import torch
import vesin

from .. import keys
from ..errors import (
    AtomsTooCloseError,
    DegenerateCellError,
    EmptyStructureError,
    NonFiniteError,
    UnsupportedPeriodicityError,
)
from ..vocabulary import DEFAULT_MIN_DISTANCE


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, periodic: bool, cutoff: float, slab: bool = False
) -> Dict[str, np.ndarray]:
    """Full neighbour list (both i<-j and j<-i) of pairs closer than the cutoff: centers,
    others, integer cell shifts and distances.

    Periodic structures use vesin's cell list. Non-periodic ones use a k-d tree, whose
    cost does not depend on the extent of the structure: vesin's cell list over the
    bounding box dies with a floating-point exception once one atom sits far away
    (x = 1e6 A with the others near the origin). A slab (periodic along a and b only; c
    along z, check_structure) uses vesin's cell list with c replaced by a height that
    no pair reaches across, so its shifts along c are zero.
    """
    if not periodic:
        return _cluster_neighbor_list(np.asarray(positions, dtype=np.float64), cutoff)
    points = np.asarray(positions, dtype=np.float64)
    box = np.asarray(cell, dtype=np.float64)
    if slab:
        low = points[:, 2].min() if len(points) else 0.0
        height = (points[:, 2].max() - low if len(points) else 0.0) + 2.0 * cutoff + 1.0
        points = points - np.array([0.0, 0.0, low])
        box = box.copy()
        box[2] = [0.0, 0.0, height]
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, shifts, d = calculator.compute(points=points, box=box, periodic=True, quantities="ijSd")
    if slab:
        shifts = np.asarray(shifts).copy()
        shifts[:, 2] = 0  # no pair reaches across the padded height
    return {"centers": i, "others": j, "cell_shifts": shifts, "distances": d}


def _cluster_neighbor_list(positions: np.ndarray, cutoff: float) -> Dict[str, np.ndarray]:
    """Non-periodic full neighbour list, d < cutoff as vesin, ordered by (centre, other)."""
    from scipy.spatial import cKDTree

    half = cKDTree(positions).query_pairs(cutoff, output_type="ndarray")  # [H, 2], i < j, d <= r
    distances = np.linalg.norm(positions[half[:, 1]] - positions[half[:, 0]], axis=1)
    inside = distances < cutoff
    half, distances = half[inside], distances[inside]
    centers = np.concatenate([half[:, 0], half[:, 1]])
    others = np.concatenate([half[:, 1], half[:, 0]])
    distances = np.concatenate([distances, distances])
    order = np.lexsort((others, centers))
    return {
        "centers": centers[order].astype(np.int64),
        "others": others[order].astype(np.int64),
        "cell_shifts": np.zeros((len(order), 3), dtype=np.int64),
        "distances": distances[order],
    }


def model_frame_offsets(
    positions: np.ndarray, cell: np.ndarray, periodic: bool, slab: bool = False
) -> np.ndarray:
    """[N, 3] float64 translations to subtract from the positions before the neighbour
    list is built and the positions are cast to the model's dtype.

    In float32 an atom at 1e6 A has a resolution of 0.06 A, so energies would depend
    on where a structure sits. Non-periodic: every atom moves by the same vector, the
    per-coordinate median (robust to a few far-away atoms), which changes no distance.
    Periodic: each atom moves by the lattice vector that brings it into the cell,
    which changes no periodic image (the neighbour list is built afterwards), and then
    every atom by half the cell's diagonal (a + b + c) / 2, so that the cell's centre is
    the origin: float32's spacing grows with |r|, and centred coordinates halve it (the
    float32 force error of water boxes, which is nearly all the positions' rounding,
    halved: docs/design.md 1.12). A slab: the lattice vector along a and b and (a + b) / 2,
    and along z (which must not wrap) the atoms' mean z (a float32 slab at z ~ 1000 A had
    forces off by 4e-3 eV/A). The C++ runtime moves its origin the same way
    (cpp/src/model.cpp), so a PME mesh sits where Python puts it. Energy, forces and stress
    are invariant under all of them.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if not periodic:
        return np.broadcast_to(np.median(positions, axis=0), positions.shape).copy()
    fractional = np.linalg.solve(cell.T, positions.T).T  # positions = fractional @ cell
    if slab:
        fractional[:, 2] = 0.0
    offsets = np.floor(fractional) @ cell + 0.5 * cell_centre_diagonal(cell, slab)
    if slab and len(positions):
        offsets[:, 2] += positions[:, 2].mean()
    return offsets


def cell_centre_diagonal(cell: np.ndarray, slab: bool) -> np.ndarray:
    """[3] a + b + c (a + b for a slab, whose z is centred on its atoms instead)."""
    rows = np.asarray(cell, dtype=np.float64)
    return rows[0] + rows[1] + (0.0 if slab else rows[2])


def is_slab(atoms) -> bool:
    """Whether a structure is periodic in some but not all directions (a 2D slab, if it
    is periodic along x and y)."""
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    return bool(pbc.any() and not pbc.all())


# the atoms of a slab may reach this far (relative) beyond its cell's height
SLAB_HEIGHT_TOLERANCE = 1e-9


def check_structure(atoms, index: int = 0, slab: bool = False) -> bool:
    """Raise a named error for input that cannot be evaluated; return whether the
    structure is periodic (a slab counts as periodic: it has a k-space).

    slab: whether 2D slabs (pbc True, True, False) are accepted (the model's long_range
    slab setting); other partial periodicities are always refused."""
    name = f"structure {index} ({atoms.get_chemical_formula() or 'empty'})"
    if len(atoms) == 0:
        raise EmptyStructureError(f"{name} has no atoms")
    positions = atoms.get_positions()
    if not np.isfinite(positions).all():
        bad = np.where(~np.isfinite(positions).all(axis=1))[0]
        raise NonFiniteError(f"{name} has NaN or infinite positions (atoms {bad[:10].tolist()})")
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    check_periodicity(pbc, name)
    if pbc.any() and not pbc.all():
        if not slab:
            raise UnsupportedPeriodicityError(
                f"{name} is periodic along {pbc.tolist()}: 2D slabs need a model with "
                "long_range slab: true (LoremCalculator(long_range={'slab': True}) or "
                "lorem-export --slab); otherwise only fully periodic or fully non-periodic "
                "structures are supported"
            )
        _check_slab(atoms, name)
    periodic = bool(pbc.any())
    if periodic:
        cell = atoms.get_cell().array
        if not np.isfinite(cell).all():
            raise NonFiniteError(f"{name} has a NaN or infinite cell")
        volume = abs(np.linalg.det(cell))
        # relative to the product of the lengths: flat or collapsed cells of any size
        if volume <= 1e-6 * np.linalg.norm(cell, axis=1).prod():
            raise DegenerateCellError(
                f"{name} is periodic but its cell is degenerate (volume {volume:.3g} A^3)"
            )
    return periodic


def check_periodicity(pbc, name: str) -> None:
    """Fully periodic, fully open, or a 2D slab (pbc True, True, False): no model runs
    anything else, so no setting or export is suggested for it."""
    pbc = [bool(p) for p in pbc]
    if any(pbc) and not all(pbc) and pbc != [True, True, False]:
        raise UnsupportedPeriodicityError(
            f"{name} is periodic along {pbc}: structures must be fully periodic, fully "
            "non-periodic, or 2D slabs periodic along x and y and open along z (pbc True, "
            "True, False)"
        )


def _check_slab(atoms, name: str) -> None:
    """A slab (pbc True, True, False: check_periodicity): its cell's a and b in the xy
    plane, c along z with a height that holds the atoms (the k-space cell is
    c * slab_factor tall)."""
    cell = atoms.get_cell().array
    if not np.isfinite(cell).all():
        raise NonFiniteError(f"{name} has a NaN or infinite cell")
    scale = max(np.linalg.norm(cell, axis=1).max(), 1e-300)
    off_plane = max(abs(cell[0, 2]), abs(cell[1, 2]), abs(cell[2, 0]), abs(cell[2, 1]))
    if off_plane > 1e-9 * scale or not cell[2, 2] > 0:
        raise UnsupportedPeriodicityError(
            f"{name} is a 2D slab, but its cell {np.round(cell, 6).tolist()} does not have a "
            "and b in the xy plane and c along z with a positive height"
        )
    span = np.ptp(atoms.positions[:, 2])
    if span > cell[2, 2] * (1.0 + SLAB_HEIGHT_TOLERANCE):
        raise UnsupportedPeriodicityError(
            f"{name} is a 2D slab whose atoms span {span:.4f} A along z, more than its cell's "
            f"height {cell[2, 2]:.4f} A: the cell must hold the slab (its k-space cell is the "
            "height times slab_factor)"
        )


def structure_to_graph(
    atoms,
    cutoff: float,
    index: int = 0,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    slab: bool = False,
) -> Dict[str, np.ndarray]:
    """One ASE Atoms -> graph dict of numpy arrays (keys.py), neighbour list at `cutoff`.

    slab: accept 2D slabs (pbc True, True, False); their graph has keys.SLAB."""
    periodic = check_structure(atoms, index, slab)
    flat = is_slab(atoms)
    cell = atoms.get_cell().array if periodic else np.zeros((3, 3))
    positions = atoms.get_positions()
    positions = positions - model_frame_offsets(positions, cell, periodic, flat)
    nl = neighbor_list(positions, cell, periodic, cutoff, flat)
    if len(nl["distances"]) and nl["distances"].min() < min_distance:
        k = int(np.argmin(nl["distances"]))
        raise AtomsTooCloseError(
            f"structure {index}: atoms {nl['centers'][k]} and {nl['others'][k]} are "
            f"{nl['distances'][k]:.4f} A apart, closer than the allowed minimum "
            f"{min_distance} A"
        )
    graph = {
        keys.POSITIONS: positions,
        keys.ATOMIC_NUMBERS: atoms.get_atomic_numbers().astype(np.int64),
        keys.CELL: cell[None],
        keys.PBC: np.array([periodic]),
        keys.CENTERS: nl["centers"].astype(np.int64),
        keys.OTHERS: nl["others"].astype(np.int64),
        keys.CELL_SHIFTS: nl["cell_shifts"].astype(np.float64),
        keys.ATOM_STRUCTURE: np.zeros(len(atoms), dtype=np.int64),
        keys.STRUCTURE_OFFSETS: np.array([0, len(atoms)], dtype=np.int64),
    }
    if flat:
        graph[keys.SLAB] = np.array([True])
    return graph


def collate(
    graphs: Sequence[Dict[str, np.ndarray]],
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Dict[str, torch.Tensor]:
    """Concatenate single-structure graphs (structure_to_graph) into one batch, no padding."""
    if len(graphs) == 0:
        raise EmptyStructureError("no structures given")
    counts = [len(g[keys.ATOMIC_NUMBERS]) for g in graphs]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def cat(key):
        return np.concatenate([g[key] for g in graphs])

    def shifted(key):
        return np.concatenate([g[key] + offsets[i] for i, g in enumerate(graphs)])

    def floats(x):
        return torch.tensor(x, dtype=dtype, device=device)

    def ints(x):
        return torch.tensor(x, dtype=torch.int64, device=device)

    batch = {
        keys.POSITIONS: floats(cat(keys.POSITIONS)),
        keys.ATOMIC_NUMBERS: ints(cat(keys.ATOMIC_NUMBERS)),
        keys.CELL: floats(cat(keys.CELL)),
        keys.PBC: torch.tensor(cat(keys.PBC), dtype=torch.bool, device=device),
        keys.CENTERS: ints(shifted(keys.CENTERS)),
        keys.OTHERS: ints(shifted(keys.OTHERS)),
        keys.CELL_SHIFTS: floats(cat(keys.CELL_SHIFTS)),
        keys.ATOM_STRUCTURE: ints(np.repeat(np.arange(len(graphs)), counts)),
        keys.STRUCTURE_OFFSETS: ints(offsets),
    }
    if any(keys.SLAB in g for g in graphs):  # only then: models that know no slab still run
        flags = np.concatenate([g.get(keys.SLAB, np.zeros(1, dtype=bool)) for g in graphs])
        batch[keys.SLAB] = torch.tensor(flags, dtype=torch.bool, device=device)
    return batch


def atoms_to_graph(
    atoms_list: Sequence,
    cutoff: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    slab: bool = False,
) -> Dict[str, torch.Tensor]:
    """Batch of ASE Atoms -> graph dict of tensors (keys.py), neighbour lists at `cutoff`;
    slab: accept 2D slabs (the model's long_range slab setting)."""
    if len(atoms_list) == 0:
        raise EmptyStructureError("no structures given")
    graphs = [
        structure_to_graph(atoms, cutoff, index, min_distance, slab)
        for index, atoms in enumerate(atoms_list)
    ]
    return collate(graphs, dtype=dtype, device=device)
