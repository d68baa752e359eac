"""The LODE dimers (../shared/datasets/lode_dimers, CC BY-NC: read in place, never copied
into the project): one training and one test file, and interaction energies.

Six dimers (one per class: CC charged-charged, CA charged-apolar, CP charged-polar,
PP polar-polar, PA polar-apolar, AA apolar-apolar), 10 separations each at 4-12 A for
training and 3 at 12-15 A for the test. The files declare a 30 A periodic box, as the
reference DFT energies were computed; a run reads them as its config's data.pbc says
(false: isolated molecules; absent: the files' box) and is evaluated the same way.

Interaction energy: E(dimer) - energyA - energyB with the reference monomer energies
(info), for prediction and reference alike. The error of the predicted interaction
energy is then exactly the error of the predicted dimer energy: the model is judged on
what it was trained on, and never asked for an isolated charged monomer whose charge
it cannot know.
"""

from pathlib import Path
from typing import Dict, List

import numpy as np

CLASSES = ["CC", "CP", "CA", "PP", "PA", "AA"]
COULOMB = 14.399645  # eV A / e^2


def prepare(folder: Path, output: Path) -> Dict[str, Path]:
    """Concatenate train-id*.xyz and test-id*.xyz into two files with config_type = class."""
    import ase.io

    output.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("train", "test"):
        files = sorted(folder.glob(f"{part}-id*.xyz"))
        if not files:
            raise FileNotFoundError(f"no {part}-id*.xyz in {folder}")
        frames = []
        for path in files:
            for atoms in ase.io.read(path, ":"):
                atoms.info["config_type"] = atoms.info["label"]
                frames.append(atoms)
        paths[part] = output / f"lode-{part}.xyz"
        ase.io.write(paths[part], frames)
    return paths


def periodic_point_charge_energy(
    positions: np.ndarray, charges: np.ndarray, box: float, smearing: float = 2.5
) -> float:
    """Ewald energy (eV) of point charges in a cubic periodic box with a neutralising
    background (tin-foil), with lorem-torch's own Ewald at converged settings (real
    space to 6 smearing widths, k-space to exp(-sigma^2 k^2 / 2) < 1e-8)."""
    import torch

    from lorem_torch.data.graph import neighbor_list
    from lorem_torch.long_range.ewald import Ewald

    cell = np.eye(3) * box
    pairs = neighbor_list(positions, cell, True, 6.0 * smearing)
    ewald = Ewald(smearing=smearing, lr_wavelength=smearing / 2.0).double()
    q = torch.tensor(charges, dtype=torch.float64)[:, None]
    potentials = ewald(
        torch.tensor(positions),
        q,
        torch.tensor(cell),
        torch.tensor(pairs["centers"], dtype=torch.int64),
        torch.tensor(pairs["others"], dtype=torch.int64),
        torch.tensor(pairs["distances"]),
    )
    return COULOMB * float((q * potentials).sum())


def reference_table(path: Path) -> List[Dict]:
    """Per frame: class, distance, charges, the reference interaction energy, and two
    point-charge estimates of it (eV): the monomer charges at the monomer centroids,
    isolated (coulomb) and in the files' periodic box (coulomb_periodic, minus the same
    charges alone in that box: what a periodic DFT calculation of the dimer and of each
    charged monomer would carry)."""
    import ase.io

    rows = []
    for atoms in ase.io.read(path, ":"):
        info = atoms.info
        split, charges = int(info["indexB"]), np.array([info["chargeA"], info["chargeB"]], float)
        centres = np.stack(
            [atoms.positions[:split].mean(axis=0), atoms.positions[split:].mean(axis=0)]
        )
        periodic = 0.0
        if charges.all():
            box = float(atoms.cell.lengths()[0])
            periodic = periodic_point_charge_energy(centres, charges, box) - sum(
                periodic_point_charge_energy(centres[i : i + 1], charges[i : i + 1], box)
                for i in range(2)
            )
        rows.append(
            {
                "label": info["label"],
                "distance": float(info["distance"]),
                "charges": (int(info["chargeA"]), int(info["chargeB"])),
                "inter_energy": float(info["inter_energy"]),
                "coulomb": COULOMB * info["chargeA"] * info["chargeB"] / info["distance"],
                "coulomb_periodic": periodic,
                "monomers": float(info["energyA"] + info["energyB"]),
            }
        )
    return rows


def predicted_interaction_energies(
    checkpoint: Path, path: Path, dtype=None, pbc: bool | None = False
) -> np.ndarray:
    """E_model(dimer) - energyA - energyB (reference monomers), frame by frame, eV; the
    structures read with periodicity `pbc` (False: isolated; None: the files' box)."""
    import torch

    from lorem_torch.checkpoint import model_from_checkpoint
    from lorem_torch.data import collate, structure_to_graph
    from lorem_torch.models import EnergyModel
    from lorem_torch.train.data import read_frames

    dtype = dtype or torch.float64
    model = EnergyModel(model_from_checkpoint(str(checkpoint), dtype=dtype))
    frames = read_frames(str(path), ":", pbc=pbc)
    result = []
    for index, atoms in enumerate(frames):
        graph = collate([structure_to_graph(atoms, model.model.cutoff, index)], dtype=dtype)
        out = model(**graph, compute_forces=False, compute_stress=False, create_graph=False)
        energy = float(out["energy"].detach().double().sum())
        result.append(energy - atoms.info["energyA"] - atoms.info["energyB"])
    return np.asarray(result)


SCAN_DISTANCES = (12.0, 15.0, 20.0, 30.0, 60.0, 200.0)
# in the files' 30 A box: up to half the box, beyond which an image of the partner is
# nearer than the partner itself
BOX_SCAN_DISTANCES = (10.0, 12.0, 13.0, 14.0, 15.0)


def tail_scan(
    checkpoint: Path,
    path: Path,
    label: str = "CC",
    pbc: bool | None = False,
    distances=SCAN_DISTANCES,
) -> List[Dict]:
    """The model's own interaction energy, E(dimer) - E(A alone) - E(B alone) (all model
    predictions, eV), with monomer B moved rigidly along the centroid axis of the class's
    first test frame to `distances`, beside Coulomb's law for the monomer charges at the
    monomer centroids: isolated (pbc False), or with pbc None in the files' periodic box,
    where every structure (dimer and monomers alone) sits in that box and the point-charge
    estimate is the periodic one (periodic_point_charge_energy, minus each charge alone)."""
    import torch

    from lorem_torch.checkpoint import model_from_checkpoint
    from lorem_torch.data import collate, structure_to_graph
    from lorem_torch.models import EnergyModel
    from lorem_torch.train.data import read_frames

    model = model_from_checkpoint(str(checkpoint), dtype=torch.float64)
    energy_model = EnergyModel(model)

    def energy(atoms) -> float:
        graph = collate([structure_to_graph(atoms, model.cutoff)], dtype=torch.float64)
        out = energy_model(**graph, compute_forces=False)
        return float(out["energy"].detach().sum())

    frames = read_frames(str(path), ":", pbc=pbc)
    atoms = next(a for a in frames if a.info["label"] == label)
    split = int(atoms.info["indexB"])
    charges = np.array([atoms.info["chargeA"], atoms.info["chargeB"]], float)
    periodic = bool(atoms.pbc.all())
    centre_a = atoms.positions[:split].mean(axis=0)
    axis = atoms.positions[split:].mean(axis=0) - centre_a
    start = float(np.linalg.norm(axis))
    alone = energy(atoms[:split]) + energy(atoms[split:])
    rows = []
    for distance in distances:
        moved = atoms.copy()
        moved.positions[split:] += axis / start * (distance - start)
        if periodic:
            box = float(atoms.cell.lengths()[0])
            centres = np.stack([centre_a, centre_a + axis / start * distance])
            coulomb = 0.0
            if charges.all():
                coulomb = periodic_point_charge_energy(centres, charges, box) - sum(
                    periodic_point_charge_energy(centres[i : i + 1], charges[i : i + 1], box)
                    for i in range(2)
                )
        else:
            coulomb = COULOMB * charges[0] * charges[1] / distance
        rows.append({"distance": distance, "model": energy(moved) - alone, "coulomb": coulomb})
    return rows


def short_range_facts(paths: Dict[str, Path], cutoff: float = 5.0) -> Dict:
    """What a short-range model (no long range, no message passing: reach = cutoff) can
    do on these data, from the data alone:

    - `same_graphs`: whether every frame's neighbour list within `cutoff` is the same
      read periodic (the files' box) and isolated; if so, a short-range model trains and
      predicts identically either way, and the isolated short-range runs stand for the
      periodic ones;
    - per class, `anchored_mae_meV`: the anchored test MAE of ANY such model, when no
      intermolecular pair lies within `cutoff` at the anchor (farthest training frame)
      and the test frames and the monomers are rigid (`rigid`): its interaction energy
      is then the same at all of them, so its anchored error is the reference's change
      from the anchor, whatever it was trained on."""
    import ase.io

    from lorem_torch.data.graph import neighbor_list

    def pairs(atoms, periodic):
        cell = atoms.cell.array if periodic else np.zeros((3, 3))
        found = neighbor_list(atoms.positions, cell, periodic, cutoff)
        return sorted(
            zip(
                found["centers"].tolist(),
                found["others"].tolist(),
                np.round(found["distances"], 9).tolist(),
                strict=True,
            )
        )

    frames = {part: ase.io.read(path, ":") for part, path in paths.items()}
    same_graphs = all(
        pairs(atoms, True) == pairs(atoms, False) for part in frames.values() for atoms in part
    )
    classes = {}
    for label in CLASSES:
        train = [a for a in frames["train"] if a.info["label"] == label]
        test = [a for a in frames["test"] if a.info["label"] == label]
        anchor = max(train, key=lambda a: a.info["distance"])
        split = int(anchor.info["indexB"])

        def closest(atoms):
            a, b = atoms.positions[:split], atoms.positions[split:]
            return float(np.linalg.norm(a[:, None] - b[None], axis=-1).min())

        def internal(atoms, part):
            x = atoms.positions[:split] if part == 0 else atoms.positions[split:]
            return np.linalg.norm(x[:, None] - x[None], axis=-1)

        rigid = all(
            np.allclose(internal(a, part), internal(anchor, part), atol=1e-6)
            for a in test
            for part in (0, 1)
        )
        nearest = min(closest(a) for a in [anchor, *test])
        changes = [a.info["inter_energy"] - anchor.info["inter_energy"] for a in test]
        classes[label] = {
            "closest_intermolecular_A": nearest,
            "rigid": rigid,
            "anchored_mae_meV": float(np.abs(changes).mean() * 1000)
            if rigid and nearest > cutoff
            else None,
        }
    return {"cutoff": cutoff, "same_graphs": same_graphs, "classes": classes}


def _finished(output: Path) -> bool:
    log = output / "train.log"
    return log.is_file() and "stopped after epoch" in log.read_text()


def _log_span(output: Path) -> float:
    """Wall seconds from the first to the last line of train.log."""
    from datetime import datetime

    lines = [line for line in (output / "train.log").read_text().splitlines() if line]
    stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in (lines[0], lines[-1])]
    return (stamps[1] - stamps[0]).total_seconds()


def run(config_file: Path, paths: Dict[str, Path], retrain: bool = False) -> Dict:
    """Train as configured (unless the run folder holds a finished run), then predict the
    interaction energies of every training and test frame, read with the periodicity the
    run was trained with (data.pbc); writes lode_result.json."""
    import csv
    import json

    import yaml

    from lorem_torch.train import train
    from lorem_torch.train.config import resolve

    config = yaml.safe_load(config_file.read_text())
    output = Path(config["training"]["output"])
    if retrain or not _finished(output):
        if output.exists():
            import shutil

            shutil.rmtree(output)
        train(config, log=lambda m: None)
    pbc = resolve(config)["data"]["pbc"]
    with open(output / "log.csv") as f:
        history = list(csv.DictReader(f))
    rows = []
    checkpoint = output / "best.pt"
    for part in ("train", "test"):
        predicted = predicted_interaction_energies(checkpoint, paths[part], pbc=pbc)
        for row, value in zip(reference_table(paths[part]), predicted, strict=True):
            rows.append({**row, "split": part, "predicted": float(value)})
    log_text = (output / "train.log").read_text()
    result = {
        "config": str(config_file),
        "model": config["model"],
        # None: the files' periodicity (the 30 A box); False: isolated
        "pbc": pbc,
        "epochs": int(history[-1]["epoch"]),
        "planned_epochs": int(resolve(config)["training"]["epochs"]),
        "stop": log_text.strip().splitlines()[-1].split(": ", 1)[-1],
        "wall_seconds": _log_span(output),
        "training_seconds": float(history[-1]["seconds"]),
        "history": [
            {key: float(value) for key, value in row.items() if value not in ("", None)}
            for row in history
        ],
        "rows": rows,
        "tail_scan": tail_scan(checkpoint, paths["test"]),
    }
    if pbc is not False:
        result["tail_scan_box"] = tail_scan(
            checkpoint, paths["test"], pbc=pbc, distances=BOX_SCAN_DISTANCES
        )
    (output / "lode_result.json").write_text(json.dumps(result, indent=1))
    return result


def anchored(rows: List[Dict]) -> List[Dict]:
    """Each frame's error relative to its dimer's farthest training frame:
    (E(d) - E(anchor))_model - (E(d) - E(anchor))_reference. This measures the
    extrapolated change of the energy beyond the training range alone, free of the
    dimer's constant offset (whatever the model gets wrong about the monomers)."""
    out = []
    for label in CLASSES:
        mine = [r for r in rows if r["label"] == label]
        train = [r for r in mine if r["split"] == "train"]
        if not train:
            continue
        anchor = max(train, key=lambda r: r["distance"])
        for r in mine:
            change = (r["predicted"] - anchor["predicted"]) - (
                r["inter_energy"] - anchor["inter_energy"]
            )
            out.append({**r, "anchored_error": change, "anchor_distance": anchor["distance"]})
    return out


def class_errors(rows: List[Dict], split: str, anchor: bool = False) -> Dict[str, Dict[str, float]]:
    """Per class: MAE and largest error of the interaction energy (meV) on a split;
    with anchor=True, of its change from the farthest training frame (see anchored)."""
    table = {}
    source = anchored(rows) if anchor else rows
    for label in CLASSES:
        errors = np.array(
            [
                r["anchored_error"] if anchor else r["predicted"] - r["inter_energy"]
                for r in source
                if r["label"] == label and r["split"] == split
            ]
        )
        if len(errors):
            table[label] = {
                "n": len(errors),
                "mae_meV": float(np.abs(errors).mean() * 1000),
                "max_meV": float(np.abs(errors).max() * 1000),
            }
    return table


def format_table(result: Dict) -> str:
    lines = [
        f"{'class':>6} {'train MAE':>10} {'test MAE':>10} {'test max':>10} "
        f"{'anchored test MAE':>18}  (meV)"
    ]
    rows = result["rows"]
    train, test = class_errors(rows, "train"), class_errors(rows, "test")
    shifted = class_errors(rows, "test", anchor=True)
    for label in CLASSES:
        lines.append(
            f"{label:>6} {train[label]['mae_meV']:>10.1f} {test[label]['mae_meV']:>10.1f} "
            f"{test[label]['max_meV']:>10.1f} {shifted[label]['mae_meV']:>18.1f}"
        )
    return "\n".join(lines)


def run_jax(config_file: Path, paths: Dict[str, Path], retrain: bool = False) -> Dict:
    """The same model and settings trained by lorem-jax (its lorem-train), as a check
    that what lorem-torch learns (or fails to learn) is the model's and not the port's.

    lorem-jax has no EMA and clips gradients element-wise, so both are switched off
    for it (the lorem-torch runs keep theirs); the isolated dimers are written without
    a cell, as lorem-jax has no periodicity override. Folder: <output>-jax/."""
    import json

    import ase.io
    import yaml

    from lorem_torch.train.config import resolve
    from lorem_torch.train.data import read_frames

    from . import jax_runs

    config = resolve(yaml.safe_load(config_file.read_text()))
    output = Path(config["training"]["output"] + "-jax")
    config["training"].update(output=str(output), ema_decay=0.0, gradient_clip=0.0)
    # lorem-jax validates after each epoch but the last: one more epoch validates them all
    config["training"]["epochs"] += 1
    data = paths["train"].parent
    isolated = {}
    for part in ("train", "test"):
        isolated[part] = data / f"lode-{part}-isolated.xyz"
        if not isolated[part].exists():
            ase.io.write(isolated[part], read_frames(str(paths[part]), ":", pbc=False))
    jax_runs.prepare_datasets({"lode/train": isolated["train"]}, data / "marathon")
    if retrain or not (output / "run/checkpoints/R2_E+F").is_dir():
        outcome = jax_runs.train(output, config, data / "marathon", "lode/train", "lode/train")
        (output / "outcome.json").write_text(json.dumps(outcome, indent=1))
    outcome = json.loads((output / "outcome.json").read_text())
    checkpoint = jax_runs.import_checkpoint(output, "R2_E+F", output / "best-imported.pt")
    rows = []
    for part in ("train", "test"):
        predicted = predicted_interaction_energies(checkpoint, paths[part])
        for row, value in zip(reference_table(paths[part]), predicted, strict=True):
            rows.append({**row, "split": part, "predicted": float(value)})
    epochs = config["training"]["epochs"]
    seconds = outcome["history"][-1].get("seconds", outcome["wall_seconds"])
    result = {
        "config": f"{config_file} (lorem-jax, no EMA, no clipping)",
        "model": config["model"],
        "epochs": epochs,
        "wall_seconds": outcome["wall_seconds"],
        "training_seconds": seconds,
        "rows": rows,
        "tail_scan": tail_scan(checkpoint, paths["test"]),
    }
    (output / "lode_result.json").write_text(json.dumps(result, indent=1))
    return result
