"""Reference predictions of a real lorem-jax training checkpoint (its own ASE calculator).

# in lorem-jax's virtual environment, after a short `lorem-train` run
python tools/make_jax_checkpoint_reference.py CHECKPOINT_DIR FRAMES.xyz OUT.npz
"""

import sys

import ase.io
import numpy as np


def main(folder, frames_path, out):
    from lorem.calculator import Calculator

    frames = ase.io.read(frames_path, ":3")
    calculator = Calculator.from_checkpoint(folder)
    record = {}
    for index, atoms in enumerate(frames):
        atoms.calc = calculator
        record[f"s{index}:numbers"] = atoms.numbers
        record[f"s{index}:positions"] = atoms.positions
        record[f"s{index}:energy"] = atoms.get_potential_energy()
        record[f"s{index}:forces"] = atoms.get_forces()
    np.savez_compressed(out, **record)


if __name__ == "__main__":
    main(*sys.argv[1:4])
