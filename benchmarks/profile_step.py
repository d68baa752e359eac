"""Where one energy + forces (+ stress) step of the default LOREM model spends its time
and memory, stage by stage, forward and backward.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_step.py --system water513 \
        [--num-message-passing 1] [--no-lr] [--long-range ewald|pme|auto] \
        [--device cpu|cuda] [--dtype float32|float64] [--repeat 3] [--eager] [--json out.json]

The step is cut into the model's own stages (models/lorem.py: edge_basis,
initial_features, message_passing_step, charges, long_range_potentials, readout), run one
after the other with every stage's inputs taken as detached leaves, the way the staged
export chains them (docs/design.md section 4). The backward then runs stage by stage,
last to first, each one an autograd.grad of that stage's outputs seeded with the
gradients the later stages gave, so every backward is timed alone. The staged forces and
virial are checked against the model's own step (EnergyModel) and the difference printed.

Time: wall clock per stage, the minimum over --repeat passes (after one warm-up pass);
on CUDA the device is synchronised before and after every stage, so the figures are the
stage's own. The unstaged step (EnergyModel, as the calculator runs it) is timed the same
way, for comparison with the staged sum.

Memory, per stage: "peak" is the highest amount of tensor memory allocated during the
stage above the amount allocated when it began; "held" is what is still allocated when
it ends, beyond its start (outputs and tensors saved for the backward; negative when a
backward frees saved tensors). On CUDA these come from the caching allocator's counters
(memory_allocated, max_memory_allocated); on CPU from the allocation and free events
that torch.profiler records with profile_memory=True during one extra pass (tensor
storage only: no Python objects, allocator slack, or memory freed back lazily). The peak
resident set of the whole process (ru_maxrss) is printed too; it is coarse.

Last, one unstaged step runs under torch.profiler and the top operators are printed by
self time and by self memory (bytes allocated minus bytes freed inside the operator,
which for elementwise products is their outputs).

Systems are those of benchmarks/bench_model.py, plus water4104 and water32832 (water513
repeated 2 x 2 x 2 and 4 x 4 x 4; the larger one for a GPU).
If the model has a `fused_edges` switch (fused edge operators), it is left at the model's
default, or set False with --eager; the first block is split into its scalar and
spherical parts only on the eager path (checked against initial_features itself).
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Sequence

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SYSTEMS = ("water513", "water4104", "water32832", "nacl4096", "nacl512", "nacl1000", "cluster100")


def build_system(name: str):
    """The ASE Atoms of a named system (bench_model.py's, water4104 and water32832)."""
    from bench_model import build

    if name == "water4104":
        return build("water513").repeat((2, 2, 2))
    if name == "water32832":
        return build("water513").repeat((4, 4, 4))
    return build(name)


# -- the staged step --


class Stage:
    """One stage: fn(leaves) -> outputs, with named float inputs (detached into leaves
    that require grad) and named outputs."""

    def __init__(self, name: str, inputs: Sequence[str], outputs: Sequence[str], fn: Callable):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.fn = fn


class Meter:
    """Times (and on CUDA measures the memory of) code blocks; on CPU, marks them for the
    profiler's memory events instead."""

    def __init__(self, device: torch.device, annotate: bool):
        self.cuda = device.type == "cuda"
        self.annotate = annotate
        self.records: Dict[str, Dict[str, float]] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, label: str, body: Callable):
        self.sync()
        if self.cuda:
            start_bytes = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        context = record_function(label) if self.annotate else nullcontext()
        start, cpu_start = time.perf_counter(), time.process_time()
        with context:
            result = body()
            self.sync()
        record = {
            "time_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
        }
        if self.cuda:
            record["peak_bytes"] = torch.cuda.max_memory_allocated() - start_bytes
            record["held_bytes"] = torch.cuda.memory_allocated() - start_bytes
        self.records[label] = record
        return result


def leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(tensor.is_floating_point())


def run_staged(stages: List[Stage], start: Dict[str, torch.Tensor], meter: Meter):
    """Forward through the stages, then backward stage by stage. Returns the gradients
    of the total energy with respect to the start tensors (positions, strain)."""
    values: Dict[str, torch.Tensor] = {name: leaf(t) for name, t in start.items()}
    starts = dict(values)
    taken: List[Dict[str, torch.Tensor]] = []
    made: List[Dict[str, torch.Tensor]] = []
    for stage in stages:
        leaves = {name: leaf(values[name]) for name in stage.inputs}
        outputs = meter.measure("forward: " + stage.name, lambda: stage.fn(leaves))
        produced = dict(zip(stage.outputs, outputs, strict=True))
        values.update(produced)
        taken.append(leaves)
        made.append(produced)
    # every per-atom energy term enters the total with weight one
    grads: Dict[str, torch.Tensor] = {
        name: torch.ones_like(t) for name, t in values.items() if name.startswith("energy")
    }
    del values
    for stage, leaves, produced in zip(
        reversed(stages), reversed(taken), reversed(made), strict=True
    ):
        pairs = [
            (tensor, grads.pop(name))
            for name, tensor in produced.items()
            if name in grads and tensor.requires_grad
        ]
        wanted = [name for name, t in leaves.items() if t.requires_grad]
        if not pairs or not wanted:
            continue

        def backward(pairs=pairs, wanted=wanted, leaves=leaves):
            return torch.autograd.grad(
                [p[0] for p in pairs],
                [leaves[name] for name in wanted],
                [p[1] for p in pairs],
                allow_unused=True,
            )

        results = meter.measure("backward: " + stage.name, backward)
        del pairs
        for name, gradient in zip(wanted, results, strict=True):
            if gradient is not None:
                grads[name] = grads[name] + gradient if name in grads else gradient
        produced.clear()
        leaves.clear()
    return {name: grads.get(name, torch.zeros_like(t)) for name, t in starts.items()}


def set_fused(model: torch.nn.Module, fused: bool | None) -> bool | None:
    """Set every `fused_edges` switch in the model (None: leave them); returns the model's
    own setting, None when it has no such switch."""
    if fused is not None:
        for module in model.modules():
            if hasattr(module, "fused_edges"):
                module.fused_edges = fused
    value = getattr(model, "fused_edges", None)
    return None if value is None else bool(value)


def first_block_parts(model, atomic_numbers, centers, others, num_atoms):
    """The eager initial block (models/lorem.py initial_features) in its scalar and
    spherical parts, as two stage functions."""
    from lorem_torch.models.lorem import edge_spherical, norm_features

    def scalar_part(leaves):
        model.check_species(atomic_numbers)
        present, species_index = torch.unique(atomic_numbers, return_inverse=True)
        num_types = present.shape[0]
        pair_type = species_index[centers] * num_types + species_index[others]
        edges_scalar = model.radial_coefficients.from_species_pairs(
            model.embedding[present], pair_type, num_types, leaves["radial"]
        )
        species_embedding = model.embedding[atomic_numbers[:num_atoms]]
        if model.node_init is not None:
            scalar = model.node_init(species_embedding)
        else:
            scalar = species_embedding.new_zeros(num_atoms, model.num_features)
        summed = edges_scalar.new_zeros(num_atoms, model.num_features).index_add(
            0, centers, edges_scalar
        )
        return edges_scalar, model.update_scalar(scalar, model.edge_to_node(summed))

    def spherical_part(leaves):
        edges_spherical = edge_spherical(
            model.spherical_coefficients(leaves["edges_scalar"]),
            leaves["harmonics"],
            model.component_degree,
            model.max_degree,
        )
        spherical = edges_spherical.new_zeros(
            num_atoms, edges_spherical.shape[1], model.spherical_features
        ).index_add(0, centers, edges_spherical)
        spherical = model.self_tensor(spherical)
        scalar = model.update_spherical(
            leaves["scalar_first"], norm_features(spherical, model.max_degree, model.l_factors)
        )
        return model.energy_head(scalar)[:, 0], scalar, spherical

    return scalar_part, spherical_part


def split_first_block_matches(model, graph, radial, harmonics) -> bool:
    """Whether the split first block gives initial_features' outputs (it may not after
    the model's internals change; the whole block is then profiled as one stage)."""
    numbers, centers, others = graph["atomic_numbers"], graph["centers"], graph["others"]
    num_atoms = numbers.shape[0]
    try:
        scalar_part, spherical_part = first_block_parts(model, numbers, centers, others, num_atoms)
        with torch.no_grad():
            edges_scalar, scalar_first = scalar_part({"radial": radial})
            split = spherical_part(
                {"edges_scalar": edges_scalar, "harmonics": harmonics, "scalar_first": scalar_first}
            )
            whole = model.initial_features(numbers, radial, harmonics, centers, others, num_atoms)
    except (AttributeError, TypeError, RuntimeError):
        return False
    return all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(split, whole, strict=True)
    )


def build_stages(model, graph, split_first_block: bool, method: str) -> List[Stage]:
    from lorem_torch.models.lorem import batch_pair_vectors

    numbers, centers, others = graph["atomic_numbers"], graph["centers"], graph["others"]
    atom_structure = graph["atom_structure"]
    num_atoms = numbers.shape[0]

    def geometry(leaves):
        # the homogeneous strain of models/outputs.py: positions and cell deformed together
        deformation = torch.eye(3, dtype=leaves["strain"].dtype, device=leaves["strain"].device)
        deformation = deformation[None] + leaves["strain"]
        per_atom = deformation[atom_structure]
        positions = torch.bmm(leaves["positions"][:, None, :], per_atom).squeeze(1)
        cell = torch.bmm(graph["cell"], deformation)
        vectors = batch_pair_vectors(
            positions, cell, centers, others, graph["cell_shifts"], atom_structure
        )
        return positions, cell, vectors

    stages = [
        Stage("geometry (strain, pair vectors)", ["positions", "strain"],
              ["strained_positions", "strained_cell", "pair_vectors"], geometry),
        Stage("edge basis (radial + Y_lm)", ["pair_vectors"], ["radial", "harmonics"],
              lambda v: model.edge_basis(v["pair_vectors"])),
    ]  # fmt: skip
    if split_first_block:
        scalar_part, spherical_part = first_block_parts(model, numbers, centers, others, num_atoms)
        stages += [
            Stage("first block: scalar part", ["radial"], ["edges_scalar", "scalar_first"],
                  scalar_part),
            Stage("first block: spherical part", ["edges_scalar", "harmonics", "scalar_first"],
                  ["energy_first", "scalar_0", "spherical_0"], spherical_part),
        ]  # fmt: skip
    else:
        stages.append(
            Stage("first block", ["radial", "harmonics"], ["energy_first", "scalar_0", "spherical_0"],
                  lambda v: model.initial_features(numbers, v["radial"], v["harmonics"], centers,
                                                   others, num_atoms))
        )  # fmt: skip
    layers = len(model.message_passing)
    for layer in range(layers):

        def step(v, layer=layer):
            return model.message_passing_step(
                layer, v[f"scalar_{layer}"], v[f"spherical_{layer}"], v["radial"],
                v["harmonics"], centers, others, num_atoms,
            )  # fmt: skip

        stages.append(
            Stage(f"message passing {layer + 1}",
                  [f"scalar_{layer}", f"spherical_{layer}", "radial", "harmonics"],
                  [f"energy_mp{layer}", f"scalar_{layer + 1}", f"spherical_{layer + 1}"], step)
        )  # fmt: skip
    if model.long_range is None:
        return stages
    scalar, spherical = f"scalar_{layers}", f"spherical_{layers}"

    def potentials(v):
        distances = torch.linalg.norm(v["pair_vectors"], dim=-1)
        return (
            model.long_range_potentials(
                v["strained_positions"], v["charges"], v["strained_cell"], graph["pbc"],
                centers, others, distances, atom_structure[centers],
                graph["structure_offsets"],
            ),
        )  # fmt: skip

    stages += [
        Stage("charges", [scalar, spherical], ["charges"],
              lambda v: (model.charges(v[scalar], v[spherical]),)),
        Stage(f"long-range potentials ({method}: real + k-space)",
              ["strained_positions", "charges", "strained_cell", "pair_vectors"],
              ["potentials"], potentials),
        Stage("readout", [scalar, spherical, "potentials"], ["energy_readout"],
              lambda v: (model.readout(v[scalar], v[spherical], v["potentials"]),)),
    ]  # fmt: skip
    return stages


# -- memory from the profiler's events (CPU) --


def profiler_memory(prof, labels: Sequence[str], device_type) -> Dict[str, Dict[str, float]]:
    """Peak and held bytes of every labelled block, from the allocation events."""
    events = prof.profiler.kineto_results.events()
    blocks = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name() in labels}
    memory = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == device_type
    )
    times = [t for t, _ in memory]
    running, level = [], 0
    for _, nbytes in memory:
        level += nbytes
        running.append(level)
    result = {}
    for label in labels:
        begin, end = blocks[label]
        first = next((i for i, t in enumerate(times) if t >= begin), len(times))
        base = running[first - 1] if first > 0 else 0
        inside = [running[i] for i in range(first, len(times)) if times[i] <= end]
        result[label] = {
            "peak_bytes": max(inside, default=base) - base,
            "held_bytes": (inside[-1] if inside else base) - base,
        }
    return result


def top_operators(prof, cuda: bool, count: int) -> Dict[str, List[Dict[str, float]]]:
    rows = []
    for item in prof.key_averages():
        row = {
            "name": item.key,
            "calls": item.count,
            "self_cpu_ms": item.self_cpu_time_total / 1e3,
            "self_cpu_memory_MB": item.self_cpu_memory_usage / 1e6,
        }
        if cuda:
            row["self_device_ms"] = (
                getattr(item, "self_device_time_total", None)
                or getattr(item, "self_cuda_time_total", 0)
            ) / 1e3
            row["self_device_memory_MB"] = (
                getattr(item, "self_device_memory_usage", None)
                or getattr(item, "self_cuda_memory_usage", 0)
            ) / 1e6
        rows.append(row)
    time_key = "self_device_ms" if cuda else "self_cpu_ms"
    memory_key = "self_device_memory_MB" if cuda else "self_cpu_memory_MB"
    return {
        "by_time": sorted(rows, key=lambda r: -r[time_key])[:count],
        "by_memory": sorted(rows, key=lambda r: -r[memory_key])[:count],
        "total_self_ms": sum(r[time_key] for r in rows),
    }


# -- the run --


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", default="water513", choices=SYSTEMS)
    parser.add_argument("--num-message-passing", type=int, default=0)
    parser.add_argument(
        "--scalar-messages", action="store_true", help="equivariant_message_passing False"
    )
    parser.add_argument("--lr", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--long-range", default="ewald", choices=["ewald", "pme", "auto"])
    parser.add_argument("--stress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--eager", action="store_true", help="fused_edges False, where the model has the switch"
    )
    parser.add_argument("--top", type=int, default=12, help="operators listed by time and memory")
    parser.add_argument("--no-op-profile", action="store_true", help="skip the operator tables")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.num_message_passing < 0:
        parser.error(f"--num-message-passing must be >= 0, got {args.num_message_passing}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from lorem_torch import EnergyModel, Lorem
    from lorem_torch.data import atoms_to_graph

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    torch.manual_seed(0)
    model = Lorem(
        lr=args.lr,
        num_message_passing=args.num_message_passing,
        equivariant_message_passing=not args.scalar_messages,
        long_range={"method": args.long_range},
    ).to(dtype=dtype, device=device)
    fused = set_fused(model, False if args.eager else None)
    atoms = build_system(args.system)
    graph = atoms_to_graph([atoms], model.cutoff, dtype=dtype, device=device)
    num_atoms, num_pairs = len(atoms), int(graph["centers"].shape[0])
    method = "none"
    if args.lr:
        method = "pme" if model.uses_pme(graph["cell"][0], num_atoms) else "ewald"

    with torch.no_grad():
        radial, harmonics = model.edge_basis(
            graph["positions"][graph["others"]] - graph["positions"][graph["centers"]]
        )
    split = fused is not True and split_first_block_matches(model, graph, radial, harmonics)
    del radial, harmonics
    stages = build_stages(model, graph, split, method)
    strain = torch.zeros(1, 3, 3, dtype=dtype, device=device)
    start = {"positions": graph["positions"], "strain": strain}
    if not args.stress:
        # the strain stays a zero constant: no virial asked, none differentiated
        start = {"positions": graph["positions"]}
        stages[0].inputs.remove("strain")
        with_strain = stages[0].fn
        stages[0].fn = lambda v: with_strain({**v, "strain": strain})

    energy_model = EnergyModel(model)

    def model_step():
        return energy_model(**graph, compute_forces=True, compute_stress=args.stress)

    print(
        f"system {args.system}: {num_atoms} atoms, {num_pairs} pairs; model T = "
        f"{args.num_message_passing} ({'scalar' if args.scalar_messages else 'equivariant'} "
        f"messages), lr {'on, ' + method if args.lr else 'off'}, {args.dtype}, {device}, "
        f"threads {torch.get_num_threads()}; fused_edges "
        f"{'(no switch)' if fused is None else fused}; first block "
        f"{'split' if split else 'whole'}; energy + forces{' + stress' if args.stress else ''}"
    )
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at start")

    # one warm-up pass (the same modules and operators as the unstaged step), then the
    # timed passes; each stage's minimum over the passes
    run_staged(stages, start, Meter(device, annotate=False))
    passes = []
    step_times, step_cpu_times = [], []
    for _ in range(args.repeat):
        meter = Meter(device, annotate=False)
        gradients = run_staged(stages, start, meter)
        passes.append(meter.records)
        meter = Meter(device, annotate=False)
        reference = meter.measure("step", model_step)
        step_times.append(meter.records["step"]["time_s"])
        step_cpu_times.append(meter.records["step"]["cpu_s"])
    labels = list(passes[0])
    stage_time = {label: min(p[label]["time_s"] for p in passes) for label in labels}
    stage_cpu = {label: min(p[label]["cpu_s"] for p in passes) for label in labels}
    if cuda:
        memory = {label: passes[-1][label] for label in labels}
    else:
        meter = Meter(device, annotate=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run_staged(stages, start, meter)
        memory = profiler_memory(prof, labels, _cpu_device_type())
        del prof

    forces_difference = (-gradients["positions"] - reference["forces"]).abs().max().item()
    force_scale = reference["forces"].abs().max().item()
    check = {"forces_max_abs_difference": forces_difference, "forces_max_abs": force_scale}
    if args.stress:
        virial_difference = (gradients["strain"] - reference["virial"]).abs().max().item()
        check["virial_max_abs_difference"] = virial_difference
        check["virial_max_abs"] = reference["virial"].abs().max().item()
    del reference, gradients

    step = {"time_s": min(step_times), "cpu_s": min(step_cpu_times)}
    report_stages(stages, stage_time, stage_cpu, memory, step, num_atoms, check)

    operators = None
    if not args.no_op_profile:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities, profile_memory=True) as prof:
            model_step()
            if cuda:
                torch.cuda.synchronize()
        operators = top_operators(prof, cuda, args.top)
        report_operators(operators, cuda)

    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"process peak resident set {rss_peak / 1e6:.2f} GB (before the model: "
        f"{rss_start / 1e6:.2f} GB; coarse, includes the operator profile)"
    )
    if cuda:
        print(f"CUDA peak allocated over the run {torch.cuda.max_memory_allocated() / 1e6:.1f} MB")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if args.json:
        record = {
            "options": vars(args),
            "atoms": num_atoms,
            "pairs": num_pairs,
            "method": method,
            "threads": torch.get_num_threads(),
            "fused_edges": fused,
            "first_block_split": split,
            "step_s": min(step_times),
            "step_cpu_s": min(step_cpu_times),
            "step_times_s": step_times,
            "stages": {
                label: {"time_s": stage_time[label], "cpu_s": stage_cpu[label], **memory[label]}
                for label in labels
            },
            "load_average": os.getloadavg(),
            "check": check,
            "operators": operators,
            "peak_rss_GB": rss_peak / 1e6,
            "torch": torch.__version__,
        }
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)


def _cpu_device_type():
    """The device type the profiler gives CPU memory events (torch's DeviceType.CPU)."""
    return torch._C._autograd.DeviceType.CPU


def report_stages(stages, stage_time, stage_cpu, memory, step, num_atoms, check) -> None:
    staged_total = sum(stage_time.values())
    print()
    print("wall ms: minimum over the passes; cpu ms: process CPU time (all threads), forward +")
    print("backward; peak / held MB: tensor memory above the level at the stage's start")
    print(
        f"{'stage':<46} {'fwd ms':>8} {'bwd ms':>8} {'share':>6} {'cpu ms':>8} "
        f"{'fwd peak MB':>11} {'fwd held MB':>11} {'bwd peak MB':>11}"
    )
    forward_sum = backward_sum = cpu_sum = 0.0
    for stage in stages:
        forward = "forward: " + stage.name
        backward = "backward: " + stage.name
        f_ms = stage_time[forward] * 1e3
        b_ms = stage_time.get(backward, 0.0) * 1e3
        cpu_ms = (stage_cpu[forward] + stage_cpu.get(backward, 0.0)) * 1e3
        forward_sum += f_ms
        backward_sum += b_ms
        cpu_sum += cpu_ms
        share = (f_ms + b_ms) / (staged_total * 1e3)
        back_peak = memory[backward]["peak_bytes"] / 1e6 if backward in memory else 0.0
        print(
            f"{stage.name:<46} {f_ms:>8.1f} {b_ms:>8.1f} {share:>6.1%} {cpu_ms:>8.1f} "
            f"{memory[forward]['peak_bytes'] / 1e6:>11.1f} "
            f"{memory[forward]['held_bytes'] / 1e6:>11.1f} {back_peak:>11.1f}"
        )
    print(
        f"{'staged sum':<46} {forward_sum:>8.1f} {backward_sum:>8.1f} {'100%':>6} {cpu_sum:>8.1f}"
    )
    print(
        f"unstaged model step (EnergyModel): {step['time_s'] * 1e3:.1f} ms wall, "
        f"{step['cpu_s'] * 1e3:.1f} ms cpu; {step['time_s'] / num_atoms * 1e6:.1f} us per atom"
    )
    held = sum(memory["forward: " + s.name]["held_bytes"] for s in stages)
    print(
        f"held after the forward (kept for the backward): {held / 1e6:.1f} MB = "
        f"{held / num_atoms / 1e6:.3f} MB per atom"
    )
    line = (
        f"check, staged against model: forces max |diff| "
        f"{check['forces_max_abs_difference']:.2e} (max |F| {check['forces_max_abs']:.2e})"
    )
    if "virial_max_abs_difference" in check:
        line += (
            f"; virial max |diff| {check['virial_max_abs_difference']:.2e} "
            f"(max |W| {check['virial_max_abs']:.2e})"
        )
    print(line)


def report_operators(operators, cuda: bool) -> None:
    unit = "device" if cuda else "cpu"
    total = operators["total_self_ms"]
    for title, rows in (
        (f"top operators by self {unit} time", operators["by_time"]),
        (f"top operators by self {unit} memory", operators["by_memory"]),
    ):
        print()
        print(f"{title} (one unstaged step under torch.profiler; total {total:.1f} ms)")
        print(f"{'operator':<40} {'calls':>6} {'self ms':>9} {'share':>6} {'self MB':>9}")
        for row in rows:
            ms = row[f"self_{unit}_ms"]
            mb = row["self_device_memory_MB"] if cuda else row["self_cpu_memory_MB"]
            print(
                f"{row['name'][:40]:<40} {row['calls']:>6} {ms:>9.1f} "
                f"{ms / total if total else math.nan:>6.1%} {mb:>9.1f}"
            )


if __name__ == "__main__":
    main()
