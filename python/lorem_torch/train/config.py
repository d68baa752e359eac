"""Training configuration: a YAML file with `model:`, `data:` and `training:` sections.

The `model:` section takes lorem-jax's hyperparameter names, and `kind`: `lorem`
(lorem-jax's Lorem) or `bec` (lorem-jax's LoremBEC: Born effective charges too, trained
on APT labels; its unset hyperparameters take LoremBEC's defaults), and `long_range`:
{method: ewald | pme | auto, accuracy, max_memory_gb} (long_range/settings.py; some keys
or a method name; `--model long_range.method=pme` on the command line). Everything has a
default except the training data, so `lorem-train --train data.xyz` works.
"""

import copy
import math
from typing import Any, Dict

from ..long_range.settings import DEFAULT_SETTINGS as DEFAULT_LONG_RANGE
from ..long_range.settings import long_range_settings
from ..models.bec import DEFAULT_BEC_HYPERPARAMETERS
from ..models.lorem import DEFAULT_HYPERPARAMETERS
from ..vocabulary import DTYPE_NAMES

# model.kind: ours, and lorem-jax's class names
MODEL_KINDS = {"lorem": "lorem", "bec": "bec", "Lorem": "lorem", "LoremBEC": "bec"}
LOSS_TERMS = ("energy", "forces", "stress", "apt")

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {"kind": "lorem", **DEFAULT_HYPERPARAMETERS, "long_range": dict(DEFAULT_LONG_RANGE)},
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
        # apt: the mean squared error of the APT components (e^2), model.kind: bec only;
        # it defaults to 1 for a bec model
        "loss_weights": {"energy": 1.0, "forces": 1.0, "stress": 0.0, "apt": 0.0},
        "dtype": "float32",
        "seed": 0,
        "valid_every": 1,  # epochs
        "patience": 0,  # validations without improvement before stopping; 0: never
        # seconds for one call (checked after every batch); then last.pt is saved for
        # --resume and training stops
        "time_budget": None,
        "progress": True,
    },
}


class ConfigError(ValueError):
    """An unknown or malformed configuration entry."""


# Entries whose default (None, or a number that may also be a float) does not say the
# type; every other entry takes the type of its default.
NUMBER = (int, float)
OPTIONAL_TYPES = {
    ("data", "train"): (str,),
    ("data", "valid"): (str, type(None)),
    ("data", "test"): (str, type(None)),
    ("data", "stress_key"): (str, type(None)),
    ("data", "forces_key"): (str, type(None)),
    ("data", "index"): (str, int),
    ("data", "pbc"): (bool, type(None)),
    ("training", "time_budget"): (int, float, type(None)),
}
# (section, entry): (lowest allowed value, whether the lowest value itself is allowed)
LOWER_BOUNDS = {
    ("model", "cutoff"): (0.0, False),
    ("model", "max_degree"): (0, True),
    ("model", "max_degree_lr"): (0, True),
    ("model", "num_features"): (1, True),
    ("model", "num_radial"): (1, True),
    ("model", "num_species"): (1, True),
    ("model", "num_spherical_features"): (1, True),
    ("model", "num_message_passing"): (0, True),
    ("training", "epochs"): (1, True),
    ("training", "batch_size"): (1, True),
    ("training", "learning_rate"): (0.0, False),
    ("training", "min_learning_rate"): (0.0, True),
    ("training", "weight_decay"): (0.0, True),
    ("training", "warmup_epochs"): (0, True),
    ("training", "gradient_clip"): (0.0, True),
    ("training", "ema_decay"): (0.0, True),
    ("training", "valid_every"): (1, True),
    ("training", "patience"): (0, True),
    ("training", "time_budget"): (0.0, False),
}
TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "a mapping",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return TYPE_NAMES.get(type(value), type(value).__name__)


def _expected_types(section: str, key: str) -> tuple:
    if (section, key) in OPTIONAL_TYPES:
        return OPTIONAL_TYPES[(section, key)]
    default = DEFAULTS[section][key]
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return NUMBER
    return (type(default),)


def _describe(types: tuple) -> str:
    names = [TYPE_NAMES[t] for t in types if not (t is int and float in types)]
    return " or ".join(dict.fromkeys(names))


def _checked(section: str, key: str, value: Any) -> Any:
    """The value if it has the entry's type (numbers written 1e-3, which YAML reads as
    strings, become floats); a ConfigError naming the entry and the type otherwise."""
    name = f"{section}.{key}"
    types = _expected_types(section, key)
    if float in types and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    # bool is an int in Python, but `num_features: true` is a mistake
    wrong = isinstance(value, bool) and bool not in types
    if wrong or not isinstance(value, types):
        raise ConfigError(f"{name} must be {_describe(types)}, got {value!r} ({_kind(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (section, key) in LOWER_BOUNDS and value is not None:
        bound, inclusive = LOWER_BOUNDS[(section, key)]
        if value < bound or (value == bound and not inclusive):
            relation = "at least" if inclusive else "greater than"
            raise ConfigError(f"{name} must be {relation} {bound}, got {value!r}")
    return value


def _checked_long_range(value: Any) -> Dict[str, Any]:
    """model.long_range: a method name or some of {method, accuracy, max_memory_gb},
    over the defaults; ConfigError naming the entry otherwise."""
    if isinstance(value, dict):
        # YAML reads 1e-6 as a string
        value = {
            k: _number_or_text(v) if k in ("accuracy", "max_memory_gb") else v
            for k, v in value.items()
        }
    try:
        return long_range_settings(value)
    except ValueError as error:
        raise ConfigError(f"model.long_range: {error}") from None


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _checked_split(value: Any) -> list:
    if (
        not isinstance(value, list)
        or len(value) not in (2, 3)
        or any(isinstance(x, bool) or not isinstance(x, NUMBER) or x < 0 for x in value)
        or sum(value) <= 0
    ):
        raise ConfigError(
            f"data.split must be a list of 2 or 3 non-negative fractions (train, valid[, "
            f"test]), got {value!r}"
        )
    return value


def _checked_loss_weights(value: Any, current: Dict[str, float]) -> Dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"training.loss_weights must be a mapping, got {value!r}")
    unknown = set(value) - set(LOSS_TERMS)
    if unknown:
        raise ConfigError(
            f"unknown loss weights {sorted(unknown)} (known: {', '.join(LOSS_TERMS)})"
        )
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, NUMBER) or weight < 0:
            raise ConfigError(
                f"training.loss_weights.{name} must be a non-negative number, got {weight!r}"
            )
    return {**current, **value}


def resolve(user: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults overlaid with the user's entries, each checked for its type and range;
    unknown entries are errors."""
    if not isinstance(user, dict):
        raise ConfigError(
            f"a configuration is a mapping with model:, data:, training: sections, got {user!r}"
        )
    config = copy.deepcopy(DEFAULTS)
    for section, values in user.items():
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
                config[section][key] = _checked_loss_weights(value, config[section][key])
            elif (section, key) == ("model", "long_range"):
                config[section][key] = _checked_long_range(value)
            elif (section, key) == ("data", "split"):
                config[section][key] = _checked_split(value)
            else:
                config[section][key] = _checked(section, key, value)
    _resolve_model_kind(config, user or {})
    if not config["data"]["train"]:
        raise ConfigError("data.train (the training file) is required")
    choices = {
        ("training", "dtype"): DTYPE_NAMES,
        ("training", "optimizer"): ("adam", "adamw"),
        ("training", "decay"): ("cosine", "linear", "exponential", "constant"),
        ("model", "cutoff_fn"): ("cosine_cutoff",),
        ("model", "radial_basis"): ("basic_bernstein",),
    }
    for (section, key), allowed in choices.items():
        if config[section][key] not in allowed:
            raise ConfigError(
                f"{section}.{key} must be {' or '.join(allowed)}, got {config[section][key]!r}"
            )
    if config["training"]["ema_decay"] >= 1:
        raise ConfigError(
            f"training.ema_decay must be below 1 (0 switches it off), got "
            f"{config['training']['ema_decay']!r}"
        )
    model = config["model"]
    if model["lr"] and model["max_degree_lr"] > model["max_degree"]:
        raise ConfigError(
            f"model.max_degree_lr ({model['max_degree_lr']}) must not exceed model.max_degree "
            f"({model['max_degree']})"
        )
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
