"""The main job, end to end on bundled data: train a small LOREM model on periodic
water boxes, evaluate it on held-out boxes, export it, and run it in LAMMPS on 1 and
2 MPI ranks.

    bash examples/run_demo.sh            # sets up .venv, then runs this
    .venv/bin/python examples/demo.py --epochs 20 --output runs/demo

The model is a toy: a small LOREM trained for a few epochs (seconds) on 16 water
boxes. It shows the pipeline, not a potential: expect force errors of hundreds of
meV/A and an NVT run whose temperature runs away. TOY_MODEL_NOTE (printed at the start
and the end) says what converged models reach and where to get one.

The last HELD_OUT boxes of the data file are set aside before training: the model
never sees them in training or validation, and the evaluation uses only them.
Everything lands in the output folder (a new run replaces the previous demo there):
the data split (train.xyz, held-out.xyz), the training run (log.csv,
learning_curve.png, best.pt), the evaluation (parity plots, metrics.json,
predictions.xyz), the exported model.pt and the LAMMPS runs (log.lammps of each).
"""

import argparse
import sys
from pathlib import Path

import ase.io

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "water-64.xyz"
HELD_OUT = 3  # boxes at the end of DATA kept out of training and validation

# figures from docs/benchmarks.md (converged runs, section 2)
TOY_MODEL_NOTE = """\
This is a toy model, trained for seconds on 16 small boxes: it demonstrates training,
evaluation, export and LAMMPS, not a usable potential. Its force errors are hundreds of
meV/A and its MD heats up within tens of steps. Converged LOREM models reach force
errors of 30-55 meV/A and energy errors of 1-14 meV/atom (carbon chains, 100-200
epochs, 20-35 minutes on 2 CPU cores: docs/benchmarks.md, with the exact commands).
No trained potential ships with lorem-torch: train one on your own data (lorem-train,
with examples/configs/*.yaml as templates), or convert a trained lorem-jax model with
lorem-import-jax."""


def step(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def lammps_md(folder: Path, model: Path, ranks: int, steps: int) -> float:
    from lorem_torch.lammps import LammpsError, loop_time, pair_lines, run_lammps, write_data

    folder.mkdir(parents=True, exist_ok=True)
    write_data(ase.io.read(DATA, "-1"), folder / "water.data", ["O", "H"])
    script = f"""# NVT water with a LOREM model (pair_style lorem from lorem-torch)
units metal
atom_style atomic
read_data water.data
{pair_lines(model.resolve(), ["O", "H"])}velocity all create 300 20261125 mom yes rot no dist gaussian
timestep 0.0005
fix thermostat all nvt temp 300 300 0.05
thermo 10
thermo_style custom step temp pe etotal press
run {steps}
"""
    try:
        result = run_lammps(folder, script, ranks, input_name="in.water")
    except LammpsError as error:
        print(error)
        raise SystemExit(f"LAMMPS failed on {ranks} rank(s)") from None
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "Temp"])
    for line in lines[start : start + 4]:
        print("   ", line)
    print("    ...")
    print("   ", next(line for line in lines if line.startswith("Loop time")))
    seconds, count = loop_time(result.stdout)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--md-steps", type=int, default=100)
    args = parser.parse_args()
    output = Path(args.output)

    from lorem_torch.export import export_model
    from lorem_torch.train import evaluate_checkpoint, train
    from lorem_torch.train.evaluation import format_table

    output.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(DATA, ":")
    train_file, held_out_file = output / "train.xyz", output / "held-out.xyz"
    ase.io.write(train_file, frames[:-HELD_OUT])
    ase.io.write(held_out_file, frames[-HELD_OUT:])

    print(TOY_MODEL_NOTE)
    step("1. train a small LOREM on 64-molecule water boxes (lorem-train)")
    print(
        f"{len(frames) - HELD_OUT} boxes for training and validation, {HELD_OUT} held out "
        "for the evaluation"
    )
    config = {
        "model": {
            "num_features": 32,
            "max_degree": 2,
            "num_spherical_features": 4,
            "num_radial": 16,
        },
        "data": {"train": str(train_file), "split": [0.8, 0.2], "seed": 0},
        "training": {
            "output": str(output / "train"),
            "epochs": args.epochs,
            "batch_size": 2,
            "learning_rate": 3e-3,
            "warmup_epochs": 1,
            "progress": sys.stdout.isatty(),
        },
    }
    result = train(config, overwrite=True)  # the demo replaces its previous run
    print(
        f"best validation loss {result['best_valid_loss']:.4g}; learning curve in {output / 'train'}"
    )

    step("2. evaluate the best checkpoint on the held-out boxes (lorem-eval)")
    evaluation = evaluate_checkpoint(
        output / "train" / "best.pt", str(held_out_file), output=str(output / "eval")
    )
    print(
        f"errors on the {HELD_OUT} held-out boxes ({held_out_file.name}), never used in "
        "training or validation:"
    )
    print(format_table(evaluation["errors"]))
    print("(a toy model: converged models reach 30-55 meV/A in forces; see the end)")

    step("3. export it to TorchScript (lorem-export)")
    model_file = output / "model.pt"
    metadata = export_model(output / "train" / "best.pt", model_file, "float32")
    contract = metadata["contract"]
    print(f"{model_file}: species {contract['species']['symbols']}, cutoff {contract['cutoff']} A")

    rates = {}
    for ranks in (1, 2):
        step(f"4. LAMMPS NVT, 192 atoms, pair_style lorem on {ranks} MPI rank(s)")
        print("(the toy model's forces are far from converged: the temperature runs away)")
        rates[ranks] = lammps_md(output / f"lammps-{ranks}", model_file, ranks, args.md_steps)
    print("\nsteps per second:", ", ".join(f"{r} rank(s) {v:.2f}" for r, v in rates.items()))
    print(f"done: everything is in {output}\n")
    print(TOY_MODEL_NOTE)


if __name__ == "__main__":
    main()
