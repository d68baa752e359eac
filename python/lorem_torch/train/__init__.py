"""Training and evaluation: config, data, loop, losses, checkpoints, logging, plots."""

from .config import DEFAULTS, ConfigError, resolve
from .data import DataError, LabelKeys, MissingKeyError, fit_baseline
from .evaluation import evaluate_checkpoint
from .loop import RunFolderError, Trainer, train

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "DataError",
    "LabelKeys",
    "MissingKeyError",
    "RunFolderError",
    "Trainer",
    "evaluate_checkpoint",
    "fit_baseline",
    "resolve",
    "train",
]
