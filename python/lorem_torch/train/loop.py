"""The training loop: loss, optimiser and schedule, EMA, validation, checkpoints, resume.

Run folder (training.output):
    config.yaml          the resolved configuration
    log.csv              one row per validation
    learning_curve.png   losses and validation errors against epochs
    train.log            what happened, in words
    best.pt              checkpoint with the best validation loss (EMA weights)
    last.pt              checkpoint with the training state, written after every
                         validation and when training stops early (time budget,
                         Ctrl-C), also in the middle of an epoch

A folder that holds an earlier run (best.pt, last.pt or log.csv) is never silently
reused: continue it (resume, with the same settings but for how long and how often),
or replace it (overwrite). Resuming where there is no run is an error (a mistyped
folder would otherwise start a full run from scratch), unless resume="if_present"
(lorem-train --resume-if-present, for job scripts that are simply restarted).
"""

import contextlib
import copy
import csv
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import yaml

from .. import keys
from ..checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ..models import BECModel, EnergyModel, Lorem, LoremBEC
from ..models.outputs import output_model
from ..vocabulary import DTYPES
from . import config as config_module
from .data import (
    Batch,
    LabelKeys,
    Sample,
    baseline_is_determined,
    check_fields,
    fit_baseline,
    load_samples,
    make_batch,
    read_frames,
    split,
)

# what an earlier run leaves that would be lost if a new run wrote over it
PROTECTED_FILES = ("best.pt", "last.pt", "log.csv")
RUN_FILES = PROTECTED_FILES + ("learning_curve.png", "train.log", "config.yaml")
# settings that may change when a run is resumed: how long and how often, not what is
# trained or how (those would leave a run that no single configuration describes)
ADJUSTABLE_ON_RESUME = {
    ("training", "epochs"),
    ("training", "time_budget"),
    ("training", "patience"),
    ("training", "valid_every"),
    ("training", "progress"),
    ("training", "output"),
}
DATA_FILES = {("data", "train"), ("data", "valid"), ("data", "test")}


class RunFolderError(config_module.ConfigError):
    """The run folder holds an earlier run that the command did not say to continue or
    replace, or a run that cannot be continued with the given settings."""


def config_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """The entries (section.key: stored -> current) that may not change on resume."""

    def normal(section, key, value):
        if (section, key) in DATA_FILES and isinstance(value, str):
            return os.path.abspath(value)
        return value

    differences = []
    for section, entries in current.items():
        if section not in stored:  # checkpoints without their config: the model alone
            continue
        for key, value in entries.items():
            if (section, key) in ADJUSTABLE_ON_RESUME:
                continue
            old = (stored.get(section) or {}).get(key, "(absent)")
            if normal(section, key, old) != normal(section, key, value):
                differences.append(f"{section}.{key} {old!r} -> {value!r}")
    return differences


# -- loss and metrics --


def predict(model: EnergyModel | BECModel, batch: Batch, training: bool, stress: bool) -> Dict:
    options = {}
    if isinstance(model, BECModel):
        # the labels' forces hold the field term Z* E when a field was applied
        options["electric_field"] = batch.electric_field
    return model(
        **batch.graph,
        compute_forces=batch.forces is not None,
        compute_stress=stress and batch.stress is not None,
        create_graph=training,
        **options,
    )


def loss_terms(out: Dict, batch: Batch) -> Dict[str, torch.Tensor]:
    # the difference of two totals in float64 (both are, by contract); per atom it is
    # small, so the rest of the loss can stay in the model's dtype
    residual = (out[keys.ENERGY].to(torch.float64) - batch.energy) / batch.num_atoms
    terms = {"energy": (residual**2).mean().to(batch.graph[keys.POSITIONS].dtype)}
    if batch.forces is not None and keys.FORCES in out:
        terms["forces"] = ((out[keys.FORCES] - batch.forces) ** 2).mean()
    if batch.stress is not None and keys.STRESS in out:
        mask = batch.stress_mask
        terms["stress"] = ((out[keys.STRESS][mask] - batch.stress[mask]) ** 2).mean()
    if batch.apt is not None and keys.APT in out:
        terms["apt"] = ((out[keys.APT] - batch.apt) ** 2).mean()
    return terms


class ErrorAccumulator:
    """Energy errors per atom (meV/atom), force component errors (meV/A) and stress
    component errors (meV/A^3, structures with a stress label), by group."""

    def __init__(self):
        self.energy: Dict[str, List[float]] = {}
        self.forces: Dict[str, List[np.ndarray]] = {}
        self.stress: Dict[str, List[np.ndarray]] = {}
        self.apt: Dict[str, List[np.ndarray]] = {}
        self.records: List[Dict[str, Any]] = []

    def add(self, out: Dict, batch: Batch) -> None:
        energy = out[keys.ENERGY].detach().double().cpu().numpy()
        reference = batch.energy.double().numpy()
        per_atom = (energy - reference) / batch.num_atoms.double().numpy() * 1000.0
        forces = out.get(keys.FORCES)
        stress = out.get(keys.STRESS) if batch.stress is not None else None
        apt = out.get(keys.APT) if batch.apt is not None else None
        offsets = batch.graph[keys.STRUCTURE_OFFSETS].tolist()
        for s, group in enumerate(batch.config_types):
            for name in ("all", group) if group != "all" else ("all",):
                self.energy.setdefault(name, []).append(float(per_atom[s]))
                if forces is not None and batch.forces is not None:
                    a, b = offsets[s], offsets[s + 1]
                    error = (forces[a:b] - batch.forces[a:b]).detach().double().numpy() * 1000.0
                    self.forces.setdefault(name, []).append(error.ravel())
                if stress is not None and bool(batch.stress_mask[s]):
                    error = (stress[s] - batch.stress[s]).detach().double().numpy() * 1000.0
                    self.stress.setdefault(name, []).append(error.ravel())
                if apt is not None and batch.apt is not None:
                    a, b = offsets[s], offsets[s + 1]
                    error = (apt[a:b] - batch.apt[a:b]).detach().double().cpu().numpy()
                    self.apt.setdefault(name, []).append(error.ravel())
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
            if name in self.stress:
                t = np.concatenate(self.stress[name])
                entry["stress_mae_meV_per_A3"] = float(np.abs(t).mean())
                entry["stress_rmse_meV_per_A3"] = float(np.sqrt((t**2).mean()))
            if name in self.apt:  # Born effective charges, per component, elementary charges
                z = np.concatenate(self.apt[name])
                entry["apt_mae_e"] = float(np.abs(z).mean())
                entry["apt_rmse_e"] = float(np.sqrt((z**2).mean()))
            result[name] = entry
        return result


def evaluate(
    model: EnergyModel | BECModel,
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


def scheduled_learning_rate(settings: Dict[str, Any], epoch_progress: float) -> float:
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


def stop_position(epochs_done: int, step: int, steps_per_epoch: int) -> str:
    """Where training stands, in the words every message uses: "epoch 2" (2 epochs
    done) or "batch 3 of 5 of epoch 3" (in the middle of the third)."""
    if not step:
        return f"epoch {epochs_done}"
    return f"batch {step} of {steps_per_epoch} of epoch {epochs_done + 1}"


class Trainer:
    """One training run in its folder. `resume` continues the run there (True: there
    must be one; "if_present": start afresh when the folder holds no run); `overwrite`
    replaces it; without either, a folder holding a run is refused (RunFolderError).
    `clock` (seconds) measures the time budget."""

    def __init__(
        self,
        config: Dict[str, Any],
        resume: bool | str = False,
        log=print,
        overwrite: bool = False,
        clock=time.perf_counter,
    ):
        if resume not in (False, True, "if_present"):
            raise ValueError(f"resume must be False, True or 'if_present', not {resume!r}")
        if resume and overwrite:
            raise RunFolderError("resume and overwrite exclude each other: choose one")
        self.config = config_module.resolve(config)
        self.settings = self.config["training"]
        self.output = Path(self.settings["output"])
        self.dtype = DTYPES[self.settings["dtype"]]
        self.log_fn = log
        self.clock = clock
        self.interrupted = False
        payload = self._claim_folder(resume, overwrite)
        self.output.mkdir(parents=True, exist_ok=True)
        self._load_data()
        torch.manual_seed(self.settings["seed"])
        if payload is not None:
            self._restore(payload)
        else:
            if resume:
                self.log(f"nothing to resume in {self.output}: starting afresh")
            self._fresh()

    def _claim_folder(self, resume: bool | str, overwrite: bool) -> Dict[str, Any] | None:
        """Refuse to write over an earlier run unless told; the checkpoint to resume
        from (checked against the settings) or None."""
        last = self.output / "last.pt"
        if resume and last.is_file():
            payload = load_checkpoint(last)
            if payload["training"] is None:
                raise RunFolderError(f"{last} holds no training state to resume from")
            stored = (payload.get("metadata") or {}).get("config") or {"model": payload["model"]}
            differences = config_differences(stored, self.config)
            if differences:
                raise RunFolderError(
                    f"cannot resume the run in {self.output}: these settings differ from "
                    f"the run's ({last}): {'; '.join(differences)}. Only "
                    + ", ".join(f"{s}.{k}" for s, k in sorted(ADJUSTABLE_ON_RESUME))
                    + " may change on resume; for other settings start a new run "
                    "(another --output, or --overwrite to replace this one)"
                )
            return payload
        existing = [name for name in PROTECTED_FILES if (self.output / name).exists()]
        if existing and not overwrite:
            if resume:
                raise RunFolderError(
                    f"cannot resume the run in {self.output}: it has no last.pt (only "
                    f"{', '.join(existing)}); start afresh with --overwrite (replaces "
                    "them) or in another --output"
                )
            raise RunFolderError(
                f"{self.output} already holds a run ({', '.join(existing)}): continue it "
                "with --resume, replace it with --overwrite, or choose another --output"
            )
        if resume is True:
            raise RunFolderError(
                f"nothing to resume: {self.output} holds no run (no last.pt); leave out "
                "--resume to start one there, or use --resume-if-present to start afresh "
                "when there is nothing to resume"
            )
        if overwrite:
            removed = [name for name in RUN_FILES if (self.output / name).exists()]
            for name in removed:
                (self.output / name).unlink()
            if removed:
                self.log_fn(f"overwriting the run in {self.output}: removed {', '.join(removed)}")
        return None

    def log(self, message: str) -> None:
        self.log_fn(message)
        with open(self.output / "train.log", "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def _load_data(self) -> None:
        data = self.config["data"]
        cutoff = float(self.config["model"]["cutoff"])
        bec = self.config["model"]["kind"] == "bec"
        label_keys = LabelKeys(
            data["energy_key"],
            data["forces_key"],
            data["stress_key"],
            apt=data["apt_key"] if bec and self.settings["loss_weights"]["apt"] > 0 else None,
            electric_field=data["electric_field_key"],
        )

        slab = bool((self.config["model"].get("long_range") or {}).get("slab", False))

        def read(path):
            frames = read_frames(path, data["index"], data["pbc"])
            return load_samples(frames, cutoff, label_keys, path, slab)

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
        check_fields(train + valid + test, bec, data["electric_field_key"])

    def _fresh(self) -> None:
        baseline = fit_baseline(self.train_samples)
        options = dict(self.config["model"])
        model_class = LoremBEC if options.pop("kind") == "bec" else Lorem
        self.model = model_class(**options, species=self.species, baseline=baseline).to(self.dtype)
        self.ema = copy.deepcopy(self.model) if self.settings["ema_decay"] > 0 else None
        self.optimizer = self._make_optimizer()
        self.epoch = 0
        self.step = 0  # batches done in the current epoch
        self.running_loss = 0.0  # sum over those batches of loss * structures
        self.running_count = 0
        self.ema_steps = 0
        self.best_loss = float("inf")
        self.stale = 0
        self.history: List[Dict[str, Any]] = []
        self.elapsed = 0.0
        self._write_config()
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

    def _write_config(self) -> None:
        atomic_write(
            self.output / "config.yaml",
            lambda t: Path(t).write_text(yaml.safe_dump(self.config, sort_keys=False)),
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

    def _restore(self, payload: Dict[str, Any]) -> None:
        from ..checkpoint import model_from_checkpoint

        state = payload["training"]
        self.model = model_from_checkpoint(
            {"model": payload["model"], "state_dict": state["raw_state_dict"]}, dtype=self.dtype
        )
        self.ema = None
        if state["has_ema"]:
            self.ema = model_from_checkpoint(payload, dtype=self.dtype)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", 0))
        self.running_loss = float(state.get("running_loss", 0.0))
        self.running_count = int(state.get("running_count", 0))
        self.ema_steps = int(state["ema_steps"])
        self.best_loss = float(state["best_loss"])
        self.stale = int(state["stale"])
        self.history = list(state["history"])
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        self._write_config()  # with the settings that may have changed
        steps_per_epoch = math.ceil(len(self.train_samples) / int(self.settings["batch_size"]))
        where = stop_position(self.epoch, self.step, steps_per_epoch)
        self.log(f"resumed from {self.output / 'last.pt'} after {where}")

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
                "step": self.step,
                "running_loss": self.running_loss,
                "running_count": self.running_count,
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

    @contextlib.contextmanager
    def _stop_on_interrupt(self):
        """While training, the first Ctrl-C asks to stop after the current batch (with
        the state saved); a second one interrupts at once (KeyboardInterrupt)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def request_stop(signum, frame):
            # no printing here: the signal may arrive in the middle of a print
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def run(self) -> Dict[str, Any]:
        """Train until the last epoch, early stopping, the time budget (checked after
        every batch, for this call) or Ctrl-C; the state is saved in last.pt when it
        stops early. The result says why it stopped."""
        from tqdm import tqdm

        settings = self.settings
        energy_model = output_model(self.model)
        weights = settings["loss_weights"]
        use_stress = weights.get("stress", 0) > 0
        batch_size = int(settings["batch_size"])
        epochs = int(settings["epochs"])
        budget = settings["time_budget"]
        steps_per_epoch = math.ceil(len(self.train_samples) / batch_size)
        started = last_tick = self.clock()
        stop_reason = None

        def tick() -> float:
            """Seconds spent in this call; the run's total goes to self.elapsed."""
            nonlocal last_tick
            now = self.clock()
            self.elapsed += now - last_tick
            last_tick = now
            return now - started

        budget_spent = False

        def reason_to_stop(spent: float) -> str | None:
            nonlocal budget_spent
            if self.interrupted:
                return "interrupted (Ctrl-C)"
            if budget is not None and spent >= float(budget):
                budget_spent = True
                return f"the time budget of {budget} s is spent"
            return None

        with self._stop_on_interrupt():
            while self.epoch < epochs and stop_reason is None:
                generator = torch.Generator().manual_seed(
                    int(settings["seed"]) * 100003 + self.epoch
                )
                order = torch.randperm(len(self.train_samples), generator=generator).tolist()
                self.model.train()
                learning_rate = scheduled_learning_rate(
                    settings, self.epoch + max(self.step - 1, 0) / steps_per_epoch
                )
                bar = tqdm(
                    range(self.step, steps_per_epoch),
                    desc=f"epoch {self.epoch + 1}/{epochs}",
                    initial=self.step,
                    total=steps_per_epoch,
                    disable=not settings["progress"],
                    leave=False,
                )
                for step in bar:
                    learning_rate = scheduled_learning_rate(
                        settings, self.epoch + step / steps_per_epoch
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = learning_rate  # torch.optim's name
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
                    self.step = step + 1
                    self.running_loss += float(loss.detach()) * len(chunk)
                    self.running_count += len(chunk)
                    bar.set_postfix(
                        loss=f"{self.running_loss / self.running_count:.4g}",
                        learning_rate=f"{learning_rate:.2e}",
                    )
                    stop_reason = reason_to_stop(tick())
                    if stop_reason is not None:
                        break
                bar.close()
                if stop_reason is not None:
                    # the epoch's remaining batches and its validation follow on resume
                    self._save("last.pt", with_state=True, metrics=self._last_row())
                    break
                train_loss = self.running_loss / max(self.running_count, 1)
                self.epoch += 1
                self.step, self.running_loss, self.running_count = 0, 0.0, 0
                validated = self.epoch % int(settings["valid_every"]) == 0 or self.epoch == epochs
                if validated:
                    self._validate(train_loss, learning_rate)  # saves last.pt
                if settings["patience"] and self.stale >= int(settings["patience"]):
                    stop_reason = f"no improvement in {self.stale} validations (early stopping)"
                else:
                    stop_reason = reason_to_stop(tick())
                if stop_reason is not None and not validated:
                    self._save("last.pt", with_state=True, metrics=self._last_row())
        tick()
        stop_reason = stop_reason or "reached the last epoch"
        where = stop_position(self.epoch, self.step, steps_per_epoch)
        self.log(f"stopped after {where}: {stop_reason}")
        return {
            "stopped_after": where,
            "epochs": self.epoch,
            "step": self.step,
            "steps_per_epoch": steps_per_epoch,
            "best_valid_loss": self.best_loss,
            "history": self.history,
            "stop_reason": stop_reason,
            "interrupted": self.interrupted,
            "finished": self.epoch >= epochs,
            # stopped by Ctrl-C or the time budget with epochs left: --resume continues
            "resumable": self.epoch < epochs and (self.interrupted or budget_spent),
            "last_checkpoint": str(self.output / "last.pt"),
            "best_checkpoint": str(self.output / "best.pt")
            if (self.output / "best.pt").is_file()
            else None,
        }

    def _last_row(self) -> Dict[str, Any]:
        return self.history[-1] if self.history else {}

    def _validate(self, train_loss: float, learning_rate: float) -> None:
        settings = self.settings
        model = output_model(self._evaluation_model())
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
            "learning_rate": learning_rate,
            "train_loss": train_loss,
            "valid_loss": result["loss"],
            "valid_energy_mae": errors["energy_mae_meV_per_atom"],
            "valid_energy_rmse": errors["energy_rmse_meV_per_atom"],
            "valid_forces_mae": errors.get("forces_mae_meV_per_A", float("nan")),
            "valid_forces_rmse": errors.get("forces_rmse_meV_per_A", float("nan")),
            "seconds": self.elapsed,
        }
        if "apt_mae_e" in errors:
            row["valid_apt_mae"] = errors["apt_mae_e"]
            row["valid_apt_rmse"] = errors["apt_rmse_e"]
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
            f"epoch {self.epoch:4d}  learning rate {learning_rate:.2e}  train loss {train_loss:.4g}  "
            f"valid loss {result['loss']:.4g}  E {row['valid_energy_mae']:.2f} meV/atom  "
            f"F {row['valid_forces_mae']:.1f} meV/A"
            + (f"  APT {row['valid_apt_mae']:.4f} e" if "valid_apt_mae" in row else "")
            + " MAE"
            + ("  (best)" if improved else "")
        )


def train(
    config: Dict[str, Any], resume: bool | str = False, log=print, overwrite: bool = False
) -> Dict[str, Any]:
    """Train a LOREM model as configured; returns the history, the best loss and why
    it stopped (Trainer.run). resume: see Trainer."""
    return Trainer(config, resume=resume, log=log, overwrite=overwrite).run()


__all__ = [
    "RunFolderError",
    "Trainer",
    "config_differences",
    "evaluate",
    "scheduled_learning_rate",
    "output_model",
    "train",
]
