"""Train lorem-jax (its own `lorem-train`, in its own venv) with the settings of a
lorem-torch run, so that the two can be compared side by side.

lorem-jax reads data prepared with marathon (memory-mapped folders under $DATASETS),
and an experiment folder holding model.yaml and settings.yaml; it writes run/logs and
run/checkpoints/<name>/model (model.yaml, model.msgpack, baseline.yaml), which
lorem-import-jax turns into a lorem-torch checkpoint for evaluation with the same code.

Matching the two trainers (read from lorem/train.py and marathon 0.4):
- lorem-jax's `batcher.batch_size: B` yields B - 1 structures per step (one slot is
  the padding structure): torch batch_size b <-> jax batch_size b + 1.
- schedule: jax `warmup_cosine` (optax: linear from min_learning_rate to the peak over
  the warm-up, cosine to min_learning_rate) <-> torch warmup_epochs + decay cosine.
- loss: both mean((dE / N)^2) and the mean squared force component, weighted alike.
- no EMA (lorem-jax has none), no gradient clipping (optax.clip is element-wise,
  torch's is a global norm: not the same thing), Adam, float32.
- checkpoint: lorem-jax keeps the best validation R2 of energy+forces (R2_E+F),
  lorem-torch the best validation loss; each is evaluated on the test set.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import yaml

JAX_PYTHON = Path(os.environ.get("LOREM_JAX_PYTHON", "/work/venvs/jax/bin/python"))

PREPARE = """
import sys, ase.io
from pathlib import Path
from marathon.grain import prepare
for source, target in zip(sys.argv[1::2], sys.argv[2::2]):
    if not Path(target).exists():
        prepare(ase.io.read(source, ":"), folder=target)
"""

TRAIN = "from lorem.train import main; main()"


def jax_environment(threads: int, device: str = "cpu") -> Dict[str, str]:
    env = dict(os.environ)
    if device != "cpu":
        env["JAX_PLATFORMS"] = "cuda"
        return env
    env["OMP_NUM_THREADS"] = str(threads)
    # XLA's CPU backend takes every core unless told otherwise
    flags = "--xla_force_host_platform_device_count=1"
    if threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = flags
    env["JAX_PLATFORMS"] = "cpu"
    return env


def prepare_datasets(files: Dict[str, Path], root: Path) -> None:
    """Marathon folders root/<name> from ASE files (skipped if present)."""
    arguments = []
    for name, path in files.items():
        arguments += [str(Path(path).resolve()), str((root / name).resolve())]
    subprocess.run([str(JAX_PYTHON), "-c", PREPARE, *arguments], check=True)


def model_yaml(hyperparameters: Dict) -> Dict:
    """lorem-jax's model.yaml for a resolved lorem-torch model section (model.kind names
    the class there: lorem.Lorem or lorem.LoremBEC)."""
    options = dict(hyperparameters)
    kind = options.pop("kind", "lorem")
    return {"model": {{"lorem": "lorem.Lorem", "bec": "lorem.LoremBEC"}[kind]: options}}


def settings_yaml(torch_config: Dict, train: str, valid: str, workers: int = 0) -> Dict:
    """lorem-jax settings equivalent to a resolved lorem-torch training config."""
    training = torch_config["training"]
    if training["ema_decay"] or training["gradient_clip"]:
        raise ValueError("lorem-jax has no EMA and clips element-wise: switch both off")
    if training["decay"] != "cosine":
        raise ValueError("only the warm-up + cosine schedule is matched")
    return {
        "train": train,
        "valid": valid,
        "seed": int(training["seed"]),
        "batcher": {"batch_size": int(training["batch_size"]) + 1},
        # terms with weight 0 beyond energy and forces (stress, apt) are left out: lorem-jax
        # would ask its data for their labels
        "loss_weights": {
            k: float(v)
            for k, v in training["loss_weights"].items()
            if k in ("energy", "forces") or v
        },
        "optimizer": "adam",
        "start_learning_rate": float(training["learning_rate"]),
        "min_learning_rate": float(training["min_learning_rate"]),
        "max_epochs": int(training["epochs"]),
        "valid_every_epoch": int(training["valid_every"]),
        "decay_style": "warmup_cosine",
        "warmup_epochs": int(training["warmup_epochs"]),
        "gradient_clip": 0,
        "use_wandb": False,
        "benchmark_pipeline": False,
        "worker_count": workers,
        "worker_count_valid": workers,
        "enable_x64": training["dtype"] == "float64",
    }


def train(
    experiment: Path,
    torch_config: Dict,
    datasets: Path,
    train_name: str,
    valid_name: str,
    threads: int = 1,
    device: str = "cpu",
) -> Dict:
    """Run lorem-jax's training in `experiment`; returns wall time and the parsed log."""
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "model.yaml").write_text(yaml.safe_dump(model_yaml(torch_config["model"])))
    settings = settings_yaml(torch_config, train_name, valid_name)
    (experiment / "settings.yaml").write_text(yaml.safe_dump(settings))
    if (experiment / "run").exists():
        shutil.rmtree(experiment / "run")  # lorem-jax would resume from it
    env = jax_environment(threads, device)
    env["DATASETS"] = str(datasets.resolve())
    env["PYTHONUNBUFFERED"] = "1"  # its reports reach us as they are printed
    started = time.perf_counter()
    marks = []  # at each report of the elapsed time: our wall seconds, its CPU seconds
    with open(experiment / "stdout.txt", "w") as out:
        process = subprocess.Popen(
            [str(JAX_PYTHON), "-c", TRAIN],
            cwd=experiment,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in process.stdout:
            out.write(line)
            if "elapsed:" in line:
                marks.append(
                    {"wall": time.perf_counter() - started, "cpu": _cpu_seconds(process.pid)}
                )
        if process.wait() != 0:
            raise subprocess.CalledProcessError(process.returncode, process.args)
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "history": parse_history(experiment), "marks": marks}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process, all its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seconds(text: str) -> float:
    """marathon's seconds_to_string back to seconds ('1h 2m 3s', '4.5s', '12ms', ...)."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)\s*(ms|h|m|s)", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}[unit]
    return total


def parse_history(experiment: Path) -> List[Dict]:
    """Validation rows (samples seen, elapsed seconds, validation MAEs) from lorem-jax's
    console reports and run/logs/valid.txt."""
    text = (experiment / "stdout.txt").read_text()
    steps = [int(s) for s in re.findall(r"state at step: (\d+)", text)]
    elapsed = [_seconds(s) for s in re.findall(r"elapsed: ([^\n│|]+)", text)]
    rows = []
    table = (experiment / "run/logs/valid.txt").read_text().splitlines()
    header = [h.strip() for h in table[1].split("|")]
    for line in table[2:]:
        values = [v.strip() for v in line.split("|")]
        rows.append(dict(zip(header, values, strict=False)))
    history = []
    for index, row in enumerate(rows):
        entry = {"samples": int(row["Step"]), "valid_loss": float(row["Loss"])}
        for name, value in row.items():
            if "MAE" in name or "RMSE" in name:
                entry[name] = float(value)
        if index < len(elapsed):
            entry["seconds"] = elapsed[index]
        history.append(entry)
    if len(steps) != len(rows):
        raise RuntimeError(f"{experiment}: {len(steps)} reports but {len(rows)} log rows")
    return history


def import_checkpoint(experiment: Path, name: str, output: Path) -> Path:
    """lorem-jax checkpoint run/checkpoints/<name> -> lorem-torch checkpoint file."""
    import torch

    from lorem_torch.checkpoint import save_checkpoint
    from lorem_torch.interop.jax import import_jax_checkpoint

    source = experiment / "run/checkpoints" / name
    model = import_jax_checkpoint(str(source), dtype=torch.float32)
    save_checkpoint(output, model, metadata={"imported_from": str(source)})
    return output
