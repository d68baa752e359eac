"""The training loop: loss, optimiser and schedule, EMA, validation, checkpoints, resume.

Run folder (training.output):
    config.yaml          the resolved configuration
    log.csv              one row per validation
    learning_curve.png   losses and validation errors against epochs
    train.log            what happened, in words
    best.pt              checkpoint with the best validation loss (EMA weights)
    last.pt              checkpoint after the last epoch, with the training state
"""

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import yaml

from .. import keys
from ..checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ..models import EnergyModel, Lorem
from . import config as config_module
from .data import (
    Batch,
    LabelKeys,
    Sample,
    baseline_is_determined,
    fit_baseline,
    load_samples,
    make_batch,
    read_frames,
    split,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# -- loss and metrics --


def predict(model: EnergyModel, batch: Batch, training: bool, stress: bool) -> Dict:
    return model(
        **batch.graph,
        compute_forces=batch.forces is not None,
        compute_stress=stress and batch.stress is not None,
        create_graph=training,
    )


def loss_terms(out: Dict, batch: Batch) -> Dict[str, torch.Tensor]:
    terms = {"energy": (((out[keys.ENERGY] - batch.energy) / batch.num_atoms) ** 2).mean()}
    if batch.forces is not None and keys.FORCES in out:
        terms["forces"] = ((out[keys.FORCES] - batch.forces) ** 2).mean()
    if batch.stress is not None and keys.STRESS in out:
        mask = batch.stress_mask
        terms["stress"] = ((out[keys.STRESS][mask] - batch.stress[mask]) ** 2).mean()
    return terms


class ErrorAccumulator:
    """Energy errors per atom (meV/atom) and force component errors (meV/A), by group."""

    def __init__(self):
        self.energy: Dict[str, List[float]] = {}
        self.forces: Dict[str, List[np.ndarray]] = {}
        self.records: List[Dict[str, Any]] = []

    def add(self, out: Dict, batch: Batch) -> None:
        energy = out[keys.ENERGY].detach().double().cpu().numpy()
        reference = batch.energy.double().numpy()
        per_atom = (energy - reference) / batch.num_atoms.double().numpy() * 1000.0
        forces = out.get(keys.FORCES)
        offsets = batch.graph[keys.STRUCTURE_OFFSETS].tolist()
        for s, group in enumerate(batch.config_types):
            for name in ("all", group) if group != "all" else ("all",):
                self.energy.setdefault(name, []).append(float(per_atom[s]))
                if forces is not None and batch.forces is not None:
                    a, b = offsets[s], offsets[s + 1]
                    error = (forces[a:b] - batch.forces[a:b]).detach().double().numpy() * 1000.0
                    self.forces.setdefault(name, []).append(error.ravel())
            self.records.append(
                {
                    "config_type": group,
                    "num_atoms": int(batch.num_atoms[s]),
                    "energy_reference": float(reference[s]),
                    "energy_predicted": float(energy[s]),
                }
            )

    def summary(self) -> Dict[str, Dict[str, float]]:
        result = {}
        for name, errors in self.energy.items():
            e = np.asarray(errors)
            entry = {
                "structures": len(e),
                "energy_mae_meV_per_atom": float(np.abs(e).mean()),
                "energy_rmse_meV_per_atom": float(np.sqrt((e**2).mean())),
            }
            if name in self.forces:
                f = np.concatenate(self.forces[name])
                entry["forces_mae_meV_per_A"] = float(np.abs(f).mean())
                entry["forces_rmse_meV_per_A"] = float(np.sqrt((f**2).mean()))
            result[name] = entry
        return result


def evaluate(
    model: EnergyModel,
    samples: List[Sample],
    batch_size: int,
    dtype: torch.dtype,
    loss_weights: Dict[str, float],
) -> Dict[str, Any]:
    """Loss and error table of a model on samples (no gradients kept)."""
    accumulator = ErrorAccumulator()
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size], dtype)
        out = predict(model, batch, training=False, stress=loss_weights.get("stress", 0) > 0)
        terms = loss_terms(out, batch)
        loss = sum(loss_weights.get(k, 0.0) * v for k, v in terms.items())
        total += float(loss.detach()) * len(batch.config_types)
        count += len(batch.config_types)
        accumulator.add(out, batch)
    return {"loss": total / max(count, 1), "errors": accumulator.summary()}


# -- schedule --


def learning_rate(settings: Dict[str, Any], epoch_progress: float) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then the chosen decay."""
    start, floor = float(settings["learning_rate"]), float(settings["min_learning_rate"])
    warmup, epochs = float(settings["warmup_epochs"]), float(settings["epochs"])
    if warmup > 0 and epoch_progress < warmup:
        return start * (epoch_progress + 1e-3) / warmup
    span = max(epochs - warmup, 1e-12)
    x = min(max((epoch_progress - warmup) / span, 0.0), 1.0)
    decay = settings["decay"]
    if decay == "cosine":
        return floor + 0.5 * (start - floor) * (1 + math.cos(math.pi * x))
    if decay == "linear":
        return start + (floor - start) * x
    if decay == "exponential":
        return start * (floor / start) ** x
    return start


# -- the loop --


class Trainer:
    def __init__(self, config: Dict[str, Any], resume: bool = False, log=print):
        self.config = config_module.resolve(config)
        self.settings = self.config["training"]
        self.output = Path(self.settings["output"])
        self.dtype = DTYPES[self.settings["dtype"]]
        self.log_fn = log
        self.output.mkdir(parents=True, exist_ok=True)
        self._load_data()
        torch.manual_seed(self.settings["seed"])
        if resume and (self.output / "last.pt").is_file():
            self._restore(self.output / "last.pt")
        else:
            if resume:
                self.log(f"nothing to resume in {self.output}: starting afresh")
            self._fresh()

    def log(self, message: str) -> None:
        self.log_fn(message)
        with open(self.output / "train.log", "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def _load_data(self) -> None:
        data = self.config["data"]
        cutoff = float(self.config["model"]["cutoff"])
        label_keys = LabelKeys(data["energy_key"], data["forces_key"], data["stress_key"])

        def read(path):
            frames = read_frames(path, data["index"], data["pbc"])
            return load_samples(frames, cutoff, label_keys, path)

        train = read(data["train"])
        if data["valid"]:
            valid = read(data["valid"])
            test = read(data["test"]) if data["test"] else []
        else:
            parts = split(train, data["split"], data["seed"])
            train, valid = parts[0], parts[1]
            test = parts[2] if len(parts) > 2 else (read(data["test"]) if data["test"] else [])
        self.train_samples, self.valid_samples, self.test_samples = train, valid, test
        train_species = {int(z) for s in train for z in s.graph[keys.ATOMIC_NUMBERS]}
        for name, samples in (("validation", valid), ("test", test)):
            other = {int(z) for s in samples for z in s.graph[keys.ATOMIC_NUMBERS]}
            if other - train_species:
                raise config_module.ConfigError(
                    f"the {name} data has elements {sorted(other - train_species)} that the "
                    f"training data lacks ({sorted(train_species)})"
                )
        self.species = sorted(train_species)

    def _fresh(self) -> None:
        baseline = fit_baseline(self.train_samples)
        self.model = Lorem(**self.config["model"], species=self.species, baseline=baseline).to(
            self.dtype
        )
        self.ema = copy.deepcopy(self.model) if self.settings["ema_decay"] > 0 else None
        self.optimizer = self._make_optimizer()
        self.epoch = 0
        self.ema_steps = 0
        self.best_loss = float("inf")
        self.stale = 0
        self.history: List[Dict[str, Any]] = []
        self.elapsed = 0.0
        atomic_write(
            self.output / "config.yaml",
            lambda t: Path(t).write_text(yaml.safe_dump(self.config, sort_keys=False)),
        )
        self.log(
            f"{len(self.train_samples)} training, {len(self.valid_samples)} validation, "
            f"{len(self.test_samples)} test structures; species {self.species}"
        )
        if not baseline_is_determined(self.train_samples):
            self.log(
                "the training compositions do not determine per-element energies (all "
                "proportional): the baseline is the minimum-norm fit, right only as a sum"
            )
        self.log(
            "per-element baseline (eV): "
            + ", ".join(f"{z}: {e:.4f}" for z, e in sorted(baseline.items()))
        )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.settings["optimizer"]]
        # fused: one kernel for all parameters; the per-tensor loop took 10-20 % of a
        # training step of a small model on CPU (benchmarks/bench_training.py)
        return kind(
            self.model.parameters(),
            lr=float(self.settings["learning_rate"]),
            weight_decay=float(self.settings["weight_decay"]),
            fused=True,
        )

    def _restore(self, path: Path) -> None:
        from ..checkpoint import model_from_checkpoint

        payload = load_checkpoint(path)
        state = payload["training"]
        if state is None:
            raise config_module.ConfigError(f"{path} holds no training state to resume from")
        self.model = model_from_checkpoint(
            {"model": payload["model"], "state_dict": state["raw_state_dict"]}, dtype=self.dtype
        )
        self.ema = None
        if state["has_ema"]:
            self.ema = model_from_checkpoint(payload, dtype=self.dtype)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.ema_steps = int(state["ema_steps"])
        self.best_loss = float(state["best_loss"])
        self.stale = int(state["stale"])
        self.history = list(state["history"])
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        self.log(f"resumed from {path} after epoch {self.epoch}")

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        # warm-up (as in TensorFlow's ExponentialMovingAverage): early on, the average
        # would otherwise be dominated by the random initial weights
        self.ema_steps += 1
        decay = min(float(self.settings["ema_decay"]), (1 + self.ema_steps) / (10 + self.ema_steps))
        with torch.no_grad():
            for ema_param, param in zip(
                self.ema.parameters(), self.model.parameters(), strict=True
            ):
                ema_param.mul_(decay).add_(param, alpha=1 - decay)

    def _evaluation_model(self) -> Lorem:
        return self.ema if self.ema is not None else self.model

    def _save(self, name: str, with_state: bool, metrics: Dict[str, Any]) -> None:
        training = None
        if with_state:
            training = {
                "raw_state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                # with EMA, the checkpoint's state_dict holds the EMA weights
                "has_ema": self.ema is not None,
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "ema_steps": self.ema_steps,
                "best_loss": self.best_loss,
                "stale": self.stale,
                "history": self.history,
                "elapsed": self.elapsed,
                "rng": torch.get_rng_state(),
            }
        save_checkpoint(
            self.output / name,
            self._evaluation_model(),
            training=training,
            metadata={"epoch": self.epoch, "metrics": metrics, "config": self.config},
        )

    def _write_log(self) -> None:
        columns = list(self.history[0].keys()) if self.history else []

        def write(temporary):
            with open(temporary, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.history)

        atomic_write(self.output / "log.csv", write)
        from .plots import learning_curve

        learning_curve(self.history, self.output / "learning_curve.png")

    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        settings = self.settings
        energy_model = EnergyModel(self.model)
        weights = settings["loss_weights"]
        use_stress = weights.get("stress", 0) > 0
        batch_size = int(settings["batch_size"])
        epochs = int(settings["epochs"])
        budget = settings["time_budget"]
        steps_per_epoch = math.ceil(len(self.train_samples) / batch_size)
        stop_reason = "reached the last epoch"
        while self.epoch < epochs:
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(int(settings["seed"]) * 100003 + self.epoch)
            order = torch.randperm(len(self.train_samples), generator=generator).tolist()
            self.model.train()
            running, seen = 0.0, 0
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {self.epoch + 1}/{epochs}",
                disable=not settings["progress"],
                leave=False,
            )
            for step in bar:
                lr = learning_rate(settings, self.epoch + step / steps_per_epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                chunk = [
                    self.train_samples[i]
                    for i in order[step * batch_size : (step + 1) * batch_size]
                ]
                batch = make_batch(chunk, self.dtype)
                out = predict(energy_model, batch, training=True, stress=use_stress)
                terms = loss_terms(out, batch)
                loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {float(loss)} at epoch {self.epoch + 1}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings["gradient_clip"]:
                    torch.nn.utils.clip_grad_norm_(
                        self.model.parameters(), float(settings["gradient_clip"])
                    )
                self.optimizer.step()
                self._ema_update()
                running += float(loss.detach()) * len(chunk)
                seen += len(chunk)
                bar.set_postfix(loss=f"{running / seen:.4g}", lr=f"{lr:.2e}")
            bar.close()
            self.epoch += 1
            self.elapsed += time.perf_counter() - started
            if self.epoch % int(settings["valid_every"]) == 0 or self.epoch == epochs:
                self._validate(running / max(seen, 1), lr)
            if settings["patience"] and self.stale >= int(settings["patience"]):
                stop_reason = f"no improvement in {self.stale} validations (early stopping)"
                break
            if budget is not None and self.elapsed >= float(budget):
                stop_reason = f"the time budget of {budget} s is spent"
                break
        self.log(f"stopped after epoch {self.epoch}: {stop_reason}")
        return {"epochs": self.epoch, "best_valid_loss": self.best_loss, "history": self.history}

    def _validate(self, train_loss: float, lr: float) -> None:
        settings = self.settings
        model = EnergyModel(self._evaluation_model())
        result = evaluate(
            model,
            self.valid_samples,
            int(settings["batch_size"]),
            self.dtype,
            settings["loss_weights"],
        )
        errors = result["errors"]["all"]
        row = {
            "epoch": self.epoch,
            "learning_rate": lr,
            "train_loss": train_loss,
            "valid_loss": result["loss"],
            "valid_energy_mae": errors["energy_mae_meV_per_atom"],
            "valid_energy_rmse": errors["energy_rmse_meV_per_atom"],
            "valid_forces_mae": errors.get("forces_mae_meV_per_A", float("nan")),
            "valid_forces_rmse": errors.get("forces_rmse_meV_per_A", float("nan")),
            "seconds": self.elapsed,
        }
        self.history.append(row)
        improved = result["loss"] < self.best_loss
        if improved:
            self.best_loss = result["loss"]
            self.stale = 0
            self._save("best.pt", with_state=False, metrics=row)
        else:
            self.stale += 1
        self._save("last.pt", with_state=True, metrics=row)
        self._write_log()
        self.log(
            f"epoch {self.epoch:4d}  lr {lr:.2e}  train loss {train_loss:.4g}  "
            f"valid loss {result['loss']:.4g}  E {row['valid_energy_mae']:.2f} meV/atom  "
            f"F {row['valid_forces_mae']:.1f} meV/A MAE" + ("  (best)" if improved else "")
        )


def train(config: Dict[str, Any], resume: bool = False, log=print) -> Dict[str, Any]:
    """Train a LOREM model as configured; returns the history and the best loss."""
    return Trainer(config, resume=resume, log=log).run()


__all__ = ["Trainer", "evaluate", "learning_rate", "train"]
