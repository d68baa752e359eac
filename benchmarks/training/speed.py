"""Seconds per training epoch of lorem-torch and lorem-jax on the same data and model.

An epoch here is one pass over the training set in optimiser steps (energies and
forces, so a second derivative) plus one validation pass, as both trainers do it with
validation every epoch.

lorem-torch: the steps of lorem-train (make_batch, predict, loss_terms, Adam) on the
chosen device; lorem-train itself has no device option yet, so this loop moves each
batch to the device. lorem-jax: its own `lorem-train` (jit, padded batches), timed by
the moments its validation reports reach us (its own elapsed time is printed to the
second). Wall and CPU seconds (all threads) are kept: on a shared machine the CPU
seconds compare the implementations, the wall seconds depend on the other jobs. The
first epoch is reported apart: it holds lorem-jax's compilations (one per padded batch
shape); the later epochs are averaged.
"""

import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

from . import compare, jax_runs


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_epochs(
    config: Dict, epochs: int, device_name: str, threads: int
) -> Tuple[List[float], List[float]]:
    """Wall and CPU seconds (this process, all threads) of each epoch (training steps +
    validation) of the lorem-train steps."""
    import torch

    from lorem_torch.models import Lorem
    from lorem_torch.train.data import (
        LabelKeys,
        fit_baseline,
        load_samples,
        make_batch,
        read_frames,
    )
    from lorem_torch.train.loop import loss_terms, output_model, predict
    from lorem_torch.vocabulary import DTYPES

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
    hyperparameters = dict(config["model"])
    if hyperparameters.pop("kind") != "lorem":
        raise ValueError("the speed benchmark times model.kind: lorem")
    model = Lorem(**hyperparameters, species=species, baseline=fit_baseline(train))
    model = model.to(device=device, dtype=dtype)
    energy_model = output_model(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(training["learning_rate"]), fused=True
    )  # as lorem-train
    weights = training["loss_weights"]
    batch_size = int(training["batch_size"])

    def on_device(batch):
        batch.graph = {k: v.to(device) for k, v in batch.graph.items()}
        for name, value in vars(batch).items():
            if isinstance(value, torch.Tensor):
                setattr(batch, name, value.to(device))
        return batch

    seconds, cpu_seconds = [], []
    for epoch in range(epochs):
        _sync(device)
        started, cpu_started = time.perf_counter(), time.process_time()
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
        cpu_seconds.append(time.process_time() - cpu_started)
    return seconds, cpu_seconds


def jax_epochs(
    config: Dict, datasets: Path, name: str, output: Path, threads: int, device: str
) -> Tuple[List[float], List[float | None]]:
    """Wall and CPU seconds of each epoch of lorem-jax's lorem-train. The first epoch's
    wall time is lorem-jax's own elapsed time at its first validation (its training
    loop, compilations included); the later ones are the differences between the
    moments its validation reports reach us, and its process's CPU time then."""
    import ase.io

    outcome = jax_runs.train(
        output, config, datasets, f"{name}/train", f"{name}/valid", threads, device
    )
    num_train = len(ase.io.read(config["data"]["train"], ":"))
    epochs = [row["samples"] / num_train for row in outcome["history"]]
    marks = outcome["marks"]
    if len(marks) != len(epochs):
        raise RuntimeError(f"{len(marks)} elapsed-time reports for {len(epochs)} validations")
    seconds = [outcome["history"][0]["seconds"] / epochs[0]]
    cpu_seconds: List[float | None] = [None]  # the start-up is in it as well
    for i in range(1, len(epochs)):
        span = epochs[i] - epochs[i - 1]
        seconds.append((marks[i]["wall"] - marks[i - 1]["wall"]) / span)
        cpu_seconds.append((marks[i]["cpu"] - marks[i - 1]["cpu"]) / span)
    return seconds, cpu_seconds


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
        started = time.perf_counter()
        if implementation == "torch":
            seconds, cpu_seconds = torch_epochs(config, epochs, device, threads)
        else:
            # lorem-jax validates at the end of each epoch but the last (its iterator
            # runs out first): one more epoch gives `epochs` timed epochs
            jax_config = {**config, "training": {**config["training"], "epochs": epochs + 1}}
            seconds, cpu_seconds = jax_epochs(
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
                "later_epochs_s": statistics.mean(seconds[1:]) if len(seconds) > 1 else None,
                # CPU seconds (all threads): on a shared machine the fairer comparison
                "later_epochs_cpu_s": (
                    statistics.mean(cpu_seconds[1:]) if len(seconds) > 1 else None
                ),
                "epochs": len(seconds),
                "threads": threads,
                "wall_seconds": time.perf_counter() - started,  # set-up and all epochs
                "load_average": os.getloadavg()[0],
            }
        )
    (output / "speed-config.yaml").write_text(yaml.safe_dump(config))
    return rows


def format_rows(rows: List[Dict]) -> str:
    def number(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"{'implementation':>14} {'data':>5} {'device':>6} {'first epoch s':>14} "
        f"{'later epochs s':>15} {'(CPU s)':>8}  (means)"
    ]
    for row in rows:
        lines.append(
            f"{row['implementation']:>14} {row['dataset']:>5} {row['device']:>6} "
            f"{row['first_epoch_s']:>14.2f} {number(row['later_epochs_s']):>15} "
            f"{number(row.get('later_epochs_cpu_s')):>8}"
        )
    return "\n".join(lines)
