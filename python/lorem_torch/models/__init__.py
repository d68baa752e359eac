"""The LOREM model and the wrapper that turns energies into forces and stress."""

from .lorem import DEFAULT_HYPERPARAMETERS, Lorem
from .outputs import EnergyModel

__all__ = ["DEFAULT_HYPERPARAMETERS", "EnergyModel", "Lorem"]
