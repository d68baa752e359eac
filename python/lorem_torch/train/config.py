"""Training configuration: a YAML file with `model:`, `data:` and `training:` sections.

The `model:` section takes lorem-jax's hyperparameter names. Everything has a
default except the training data, so `lorem-train --train data.xyz` works.
"""

import copy
from typing import Any, Dict

from ..models.lorem import DEFAULT_HYPERPARAMETERS

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": dict(DEFAULT_HYPERPARAMETERS),
    "data": {
        "train": None,  # ASE-readable file (required)
        "valid": None,  # optional: otherwise a seeded split of `train`
        "test": None,  # optional
        "split": [0.9, 0.1],  # train/valid(/test) fractions when `valid` is not given
        "seed": 0,
        "energy_key": "energy",
        "forces_key": "forces",
        "stress_key": None,
        "index": ":",  # which frames of each file (ASE index syntax)
        # periodicity of every structure read: null keeps the files' pbc; false reads them
        # as isolated (e.g. molecules written in a box); true as fully periodic
        "pbc": None,
    },
    "training": {
        "output": "runs/lorem",
        "epochs": 100,
        "batch_size": 4,
        "optimizer": "adam",  # adam or adamw
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "warmup_epochs": 0,
        "decay": "cosine",  # cosine, linear, exponential or constant
        "min_learning_rate": 1e-6,
        "gradient_clip": 10.0,  # max gradient norm; 0 switches clipping off
        "ema_decay": 0.99,  # exponential moving average of the weights; 0 switches it off
        "loss_weights": {"energy": 1.0, "forces": 1.0, "stress": 0.0},
        "dtype": "float32",
        "seed": 0,
        "valid_every": 1,  # epochs
        "patience": 0,  # validations without improvement before stopping; 0: never
        "time_budget": None,  # seconds; training stops cleanly once it is spent
        "progress": True,
    },
}


class ConfigError(ValueError):
    """An unknown or malformed configuration entry."""


def resolve(user: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults overlaid with the user's entries; unknown entries are errors."""
    config = copy.deepcopy(DEFAULTS)
    for section, values in (user or {}).items():
        if section not in config:
            raise ConfigError(
                f"unknown configuration section '{section}' (known: {', '.join(config)})"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' must be a mapping, got {values!r}")
        for key, value in values.items():
            if key not in config[section]:
                raise ConfigError(
                    f"unknown entry '{section}.{key}' (known: {', '.join(config[section])})"
                )
            if key == "loss_weights":
                unknown = set(value) - {"energy", "forces", "stress"}
                if unknown:
                    raise ConfigError(f"unknown loss weights {sorted(unknown)}")
                config[section][key] = {**config[section][key], **value}
            else:
                config[section][key] = value
    if not config["data"]["train"]:
        raise ConfigError("data.train (the training file) is required")
    if config["data"]["pbc"] not in (None, True, False):
        raise ConfigError(f"data.pbc must be null, true or false, got {config['data']['pbc']!r}")
    if config["training"]["dtype"] not in ("float32", "float64"):
        raise ConfigError("training.dtype must be float32 or float64")
    if config["training"]["optimizer"] not in ("adam", "adamw"):
        raise ConfigError("training.optimizer must be adam or adamw")
    if config["training"]["decay"] not in ("cosine", "linear", "exponential", "constant"):
        raise ConfigError("training.decay must be cosine, linear, exponential or constant")
    return config
