"""Side by side: lorem-torch and lorem-jax trained with the same model, split, epochs and
schedule on the GNL cumulenes and the Ko et al. carbon chains (../shared, not bundled).

Run folder per (dataset, implementation, seed): runs/bench_training/<dataset>-<impl>-s<seed>/
    torch: lorem-train's folder (config.yaml, log.csv, train.log, best.pt, ...)
    jax:   the lorem-jax experiment (model.yaml, settings.yaml, stdout.txt, run/)
    both:  result.json  {test errors by config_type, validation history, seconds/epoch}
"""

import json
import re
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List

import numpy as np
import yaml

from . import jax_runs

DATASETS = ("gnl", "ko4g")


def prepare(shared: Path, data: Path, dataset: str, for_jax: bool = True) -> Dict[str, Path]:
    """Train/valid/test files of a data set (ASE) and, with for_jax, the marathon folders
    of lorem-jax (which needs lorem-jax's Python, LOREM_JAX_PYTHON).

    gnl: the published train/val/test files (test config_type: in-domain, out-domain
    chain lengths). ko4g: a seeded split (seed 0) of the 128 frames, 96/12/20, with
    config_type neutral (C10H2) or charged (C10H3+, total_charge 1)."""
    data.mkdir(parents=True, exist_ok=True)
    if dataset == "gnl":
        folder = shared / "datasets/cumulene_gnl"
        files = {
            "train": folder / "gnl-v0.2-train.xyz",
            "valid": folder / "gnl-v0.2-val.xyz",
            "test": folder / "gnl-v0.2-test.xyz",
        }
    elif dataset == "ko4g":
        files = _ko4g_split(shared / "datasets/ko4g_carbon_chain/Carbon_chain_4G.extxyz", data)
    else:
        raise ValueError(f"unknown data set {dataset!r} (gnl or ko4g)")
    if for_jax:
        jax_runs.prepare_datasets(
            {f"{dataset}/{part}": files[part] for part in ("train", "valid")}, data / "marathon"
        )
    return files


def _ko4g_split(source: Path, data: Path) -> Dict[str, Path]:
    import ase.io

    frames = ase.io.read(source, ":")
    for atoms in frames:
        charged = abs(float(atoms.info.get("total_charge", 0.0))) > 0
        atoms.info["config_type"] = "charged" if charged else "neutral"
    order = np.random.default_rng(0).permutation(len(frames))
    parts = {"train": order[:96], "valid": order[96:108], "test": order[108:]}
    files = {}
    for part, indices in parts.items():
        files[part] = data / f"ko4g-{part}.xyz"
        if not files[part].exists():
            ase.io.write(files[part], [frames[i] for i in indices])
    return files


def torch_config(config_file: Path, seed: int, output: Path) -> Dict:
    from lorem_torch.train.config import resolve

    config = yaml.safe_load(config_file.read_text())
    config["training"]["seed"] = seed
    config["training"]["output"] = str(output)
    return resolve(config)


def epoch_seconds_from_log(train_log: Path) -> List[float]:
    """Wall seconds between consecutive validations (each: one epoch + one validation)."""
    stamps = []
    for line in train_log.read_text().splitlines():
        match = re.match(r"(\S+ \S+) epoch\s+(\d+)", line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            stamps.append((int(match.group(2)), when.timestamp()))
    return [(t1 - t0) / (e1 - e0) for (e0, t0), (e1, t1) in zip(stamps, stamps[1:], strict=False)]


def run_torch(config: Dict, test_file: Path) -> Dict:
    import torch

    from lorem_torch.train import evaluate_checkpoint, train

    output = Path(config["training"]["output"])
    started = time.perf_counter()
    result = train(config, log=lambda m: None)
    wall = time.perf_counter() - started
    test = evaluate_checkpoint(str(output / "best.pt"), str(test_file), dtype=torch.float64)
    per_epoch = epoch_seconds_from_log(output / "train.log")
    history = [
        {
            "epoch": row["epoch"],
            "valid_energy_mae": row["valid_energy_mae"],
            "valid_forces_mae": row["valid_forces_mae"],
        }
        for row in result["history"]
    ]
    return {
        "implementation": "lorem-torch",
        "wall_seconds": wall,
        "seconds_per_epoch": statistics.median(per_epoch) if per_epoch else None,
        "training_seconds_per_epoch": result["history"][-1]["seconds"] / result["epochs"],
        "history": history,
        "test": test["errors"],
    }


def run_jax(config: Dict, datasets: Path, name: str, test_file: Path, threads: int = 1) -> Dict:
    import torch

    from lorem_torch.train import evaluate_checkpoint

    output = Path(config["training"]["output"])
    outcome = jax_runs.train(output, config, datasets, f"{name}/train", f"{name}/valid", threads)
    import ase.io

    num_train = len(ase.io.read(config["data"]["train"], ":"))
    history, previous, deltas = [], None, []
    for row in outcome["history"]:
        epoch = row["samples"] / num_train
        history.append(
            {"epoch": epoch, "valid_energy_mae": row["E MAE"], "valid_forces_mae": row["F MAE"]}
        )
        if previous is not None and "seconds" in row:
            deltas.append((row["seconds"] - previous[1]) / (epoch - previous[0]))
        previous = (epoch, row.get("seconds", 0.0))
    checkpoint = jax_runs.import_checkpoint(output, "R2_E+F", output / "best-imported.pt")
    test = evaluate_checkpoint(str(checkpoint), str(test_file), dtype=torch.float64)
    return {
        "implementation": "lorem-jax",
        "wall_seconds": outcome["wall_seconds"],
        "seconds_per_epoch": statistics.median(deltas) if deltas else None,
        "history": history,
        "test": test["errors"],
    }


def run(
    dataset: str,
    implementation: str,
    seed: int,
    shared: Path,
    output: Path,
    config_file: Path,
    threads: int = 1,
) -> Dict:
    files = prepare(shared, output / "data", dataset)
    folder = output / f"{dataset}-{implementation}-s{seed}"
    config = torch_config(config_file, seed, folder)
    config["data"]["train"], config["data"]["valid"] = str(files["train"]), str(files["valid"])
    if implementation == "torch":
        result = run_torch(config, files["test"])
    else:
        result = run_jax(config, output / "data/marathon", dataset, files["test"], threads)
    result.update(dataset=dataset, seed=seed, config=str(config_file))
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result
