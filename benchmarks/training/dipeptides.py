"""SPICE dipeptides with large dipoles (../shared/datasets/spice_dipeptides_dipolar,
CC BY-NC: read in place, never copied into the project): LOREM against `lr: false`,
same model size, data and epochs; test errors over all 50 test structures and on the
most polar apart.

The published train/val/test files are used as they are (forces under `force`); the
test file is rewritten once with config_type "most-polar" for the structures whose
reference dipole (the DFT dipole the files carry) is among the largest fifth, "rest"
otherwise, so that lorem-eval's errors by config_type give both groups.
"""

import json
from pathlib import Path
from typing import Dict

import numpy as np

FOLDER = "datasets/spice_dipeptides_dipolar"
PREFIX = "cace_lr_fit_spice-dipep-dipolar"
POLAR_FRACTION = 0.2


def _dipole(atoms) -> float:
    results = atoms.calc.results if atoms.calc is not None else {}
    if "dipole" not in results:
        raise KeyError("a SPICE dipeptide test frame has no reference dipole")
    return float(np.linalg.norm(results["dipole"]))


def prepare(shared: Path, data: Path) -> Dict[str, Path]:
    """Paths of the train/valid files (in place) and of the labelled test file."""
    import ase.io

    folder = shared / FOLDER
    paths = {
        part: folder / f"{PREFIX}_{name}.xyz"
        for part, name in (("train", "train"), ("valid", "val"), ("test", "test"))
    }
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"missing {path}")
    data.mkdir(parents=True, exist_ok=True)
    labelled = data / "dipeptides-test.xyz"
    frames = ase.io.read(paths["test"], ":")
    dipoles = np.array([_dipole(a) for a in frames])
    threshold = np.quantile(dipoles, 1.0 - POLAR_FRACTION)
    for atoms, dipole in zip(frames, dipoles, strict=True):
        atoms.info["config_type"] = "most-polar" if dipole >= threshold else "rest"
        atoms.info["dipole_norm"] = dipole
    ase.io.write(labelled, frames)
    return {**paths, "test": labelled, "polar_threshold": float(threshold)}


def run(config_file: Path, paths: Dict, retrain: bool = False) -> Dict:
    """Train as configured (unless the run folder holds a finished run), then evaluate
    best.pt on the labelled test file; writes dipeptides_result.json."""
    import csv

    import yaml

    from lorem_torch.train import train
    from lorem_torch.train.config import resolve
    from lorem_torch.train.evaluation import evaluate_checkpoint

    from .lode import _finished, _log_span

    config = yaml.safe_load(config_file.read_text())
    output = Path(config["training"]["output"])
    if retrain or not _finished(output):
        train(config, log=lambda m: None, overwrite=True)
    with open(output / "log.csv") as f:
        history = list(csv.DictReader(f))
    evaluated = evaluate_checkpoint(
        str(output / "best.pt"), str(paths["test"]), output=str(output / "test"), dtype=None
    )
    log_text = (output / "train.log").read_text()
    result = {
        "config": str(config_file),
        "model": config["model"],
        "epochs": int(history[-1]["epoch"]),
        "planned_epochs": int(resolve(config)["training"]["epochs"]),
        "stop": log_text.strip().splitlines()[-1].split(": ", 1)[-1],
        "wall_seconds": _log_span(output),
        "training_seconds": float(history[-1]["seconds"]),
        "polar_threshold": paths["polar_threshold"],
        "test": evaluated["errors"],
    }
    (output / "dipeptides_result.json").write_text(json.dumps(result, indent=1))
    return result
