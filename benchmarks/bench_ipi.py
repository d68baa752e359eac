"""i-PI + lorem-ipi against an ASE MD loop, and the cost of the BEC head.

192-atom water box (examples/data/water-64.xyz), default hyperparameters, random
weights (timings do not depend on them), float32 unless --dtype float64:

1. steps per second of an NVT run driven by i-PI's server through the lorem-ipi client
   (unix socket; i-PI runs in its own process, the client in this one), against
   LoremCalculator in an ASE Langevin loop, and the model evaluation alone: the
   difference per step is the cost of the socket round trip and i-PI's integrator;
2. energy + forces of LoremBEC (APT head, acoustic sum rule, field forces) against
   Lorem with the same backbone hyperparameters, and against Lorem's defaults.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ipi.py [--steps 20] [--device cuda]

On a machine shared with other jobs, one thread: OpenMP threads that wait for a busy
core spin, which inflates both wall and CPU time erratically.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.units import fs

ROOT = Path(__file__).resolve().parents[1]

IPI_INPUT = """<simulation verbosity="low" safe_stride="100000">
  <output prefix="bench">
    <properties stride="1" filename="out"> [ step, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 1 </seed></prng>
  <ffsocket name="lorem" mode="unix"><address> {name} </address></ffsocket>
  <system>
    <initialize nbeads="1">
      <file mode="ase"> init.extxyz </file>
      <velocities mode="thermal" units="kelvin"> 300 </velocities>
    </initialize>
    <forces><force forcefield="lorem"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond"> 0.5 </timestep>
        <thermostat mode="langevin"><tau units="femtosecond"> 100 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units="kelvin"> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def best_and_median(durations):
    """(fastest, median) of per-step wall times: on a shared machine the fastest step is
    the cost without interference, the median what a run sees."""
    return float(np.min(durations)), float(np.median(durations))


def ase_seconds_per_step(atoms, calculator, steps):
    """Wall time of one step of an ASE Langevin loop (fastest, median)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = Langevin(
        atoms, 0.5 * fs, temperature_K=300, friction=0.01, fixcm=False, rng=np.random
    )
    dynamics.run(2)  # warm-up
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        dynamics.run(1)
        durations.append(time.perf_counter() - start)
    return best_and_median(durations)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stamped:
    """A calculator that notes the time of every evaluation (for the i-PI step rate) and
    the CPU time the i-PI server process has used by then."""

    def __init__(self, calculator, server_pid):
        self.calculator = calculator
        self.server_pid = server_pid
        self.stamps = []
        self.server_cpu = []

    def calculate(self, atoms, properties):
        self.calculator.calculate(atoms, properties)
        self.stamps.append(time.perf_counter())
        self.server_cpu.append(process_cpu_seconds(self.server_pid))

    @property
    def results(self):
        return self.calculator.results


def ipi_seconds_per_step(atoms, calculator, steps, folder):
    """Time between force requests of an i-PI NVT run (fastest, median; i-PI in its own
    process, this process the lorem-ipi client on a unix socket), and the CPU seconds
    i-PI's server used per step (clock ticks of 10 ms: meaningful over many steps)."""
    from lorem_torch.ipi_driver import IPIClient, connect

    folder = Path(folder)
    atoms = atoms.copy()
    atoms.calc = None
    ase.io.write(folder / "init.extxyz", atoms, format="extxyz")
    name = f"lorem-bench-{uuid.uuid4().hex[:8]}"
    (folder / "input.xml").write_text(IPI_INPUT.format(steps=steps + 2, name=name))
    ipi = os.path.join(os.path.dirname(sys.executable), "i-pi")
    server = subprocess.Popen(
        [ipi, "input.xml"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    stamped = Stamped(calculator, server.pid)
    try:
        with connect(unix=name, wait=60) as sock:
            IPIClient(stamped, atoms, sock, log=lambda m: None).run()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        if os.path.exists(f"/tmp/ipi_{name}"):
            os.unlink(f"/tmp/ipi_{name}")
    timed = stamped.stamps[2:]  # past start-up and warm-up
    server_cpu = (stamped.server_cpu[-1] - stamped.server_cpu[2]) / (len(timed) - 1)
    return (*best_and_median(np.diff(timed)), server_cpu)


def evaluation_seconds(calculator, atoms, repeats):
    """Wall time of one energy + forces evaluation (fastest, median)."""
    atoms = atoms.copy()
    for _ in range(2):
        calculator.calculate(atoms, ["energy", "forces"])
    durations = []
    for _ in range(repeats):
        atoms.positions += 1e-4  # a new structure every time
        start = time.perf_counter()
        calculator.calculate(atoms, ["energy", "forces"])  # results come back to numpy: synced
        durations.append(time.perf_counter() - start)
    return best_and_median(durations)


def interleaved_evaluation_seconds(calculators, atoms, repeats, clock=time.process_time):
    """{name: (fastest, median)} of energy + forces for several calculators, timed in
    turn (A, B, C, A, B, C, ...) so that the load of a shared machine hits all alike;
    by default in CPU time of this process (all threads), which other processes on the
    machine barely change, unlike wall time (use it on CPU only)."""
    atoms = atoms.copy()
    for calculator in calculators.values():
        for _ in range(2):
            calculator.calculate(atoms, ["energy", "forces"])
    durations = {name: [] for name in calculators}
    for _ in range(repeats):
        atoms.positions += 1e-4
        for name, calculator in calculators.items():
            start = clock()
            calculator.calculate(atoms, ["energy", "forces"])
            durations[name].append(clock() - start)
    return {name: best_and_median(values) for name, values in durations.items()}


SMALL = dict(num_features=16, max_degree=2, num_spherical_features=4)


class NoForces(Calculator):
    """Zero energy, forces and stress at no cost: what remains of a step is transport."""

    implemented_properties = ["energy", "forces", "stress"]
    device = torch.device("cpu")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    from lorem_torch import Lorem, LoremCalculator
    from lorem_torch.models import LoremBEC

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    atoms = ase.io.read(ROOT / "examples/data/water-64.xyz", "0")
    atoms.calc = None
    print(
        f"192-atom water, {args.dtype}, device {args.device}, {torch.get_num_threads()} threads; "
        f"fastest and median of {args.steps} steps"
    )

    def calculator(model, **options):
        return LoremCalculator(model, device=args.device, dtype=dtype, **options)

    def ms(pair):
        return f"{pair[0] * 1e3:8.1f} ms ({pair[1] * 1e3:8.1f} median)"

    # the transport alone: no model, many steps
    transport_steps = 10 * args.steps
    ase_step = ase_seconds_per_step(atoms, NoForces(), transport_steps)
    with tempfile.TemporaryDirectory() as folder:
        *ipi_step, server_cpu = ipi_seconds_per_step(atoms, NoForces(), transport_steps, folder)
    print(f"no model (zero forces), {transport_steps} steps:")
    print(f"  ASE Langevin loop               {ms(ase_step)}/step")
    print(f"  i-PI NVT + lorem-ipi (unix)     {ms(ipi_step)}/step")
    print(f"  i-PI's server used {server_cpu * 1e3:.1f} ms CPU per step")

    # the same with the model: the socket overhead is a fixed cost per step
    for label, options in (("default LOREM", {}), (f"small LOREM {SMALL}", SMALL)):
        torch.manual_seed(0)
        model = Lorem(species=[1, 8], **options)
        evaluation = evaluation_seconds(calculator(model), atoms, args.steps)
        ase_step = ase_seconds_per_step(atoms, calculator(model), args.steps)
        with tempfile.TemporaryDirectory() as folder:
            *ipi_step, server_cpu = ipi_seconds_per_step(
                atoms, calculator(model), args.steps, folder
            )
        print(f"{label}:")
        print(f"  model alone (energy + forces)   {ms(evaluation)}")
        print(
            f"  ASE Langevin + LoremCalculator  {ms(ase_step)}/step  {1 / ase_step[0]:6.2f} steps/s"
        )
        print(
            f"  i-PI NVT + lorem-ipi (unix)     {ms(ipi_step)}/step  {1 / ipi_step[0]:6.2f} steps/s"
        )
        print(
            f"  i-PI + socket per step (fastest): {(ipi_step[0] - evaluation[0]) * 1e3:+.1f} ms over "
            f"the evaluation, {(ipi_step[0] - ase_step[0]) * 1e3:+.1f} ms against the ASE loop; "
            f"i-PI's server used {server_cpu * 1e3:.1f} ms CPU per step"
        )

    # -- the BEC head --
    for label, options in (("default", {}), ("small", SMALL)):
        torch.manual_seed(0)
        bec = LoremBEC(species=[1, 8], **options)
        rows = {
            "Lorem, defaults": calculator(Lorem(species=[1, 8], **options)),
            "Lorem, LoremBEC's backbone": calculator(Lorem(species=[1, 8], **bec.hyperparameters)),
            "LoremBEC (APT + sum rule)": calculator(bec),
            "LoremBEC, field forces": calculator(bec, electric_field=(0.0, 0.0, 0.1)),
        }
        # CPU time on the CPU (robust to other load); wall time on a GPU
        clock = time.process_time if args.device == "cpu" else time.perf_counter
        times = interleaved_evaluation_seconds(rows, atoms, args.steps, clock)
        base = times["Lorem, LoremBEC's backbone"][0]
        kind = "CPU time" if args.device == "cpu" else "wall time"
        print(f"energy + forces (+ Born effective charges), {label} widths, {kind}:")
        for name, seconds in times.items():
            print(f"  {name:28s} {ms(seconds)}  {seconds[0] / base:.2f} x the same backbone")


if __name__ == "__main__":
    main()
