"""ASE molecular dynamics steps per second, 192-atom water box, default LOREM (float32):
the Python model (LoremCalculator) and the C++ runtime (lorem_torch._core).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ase_md.py [--steps 10]
"""

import argparse
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.md.verlet import VelocityVerlet
from ase.units import fs

ROOT = Path(__file__).resolve().parents[1]


class RuntimeCalculator(Calculator):
    """Energy and forces through the C++ runtime (ghost atoms built in Python)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, path, cutoff):
        super().__init__()
        from lorem_torch._core import Model

        self.model = Model(str(path))
        self.cutoff = cutoff

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from lorem_torch.export import split_into_ranks

        super().calculate(atoms, properties, system_changes)
        (system,) = split_into_ranks(self.atoms, self.cutoff, np.zeros(len(self.atoms), dtype=int))
        out = self.model.compute(
            system.positions.numpy(),
            system.atomic_numbers.numpy(),
            system.n_local,
            system.centers.numpy(),
            system.others.numpy(),
            self.atoms.cell.array,
            True,
            system.ghost_index.numpy(),
        )
        self.results = {"energy": out["energy"], "forces": out["forces"]}


def steps_per_second(atoms, calculator, steps):
    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=0.5 * fs)
    dynamics.run(2)  # warm-up
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from lorem_torch import Lorem, LoremCalculator
    from lorem_torch.export import export_model

    torch.manual_seed(0)
    model = Lorem(species=[1, 8])
    atoms = ase.io.read(ROOT / "examples/data/water-64.xyz", "-1")
    python = steps_per_second(atoms, LoremCalculator(model), args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        export_model(model, path, "float32")
        runtime = steps_per_second(atoms, RuntimeCalculator(path, model.cutoff), args.steps)
    print(f"192-atom water, default LOREM, float32, {torch.get_num_threads()} threads")
    print(f"Python model (LoremCalculator): {python:.2f} steps/s ({1 / python:.3f} s/step)")
    print(f"C++ runtime (lorem_torch._core): {runtime:.2f} steps/s ({1 / runtime:.3f} s/step)")


if __name__ == "__main__":
    main()
