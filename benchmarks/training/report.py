"""Tables and figures of docs/benchmarks.md, made from the run folders only.

docs/benchmarks.md is prose with generated blocks between markers
    <!-- generated:NAME -->  ...  <!-- end:NAME -->
that this module rewrites; the figures go to docs/benchmarks/*.png (small PNGs).
Nothing here is typed by hand: rerun `bench_training.py report` after new runs.
"""

import json
import platform
import re
import statistics
from pathlib import Path
from typing import Dict, List

import numpy as np

from . import lode

FIGURES = "benchmarks"  # under docs/


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- LODE dimers --


def lode_results(runs: Path, periodic: bool = False) -> Dict[str, Dict]:
    """The LODE runs trained isolated (data.pbc false; runs from before the entry was
    recorded were all isolated) or, with periodic=True, in the files' periodic box."""
    results = {}
    for path in sorted(runs.glob("lode-*/lode_result.json")):
        result = json.loads(path.read_text())
        if (result.get("pbc", False) is not False) == periodic:
            results[path.parent.name] = result
    return results


def _charges(charges) -> str:
    return f"{charges[0]:+d}/{charges[1]:+d}"


def _model_name(run: str) -> str:
    return run.removeprefix("lode-")


def lode_table(results: Dict[str, Dict]) -> str:
    names = list(results)
    header = "| class | charges | reference at 12-15 A (meV) | " + " | ".join(
        f"{_model_name(n)}" for n in names
    )
    lines = [header + " |", "|" + " --- |" * (3 + len(names))]
    errors = {
        n: (
            lode.class_errors(r["rows"], "test"),
            lode.class_errors(r["rows"], "test", anchor=True),
            lode.class_errors(r["rows"], "train"),
        )
        for n, r in results.items()
    }
    rows = next(iter(results.values()))["rows"]
    for label in lode.CLASSES:
        test_rows = [r for r in rows if r["label"] == label and r["split"] == "test"]
        charges = _charges(test_rows[0]["charges"])
        reference = ", ".join(f"{1000 * r['inter_energy']:.1f}" for r in test_rows)
        cells = [
            f"{errors[n][0][label]['mae_meV']:.1f} / **{errors[n][1][label]['mae_meV']:.1f}** "
            f"({errors[n][2][label]['mae_meV']:.1f})"
            for n in names
        ]
        lines.append(f"| {label} | {charges} | {reference} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Each cell: test MAE / **anchored test MAE** (train MAE), meV, of the interaction "
        "energy E_model(dimer) - energyA - energyB against the reference inter_energy; 3 test "
        "frames per class at 12-15 A, 10 training frames at 4-12 A. Anchored: the error of the "
        "change of the interaction energy from the dimer's farthest training frame, which "
        "leaves out the constant offset of each dimer and measures the extrapolated tail alone."
    )
    runs = ", ".join(
        f"{_model_name(n)}: {r['epochs']} epochs, {r['wall_seconds'] / 60:.0f} min wall"
        for n, r in results.items()
    )
    lines.append(f"Runs: {runs}.")
    return "\n".join(lines)


def lode_reference_table(rows: List[Dict]) -> str:
    """The reference tails against Coulomb's law: isolated point charges at the monomer
    distance, and the same charges in the files' periodic 30 A box (lode.periodic_coulomb)."""
    lines = [
        "| class | distance (A) | reference (meV) | Coulomb, isolated (meV) | Coulomb, 30 A periodic box (meV) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["split"] != "test" or 0 in r["charges"]:
            continue
        lines.append(
            f"| {r['label']} | {r['distance']:.2f} | {1000 * r['inter_energy']:.1f} | "
            f"{1000 * r['coulomb']:.1f} | {1000 * r['coulomb_periodic']:.1f} |"
        )
    return "\n".join(lines)


def lode_tail_table(results: Dict[str, Dict]) -> str:
    """The models' own CC interaction energy far along the dimer axis (lode.tail_scan)."""
    names = [n for n, r in results.items() if "tail_scan" in r]
    if not names:
        return "(no tail scans)"
    scan = {n: results[n]["tail_scan"] for n in names}
    distances = [row["distance"] for row in scan[names[0]]]
    lines = [
        "| distance (A) | Coulomb, isolated (meV) | "
        + " | ".join(_model_name(n) for n in names)
        + " |",
        "|" + " --- |" * (2 + len(names)),
    ]
    for i, distance in enumerate(distances):
        cells = [f"{1000 * scan[n][i]['model']:.1f}" for n in names]
        coulomb = 1000 * scan[names[0]][i]["coulomb"]
        lines.append(f"| {distance:.0f} | {coulomb:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lode_figure(results: Dict[str, Dict], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.6))
    palette = ["tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:green", "tab:brown"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(results)}
    first = next(iter(results.values()))["rows"]
    for ax, label in zip(axes.ravel(), lode.CLASSES, strict=True):
        rows = sorted((r for r in first if r["label"] == label), key=lambda r: r["distance"])
        d = np.array([r["distance"] for r in rows])
        ax.plot(d, [1000 * r["inter_energy"] for r in rows], "ko", ms=3.5, label="reference")
        for name, result in results.items():
            mine = sorted(
                (r for r in result["rows"] if r["label"] == label), key=lambda r: r["distance"]
            )
            ax.plot(
                [r["distance"] for r in mine],
                [1000 * r["predicted"] for r in mine],
                "--" if name.endswith("-jax") else "-",
                color=colors[name],
                lw=1.3,
                label=_model_name(name),
            )
        start = min(r["distance"] for r in rows if r["split"] == "test")
        ax.axvspan(start - 0.2, d.max() + 0.3, color="0.9", zorder=0)
        ax.set_title(f"{label} ({_charges(rows[0]['charges'])})", fontsize=10)
        ax.set_xlabel("distance (A)", fontsize=9)
        ax.set_ylabel("interaction energy (meV)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        "LODE dimers: test range shaded (12-15 A, beyond every training separation)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _run_line(results: Dict[str, Dict]) -> str:
    def one(name, r):
        line = f"{_model_name(name)}: {r['epochs']} epochs"
        if r.get("planned_epochs", r["epochs"]) != r["epochs"]:
            line += f" of {r['planned_epochs']} planned ({r['stop']})"
        per_epoch = r["training_seconds"] / max(r["epochs"], 1)
        return line + f", {per_epoch:.0f} s per epoch, {r['wall_seconds'] / 60:.0f} min wall"

    return "Runs: " + "; ".join(one(n, r) for n, r in results.items()) + "."


def lode_periodic_table(results: Dict[str, Dict], short_range: Dict) -> str:
    """As lode_table, for the runs trained in the files' box, with the anchored test MAE
    that every short-range model has on these data (lode.short_range_facts)."""
    names = list(results)
    header = (
        "| class | charges | reference at 12-15 A (meV) | "
        + " | ".join(_model_name(n) for n in names)
        + " | any short-range model, anchored |"
    )
    lines = [header, "|" + " --- |" * (4 + len(names))]
    errors = {
        n: (
            lode.class_errors(r["rows"], "test"),
            lode.class_errors(r["rows"], "test", anchor=True),
            lode.class_errors(r["rows"], "train"),
        )
        for n, r in results.items()
    }
    rows = next(iter(results.values()))["rows"]
    for label in lode.CLASSES:
        test_rows = [r for r in rows if r["label"] == label and r["split"] == "test"]
        reference = ", ".join(f"{1000 * r['inter_energy']:.1f}" for r in test_rows)
        cells = [
            f"{errors[n][0][label]['mae_meV']:.1f} / **{errors[n][1][label]['mae_meV']:.1f}** "
            f"({errors[n][2][label]['mae_meV']:.1f})"
            for n in names
        ]
        bound = short_range["classes"][label]["anchored_mae_meV"]
        cells.append("-" if bound is None else f"**{bound:.1f}**")
        lines.append(
            f"| {label} | {_charges(test_rows[0]['charges'])} | {reference} | "
            + " | ".join(cells)
            + " |"
        )
    closest = min(c["closest_intermolecular_A"] for c in short_range["classes"].values())
    lines.append("")
    lines.append(
        "Cells as in the table above (test MAE / **anchored test MAE** (train MAE), meV), "
        "for models trained and evaluated in the files' periodic 30 A box. Last column: "
        "the anchored test MAE of every model without long range (cutoff "
        f"{short_range['cutoff']:.0f} A, no message passing), from the data alone: the "
        f"closest intermolecular pair at the anchor and test frames is {closest:.1f} A "
        "apart and the monomers are rigid, so such a model's interaction energy is the same "
        "at all of them and its anchored error is the reference's change from the anchor. "
        + (
            "Every frame has the same neighbour list periodic and isolated, so a short-range "
            "model trains and predicts the same either way: the short-range columns of the "
            "isolated table are the periodic ones."
            if short_range["same_graphs"]
            else "Some frames have image neighbours in the box: the isolated short-range "
            "runs do not stand for periodic ones."
        )
    )
    lines.append(_run_line(results))
    return "\n".join(lines)


def lode_box_tail_table(results: Dict[str, Dict]) -> str:
    """The periodic models' own CC interaction energy in the files' box (to half the box)
    and isolated (far along the axis), beside the point-charge estimates."""
    names = [n for n, r in results.items() if "tail_scan_box" in r]
    if not names:
        return "(no tail scans)"
    lines = [
        "| setting | distance (A) | point charges (meV) | "
        + " | ".join(_model_name(n) for n in names)
        + " |",
        "|" + " --- |" * (3 + len(names)),
    ]
    for key, setting in (("tail_scan_box", "30 A box"), ("tail_scan", "isolated")):
        scans = [results[n][key] for n in names]
        for i, row in enumerate(scans[0]):
            cells = [f"{1000 * scan[i]['model']:.1f}" for scan in scans]
            lines.append(
                f"| {setting} | {row['distance']:.0f} | {1000 * row['coulomb']:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def lode_learning_figure(results: Dict[str, Dict], path: Path) -> None:
    """Training loss and validation (= training set) energy MAE against epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, result in results.items():
        history = result.get("history", [])
        epochs = [h["epoch"] for h in history]
        axes[0].semilogy(
            epochs, [h["train_loss"] for h in history], ".-", lw=1, ms=3, label=_model_name(name)
        )
        axes[1].semilogy(
            epochs,
            [h["valid_energy_mae"] for h in history],
            ".-",
            lw=1,
            ms=3,
            label=_model_name(name),
        )
    axes[0].set_ylabel("training loss", fontsize=9)
    axes[1].set_ylabel("energy MAE, training set (meV/atom)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle("LODE dimers trained in the 30 A box: learning curves", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def dipeptides_table(runs: Path, repeats: bool = False) -> str | None:
    """Test errors of the SPICE dipeptide runs, all and by group (dipeptides.py); the
    first seed's runs, or (repeats) those repeated with another seed."""
    results = {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(runs.glob("dipeptides-*/dipeptides_result.json"))
        if _is_repeat(path.parent.name) == repeats
    }
    if not results:
        return None
    groups = ["all", "most-polar", "rest"]
    header = ["model", "epochs", "s/epoch"]
    for group in groups:
        header += [f"E {group}", f"F {group}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, r in results.items():
        epochs = str(r["epochs"])
        if r["planned_epochs"] != r["epochs"]:
            epochs += f" of {r['planned_epochs']}"
        cells = [
            name.removeprefix("dipeptides-"),
            epochs,
            f"{r['training_seconds'] / r['epochs']:.0f}",
        ]
        for group in groups:
            e = r["test"][group]
            cells += [f"{e['energy_mae_meV_per_atom']:.2f}", f"{e['forces_mae_meV_per_A']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    polar = first["test"]["most-polar"]["structures"]
    lines.append("")
    lines.append(
        "Test MAE: E in meV/atom, F in meV/A (force components); all 50 test structures, "
        f"the {polar} most polar (reference dipole >= {first['polar_threshold']:.2f}, the "
        "largest fifth) and the rest. s/epoch: training seconds per epoch (with one "
        "validation pass), both runs side by side on the shared machine."
    )
    return "\n".join(lines)


# -- lorem-torch and lorem-jax side by side --


def compare_results(runs: Path, dataset: str) -> List[Dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob(f"{dataset}-*-s*/result.json"))]


def compare_table(results: List[Dict]) -> str:
    if not results:
        return "(no runs yet)"
    groups = sorted({g for r in results for g in r["test"] if g != "all"})
    header = ["implementation", "seed", "s/epoch"]
    for group in ["all", *groups]:
        header += [f"E {group}", f"F {group}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def cells(errors_by_group):
        out = []
        for group in ["all", *groups]:
            e = errors_by_group[group]
            out += [f"{e['energy_mae_meV_per_atom']:.2f}", f"{e['forces_mae_meV_per_A']:.0f}"]
        return out

    for r in sorted(results, key=lambda r: (r["implementation"], r["seed"])):
        row = [r["implementation"], str(r["seed"]), f"{r['seconds_per_epoch']:.1f}"]
        lines.append("| " + " | ".join(row + cells(r["test"])) + " |")
    lines.append("")
    lines.append(
        "Test MAE: E in meV/atom, F in meV/A (force components). s/epoch: median wall "
        "seconds of one epoch plus one validation pass, both run at the same time on the "
        "same shared 2-core machine (the speed section times each implementation alone)."
    )
    return "\n".join(lines)


def compare_figure(results: List[Dict], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = {"lorem-torch": "tab:red", "lorem-jax": "tab:green"}
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        style = "-" if r["seed"] == 0 else "--"
        label = f"{r['implementation']} seed {r['seed']}"
        color = colors[r["implementation"]]
        axes[0].semilogy(
            epochs,
            [h["valid_energy_mae"] for h in r["history"]],
            style,
            color=color,
            lw=1,
            label=label,
        )
        axes[1].semilogy(
            epochs,
            [h["valid_forces_mae"] for h in r["history"]],
            style,
            color=color,
            lw=1,
            label=label,
        )
    axes[0].set_ylabel("validation energy MAE (meV/atom)", fontsize=9)
    axes[1].set_ylabel("validation force MAE (meV/A)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


# -- speed --


def speed_table(runs: Path) -> str:
    rows = []
    for path in sorted(runs.glob("speed-*.json")):
        rows += json.loads(path.read_text())
    if not rows:
        return "(no speed runs yet)"
    lines = [
        "| implementation | data | device | threads | first epoch, wall (s) "
        "| later epochs, wall (s) | later epochs, CPU (s) | epochs | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def number(value):
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        threads = r.get("threads", "-") if r["device"] == "cpu" else "-"
        load = f"{r['load_average']:.1f}" if "load_average" in r else "-"
        lines.append(
            f"| {r['implementation']} | {r['dataset']} | {r['device']} | {threads} | "
            f"{r['first_epoch_s']:.2f} | {number(r['later_epochs_s'])} | "
            f"{number(r.get('later_epochs_cpu_s'))} | {r['epochs']} | {load} |"
        )
    model = rows[0]["model"]
    lines.append("")
    lines.append(
        f"Model num_features {model['num_features']}, max_degree {model['max_degree']}, "
        f"batch {rows[0]['batch_size']} structures (examples/configs/gnl-f64d3.yaml), "
        "float32; an epoch is one pass of optimiser steps over the 200 training structures "
        "(energies and forces) and one validation pass over 50. Later epochs: the mean "
        "over all epochs after the first; CPU: user + system seconds of the process, all "
        "threads. Load average: the machine's 1-minute load when the row was written (2 "
        "cores; other jobs ran beside these)."
    )
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _lode_commands(results: Dict[str, Dict]) -> List[str]:
    script = ".venv/bin/python benchmarks/bench_training.py"
    return [
        f"| `{script} lode --configs {result['config']}` | "
        f"{_minutes(result['wall_seconds'])} ({result['epochs']} epochs) |"
        for result in results.values()
        if "lorem-jax" not in result["config"]
    ]


def _is_repeat(run: str) -> bool:
    """A run repeated with another seed or budget (its name ends in -seedN or -eN, the
    epochs): these have blocks of their own, next to the first runs'."""
    return re.search(r"-(seed\d+|e\d+)$", run) is not None


def commands_table(runs: Path, periodic: bool = False, repeats: bool = False) -> str | None:
    """Each run folder's command (bench_training.py, from the repository root) and its
    wall time as recorded by the run itself; periodic=True: the LODE runs trained in the
    box alone (and the dipeptides), repeats=True: only the runs repeated with another
    seed, otherwise only the first seed's. None when there is no such run."""
    script = ".venv/bin/python benchmarks/bench_training.py"
    lines = ["| command | wall time |", "| --- | --- |"]
    lode_runs = {n: r for n, r in lode_results(runs, periodic).items() if _is_repeat(n) == repeats}
    lines += _lode_commands(lode_runs)
    if periodic:
        for path in sorted(runs.glob("dipeptides-*/dipeptides_result.json")):
            if _is_repeat(path.parent.name) != repeats:
                continue
            result = json.loads(path.read_text())
            lines.append(
                f"| `{script} dipeptides --configs {result['config']}` | "
                f"{_minutes(result['wall_seconds'])} ({result['epochs']} epochs) |"
            )
        return "\n".join(lines) if len(lines) > 2 else None
    for dataset in ("gnl", "ko4g"):
        for result in sorted(
            compare_results(runs, dataset), key=lambda r: (r["implementation"], r["seed"])
        ):
            implementation = result["implementation"].removeprefix("lorem-")
            lines.append(
                f"| `{script} compare --dataset {dataset} --impl {implementation} "
                f"--seed {result['seed']}` | {_minutes(result['wall_seconds'])} |"
            )
    for path in sorted(runs.glob("speed-*.json")):
        for row in json.loads(path.read_text()):
            if "wall_seconds" not in row:
                continue
            implementation = row["implementation"].removeprefix("lorem-")
            lines.append(
                f"| `{script} speed --dataset {row['dataset']} --epochs {row['epochs']} "
                f"--impl {implementation} --device {row['device']} --threads "
                f"{row['threads']}` | {_minutes(row['wall_seconds'])} |"
            )
    return "\n".join(lines) if len(lines) > 2 else None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


# -- writing --


def _replace_block(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
    if not pattern.search(text):
        raise KeyError(f"docs/benchmarks.md has no block '{name}'")
    return pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(2), text)


def write(runs: Path, docs: Path) -> None:
    """Rewrite the generated blocks whose runs are in `runs`; blocks without runs there
    keep what they have (run folders of other machines or sessions)."""
    figures = docs / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    blocks = {"machine": machine()}
    results = lode_results(runs)
    if results:
        first = next(iter(results.values()))
        rows = first["rows"]
        blocks["lode"] = lode_table(results)
        blocks["lode-reference"] = lode_reference_table(rows)
        blocks["lode-tail"] = lode_tail_table(results)
        lode_figure(results, figures / "lode_binding_curves.png")
    # the runs in the box: the first ones, and the repeats with other seeds or budgets
    # (run names ending in -seedN, -eN), each in its own blocks so that either can be
    # rewritten alone
    periodic_all = lode_results(runs, periodic=True)
    for suffix, chosen in (
        ("", {n: r for n, r in periodic_all.items() if not _is_repeat(n)}),
        ("-seeds", {n: r for n, r in periodic_all.items() if _is_repeat(n)}),
    ):
        if not chosen:
            continue
        data = runs / "data"
        facts = lode.short_range_facts(
            {"train": data / "lode-train.xyz", "test": data / "lode-test.xyz"}
        )
        figure = "periodic" if not suffix else "periodic_seeds"
        blocks[f"lode-periodic{suffix}"] = lode_periodic_table(chosen, facts)
        blocks[f"lode-periodic{suffix}-tail"] = lode_box_tail_table(chosen)
        lode_figure(chosen, figures / f"lode_binding_curves_{figure}.png")
        lode_learning_figure(chosen, figures / f"lode_learning_curves_{figure}.png")
    for suffix, repeats in (("", False), ("-seeds", True)):
        dipeptides = dipeptides_table(runs, repeats)
        if dipeptides is not None:
            blocks[f"dipeptides{suffix}"] = dipeptides
    for dataset, title in (
        ("gnl", "GNL cumulenes: lorem-torch and lorem-jax, same settings"),
        ("ko4g", "Ko carbon chains: lorem-torch and lorem-jax, same settings"),
    ):
        found = compare_results(runs, dataset)
        if found:
            blocks[f"compare-{dataset}"] = compare_table(found)
            compare_figure(found, figures / f"learning_curves_{dataset}.png", title)
            blocks[f"compare-{dataset}-summary"] = compare_summary(found)
    if list(runs.glob("speed-*.json")):
        blocks["speed"] = speed_table(runs)
    for name, table in (
        ("commands", commands_table(runs)),
        ("commands-periodic", commands_table(runs, periodic=True)),
        ("commands-seeds", commands_table(runs, periodic=True, repeats=True)),
    ):
        if table is not None:
            blocks[name] = table
    page = docs / "benchmarks.md"
    text = page.read_text()
    for name, content in blocks.items():
        if f"<!-- generated:{name} -->" in text:
            text = _replace_block(text, name, content)
    page.write_text(text)
    print(f"updated {page} ({', '.join(blocks)}) and {figures}")


def compare_summary(results: List[Dict]) -> str:
    """Mean and spread over seeds per implementation (all test structures)."""
    lines = [
        "| implementation | seeds | E MAE (meV/atom) | F MAE (meV/A) | s/epoch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for implementation in ("lorem-torch", "lorem-jax"):
        mine = [r for r in results if r["implementation"] == implementation]
        if not mine:
            continue
        e = [r["test"]["all"]["energy_mae_meV_per_atom"] for r in mine]
        f = [r["test"]["all"]["forces_mae_meV_per_A"] for r in mine]
        s = [r["seconds_per_epoch"] for r in mine]

        def spread(values, digits):
            if len(values) == 1:
                return f"{values[0]:.{digits}f}"
            return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

        lines.append(
            f"| {implementation} | {len(mine)} | {spread(e, 2)} | {spread(f, 0)} | {spread(s, 1)} |"
        )
    return "\n".join(lines)
