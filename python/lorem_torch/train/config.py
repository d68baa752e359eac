"""Training configuration: a YAML file with `model:`, `data:` and `training:` sections.

The `model:` section takes lorem-jax's hyperparameter names, and `kind`: `lorem`
(lorem-jax's Lorem) or `bec` (lorem-jax's LoremBEC: Born effective charges too, trained
on APT labels; its unset hyperparameters take LoremBEC's defaults). Everything has a
default except the training data, so `lorem-train --train data.xyz` works.
"""

import copy
from typing import Any, Dict

from ..models.bec import DEFAULT_BEC_HYPERPARAMETERS
from ..models.lorem import DEFAULT_HYPERPARAMETERS

# model.kind: ours, and lorem-jax's class names
MODEL_KINDS = {"lorem": "lorem", "bec": "bec", "Lorem": "lorem", "LoremBEC": "bec"}
LOSS_TERMS = ("energy", "forces", "stress", "apt")

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {"kind": "lorem", **DEFAULT_HYPERPARAMETERS},
    "data": {
        "train": None,  # ASE-readable file (required)
        "valid": None,  # optional: otherwise a seeded split of `train`
        "test": None,  # optional
        "split": [0.9, 0.1],  # train/valid(/test) fractions when `valid` is not given
        "seed": 0,
        "energy_key": "energy",
        "forces_key": "forces",
        "stress_key": None,
        "apt_key": "apt",  # Born effective charges, 9 per atom (used with model.kind: bec)
        # uniform field (V/A, 3 values in atoms.info) under which the forces were computed;
        # bec models add Z* E to the forces they fit; absent or None: no field
        "electric_field_key": "electric_field",
        "index": ":",  # which frames of each file (ASE index syntax)
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
        # apt: the mean squared error of the APT components (e^2), model.kind: bec only;
        # it defaults to 1 for a bec model
        "loss_weights": {"energy": 1.0, "forces": 1.0, "stress": 0.0, "apt": 0.0},
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
                unknown = set(value) - set(LOSS_TERMS)
                if unknown:
                    raise ConfigError(f"unknown loss weights {sorted(unknown)}")
                config[section][key] = {**config[section][key], **value}
            else:
                config[section][key] = value
    _resolve_model_kind(config, user or {})
    if not config["data"]["train"]:
        raise ConfigError("data.train (the training file) is required")
    if config["training"]["dtype"] not in ("float32", "float64"):
        raise ConfigError("training.dtype must be float32 or float64")
    if config["training"]["optimizer"] not in ("adam", "adamw"):
        raise ConfigError("training.optimizer must be adam or adamw")
    if config["training"]["decay"] not in ("cosine", "linear", "exponential", "constant"):
        raise ConfigError("training.decay must be cosine, linear, exponential or constant")
    return config


def _resolve_model_kind(config: Dict[str, Any], user: Dict[str, Any]) -> None:
    """Normalise model.kind; a bec model takes LoremBEC's defaults where the user set
    nothing; an APT loss weight set for a model without the APT head is an error."""
    model = config["model"]
    kind = MODEL_KINDS.get(str(model["kind"]))
    if kind is None:
        raise ConfigError(
            f"model.kind {model['kind']!r} is not one of lorem, bec (or lorem-jax's Lorem, "
            "LoremBEC)"
        )
    model["kind"] = kind
    if kind == "bec":
        user_model = user.get("model") or {}
        for key, value in DEFAULT_BEC_HYPERPARAMETERS.items():
            if key not in user_model:
                model[key] = value
    user_weights = (user.get("training") or {}).get("loss_weights") or {}
    if kind == "bec" and "apt" not in user_weights:
        config["training"]["loss_weights"]["apt"] = 1.0
    if kind != "bec" and float(user_weights.get("apt", 0.0)) > 0:
        raise ConfigError(
            "training.loss_weights.apt is set but the model has no APT head: "
            "set model.kind: bec to train Born effective charges"
        )
