"""lorem-torch: LOREM (Learning Long-Range Representations with Equivariant Messages)
in PyTorch + e3nn."""

from .calculator import LoremCalculator
from .interop.jax import from_jax_params
from .models import DEFAULT_HYPERPARAMETERS, EnergyModel, Lorem

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "EnergyModel",
    "Lorem",
    "LoremCalculator",
    "from_jax_params",
    "__version__",
]
