"""Data: ASE Atoms -> graph dicts with neighbour lists, batching."""

from .graph import (
    DEFAULT_MIN_DISTANCE,
    atoms_to_graph,
    check_periodicity,
    check_structure,
    collate,
    is_slab,
    model_frame_offsets,
    neighbor_list,
    structure_to_graph,
)

__all__ = [
    "DEFAULT_MIN_DISTANCE",
    "atoms_to_graph",
    "check_periodicity",
    "check_structure",
    "collate",
    "is_slab",
    "model_frame_offsets",
    "neighbor_list",
    "structure_to_graph",
]
