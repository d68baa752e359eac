"""Command lines: lorem-train and lorem-eval.

Input problems end in one line on stderr naming the problem (exit code 2); Ctrl-C
during training says where the training state is and how to resume (exit code 130).
"""

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from ..commands import EXIT_INTERRUPTED, add_version, fail
from ..vocabulary import DTYPE_NAMES, torch_dtype
from .config import DEFAULTS, ConfigError

# command-line option -> (config section, entry)
TRAIN_OPTIONS = {
    "train": ("data", "train"),
    "valid": ("data", "valid"),
    "test": ("data", "test"),
    "energy_key": ("data", "energy_key"),
    "forces_key": ("data", "forces_key"),
    "stress_key": ("data", "stress_key"),
    "apt_key": ("data", "apt_key"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "learning_rate": ("training", "learning_rate"),
    "dtype": ("training", "dtype"),
    "output": ("training", "output"),
    "time_budget": ("training", "time_budget"),
    "seed": ("training", "seed"),
}


def _value(text: str):
    return yaml.safe_load(text)


def _show(value) -> str:
    """A value as it would be written in the YAML config."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not value.replace("_", "").replace("/", "").isalnum():
        return repr(value)
    return str(value)


def _default(option: str) -> str:
    section, key = TRAIN_OPTIONS[option]
    return _show(DEFAULTS[section][key])


def _entries_help() -> str:
    """Every configuration entry with its default, for the end of --help."""
    lines = [
        "model options (--model KEY=VALUE, or the model: section of a config file; "
        "lorem-jax's names):"
    ]
    for section in ("model", "data", "training"):
        if section != "model":
            lines.append(f"{section}: entries of a config file (some also as options above):")
        for key, value in DEFAULTS[section].items():
            lines.append(f"  {key}: {_show(value)}")
    lines.append("example: examples/configs/water.yaml")
    return "\n".join(lines)


def _read_config(path: str) -> dict:
    """The YAML config file as a mapping; ConfigError (one line) for anything else."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {error.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"{path} must hold a mapping with model:, data: and training: sections, got "
            f"{type(config).__name__}"
        )
    return config


def _resume_command(argv) -> str:
    """The command that continues this run: the same arguments with --resume."""
    arguments = [a for a in argv if a != "--overwrite"]
    if "--resume" not in arguments and "--resume-if-present" not in arguments:
        arguments.append("--resume")
    return shlex.join(["lorem-train", *arguments])


def train_main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="lorem-train",
        description="Train a LOREM model. Give a YAML config (model:, data:, training: "
        "sections), or just --train data.xyz; options on the command line override the "
        "config file. Writes best.pt, last.pt, log.csv, learning_curve.png, train.log and "
        "config.yaml into the run folder (--output).",
        epilog=_entries_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML file with model:, data:, training:")
    parser.add_argument("--train", help="training data (any ASE-readable file)")
    parser.add_argument("--valid", help="validation data (default: a seeded split of --train)")
    parser.add_argument("--test", help="test data (default: none)")
    for option, what in (
        ("energy_key", "label key of the energy"),
        ("forces_key", "label key of the forces"),
        ("stress_key", "label key of the stress"),
        ("apt_key", "label key of the Born effective charges, 9 per atom"),
    ):
        parser.add_argument(
            "--" + option.replace("_", "-"), help=f"{what} (default: {_default(option)})"
        )
    parser.add_argument("--epochs", type=int, help=f"(default: {_default('epochs')})")
    parser.add_argument("--batch-size", type=int, help=f"(default: {_default('batch_size')})")
    parser.add_argument(
        "--learning-rate", type=float, help=f"(default: {_default('learning_rate')})"
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help=f"(default: {_default('dtype')})")
    parser.add_argument("--output", help=f"run folder (default: {_default('output')})")
    parser.add_argument(
        "--time-budget",
        type=float,
        help="seconds this command may train, checked after every batch; then last.pt is "
        "saved for --resume (default: none)",
    )
    parser.add_argument("--seed", type=int, help=f"(default: {_default('seed')})")
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameters, e.g. num_features=64 lr=false long_range.method=pme "
        "(listed below)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder from its last.pt (same settings, but "
        "epochs, time_budget, patience, valid_every and progress may change)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the output folder (its files are deleted)",
    )
    existing.add_argument(
        "--resume-if-present",
        action="store_true",
        help="as --resume where the output folder holds a run, else start one (for job "
        "scripts that are restarted as they are); plain --resume on a folder without a "
        "run is an error",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version(parser)
    args = parser.parse_args(argv)

    try:
        config = _read_config(args.config) if args.config else {}
        for section in ("data", "training", "model"):
            if config.get(section) is None:
                config[section] = {}
            elif not isinstance(config[section], dict):
                raise ConfigError(f"section '{section}' must be a mapping")
        for option, (section, key) in TRAIN_OPTIONS.items():
            if getattr(args, option) is not None:
                config[section][key] = getattr(args, option)
        if args.no_progress:
            config["training"]["progress"] = False
        for item in args.model:
            if "=" not in item:
                parser.error(f"--model takes KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            if key.startswith("long_range."):  # one setting of the long_range mapping
                current = config["model"].get("long_range")
                settings = {"method": current} if isinstance(current, str) else current
                settings = dict(settings or {})
                settings[key.split(".", 1)[1]] = _value(value)
                config["model"]["long_range"] = settings
            else:
                config["model"][key] = _value(value)
        if not config["data"].get("train"):
            parser.error("give a config file with data.train, or --train FILE")
        from .config import resolve

        output = Path(resolve(config)["training"]["output"])
    except ConfigError as error:
        fail("lorem-train", error)

    from ..checkpoint import CheckpointError
    from ..errors import with_advice
    from .loop import train

    resume_command = _resume_command(argv)
    try:
        resume = "if_present" if args.resume_if_present else args.resume
        result = train(config, resume=resume, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, ValueError, KeyError, FileNotFoundError) as error:
        fail("lorem-train", with_advice(str(error), "model.long_range.max_memory_gb"))
    except FloatingPointError as error:
        fail("lorem-train", f"{error}; lower the learning rate or check the data")
    except KeyboardInterrupt:
        last = output / "last.pt"
        if last.is_file():
            message = (
                f"interrupted; the last saved training state is {last}; resume with:\n"
                f"  {resume_command}"
            )
        else:
            message = "interrupted before the first checkpoint: nothing to resume"
        print(f"lorem-train: {message}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)

    best = result["best_checkpoint"]
    summary = (
        f"best validation loss {result['best_valid_loss']:.5g} ({best})"
        if best
        else "no validation yet"
    )
    if result["resumable"]:
        message = (
            f"stopped after {result['stopped_after']} ({result['stop_reason']}); {summary}; "
            "the training state "
            f"is saved in {result['last_checkpoint']}; resume with:\n  {resume_command}"
        )
        if result["interrupted"]:
            print(f"lorem-train: {message}", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        print(message)
        return
    print(f"{summary} after {result['epochs']} epochs ({result['stop_reason']})")


def eval_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lorem-eval",
        description="Errors of a model (a checkpoint or an export, model.pt) on a labelled "
        "data file: a table by config_type and, with --output, parity plots, metrics.json "
        "and predictions.xyz. On a file without energy labels it predicts instead: energy, "
        "forces and (periodic) stress of every frame, written as extxyz with the keys "
        "lorem_energy, lorem_energies, lorem_forces and lorem_stress (Voigt, eV/A^3), into DATA_STEM.predictions.xyz next to "
        "the data file, or predictions.xyz in --output.",
    )
    parser.add_argument("model", help="checkpoint (best.pt, ...) or exported model (model.pt)")
    parser.add_argument("data", help="any ASE-readable file, with or without labels")
    parser.add_argument("--output", "-o", help="folder for plots, metrics.json and predictions.xyz")
    unset = "the checkpoint's training setting, else %s"
    parser.add_argument("--energy-key", help="energy label key (default: " + unset % "energy)")
    parser.add_argument(
        "--forces-key",
        help="forces label key, '' for none (default: " + unset % "forces)",
    )
    parser.add_argument(
        "--stress-key", help="stress label key, '' for none (default: " + unset % "none)"
    )
    parser.add_argument(
        "--apt-key",
        help="Born effective charges label key (models of kind bec; default: " + unset % "apt)",
    )
    parser.add_argument(
        "--electric-field-key",
        help="atoms.info key of the field (V/A) the forces were computed in, '' to ignore "
        "(default: " + unset % "electric_field)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="structures per batch (default: 4)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="precision (default: float64 for a checkpoint, the export's own for an export)",
    )
    parser.add_argument(
        "--index", default=":", help="which frames, ASE index syntax (default: all, ':')"
    )
    add_version(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        fail("lorem-eval", f"--batch-size must be at least 1, got {args.batch_size}")

    from ..checkpoint import CheckpointError
    from ..export import ExportError
    from .evaluation import evaluate_checkpoint, format_table

    try:
        result = evaluate_checkpoint(
            args.model,
            args.data,
            output=args.output,
            label_keys={
                "energy": args.energy_key,
                "forces": args.forces_key,
                "stress": args.stress_key,
                "apt": args.apt_key,
                "electric_field": args.electric_field_key,
            },
            batch_size=args.batch_size,
            dtype=torch_dtype(args.dtype),
            index=args.index,
        )
    except (ValueError, KeyError, FileNotFoundError, CheckpointError, ExportError) as error:
        fail("lorem-eval", error)
    if result["errors"] is not None:
        print(format_table(result["errors"]))
        if args.output:
            print(f"parity plots and metrics.json in {args.output}")
    else:
        print(
            f"{args.data} has no '{result['label_keys']['energy']}' labels: predicted "
            f"{result['frames']} frames instead of evaluating"
        )
    if result["predictions"]:
        print(
            f"predictions of {result['frames']} frames (lorem_energy, lorem_energies, "
            f"lorem_forces, lorem_stress) in {result['predictions']}"
        )
