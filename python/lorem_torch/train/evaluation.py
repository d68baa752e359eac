"""lorem-eval: error table by config_type, parity plots and a JSON of every figure."""

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from .. import keys
from ..checkpoint import atomic_write, model_from_checkpoint
from ..models import EnergyModel
from .data import DataError, LabelKeys, load_samples, make_batch, read_frames
from .loop import ErrorAccumulator, predict
from .plots import parity


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    output: str | None = None,
    label_keys: LabelKeys | None = None,
    batch_size: int = 4,
    dtype: torch.dtype = torch.float64,
    index: str = ":",
    pbc: bool | None = None,
) -> Dict[str, Any]:
    """Errors of a checkpoint on an ASE-readable file; plots and JSON into `output`.

    `pbc` overrides the periodicity of every structure (see read_frames)."""
    label_keys = label_keys or LabelKeys()
    model = model_from_checkpoint(checkpoint, dtype=dtype)
    samples = load_samples(read_frames(data, index, pbc), model.cutoff, label_keys, data)
    present = sorted({int(z) for s in samples for z in s.graph[keys.ATOMIC_NUMBERS]})
    unknown = sorted(set(present) - set(model.species))
    if unknown:
        raise DataError(
            f"{data} has elements {unknown} that the model was not trained on "
            f"(its species: {model.species})"
        )
    energy_model = EnergyModel(model)
    accumulator = ErrorAccumulator()
    force_pairs, force_groups = [], []
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size], dtype)
        out = predict(energy_model, batch, training=False, stress=False)
        accumulator.add(out, batch)
        if batch.forces is not None:
            offsets = batch.graph[keys.STRUCTURE_OFFSETS].tolist()
            for s, group in enumerate(batch.config_types):
                a, b = offsets[s], offsets[s + 1]
                force_pairs.append(
                    np.stack(
                        [
                            batch.forces[a:b].double().numpy().ravel(),
                            out[keys.FORCES][a:b].detach().double().numpy().ravel(),
                        ]
                    )
                )
                force_groups += [group] * (3 * (b - a))
    summary = accumulator.summary()
    result = {"checkpoint": str(checkpoint), "data": str(data), "errors": summary}
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        records = accumulator.records
        parity(
            [r["energy_reference"] / r["num_atoms"] for r in records],
            [r["energy_predicted"] / r["num_atoms"] for r in records],
            [r["config_type"] for r in records],
            "energy per atom",
            "eV/atom",
            folder / "parity_energy.png",
        )
        if force_pairs:
            pairs = np.concatenate(force_pairs, axis=1)
            parity(pairs[0], pairs[1], force_groups, "force", "eV/A", folder / "parity_forces.png")
        result["structures"] = records
        atomic_write(
            folder / "metrics.json",
            lambda t: Path(t).write_text(json.dumps(result, indent=2)),
        )
    return result


def format_table(errors: Dict[str, Dict[str, float]]) -> str:
    lines = [
        f"{'config_type':>16} {'n':>5} {'E MAE':>9} {'E RMSE':>9} {'F MAE':>9} {'F RMSE':>9}",
        f"{'':>16} {'':>5} {'meV/atom':>9} {'meV/atom':>9} {'meV/A':>9} {'meV/A':>9}",
    ]
    for name in sorted(errors, key=lambda n: (n != "all", n)):
        e = errors[name]
        lines.append(
            f"{name:>16} {e['structures']:>5} {e['energy_mae_meV_per_atom']:>9.2f} "
            f"{e['energy_rmse_meV_per_atom']:>9.2f} {e.get('forces_mae_meV_per_A', float('nan')):>9.1f} "
            f"{e.get('forces_rmse_meV_per_A', float('nan')):>9.1f}"
        )
    return "\n".join(lines)
