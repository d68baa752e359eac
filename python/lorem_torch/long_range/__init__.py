"""Long-range electrostatics: staged Ewald for periodic cells, direct sum otherwise."""

from .ewald import Ewald, direct_potentials, halfspace_grid, kgrid_shape

__all__ = ["Ewald", "direct_potentials", "halfspace_grid", "kgrid_shape"]
