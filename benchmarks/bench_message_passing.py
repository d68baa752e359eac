"""One equivariant message-passing layer against the first block, energy + forces, with
the fused message operator (lorem::message_form, the default) and with the dense eager
path, side by side in the same run. Prints wall and CPU seconds (medians over
interleaved repeats) and the peak resident memory growth of each call.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_message_passing.py
        [--systems water513 water4104] [--rounds 3] [--dtype float32] [--skip-eager]

Model: the default Lorem (float32, max_degree 6, s = 8) with species [1, 8], one
equivariant layer, short range only. Stages as the staged runtime runs them, each from
detached leaf inputs, with random cotangents on the feature outputs (what the next stage
sends back) and the energy:
  first block: edge basis from the pair vectors, initial_features; backward to the vectors;
  layer:       message_passing_step(0) from the first block's features, radial functions and
               harmonics; backward to all of them (the layer's whole cost, its scalar update
               included);
  model:       EnergyModel energy + forces (+ stress) of the whole model.
water513: 171 molecules at 1 g/cm^3 (benchmarks/bench_model.py); water4104: it 2 x 2 x 2.
CPU seconds (process time over all threads) are given because the machine may be loaded.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build  # noqa: E402
from bench_tensor_product import PeakResidentMemory  # noqa: E402


def system(name):
    if name == "water4104":
        return build("water513") * (2, 2, 2)
    return build(name)


def set_fused(model, enabled):
    for module in model.modules():
        if hasattr(module, "fused_messages"):
            module.fused_messages = enabled


def stage_calls(model, atoms, dtype):
    from lorem_torch import EnergyModel
    from lorem_torch.data import atoms_to_graph

    graph = atoms_to_graph([atoms], model.cutoff, dtype=dtype)
    positions, centers, others = graph["positions"], graph["centers"], graph["others"]
    shifts = graph["cell_shifts"] @ graph["cell"][0]
    vectors = (positions[others] - positions[centers] + shifts).detach()
    numbers = graph["atomic_numbers"]
    num = positions.shape[0]
    with torch.no_grad():
        radial, harmonics = model.edge_basis(vectors)
        _, scalar, spherical = model.initial_features(
            numbers, radial, harmonics, centers, others, num
        )
    generator = torch.Generator().manual_seed(0)
    seed_scalar = torch.randn(scalar.shape, generator=generator, dtype=dtype)
    seed_spherical = torch.randn(spherical.shape, generator=generator, dtype=dtype)

    def first_block():
        leaf = vectors.clone().requires_grad_(True)
        r, y = model.edge_basis(leaf)
        energy, s, sp = model.initial_features(numbers, r, y, centers, others, num)
        loss = energy.sum() + (s * seed_scalar).sum() + (sp * seed_spherical).sum()
        (grad,) = torch.autograd.grad(loss, [leaf])
        return grad

    def layer():
        leaves = [t.clone().requires_grad_(True) for t in (scalar, spherical, radial, harmonics)]
        energy, s, sp = model.message_passing_step(
            0, *leaves[:2], *leaves[2:], centers, others, num
        )
        loss = energy.sum() + (s * seed_scalar).sum() + (sp * seed_spherical).sum()
        return torch.autograd.grad(loss, leaves)

    energy_model = EnergyModel(model)

    def whole():
        return energy_model(**graph, compute_forces=True, compute_stress=True)["forces"]

    return {"first block": first_block, "layer": layer, "model": whole}, {
        "atoms": num,
        "edges": int(centers.shape[0]),
    }


def timed(call):
    with PeakResidentMemory() as memory:
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, memory.growth_gb, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=["water513", "water4104"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--skip-eager", action="store_true", help="only the fused path")
    args = parser.parse_args()
    from lorem_torch import Lorem

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = Lorem(species=[1, 8], num_message_passing=1, lr=False).to(dtype)
    paths = ["fused"] + ([] if args.skip_eager else ["eager"])
    print(f"torch threads {torch.get_num_threads()}, {args.dtype}, medians of {args.rounds}")
    for name in args.systems:
        calls, info = stage_calls(model, system(name), dtype)
        print(f"\n{name}: {info['atoms']} atoms, {info['edges']} edges")
        times = {(p, s): [] for p in paths for s in calls}
        for path in paths:  # warm-up
            set_fused(model, path == "fused")
            for call in calls.values():
                call()
        results = {}
        for round_ in range(args.rounds):
            order = paths if round_ % 2 == 0 else paths[::-1]
            for path in order:
                set_fused(model, path == "fused")
                for stage, call in calls.items():
                    wall, cpu, memory, result = timed(call)
                    times[(path, stage)].append((wall, cpu, memory))
                    results[(path, stage)] = result
        set_fused(model, True)
        print(f"{'path':6s} {'stage':12s} {'wall s':>8s} {'CPU s':>8s} {'peak GB':>8s}")
        for path in paths:
            for stage in calls:
                wall, cpu, memory = (
                    statistics.median(t[i] for t in times[(path, stage)]) for i in range(3)
                )
                print(f"{path:6s} {stage:12s} {wall:8.3f} {cpu:8.3f} {memory:8.3f}")
            ratio = statistics.median(t[0] for t in times[(path, "layer")]) / statistics.median(
                t[0] for t in times[(path, "first block")]
            )
            print(f"{path:6s} layer / first block (wall): {ratio:.1f}x")
        if not args.skip_eager:
            fused, eager = results[("fused", "model")], results[("eager", "model")]
            difference = (fused - eager).abs().max().item() / eager.abs().max().item()
            print(f"forces fused vs eager: max |difference| / max |F| = {difference:.1e}")


if __name__ == "__main__":
    main()
