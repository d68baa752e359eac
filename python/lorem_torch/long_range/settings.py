"""The long-range settings of a model: which k-space method, how accurate, how much memory.

    long_range: {method: ewald | pme | auto, accuracy: 1e-6, max_memory_gb: 8,
                 slab: false, slab_factor: 3.0}

All keys are optional; absent settings give Ewald at DEFAULT_ACCURACY (what lorem-jax
model.yaml files, which have no such entry, get). A string is the method alone.
Non-periodic structures always use the direct sum, whatever the method.

slab: true runs structures periodic along x and y only (pbc True, True, False; LAMMPS
`boundary p p f`) as 2D slabs: the k-space over the cell extended along z by
slab_factor plus the Yeh-Berkowitz dipole correction (slab.py, docs/design.md section
2.1). Without it such structures are refused. Fully periodic and open structures are
computed as before either way.
"""

import math
from typing import Any, Dict, Mapping

from ..vocabulary import DEFAULT_ACCURACY, EWALD, LONG_RANGE_METHODS
from .accuracy import check_accuracy

# refuse k-space grids or meshes whose estimated peak memory exceeds this (the k-space
# part alone; 32,768 atoms of NaCl with PME need about 2 GB)
DEFAULT_MAX_MEMORY_GB = 8.0

# the height of the k-space cell of a slab over the height of its cell (LAMMPS
# `kspace_modify slab 3.0`, the usual choice)
DEFAULT_SLAB_FACTOR = 3.0

DEFAULT_SETTINGS: Dict[str, Any] = {
    "method": EWALD,
    "accuracy": DEFAULT_ACCURACY,
    "max_memory_gb": DEFAULT_MAX_MEMORY_GB,
    "slab": False,
    "slab_factor": DEFAULT_SLAB_FACTOR,
}


def long_range_settings(
    value: str | Mapping[str, Any] | None, base: Mapping[str, Any] | None = None
) -> Dict[str, Any]:
    """Checked settings: `value` (None, a method name, or a mapping of some keys) over
    `base` (the defaults when None). Raises ValueError naming what is wrong."""
    settings = dict(DEFAULT_SETTINGS if base is None else base)
    if value is None:
        updates: Dict[str, Any] = {}
    elif isinstance(value, str):
        updates = {"method": value}
    elif isinstance(value, Mapping):
        updates = dict(value)
    else:
        raise ValueError(
            f"long_range must be a method name {LONG_RANGE_METHODS} or a mapping with keys "
            f"{sorted(DEFAULT_SETTINGS)}, got {value!r}"
        )
    unknown = sorted(set(updates) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown long_range settings {unknown}; known: {sorted(DEFAULT_SETTINGS)}"
        )
    settings.update(updates)
    if settings["method"] not in LONG_RANGE_METHODS:
        raise ValueError(
            f"long_range method must be one of {LONG_RANGE_METHODS}, got {settings['method']!r}"
        )
    settings["accuracy"] = check_accuracy(settings["accuracy"])
    memory = settings["max_memory_gb"]
    if (
        isinstance(memory, bool)
        or not isinstance(memory, (int, float))
        or not memory > 0
        or not math.isfinite(float(memory))
    ):
        raise ValueError(f"long_range max_memory_gb must be a positive number, got {memory!r}")
    settings["max_memory_gb"] = float(memory)
    if not isinstance(settings["slab"], bool):
        raise ValueError(f"long_range slab must be true or false, got {settings['slab']!r}")
    factor = settings["slab_factor"]
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or not math.isfinite(float(factor))
        or not float(factor) > 1.0
    ):
        raise ValueError(
            "long_range slab_factor (the k-space cell's height over the slab cell's) must be "
            f"a number above 1 (3.0 is usual), got {factor!r}"
        )
    settings["slab_factor"] = float(factor)
    return settings


# Cost model of method "auto", in CPU seconds per charge channel, for the k-space part
# with gradients (float32):
#   Ewald  EWALD_SECONDS_PER_ATOM_KVECTOR * atoms * k-vectors
#   PME    PME_SECONDS_PER_MESH_POINT * mesh points + PME_SECONDS_PER_STENCIL_POINT * atoms * p^3
# Measured on the development CPU (2 cores, shared) with
#   OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_long_range.py --calibrate --cpu-time \
#       --sizes 64 216 512 1000 2744 4096
# (least squares over random-charge cells at NaCl and water densities, accuracy 1e-6).
# The resulting crossover at accuracy 1e-6: PME from about 1,050 atoms at NaCl density,
# 1,400 at water density.
EWALD_SECONDS_PER_ATOM_KVECTOR = 9.5e-10
PME_SECONDS_PER_MESH_POINT = 1.06e-7
PME_SECONDS_PER_STENCIL_POINT = 1.39e-8


def prefer_pme(
    num_atoms: int,
    kvectors: int,
    mesh_points: int,
    order: int,
    per_atom_kvector: float = EWALD_SECONDS_PER_ATOM_KVECTOR,
    per_mesh_point: float = PME_SECONDS_PER_MESH_POINT,
    per_stencil_point: float = PME_SECONDS_PER_STENCIL_POINT,
) -> bool:
    """Whether PME is estimated faster than Ewald for this structure (method auto)."""
    ewald = per_atom_kvector * float(num_atoms) * float(kvectors)
    pme = per_mesh_point * float(mesh_points)
    pme = pme + per_stencil_point * float(num_atoms) * float(order * order * order)
    return pme < ewald
