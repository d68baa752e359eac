"""What float32 costs: forces of one model in float32 against float64, on growing water
supercells, and how much of the difference the rounding of the positions alone makes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/float32_accuracy.py CHECKPOINT \
        [--repeats 1 2 3 4] [--long-range pme] [--rattle 0.02]

CHECKPOINT: a trained model of water (e.g. `lorem-train examples/configs/water.yaml
--epochs 400 --output runs/water`, then runs/water/best.pt); the boxes are the first
frame of examples/data/water-64.xyz repeated n x n x n and rattled. Per box it prints,
in eV/A: |F32 - F64| max and rms over atoms, the atoms above 1e-3, and "positions only":
the float64 model given the positions rounded to float32 in the model's frame (the part
of the difference that comes from the inputs, not the arithmetic). The energy difference per atom in eV.
"""

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import ase.io

    from lorem_torch import LoremCalculator
    from lorem_torch.data import model_frame_offsets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--long-range", default="pme", choices=["ewald", "pme"])
    parser.add_argument("--rattle", type=float, default=0.02, help="A, Gaussian, seed 0")
    args = parser.parse_args()

    base = ase.io.read(ROOT / "examples" / "data" / "water-64.xyz", 0)
    print(
        f"{'atoms':>7} {'max':>9} {'rms':>9} {'>1e-3':>6} {'pos. max':>9} {'pos. rms':>9} "
        f"{'dE/atom':>9} {'s':>5}"
    )
    for n in args.repeats:
        atoms = base.repeat((n, n, n))
        rng = np.random.default_rng(0)
        atoms.positions += rng.normal(scale=args.rattle, size=atoms.positions.shape)
        # the positions as the model sees them (data.model_frame_offsets, in float64),
        # rounded to float32 and put back where they were
        offsets = model_frame_offsets(atoms.positions, atoms.cell.array, True)
        frame = atoms.positions - offsets
        rounded = atoms.copy()
        rounded.positions = frame.astype(np.float32).astype(np.float64) + offsets
        start = time.perf_counter()
        results = {}
        for name, structure, dtype in (
            ("64", atoms, "float64"),
            ("32", atoms, "float32"),
            ("rounded", rounded, "float64"),
        ):
            calculator = LoremCalculator(args.checkpoint, dtype=dtype, long_range=args.long_range)
            copy = structure.copy()
            copy.calc = calculator
            results[name] = (copy.get_potential_energy(), copy.get_forces())
        energy, forces = results["64"]
        single = np.linalg.norm(results["32"][1] - forces, axis=1)
        inputs = np.linalg.norm(results["rounded"][1] - forces, axis=1)
        print(
            f"{len(atoms):7d} {single.max():9.2e} {np.sqrt((single**2).mean()):9.2e} "
            f"{int((single > 1e-3).sum()):6d} {inputs.max():9.2e} "
            f"{np.sqrt((inputs**2).mean()):9.2e} "
            f"{abs(results['32'][0] - energy) / len(atoms):9.1e} "
            f"{time.perf_counter() - start:5.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
