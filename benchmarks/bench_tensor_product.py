"""TensorProduct(block_sparse=True) against the default dense implementation, alone and
inside a whole model step. Prints times (medians over interleaved repeats), peak memory
and the difference of the results.

    OMP_NUM_THREADS=2 nice -n 19 .venv/bin/python benchmarks/bench_tensor_product.py
        [--rounds 3] [--dtypes float32 float64] [--skip-model] [--skip-layer] [--device cuda]

Layer: TensorProduct(6, 6, 6, F = 8) (the default model's message product) on one row per
edge of the 192-atom water box (examples/data/water-64.xyz, cutoff 5 A), two workloads:
  forces: forward, then the gradient w.r.t. both inputs (what an MD step needs);
  train:  the same gradient with create_graph, then backward of a loss on it and on the
          output to inputs and kernel (the forces-in-the-loss training step).
Model: the default Lorem(species [1, 8], num_message_passing 1) on the same box,
EnergyModel energy + forces + stress (one LAMMPS-like step, the graph rebuilt as a step
does), with every TensorProduct as built (dense, the default) or swapped for a
block_sparse one with the same kernel ("block").

Both implementations are built and warmed up, then called in alternation (--rounds each,
the order flipped every round) so that load from other jobs on the machine hits both
alike; wall and CPU times are medians. Memory is the peak resident set over a call
(sampled every millisecond) beyond what was resident before it.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EDGE_FEATURES = 8  # num_spherical_features of the default model
MAX_DEGREE = 6
DEVICE = torch.device("cpu")


def use_block_sparse_products(model):
    """Swap every TensorProduct inside model for a block_sparse one with the same kernel."""
    from lorem_torch.nn.layers import TensorProduct

    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, TensorProduct)
    ]
    for parent, name, child in swaps:
        degrees = (child.max_degree1, child.max_degree2, child.max_degree3)
        block = TensorProduct(*degrees, child.features, block_sparse=True)
        block = block.to(child.kernel.device, child.kernel.dtype)
        block.load_state_dict(child.state_dict())
        setattr(parent, name, block)
    return len(swaps)


def water():
    import ase.io

    return ase.io.read(ROOT / "examples/data/water-64.xyz", "-1")


class PeakResidentMemory:
    """Peak resident set growth during a `with` block, sampled from /proc every ms
    (large tensors are mmap-ed, so freeing one gives its pages back at once)."""

    def __init__(self):
        import os

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self.start = 0
        self.running = False

    def resident(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.resident())
            time.sleep(0.001)

    def __enter__(self):
        import threading

        self.start = self.peak = self.resident()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.resident())

    @property
    def growth_gb(self) -> float:
        return (self.peak - self.start) / 1e9


def layer_call(implementation, dtype_name, workload):
    from lorem_torch.data import atoms_to_graph
    from lorem_torch.nn.layers import TensorProduct

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    num = int(atoms_to_graph([water()], 5.0)["centers"].shape[0])
    product = TensorProduct(
        MAX_DEGREE, MAX_DEGREE, MAX_DEGREE, EDGE_FEATURES, block_sparse=implementation == "block"
    ).to(DEVICE, dtype)
    components = (MAX_DEGREE + 1) ** 2
    x1, x2, cotangent = (
        torch.randn(num, components, EDGE_FEATURES, dtype=dtype).to(DEVICE) for _ in range(3)
    )
    x1.requires_grad_(True)
    x2.requires_grad_(True)

    def call():
        out = product(x1, x2)
        energy = (out * cotangent).sum()
        training = workload == "train"
        grad1, grad2 = torch.autograd.grad(energy, (x1, x2), create_graph=training)
        if training:
            loss = grad1.square().sum() + grad2.square().sum() + out.square().sum()
            loss.backward()
            x1.grad = x2.grad = product.kernel.grad = None
        return grad1.detach()

    return call, {"rows": num}


def model_call(implementation, dtype_name, workload):
    from lorem_torch import EnergyModel, Lorem
    from lorem_torch.data import atoms_to_graph

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = Lorem(species=[1, 8], num_message_passing=1).to(DEVICE, dtype)
    swapped = use_block_sparse_products(model) if implementation == "block" else 0
    energy_model = EnergyModel(model)
    atoms = water()

    def call():
        graph = atoms_to_graph([atoms], model.cutoff, dtype=dtype)  # a step rebuilds it
        graph = {key: value.to(DEVICE) for key, value in graph.items()}
        return energy_model(**graph, compute_stress=True)["forces"]

    pairs = int(atoms_to_graph([atoms], model.cutoff)["centers"].shape[0])
    return call, {"atoms": len(atoms), "pairs": pairs, "swapped": swapped}


def measure(call):
    """(wall seconds, CPU seconds of all threads, peak GB beyond what was resident before)
    of one call."""
    if DEVICE.type == "cuda":  # device memory and time
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with PeakResidentMemory() as memory:
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if DEVICE.type == "cuda":
        return seconds, cpu_seconds, (torch.cuda.max_memory_allocated() - before) / 1e9
    return seconds, cpu_seconds, memory.growth_gb


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GB: device memory)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # a fixed mmap threshold: glibc otherwise raises it after the first large free,
        # keeps later tensors in its heap, and the resident set no longer shows them
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    cases = []
    if not args.skip_layer:
        cases += [("layer", w, d) for w in ("forces", "train") for d in args.dtypes]
    if not args.skip_model:
        cases += [("model", "step", d) for d in args.dtypes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = {}
    for target, workload, dtype in cases:
        make = layer_call if target == "layer" else model_call
        calls = {}
        check = {}
        for implementation in ("block", "dense"):
            calls[implementation], info = make(implementation, dtype, workload)
            # warm-up (lazy initialisation, allocator), and the two must agree
            check[implementation] = calls[implementation]()
        difference = (check["block"] - check["dense"]).abs().max() / check["dense"].abs().max()
        info["difference"] = float(difference)
        del check
        for round_index in range(args.rounds):
            order = ("dense", "block") if round_index % 2 else ("block", "dense")
            for implementation in order:
                entry = results.setdefault((target, workload, dtype, implementation), [])
                entry.append(measure(calls[implementation]))
        results[(target, workload, dtype, "info")] = info
        del calls

    print(
        f"{'target':>6} {'workload':>8} {'dtype':>8} {'rows':>6} {'dense s':>8} {'block s':>8} "
        f"{'speed-up':>8} {'dense cpu':>9} {'block cpu':>9} {'speed-up':>8} "
        f"{'dense GB':>9} {'block GB':>9} {'rel diff':>9}"
    )
    for target, workload, dtype in cases:
        dense = results[(target, workload, dtype, "dense")]
        block = results[(target, workload, dtype, "block")]
        dense_s = statistics.median(r[0] for r in dense)
        block_s = statistics.median(r[0] for r in block)
        dense_cpu = statistics.median(r[1] for r in dense)
        block_cpu = statistics.median(r[1] for r in block)
        dense_gb = max(r[2] for r in dense)
        block_gb = max(r[2] for r in block)
        info = results[(target, workload, dtype, "info")]
        rows = info.get("rows", info.get("pairs"))
        print(
            f"{target:>6} {workload:>8} {dtype:>8} {rows:>6} {dense_s:>8.3f} {block_s:>8.3f} "
            f"{dense_s / block_s:>8.2f} {dense_cpu:>9.3f} {block_cpu:>9.3f} "
            f"{dense_cpu / block_cpu:>8.2f} {dense_gb:>9.2f} {block_gb:>9.2f} {info['difference']:>9.1e}"
        )
    print(
        f"s: wall seconds, cpu: CPU seconds of all threads (less sensitive to other jobs on "
        f"the machine), medians of {args.rounds} interleaved calls after a warm-up; "
        "GB: peak resident memory over a call beyond what was resident before it; rel diff: "
        "largest difference of the input gradients (layer) or forces (model), block - dense,"
        " over the largest value"
    )


if __name__ == "__main__":
    main()
