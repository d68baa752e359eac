"""ASE Atoms -> graph dict (see keys.py), neighbour lists with vesin, batching.

Structures are concatenated without padding; pairs never cross structures.
"""

from typing import Dict, List, Sequence

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

# Pairs closer than this (Angstrom) are rejected: the model is not meant for them
# and r -> 0 makes its features singular.
DEFAULT_MIN_DISTANCE = 0.1


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, periodic: bool, cutoff: float
) -> Dict[str, np.ndarray]:
    """Full neighbour list (both i<-j and j<-i) within the cutoff: centers, others, shifts, distances."""
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    box = cell if periodic else np.zeros((3, 3))
    i, j, shifts, d = calculator.compute(
        points=positions, box=box, periodic=periodic, quantities="ijSd"
    )
    return {"centers": i, "others": j, "cell_shifts": shifts, "distances": d}


def check_structure(atoms, index: int = 0, min_distance: float = DEFAULT_MIN_DISTANCE) -> bool:
    """Raise a named error for input that cannot be evaluated; return periodicity."""
    name = f"structure {index} ({atoms.get_chemical_formula() or 'empty'})"
    if len(atoms) == 0:
        raise EmptyStructureError(f"{name} has no atoms")
    positions = atoms.get_positions()
    if not np.isfinite(positions).all():
        bad = np.where(~np.isfinite(positions).all(axis=1))[0]
        raise NonFiniteError(f"{name} has NaN or infinite positions (atoms {bad[:10].tolist()})")
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    if pbc.any() and not pbc.all():
        raise UnsupportedPeriodicityError(
            f"{name} is periodic along {pbc.tolist()}: only fully periodic or fully "
            "non-periodic structures are supported (2D slabs are not yet)"
        )
    periodic = bool(pbc.all())
    if periodic:
        cell = atoms.get_cell().array
        if not np.isfinite(cell).all():
            raise NonFiniteError(f"{name} has a NaN or infinite cell")
        volume = abs(np.linalg.det(cell))
        if volume < 1e-6 * max(np.linalg.norm(cell, axis=1).prod(), 1e-300) or volume < 1e-3:
            raise DegenerateCellError(
                f"{name} is periodic but its cell is degenerate (volume {volume:.3g} A^3)"
            )
    return periodic


def atoms_to_graph(
    atoms_list: Sequence,
    cutoff: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
) -> Dict[str, torch.Tensor]:
    """Batch of ASE Atoms -> graph dict of tensors (keys.py), neighbour lists at `cutoff`."""
    if len(atoms_list) == 0:
        raise EmptyStructureError("no structures given")
    positions: List[np.ndarray] = []
    numbers: List[np.ndarray] = []
    cells: List[np.ndarray] = []
    pbcs: List[bool] = []
    centers: List[np.ndarray] = []
    others: List[np.ndarray] = []
    shifts: List[np.ndarray] = []
    offsets = [0]
    for index, atoms in enumerate(atoms_list):
        periodic = check_structure(atoms, index, min_distance)
        pos = atoms.get_positions()
        cell = atoms.get_cell().array if periodic else np.zeros((3, 3))
        nl = neighbor_list(pos, cell, periodic, cutoff)
        if len(nl["distances"]) and nl["distances"].min() < min_distance:
            k = int(np.argmin(nl["distances"]))
            raise AtomsTooCloseError(
                f"structure {index}: atoms {nl['centers'][k]} and {nl['others'][k]} are "
                f"{nl['distances'][k]:.4f} A apart, closer than the allowed minimum "
                f"{min_distance} A"
            )
        positions.append(pos)
        numbers.append(atoms.get_atomic_numbers())
        cells.append(cell)
        pbcs.append(periodic)
        centers.append(nl["centers"] + offsets[-1])
        others.append(nl["others"] + offsets[-1])
        shifts.append(nl["cell_shifts"])
        offsets.append(offsets[-1] + len(atoms))

    def as_float(x):
        return torch.tensor(
            np.concatenate(x) if isinstance(x, list) else x, dtype=dtype, device=device
        )

    def as_int(x):
        return torch.tensor(np.concatenate(x).astype(np.int64), device=device)

    counts = np.diff(offsets)
    return {
        keys.POSITIONS: as_float(positions),
        keys.ATOMIC_NUMBERS: as_int(numbers),
        keys.CELL: torch.tensor(np.stack(cells), dtype=dtype, device=device),
        keys.PBC: torch.tensor(pbcs, dtype=torch.bool, device=device),
        keys.CENTERS: as_int(centers),
        keys.OTHERS: as_int(others),
        keys.CELL_SHIFTS: as_float(shifts),
        keys.ATOM_STRUCTURE: torch.tensor(
            np.repeat(np.arange(len(atoms_list)), counts), dtype=torch.int64, device=device
        ),
        keys.STRUCTURE_OFFSETS: torch.tensor(offsets, dtype=torch.int64, device=device),
    }
