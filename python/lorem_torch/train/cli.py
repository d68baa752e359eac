"""Command lines: lorem-train and lorem-eval."""

import argparse
import sys

import torch
import yaml

from .config import ConfigError


def _value(text: str):
    return yaml.safe_load(text)


def train_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lorem-train",
        description="Train a LOREM model. Give a YAML config, or just --train data.xyz.",
    )
    parser.add_argument("config", nargs="?", help="YAML file with model:, data:, training:")
    parser.add_argument("--train", help="training data (any ASE-readable file)")
    parser.add_argument("--valid", help="validation data (default: a seeded split of --train)")
    parser.add_argument("--test", help="test data")
    parser.add_argument("--energy-key", help="label key of the energy (default: energy)")
    parser.add_argument("--forces-key", help="label key of the forces (default: forces)")
    parser.add_argument("--stress-key", help="label key of the stress (default: none)")
    parser.add_argument(
        "--apt-key", help="label key of the Born effective charges, 9 per atom (default: apt)"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--dtype", choices=["float32", "float64"])
    parser.add_argument("--output", help="run folder (default: runs/lorem)")
    parser.add_argument("--time-budget", type=float, help="seconds of training at most")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameters, e.g. num_features=64 lr=false",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    config = {}
    if args.config:
        with open(args.config) as f:
            config = yaml.safe_load(f) or {}
    data = config.setdefault("data", {}) or {}
    config["data"] = data
    training = config.setdefault("training", {}) or {}
    config["training"] = training
    model = config.setdefault("model", {}) or {}
    config["model"] = model
    for option, key in (
        ("train", "train"),
        ("valid", "valid"),
        ("test", "test"),
        ("energy_key", "energy_key"),
        ("forces_key", "forces_key"),
        ("stress_key", "stress_key"),
        ("apt_key", "apt_key"),
    ):
        if getattr(args, option) is not None:
            data[key] = getattr(args, option)
    for option, key in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("learning_rate", "learning_rate"),
        ("dtype", "dtype"),
        ("output", "output"),
        ("time_budget", "time_budget"),
        ("seed", "seed"),
    ):
        if getattr(args, option) is not None:
            training[key] = getattr(args, option)
    if args.no_progress:
        training["progress"] = False
    for item in args.model:
        if "=" not in item:
            parser.error(f"--model takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        model[key] = _value(value)
    if not data.get("train"):
        parser.error("give a config file with data.train, or --train FILE")

    from .loop import train

    try:
        result = train(config, resume=args.resume)
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as error:
        print(f"lorem-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"best validation loss {result['best_valid_loss']:.5g} after {result['epochs']} epochs")


def eval_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lorem-eval", description="Errors of a lorem-torch checkpoint on a data file."
    )
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="any ASE-readable file with labels")
    parser.add_argument("--output", "-o", help="folder for parity plots and metrics.json")
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument(
        "--apt-key", default="apt", help="Born effective charges (models of kind bec), if present"
    )
    parser.add_argument(
        "--electric-field-key",
        default="electric_field",
        help="field (V/A) in atoms.info under which the forces were computed; '' to ignore",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args(argv)

    from .data import LabelKeys
    from .evaluation import evaluate_checkpoint, format_table

    try:
        result = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            output=args.output,
            label_keys=LabelKeys(
                args.energy_key,
                args.forces_key or None,
                apt=args.apt_key or None,
                electric_field=args.electric_field_key or None,
            ),
            batch_size=args.batch_size,
            dtype={"float32": torch.float32, "float64": torch.float64}[args.dtype],
        )
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"lorem-eval: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_table(result["errors"]))
    if args.output:
        print(f"parity plots and metrics.json in {args.output}")
