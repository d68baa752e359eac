"""lorem-eval: error table by config_type, parity plots and a JSON of every figure, or,
on data without labels, predictions; for a checkpoint or an exported model."""

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from .. import keys
from ..checkpoint import atomic_write, load_checkpoint, model_file_kind, model_from_checkpoint
from ..data import collate, structure_to_graph
from ..errors import EXPORT_MEMORY_SETTING, reraise_coded
from ..models import Lorem, LoremBEC
from ..predict import predict
from .data import DataError, LabelKeys, check_fields, load_samples, make_batch, read_frames
from .loop import ErrorAccumulator
from .plots import apt_parity, parity

DEFAULT_LABEL_KEYS = LabelKeys(apt="apt", electric_field="electric_field")


class Predictor:
    """Any model behind one call: graph (keys.py) -> energy, energies, forces, and
    virial and stress of periodic structures (zeros otherwise).

    `source` is a Lorem, a checkpoint or an export; `training_config` is the training
    configuration a checkpoint was written with (None otherwise)."""

    def __init__(self, source, dtype: torch.dtype | None = None):
        self.training_config = None
        self.export = None
        self.has_apt = False
        if isinstance(source, Lorem):
            model = source.to(dtype) if dtype is not None else source
        elif model_file_kind(source) == "checkpoint":
            payload = load_checkpoint(source)
            self.training_config = (payload.get("metadata") or {}).get("config")
            model = model_from_checkpoint(payload, dtype=dtype or torch.float64)
        else:
            from ..export import load_any

            self.export, self.dtype, contract = load_any(source, dtype)
            self.has_apt = bool(contract["capabilities"]["electric_field"])
            self.slab = bool(contract["capabilities"]["slab"])
            self.cutoff = float(contract["cutoff"])
            self.species = [int(z) for z in contract["species"]["atomic_numbers"]]
            return
        self.model = model
        self.has_apt = isinstance(model, LoremBEC)
        self.dtype = next(model.parameters()).dtype
        self.cutoff, self.species = model.cutoff, list(model.species)
        self.slab = bool(getattr(model, "slab", False))  # 2D slabs run (long_range slab)

    def __call__(
        self,
        graph: Dict[str, torch.Tensor],
        stress: bool,
        electric_field: torch.Tensor | None = None,
    ) -> Dict[str, torch.Tensor]:
        """electric_field [S, 3] (V/A) adds Z* E to the forces of a model with Z*."""
        model = self.model if self.export is None else self.export
        field = electric_field if self.has_apt else None
        try:
            return predict(model, graph, stress, field)
        except RuntimeError as error:  # TorchScript's traceback -> the model's one line
            if self.export is None:
                raise
            reraise_coded(error, EXPORT_MEMORY_SETTING)
            raise


def _label_keys(given: LabelKeys | Dict[str, str | None] | None, stored) -> LabelKeys:
    """Given keys first (None: not given; '' for forces or stress: none), then those of
    the checkpoint's training, then the defaults."""
    if isinstance(given, LabelKeys):
        return given
    given = given or {}
    data = (stored or {}).get("data") or {}
    chosen = {}
    for name in ("energy", "forces", "stress", "apt", "electric_field"):
        value = given.get(name)
        if value is None:
            value = data.get(f"{name}_key", getattr(DEFAULT_LABEL_KEYS, name))
        chosen[name] = value or None
    if not chosen["energy"]:
        raise DataError("the energy label key cannot be empty")
    return LabelKeys(
        chosen["energy"],
        chosen["forces"],
        chosen["stress"],
        chosen["apt"],
        chosen["electric_field"],
    )


def _has_energy(atoms, key: str) -> bool:
    return key in atoms.info or (atoms.calc is not None and key in atoms.calc.results)


def _voigt(stress: np.ndarray) -> np.ndarray:
    """[3, 3] -> ASE's Voigt order xx yy zz yz xz xy, symmetrised."""
    symmetric = 0.5 * (stress + stress.T)
    return symmetric.flat[[0, 4, 8, 5, 2, 1]].copy()


def evaluate_checkpoint(
    checkpoint,
    data: str,
    output: str | None = None,
    label_keys: LabelKeys | Dict[str, str | None] | None = None,
    batch_size: int = 4,
    dtype: torch.dtype | None = None,
    index: str = ":",
    pbc: bool | None = None,
) -> Dict[str, Any]:
    """Errors of a model (checkpoint, export or Lorem) on an ASE-readable file; plots,
    metrics.json and predictions.xyz into `output`.

    Label keys not given come from the checkpoint's training configuration. A file
    without energy labels (under a key that was not given explicitly) is predicted
    instead: predictions.xyz in `output`, or `<data stem>.predictions.xyz` next to the
    data file. The result's "errors" is None then. `pbc` overrides the periodicity
    of every structure (see read_frames).
    """
    predictor = Predictor(checkpoint, dtype)
    explicit_energy_key = (
        isinstance(label_keys, LabelKeys) or (label_keys or {}).get("energy") is not None
    )
    label_keys = _label_keys(label_keys, predictor.training_config)
    frames = read_frames(data, index, pbc)
    if not frames:
        raise DataError(f"{data} holds no structures")
    # Born effective charges are compared where the model has them and the frames carry them
    if not predictor.has_apt or (label_keys.apt and not _any_has(frames, label_keys.apt)):
        label_keys = dataclasses.replace(label_keys, apt=None)
    labelled = explicit_energy_key or any(_has_energy(a, label_keys.energy) for a in frames)

    present = sorted({int(z) for atoms in frames for z in atoms.numbers})
    unknown = sorted(set(present) - set(predictor.species))
    if unknown:
        raise DataError(
            f"{data} has elements {unknown} that the model was not trained on "
            f"(its species: {predictor.species})"
        )
    if labelled:
        samples = load_samples(frames, predictor.cutoff, label_keys, data, predictor.slab)
        check_fields(samples, predictor.has_apt, label_keys.electric_field)
    else:
        graphs = [
            structure_to_graph(a, predictor.cutoff, i, slab=predictor.slab)
            for i, a in enumerate(frames)
        ]

    accumulator = ErrorAccumulator()
    force_pairs, force_groups, apt_pairs = [], [], []
    predicted: List[Dict[str, np.ndarray]] = []
    for start in range(0, len(frames), batch_size):
        field = None
        if labelled:
            batch = make_batch(samples[start : start + batch_size], predictor.dtype)
            graph = batch.graph
            field = batch.electric_field
        else:
            graph = collate(graphs[start : start + batch_size], dtype=predictor.dtype)
        stress = bool(graph[keys.PBC].any())
        out = predictor(graph, stress=stress, electric_field=field)
        offsets = graph[keys.STRUCTURE_OFFSETS].tolist()
        for s in range(len(offsets) - 1):
            a, b = offsets[s], offsets[s + 1]
            entry = {
                "energy": float(out[keys.ENERGY][s].detach()),
                "energies": out[keys.ENERGIES][a:b].detach().double().numpy(),
                "forces": out[keys.FORCES][a:b].detach().double().numpy(),
            }
            if stress and bool(graph[keys.PBC][s]):
                entry["stress"] = _voigt(out[keys.STRESS][s].detach().double().numpy())
            predicted.append(entry)
        if not labelled:
            continue
        accumulator.add(out, batch)
        if batch.forces is not None:
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
        if batch.apt is not None:
            apt_pairs.append((batch.apt.double().numpy(), out[keys.APT].detach().double().numpy()))

    folder = Path(output) if output is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        predictions_path = folder / "predictions.xyz"
    elif not labelled:
        # next to the input, whatever the working folder
        predictions_path = Path(data).with_name(f"{Path(data).stem}.predictions.xyz")
        if predictions_path.exists():
            raise DataError(
                f"{data} has no '{label_keys.energy}' labels, so lorem-eval predicts, but "
                f"{predictions_path} exists already: give --output FOLDER"
            )
    else:
        predictions_path = None
    if predictions_path is not None:
        _write_predictions(frames, predicted, predictions_path)

    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "frames": len(frames),
        "label_keys": {
            "energy": label_keys.energy,
            "forces": label_keys.forces,
            "stress": label_keys.stress,
        },
        "errors": accumulator.summary() if labelled else None,
        "predictions": str(predictions_path) if predictions_path is not None else None,
    }
    if folder is not None and labelled:
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
        if apt_pairs:
            apt_parity(
                np.concatenate([p[0] for p in apt_pairs]),
                np.concatenate([p[1] for p in apt_pairs]),
                folder / "parity_apt.png",
            )
        result["structures"] = records
        atomic_write(
            folder / "metrics.json",
            lambda t: Path(t).write_text(json.dumps(result, indent=2)),
        )
    return result


def _write_predictions(frames, predicted: List[Dict[str, np.ndarray]], path: Path) -> None:
    """The frames with the predictions added under lorem_* keys (labels kept)."""
    import ase.io

    for atoms, entry in zip(frames, predicted, strict=True):
        atoms.info["lorem_energy"] = entry["energy"]
        atoms.arrays["lorem_energies"] = entry["energies"]
        atoms.arrays["lorem_forces"] = entry["forces"]
        if "stress" in entry:
            atoms.info["lorem_stress"] = entry["stress"]
    atomic_write(path, lambda t: ase.io.write(t, frames, format="extxyz"))


def format_table(errors: Dict[str, Dict[str, float]]) -> str:
    stress = any("stress_mae_meV_per_A3" in e for e in errors.values())
    apt = any("apt_mae_e" in e for e in errors.values())
    header = f"{'config_type':>16} {'n':>5} {'E MAE':>9} {'E RMSE':>9} {'F MAE':>9} {'F RMSE':>9}"
    units = f"{'':>16} {'':>5} {'meV/atom':>9} {'meV/atom':>9} {'meV/A':>9} {'meV/A':>9}"
    if stress:
        header += f" {'S MAE':>9} {'S RMSE':>9}"
        units += f" {'meV/A^3':>9} {'meV/A^3':>9}"
    if apt:
        header += f" {'Z* MAE':>9} {'Z* RMSE':>9}"
        units += f" {'e':>9} {'e':>9}"
    lines = [header, units]
    for name in sorted(errors, key=lambda n: (n != "all", n)):
        e = errors[name]
        line = (
            f"{name:>16} {e['structures']:>5} {e['energy_mae_meV_per_atom']:>9.2f} "
            f"{e['energy_rmse_meV_per_atom']:>9.2f} {e.get('forces_mae_meV_per_A', float('nan')):>9.1f} "
            f"{e.get('forces_rmse_meV_per_A', float('nan')):>9.1f}"
        )
        if stress:
            line += (
                f" {e.get('stress_mae_meV_per_A3', float('nan')):>9.3f}"
                f" {e.get('stress_rmse_meV_per_A3', float('nan')):>9.3f}"
            )
        if apt:
            line += f" {e.get('apt_mae_e', float('nan')):>9.4f} {e.get('apt_rmse_e', float('nan')):>9.4f}"
        lines.append(line)
    return "\n".join(lines)


def _any_has(frames, key: str) -> bool:
    """Whether any frame carries `key` (per-atom array, info entry or calculator result)."""
    for atoms in frames:
        results = atoms.calc.results if atoms.calc is not None else {}
        if key in atoms.arrays or key in atoms.info or key in results:
            return True
    return False
