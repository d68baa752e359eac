"""LAMMPS pair_style lorem: timesteps per second and microseconds per atom-step for
water boxes on 1 and 2 ranks, the split into short range / long range / backward /
communication (from the runtime's own timers), the values sent per rank and step, and
the same model's step in Python.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lammps.py [--replicas 1 2 4]
        [--message-passing 0 1] [--device cuda] [--long-range pme] [--ghost-strategies]

The model is the default LOREM (float32) with random weights and T message-passing
layers (--message-passing); the box is the last frame of examples/data/water-64.xyz
(192 atoms) replicated n x n x n. --ghost-strategies compares, for a two-rank slab
split, the work of the two ways to run message passing across ranks (compute only,
forward + backward, in Python): ghosts one cutoff deep with features exchanged per layer
(what the plugin does) against ghosts (T + 1) cutoffs deep whose features every rank
recomputes.
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

import ase.io
import torch
from timing import best_seconds

from lorem_torch.lammps import loop_time, pair_lines, run_lammps, write_data
from lorem_torch.vocabulary import LONG_RANGE_METHODS

ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def python_step(model, atoms, repeats=2, device="cpu") -> float:
    """Seconds of one step of the model in Python (neighbour list, energy, forces, stress)
    on `device`: the best of `repeats` after a warm-up."""
    from lorem_torch import EnergyModel
    from lorem_torch.data import atoms_to_graph

    energy_model = EnergyModel(model.to(device))
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float32, device=device)
    energy_model(**graph, compute_stress=True)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        # a step rebuilds the graph
        graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float32, device=device)
        energy_model(**graph, compute_stress=True)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    model.to("cpu")
    return best


def lammps_run(
    folder: Path,
    model_file: Path,
    atoms,
    ranks: int,
    steps: int,
    device: str = "cpu",
    long_range: str | None = None,
    chunk: int = 0,
) -> dict:
    write_data(atoms, folder / "water.data", ["O", "H"])
    script = f"""units metal
atom_style atomic
atom_modify map yes
read_data water.data
{pair_lines(model_file, ["O", "H"], {"device": device, "long_range": long_range, "chunk": chunk or None})}
velocity all create 300 1 mom yes rot no
timestep 0.0005
fix integrate all nve
thermo {steps}
run 1
run {steps}
"""
    result = run_lammps(folder, script, ranks, input_name="in.bench", env={"LOREM_TIMING": "1"})
    seconds, count = loop_time(result.stdout)
    timing = re.findall(
        r"calls, s\): short range (\S+) long range (\S+) backward (\S+) communication "
        r"(\S+); (\S+) bytes sent per call",
        result.stdout,
    )
    parts = [float(x) for x in timing[-1][:4]] if timing else [float("nan")] * 4
    total = sum(parts)
    return {
        "steps_per_second": count / seconds,
        "us_per_atom_step": seconds / count / len(atoms) * 1e6,
        "fractions": [p / total for p in parts],
        "bytes": float(timing[-1][4]) if timing else float("nan"),
    }


def ghost_strategies(model, atoms, repeats=2):
    """Seconds of forward + backward of the short range for a two-slab split (both ranks,
    in one process): (b) ghosts one cutoff deep, features exchanged per layer (the staged
    methods, as the plugin runs them); (a) ghosts (T + 1) cutoffs deep, every rank
    recomputing the features of its ghosts (the whole encoder over local atoms and ghosts)."""
    import numpy as np

    from lorem_torch.data import neighbor_list
    from lorem_torch.export import ExportedLorem, split_into_ranks

    layers = len(model.message_passing)
    owner = (atoms.get_scaled_positions(wrap=True)[:, 0] >= 0.5).astype(int)
    module = torch.jit.script(ExportedLorem(model))
    systems = split_into_ranks(atoms, model.cutoff, owner, dtype=torch.float32)

    def run_b():
        # the plugin's stages on each rank; the exchanged ghost features are gathered
        # here in one step (their values do not change the work)
        for system in systems:
            x = system.positions.clone().requires_grad_(True)
            strain = torch.zeros(3, 3, requires_grad=True)
            energy, scalar, spherical = module.initial_features(
                x, system.atomic_numbers, system.centers, system.others, strain, system.n_local
            )
            for layer in range(layers):
                owners = torch.remainder(system.ghost_index, max(system.n_local, 1))
                term, scalar, spherical = module.message_passing_step(
                    layer,
                    x,
                    system.centers,
                    system.others,
                    strain,
                    torch.cat([scalar, scalar.detach()[owners]]),
                    torch.cat([spherical, spherical.detach()[owners]]),
                    system.n_local,
                )
                energy = energy + term
            torch.autograd.grad(energy.sum(), [x, strain])

    # (a): each rank's atoms plus every image within (T + 1) cutoffs, as an open cluster
    reach = (layers + 1) * model.cutoff
    nl = neighbor_list(atoms.positions, atoms.cell.array, True, reach)
    clusters, ghosts_a = [], 0
    for rank in (0, 1):
        mine = [(int(i), (0, 0, 0)) for i in np.where(owner == rank)[0]]
        extra = {
            (int(o), tuple(int(x) for x in shift))
            for c, o, shift in zip(nl["centers"], nl["others"], nl["cell_shifts"], strict=True)
            if owner[c] == rank
        } - set(mine)
        keys = mine + sorted(extra)
        ghosts_a += len(extra)
        positions = np.array([atoms.positions[i] + np.array(s) @ atoms.cell.array for i, s in keys])
        pairs = neighbor_list(positions, np.zeros((3, 3)), False, model.cutoff)
        clusters.append(
            (
                torch.tensor(positions, dtype=torch.float32),
                torch.tensor([int(atoms.numbers[i]) for i, _ in keys]),
                torch.tensor(pairs["centers"], dtype=torch.long),
                torch.tensor(pairs["others"], dtype=torch.long),
                len(mine),
            )
        )

    def run_a():
        for r, numbers, centers, others, n_local in clusters:
            x = r.clone().requires_grad_(True)
            energy = model.encode(numbers, x[others] - x[centers], centers, others)[0]
            torch.autograd.grad(energy[:n_local].sum(), [x])

    out = {}
    for name, call in (("b", run_b), ("a", run_a)):
        out[name] = best_seconds(call, repeats)
    out["ghosts_b"] = sum(int(s.positions.shape[0] - s.n_local) for s in systems)
    out["ghosts_a"] = ghosts_a
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--message-passing", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cpu", help="pair_style lorem device (cpu, cuda)")
    parser.add_argument(
        "--long-range",
        choices=LONG_RANGE_METHODS,
        help="k-space method (exported and on the pair_style line; default: the model's, ewald)",
    )
    parser.add_argument(
        "--python-device", help="device of the Python reference step (default: --device)"
    )
    parser.add_argument("--no-python", action="store_true", help="skip the Python reference")
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="pair_style lorem chunk N: the short range N local atoms at a time (0: one pass)",
    )
    parser.add_argument(
        "--ghost-strategies", action="store_true", help="compare the two ghost strategies"
    )
    args = parser.parse_args()
    from lorem_torch import Lorem
    from lorem_torch.export import export_model

    base = ase.io.read(ROOT / "examples/data/water-64.xyz", "-1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(
            f"{'T':>2} {'atoms':>6} {'ranks':>5} {'steps/s':>8} {'us/atom-step':>13} "
            f"{'short':>6} {'long':>6} {'backw':>6} {'comm':>6} {'MB sent':>8} "
            f"{'python s/step':>14} {'lammps/python':>13}"
        )
        for layers in args.message_passing:
            torch.manual_seed(0)
            model = Lorem(species=[1, 8], num_message_passing=layers)
            model_file = folder / f"model-{layers}.pt"
            export_model(model, model_file, "float32", args.long_range)
            for n in args.replicas:
                atoms = base * (n, n, n)
                steps = max(2, args.steps // n**3)
                # LAMMPS first: the Python step's cached device memory would be taken
                # from the LAMMPS process otherwise
                results = [
                    lammps_run(
                        folder,
                        model_file,
                        atoms,
                        ranks,
                        steps,
                        args.device,
                        args.long_range,
                        args.chunk,
                    )
                    for ranks in args.ranks
                ]
                if args.no_python:
                    python_seconds = float("nan")
                else:
                    python_model = (
                        model.with_long_range(args.long_range) if args.long_range else model
                    )
                    python_seconds = python_step(
                        python_model, atoms, device=args.python_device or args.device
                    )
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                for ranks, r in zip(args.ranks, results, strict=True):
                    f = r["fractions"]
                    ratio = (1 / r["steps_per_second"]) / python_seconds
                    print(
                        f"{layers:>2} {len(atoms):>6} {ranks:>5} {r['steps_per_second']:>8.3f} "
                        f"{r['us_per_atom_step']:>13.1f} {f[0]:>6.2f} {f[1]:>6.2f} {f[2]:>6.2f} "
                        f"{f[3]:>6.2f} {r['bytes'] / 1e6:>8.2f} {python_seconds:>14.3f} "
                        f"{ratio:>13.2f}",
                        flush=True,
                    )
                if args.ghost_strategies and layers > 0:
                    # a smaller model: with ghosts (T + 1) cutoffs deep the default one's
                    # dense L = 6 tensor products outgrow this machine's 24 GB
                    torch.manual_seed(0)
                    small = Lorem(
                        species=[1, 8],
                        num_message_passing=layers,
                        max_degree=3,
                        num_features=64,
                        num_spherical_features=4,
                    )
                    g = ghost_strategies(small, atoms)
                    print(
                        f"   ghost strategies (max_degree 3, 64 features), T={layers}, "
                        f"{len(atoms)} atoms, 2 ranks: "
                        f"features exchanged per layer {g['b']:.2f} s ({g['ghosts_b']} ghosts), "
                        f"ghosts {layers + 1} cutoffs deep recomputed {g['a']:.2f} s "
                        f"({g['ghosts_a']} ghosts): {g['a'] / g['b']:.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
