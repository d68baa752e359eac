"""The LOREM model, LoremBEC, and the wrappers that turn energies into forces and stress."""

from .bec import DEFAULT_BEC_HYPERPARAMETERS, LoremBEC, acoustic_sum_rule
from .lorem import DEFAULT_HYPERPARAMETERS, Lorem
from .outputs import BECModel, EnergyModel

__all__ = [
    "DEFAULT_BEC_HYPERPARAMETERS",
    "DEFAULT_HYPERPARAMETERS",
    "BECModel",
    "EnergyModel",
    "Lorem",
    "LoremBEC",
    "acoustic_sum_rule",
]
