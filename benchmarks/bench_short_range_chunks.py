"""The C++ runtime's step (what one LAMMPS rank runs) with the short range in one pass and
in chunks of local atoms (Model.short_range_chunk, pair_style lorem ... chunk N): seconds
per step and peak memory, per setting in a process of its own.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_short_range_chunks.py \
        [--systems water4104 water32832] [--chunks 0 4096 1024] [--device cpu|cuda]
        [--long-range pme] [--num-message-passing 0]

Default model (random weights), float32, exported once per run; the system is one rank
holding every atom with its periodic images as ghosts (lorem_torch.export.split_into_ranks).
Memory: on CPU the growth of the process's peak resident set over its first step
(ru_maxrss after minus before: the step's peak, coarse), on CUDA torch's peak allocated
bytes during the timed steps above what was allocated before them. Time: the best of
--repeats steps after the first.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(args, timed: bool) -> dict:
    """One setting in this (fresh) process: the first step's peak (CPU: the growth of the
    resident set over it, since later steps reuse what it took), and, when timed, the best
    of --repeats later steps (CUDA: their peak from torch's allocator). The runtime runs as
    one rank holding the whole system, periodic images as ghosts."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_model import build
    from lorem_torch._core import Model

    from lorem_torch.export import split_into_ranks

    atoms = build(args.system)
    cpp = Model(args.export, args.device)
    cpp.short_range_chunk = args.chunk
    (system,) = split_into_ranks(atoms, cpp.cutoff, np.zeros(len(atoms), dtype=int))
    # Model.compute in this thread (one process, SingleProcess): a simulated rank's thread
    # would take memory from a malloc arena of its own and blur the peak
    inputs = (
        system.positions.numpy(),
        system.atomic_numbers.numpy(),
        system.n_local,
        system.centers.numpy(),
        system.others.numpy(),
        np.asarray(atoms.cell.array, dtype=float),
        True,
        system.ghost_index.numpy(),
    )

    def step():
        return cpp.compute(*inputs)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = step()
    result = {
        "atoms": len(atoms),
        "pairs": int(system.centers.shape[0]),
        "peak_MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e3,
    }
    if not timed:
        return result
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
    if cuda:
        result["peak_MB"] = (torch.cuda.max_memory_allocated() - allocated) / 1e6
    result["seconds"] = min(times)
    result["forces"] = np.asarray(out["forces"]).tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=["water4104", "water32832"])
    parser.add_argument("--chunks", nargs="+", type=int, default=[0, 4096, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--long-range", default="pme")
    parser.add_argument("--num-message-passing", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    # internal: one setting in this process
    parser.add_argument("--one", choices=["timed", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args, timed=args.one == "timed")
        print("RESULT " + json.dumps(result))
        return

    import numpy as np
    import torch

    from lorem_torch import Lorem
    from lorem_torch.export import export_model

    torch.manual_seed(0)
    model = Lorem(
        long_range={"method": args.long_range}, num_message_passing=args.num_message_passing
    )
    print(
        f"default model, T = {args.num_message_passing}, {args.long_range}, float32, "
        f"{args.device}, threads {os.environ.get('OMP_NUM_THREADS', '(unset)')}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'system':>12} {'atoms':>7} {'chunk':>6} {'s/step':>8} {'us/atom-step':>13} "
        f"{'peak MB':>9} {'MB/atom':>8} {'max |dF| vs one pass':>21}"
    )
    with tempfile.TemporaryDirectory() as folder:
        export = str(Path(folder) / "model.pt")
        export_model(model, export, "float32")
        for system in args.systems:
            reference = None
            for chunk in args.chunks:

                def run(kind):
                    command = [
                        sys.executable,
                        __file__,
                        "--one",
                        kind,
                        "--system",
                        system,
                        "--chunk",
                        str(chunk),
                        "--export",
                        export,
                        "--device",
                        args.device,
                        "--repeats",
                        str(args.repeats),
                    ]
                    output = subprocess.run(
                        command, check=True, capture_output=True, text=True
                    ).stdout
                    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
                    return json.loads(line[len("RESULT ") :])

                timed = run("timed")
                peak = timed["peak_MB"]
                forces = np.asarray(timed["forces"])
                if reference is None:
                    reference = forces
                difference = float(np.abs(forces - reference).max())
                print(
                    f"{system:>12} {timed['atoms']:>7} {chunk:>6} {timed['seconds']:>8.3f} "
                    f"{1e6 * timed['seconds'] / timed['atoms']:>13.1f} {peak:>9.0f} "
                    f"{peak / timed['atoms']:>8.3f} {difference:>21.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
