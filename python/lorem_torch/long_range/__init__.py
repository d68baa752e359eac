"""Long-range electrostatics: staged Ewald and smooth PME for periodic cells, direct sum
otherwise; the accuracy target and the settings that choose between them."""

from .accuracy import check_accuracy, ewald_kspace_cutoff, pme_parameters
from .ewald import Ewald, direct_potentials, halfspace_grid, kgrid_shape
from .pme import PME
from .settings import DEFAULT_ACCURACY, METHODS, long_range_settings

__all__ = [
    "DEFAULT_ACCURACY",
    "METHODS",
    "PME",
    "Ewald",
    "check_accuracy",
    "direct_potentials",
    "ewald_kspace_cutoff",
    "halfspace_grid",
    "kgrid_shape",
    "long_range_settings",
    "pme_parameters",
]
