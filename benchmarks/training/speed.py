"""Seconds per training epoch of lorem-torch and lorem-jax on the same data and model.

An epoch here is one pass over the training set in optimiser steps (energies and
forces, so a second derivative) plus one validation pass, as both trainers do it with
validation every epoch.

lorem-torch: the steps of lorem-train (make_batch, predict, loss_terms, Adam) on the
chosen device; lorem-train itself has no device option yet, so this loop moves each
batch to the device. lorem-jax: its own `lorem-train` (jit, padded batches), timed by
its reported elapsed time between validations. The first epoch is reported apart:
it holds lorem-jax's compilations (one per padded batch shape).
"""

import statistics
import time
from pathlib import Path
from typing import Dict, List

import yaml

from . import compare, jax_runs


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_epochs(config: Dict, epochs: int, device_name: str, threads: int) -> List[float]:
    """Wall seconds of each epoch (training steps + validation) of the lorem-train steps."""
    import torch

    from lorem_torch.models import EnergyModel, Lorem
    from lorem_torch.train.data import (
        LabelKeys,
        fit_baseline,
        load_samples,
        make_batch,
        read_frames,
    )
    from lorem_torch.train.loop import DTYPES, loss_terms, predict

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    training, data = config["training"], config["data"]
    dtype = DTYPES[training["dtype"]]
    cutoff = float(config["model"]["cutoff"])
    keys = LabelKeys(data["energy_key"], data["forces_key"], data["stress_key"])
    train = load_samples(read_frames(data["train"]), cutoff, keys, data["train"])
    valid = load_samples(read_frames(data["valid"]), cutoff, keys, data["valid"])
    species = sorted({int(z) for s in train for z in s.graph["atomic_numbers"]})
    torch.manual_seed(int(training["seed"]))
    model = Lorem(**config["model"], species=species, baseline=fit_baseline(train))
    model = model.to(device=device, dtype=dtype)
    energy_model = EnergyModel(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(training["learning_rate"]), fused=True
    )  # as lorem-train
    weights = training["loss_weights"]
    batch_size = int(training["batch_size"])

    def on_device(batch):
        batch.graph = {k: v.to(device) for k, v in batch.graph.items()}
        for name in ("energy", "num_atoms", "forces"):
            value = getattr(batch, name)
            if value is not None:
                setattr(batch, name, value.to(device))
        return batch

    seconds = []
    for epoch in range(epochs):
        _sync(device)
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(train), batch_size):
            chunk = [train[i] for i in order[start : start + batch_size].tolist()]
            batch = on_device(make_batch(chunk, dtype))
            terms = loss_terms(predict(energy_model, batch, training=True, stress=False), batch)
            loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for start in range(0, len(valid), batch_size):
            batch = on_device(make_batch(valid[start : start + batch_size], dtype))
            predict(energy_model, batch, training=False, stress=False)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def jax_epochs(
    config: Dict, datasets: Path, name: str, output: Path, threads: int, device: str
) -> List[float]:
    """Seconds of each epoch of lorem-jax's lorem-train (its elapsed time at each
    validation; the first includes the compilations)."""
    import ase.io

    outcome = jax_runs.train(
        output, config, datasets, f"{name}/train", f"{name}/valid", threads, device
    )
    num_train = len(ase.io.read(config["data"]["train"], ":"))
    seconds, previous = [], (0.0, 0.0)
    for row in outcome["history"]:
        epoch = row["samples"] / num_train
        seconds.append((row["seconds"] - previous[1]) / (epoch - previous[0]))
        previous = (epoch, row["seconds"])
    return seconds


def run(
    shared: Path,
    output: Path,
    config_file: Path,
    epochs: int,
    device: str,
    implementations=("torch", "jax"),
    threads: int = 1,
) -> List[Dict]:
    dataset = config_file.name.split("-")[0]
    files = compare.prepare(shared, output / "data", dataset, for_jax="jax" in implementations)
    config = compare.torch_config(config_file, 0, output / f"speed-{dataset}")
    config["data"]["train"], config["data"]["valid"] = str(files["train"]), str(files["valid"])
    config["training"]["epochs"] = epochs
    rows = []
    for implementation in implementations:
        if implementation == "torch":
            seconds = torch_epochs(config, epochs, device, threads)
        else:
            # lorem-jax validates at the end of each epoch but the last (its iterator
            # runs out first): one more epoch gives `epochs` timed epochs
            jax_config = {**config, "training": {**config["training"], "epochs": epochs + 1}}
            seconds = jax_epochs(
                jax_config,
                output / "data/marathon",
                dataset,
                output / f"speed-{dataset}-jax",
                threads,
                device,
            )
        rows.append(
            {
                "implementation": f"lorem-{implementation}",
                "dataset": dataset,
                "device": device,
                "model": {k: config["model"][k] for k in ("num_features", "max_degree")},
                "batch_size": config["training"]["batch_size"],
                "first_epoch_s": seconds[0],
                "later_epochs_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
                "epochs": len(seconds),
            }
        )
    (output / "speed-config.yaml").write_text(yaml.safe_dump(config))
    return rows


def format_rows(rows: List[Dict]) -> str:
    lines = [
        f"{'implementation':>14} {'data':>5} {'device':>6} {'first epoch s':>14} "
        f"{'later epochs s':>15} (median)"
    ]
    for row in rows:
        later = row["later_epochs_s"]
        lines.append(
            f"{row['implementation']:>14} {row['dataset']:>5} {row['device']:>6} "
            f"{row['first_epoch_s']:>14.2f} {later if later is None else f'{later:.2f}':>15}"
        )
    return "\n".join(lines)
