"""Seconds per training epoch on the bundled water data, the fused operators against the
plain PyTorch reference path (Lorem.use_fused_operators), side by side in one process.

What is timed is what lorem-train does per batch: the energy + forces prediction with
create_graph (forces are in the loss), the loss, its backward through the force
derivatives (second derivatives), and an Adam step. Data loading and validation are
left out.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train_step.py            # water.yaml
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train_step.py --default-model
"""

import argparse
import resource
import time
from pathlib import Path

import torch
import yaml

from lorem_torch.models import Lorem
from lorem_torch.train.data import LabelKeys, load_samples, make_batch, read_frames
from lorem_torch.train.loop import loss_terms, output_model, predict

ROOT = Path(__file__).resolve().parents[1]


def epoch_seconds(model: Lorem, batches, epochs: int) -> float:
    """The fastest of `epochs` passes over the batches (after one warm-up pass)."""
    wrapper = output_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    best = float("inf")
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad()
            terms = loss_terms(predict(wrapper, batch, training=True, stress=False), batch)
            sum(terms.values()).backward()
            optimizer.step()
        if epoch > 0:
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples/configs/water.yaml"))
    parser.add_argument("--default-model", action="store_true", help="Lorem() defaults instead")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--structures", type=int, default=16, help="structures per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    settings = yaml.safe_load(Path(args.config).read_text())
    hyperparameters = {} if args.default_model else dict(settings["model"])
    frames = read_frames(str(ROOT / "examples/data/water-64.xyz"))[: args.structures]
    dtype = getattr(torch, args.dtype)
    model = Lorem(**hyperparameters, species=[1, 8]).to(dtype)
    samples = load_samples(frames, model.cutoff, LabelKeys(energy="energy", forces="forces"))
    batches = [
        make_batch(samples[i : i + args.batch_size], dtype)
        for i in range(0, len(samples), args.batch_size)
    ]
    atoms = sum(s.num_atoms for s in samples)
    print(
        f"{len(samples)} structures ({atoms} atoms) in batches of {args.batch_size}, "
        f"{'default model' if args.default_model else args.config}, {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    for name, fused in (("plain PyTorch (reference path)", False), ("fused operators", True)):
        torch.manual_seed(0)
        model.use_fused_operators(fused)
        results[name] = epoch_seconds(model, batches, args.epochs)
        print(f"  {name:32s} {results[name]:7.2f} s per epoch")
    speedup = results["plain PyTorch (reference path)"] / results["fused operators"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"  speed-up {speedup:.2f}x; process peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
