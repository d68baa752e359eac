"""The first training benchmark (bench_training.py budget): the default LOREM and the
same with `lr: false`, each for the same time budget, on the GNL cumulenes and the Ko
et al. carbon chains. Figures from short budgets are far from converged and say so.
"""

import json
from pathlib import Path

import ase.io


def training_config(data: dict, lr: bool, budget: float, output: Path) -> dict:
    return {
        "model": {"lr": lr},
        "data": data,
        "training": {
            "output": str(output),
            "epochs": 1000,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "time_budget": budget,
            "decay": "constant",
            "progress": False,
        },
    }


def cumulene(shared: Path, lr: bool, budget: float, output: Path):
    from lorem_torch.train import evaluate_checkpoint, train

    folder = shared / "datasets/cumulene_gnl"
    data = {"train": str(folder / "gnl-v0.2-train.xyz"), "valid": str(folder / "gnl-v0.2-val.xyz")}
    config = training_config(data, lr, budget, output)
    result = train(config, log=lambda m: None)
    history = result["history"]
    per_epoch = history[-1]["seconds"] / history[-1]["epoch"]
    test = evaluate_checkpoint(output / "best.pt", str(folder / "gnl-v0.2-test.xyz"))
    return per_epoch, history[-1]["epoch"], test["errors"]


def ko4g(shared: Path, lr: bool, budget: float, output: Path):
    from lorem_torch.train import evaluate_checkpoint, train

    path = shared / "datasets/ko4g_carbon_chain/Carbon_chain_4G.extxyz"
    frames = ase.io.read(path, ":")
    for atoms in frames:  # group by charge state for the report
        atoms.info["config_type"] = (
            "charged" if abs(atoms.info.get("total_charge", 0)) > 0 else "neutral"
        )
    labelled = output.parent / "ko4g-labelled.extxyz"
    output.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(labelled, frames)
    config = training_config(
        {"train": str(labelled), "split": [0.9, 0.1], "seed": 0}, lr, budget, output
    )
    result = train(config, log=lambda m: None)
    history = result["history"]
    per_epoch = history[-1]["seconds"] / history[-1]["epoch"]
    # the validation split (10 %, seed 0) is the held-out set here
    held_out = output.parent / "ko4g-held-out.extxyz"
    import numpy as np

    order = np.random.default_rng(0).permutation(len(frames))
    cut = int(round(0.9 * len(frames)))
    ase.io.write(held_out, [frames[i] for i in order[cut:]])
    test = evaluate_checkpoint(output / "best.pt", str(held_out))
    return per_epoch, history[-1]["epoch"], test["errors"]


def main(args) -> None:
    from lorem_torch.train.evaluation import format_table

    shared = Path(args.shared)
    for name, run in (("cumulene", cumulene), ("ko4g", ko4g)):
        if args.only and args.only != name:
            continue
        for lr in args.lr:
            output = Path(args.output) / f"budget-{name}-lr-{lr}"
            per_epoch, epochs, errors = run(shared, lr == "true", args.time_budget, output)
            print(
                f"\n{name}, lr: {lr}: {epochs} epochs, {per_epoch:.1f} s/epoch, "
                f"budget {args.time_budget} s"
            )
            print(format_table(errors))
            (output / "test_errors.json").write_text(json.dumps(errors, indent=1))
