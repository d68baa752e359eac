"""Training benchmarks on the shared data sets (../shared, not bundled). Run from the
repository root; every run writes a folder under --output (runs/bench_training) and
`report` turns those folders into the tables and figures of docs/benchmarks.md.

    # 1. long-range extrapolation on the LODE dimers (train 4-12 A, test 12-15 A)
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py lode \
        --configs examples/configs/lode-lorem-f64d4.yaml examples/configs/lode-short-range-f64d4.yaml
    #    (lode-lorem-f64d4-pbc*.yaml: trained and evaluated in the files' periodic box)
    # 1b. SPICE dipeptides: LOREM against lr: false, test errors, the most polar apart
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py dipeptides
    # 2. lorem-torch and lorem-jax side by side (same model, split, epochs, schedule)
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py compare \
        --dataset gnl --impl torch --seed 0          # or --impl jax, --dataset ko4g, --seed 1
    # 3. seconds per epoch, both implementations, a few epochs (--device cuda: GPU)
    .venv/bin/python benchmarks/bench_training.py speed --epochs 4
    # 4. tables and figures into docs/ from the run folders
    .venv/bin/python benchmarks/bench_training.py report
    # (old) both models for a fixed time budget each
    .venv/bin/python benchmarks/bench_training.py budget --time-budget 600
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = Path(__file__).resolve().parents[1] / "examples/configs"


def lode(args) -> None:
    from training import lode as lode_module

    data = Path(args.output) / "data"
    paths = lode_module.prepare(Path(args.shared) / "datasets/lode_dimers", data)
    print(f"wrote {paths['train']} and {paths['test']}")
    if args.prepare_only:
        return
    for config_file in args.configs:
        run = lode_module.run_jax if args.jax else lode_module.run
        result = run(Path(config_file), paths, retrain=args.retrain)
        print(f"\n{config_file}: {result['epochs']} epochs in {result['wall_seconds']:.0f} s")
        print(lode_module.format_table(result))


def dipeptides(args) -> None:
    from training import dipeptides as dipeptides_module

    paths = dipeptides_module.prepare(Path(args.shared), Path(args.output) / "data")
    print(f"wrote {paths['test']} (most polar: dipole >= {paths['polar_threshold']:.2f})")
    if args.prepare_only:
        return
    from lorem_torch.train.evaluation import format_table

    for config_file in args.configs:
        result = dipeptides_module.run(Path(config_file), paths, retrain=args.retrain)
        print(f"\n{config_file}: {result['epochs']} epochs in {result['wall_seconds']:.0f} s")
        print(format_table(result["test"]))


def compare(args) -> None:
    from training import compare as compare_module

    config = Path(args.config or CONFIGS / f"{args.dataset}-f64d3.yaml")
    for implementation in args.impl:
        for seed in args.seed:
            result = compare_module.run(
                args.dataset,
                implementation,
                seed,
                Path(args.shared),
                Path(args.output),
                config,
                threads=args.threads,
            )
            per_epoch = result["seconds_per_epoch"]
            print(
                f"\n{args.dataset} {result['implementation']} seed {seed}: "
                f"{result['wall_seconds']:.0f} s wall, {per_epoch:.2f} s/epoch"
            )
            from lorem_torch.train.evaluation import format_table

            print(format_table(result["test"]))


def speed(args) -> None:
    from training import speed as speed_module

    rows = speed_module.run(
        Path(args.shared),
        Path(args.output),
        CONFIGS / f"{args.dataset}-f64d3.yaml",
        epochs=args.epochs,
        device=args.device,
        implementations=args.impl,
        threads=args.threads,
    )
    print(speed_module.format_rows(rows))
    name = f"speed-{args.dataset}-{args.device}-{'-'.join(args.impl)}-t{args.threads}.json"
    target = Path(args.output) / name
    target.write_text(json.dumps(rows, indent=1))


def report(args) -> None:
    from training import report as report_module

    report_module.write(Path(args.output), Path(args.docs))


def budget(args) -> None:
    from training import budget as budget_module

    budget_module.main(args)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--output", default="runs/bench_training")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("lode", help="LODE dimers: long range against short range")
    p.add_argument(
        "--configs",
        nargs="+",
        default=[
            str(CONFIGS / "lode-lorem-f64d4.yaml"),
            str(CONFIGS / "lode-short-range-f64d4.yaml"),
        ],
    )
    p.add_argument("--prepare-only", action="store_true", help="only write the data files")
    p.add_argument("--retrain", action="store_true", help="train even if the run has finished")
    p.add_argument("--jax", action="store_true", help="train with lorem-jax instead")
    p.set_defaults(run=lode)

    p = commands.add_parser("dipeptides", help="SPICE dipeptides: long range against short")
    p.add_argument(
        "--configs",
        nargs="+",
        default=[
            str(CONFIGS / "dipeptides-lorem-f64d3.yaml"),
            str(CONFIGS / "dipeptides-short-range-f64d3.yaml"),
        ],
    )
    p.add_argument("--prepare-only", action="store_true", help="only write the test file")
    p.add_argument("--retrain", action="store_true", help="train even if the run has finished")
    p.set_defaults(run=dipeptides)

    p = commands.add_parser("compare", help="lorem-torch and lorem-jax side by side")
    p.add_argument("--dataset", choices=["gnl", "ko4g"], required=True)
    p.add_argument("--impl", nargs="+", choices=["torch", "jax"], default=["torch", "jax"])
    p.add_argument("--seed", nargs="+", type=int, default=[0, 1])
    p.add_argument(
        "--config", help="lorem-torch config (default examples/configs/<dataset>-f64d3.yaml)"
    )
    p.add_argument("--threads", type=int, default=1, help="threads for lorem-jax (XLA)")
    p.set_defaults(run=compare)

    p = commands.add_parser("speed", help="seconds per epoch, both implementations")
    p.add_argument("--dataset", choices=["gnl", "ko4g"], default="gnl")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", nargs="+", choices=["torch", "jax"], default=["torch", "jax"])
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(run=speed)

    p = commands.add_parser("report", help="tables and figures of docs/benchmarks.md")
    p.add_argument("--docs", default="docs")
    p.set_defaults(run=report)

    p = commands.add_parser("budget", help="(old) default LOREM and lr: false, same time budget")
    p.add_argument("--time-budget", type=float, default=600)
    p.add_argument("--only", choices=["cumulene", "ko4g"])
    p.add_argument("--lr", nargs="+", default=["true", "false"])
    p.set_defaults(run=budget)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
