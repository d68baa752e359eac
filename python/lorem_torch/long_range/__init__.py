"""Long-range electrostatics: staged Ewald and smooth PME for periodic cells (and 2D slabs,
slab.py), direct sum otherwise; the accuracy target and the settings that choose between
them."""

from .accuracy import check_accuracy, ewald_kspace_cutoff, pme_parameters
from .ewald import Ewald, direct_potentials, halfspace_grid, kgrid_shape
from .pme import PME
from .settings import DEFAULT_ACCURACY, LONG_RANGE_METHODS, long_range_settings
from .slab import check_slab_cell, extended_cell, slab_moments, slab_potentials

__all__ = [
    "DEFAULT_ACCURACY",
    "LONG_RANGE_METHODS",
    "PME",
    "Ewald",
    "check_accuracy",
    "check_slab_cell",
    "direct_potentials",
    "ewald_kspace_cutoff",
    "extended_cell",
    "halfspace_grid",
    "kgrid_shape",
    "long_range_settings",
    "pme_parameters",
    "slab_moments",
    "slab_potentials",
]
