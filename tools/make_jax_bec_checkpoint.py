"""A lorem-jax LoremBEC checkpoint folder, written by lorem-jax's own checkpoint code
(marathon.emit.checkpoint.save), and the predictions of lorem-jax's own ASE calculator
on it (energy, forces, Born effective charges), for the lorem-import-jax test.

    /tmp/jax-venv/bin/python tools/make_jax_bec_checkpoint.py FRAMES.xyz OUT_FOLDER

A fresh small model (random weights, the APT heads' coupling kernels scaled so that the
charges are of order one), per-element baseline for H and O; two frames of FRAMES.xyz.
"""

import sys
from pathlib import Path

import ase.io
import numpy as np


def main(frames_path, out):
    import jax
    import jax.numpy as jnp
    from lorem.calculator import Calculator
    from lorem.models.bec import LoremBEC
    from make_jax_fixtures import flatten, unflatten
    from marathon.emit.checkpoint import save

    out = Path(out)
    model = LoremBEC(num_features=16, max_degree=4, num_spherical_features=4)
    params = model.init(jax.random.key(3), *model.dummy_inputs())
    flat = flatten(params["params"])
    for key in flat:
        if key.startswith("PerParticleTensorPredictor") and key.endswith("tensor/kernel"):
            flat[key] = flat[key] * 1e5
    params = {"params": jax.tree.map(jnp.asarray, unflatten(flat))}
    baseline = {"elemental": {1: -13.6, 8: -2041.2}}
    save(out, params, {}, model, baseline, {})

    calculator = Calculator.from_checkpoint(out)
    record = {}
    for index, atoms in enumerate(ase.io.read(frames_path, ":2")):
        atoms.calc = calculator
        p = f"s{index}:"
        record[p + "numbers"] = atoms.numbers
        record[p + "positions"] = atoms.positions
        record[p + "cell"] = atoms.cell.array
        record[p + "energy"] = atoms.get_potential_energy()
        record[p + "forces"] = atoms.get_forces()
        record[p + "born_effective_charges"] = calculator.results["born_effective_charges"]
    np.savez_compressed(out / "reference.npz", **record)
    print({k: float(np.abs(v).max()) for k, v in record.items() if "born" in k})


if __name__ == "__main__":
    main(*sys.argv[1:3])
