"""Write reference outputs of lorem-jax for several hyperparameter sets.

Runs in lorem-jax's own virtual environment (its import name is `lorem`):

    python -m venv /tmp/jax-venv && /tmp/jax-venv/bin/pip install lorem-jax==0.2.0
    /tmp/jax-venv/bin/python tools/make_jax_fixtures.py tests/fixtures/jax

For every configuration it writes CONFIG.npz with the hyperparameters (JSON),
`param:<flax path>` for every weight, and per structure s<i>: numbers, positions,
cell, pbc, atomic_energies, energy, forces, charges (when lr) and, for periodic
cells, virial_like = dE/d(strain). Small feature widths keep the files small.
"""

import json
import sys
from pathlib import Path

import numpy as np

CONFIGS = {
    "mp1_equivariant": dict(num_features=16, num_message_passing=1, charge_kernel_scale=1e8),
    "mp2_scalar": dict(num_features=16, num_message_passing=2, equivariant_message_passing=False),
    "lr_off": dict(num_features=16, lr=False, num_message_passing=1),
    "cutoff4_degree4": dict(num_features=16, cutoff=4.0, max_degree=4, num_spherical_features=4),
    "no_node_init": dict(num_features=16, initialize_node_features=False, num_radial=8),
}

# l > 0 charges of a freshly initialised model are tiny; scale the coupling kernel
# of the charge projection so that they are of order one (as in the shared fixture)
DEFAULT_CHARGE_KERNEL_SCALE = 1e4


def structures():
    from ase.build import bulk, molecule

    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.1, seed=1)
    water = molecule("H2O")
    water.set_cell([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, 0.7, 5.0]])
    water.pbc = True
    water = water * (1, 1, 2)
    water.rattle(0.05, seed=2)
    cluster = molecule("CH3CH2OH")
    cluster.rattle(0.05, seed=3)
    return [nacl, water, cluster]


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(flatten(value, path))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten(flat):
    tree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def main(folder, only=None):
    import jax
    import jax.numpy as jnp
    from lorem import Lorem

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, overrides in CONFIGS.items():
        if only and name not in only:
            continue
        overrides = dict(overrides)
        scale = overrides.pop("charge_kernel_scale", DEFAULT_CHARGE_KERNEL_SCALE)
        model = Lorem(**overrides)
        params = model.init(jax.random.key(0), *model.dummy_inputs())
        flat = flatten(params["params"])
        num_mp = model.num_message_passing
        if model.lr:
            key = "TensorDense_1/tensor/kernel"
            flat[key] = flat[key] * scale
        params = {"params": jax.tree.map(jnp.asarray, unflatten(flat))}
        hyperparameters = {
            k: getattr(model, k)
            for k in (
                "cutoff max_degree max_degree_lr num_features num_radial num_species "
                "num_spherical_features cutoff_fn radial_basis lr num_message_passing "
                "equivariant_message_passing initialize_node_features"
            ).split()
        }
        record = {"hyperparameters": json.dumps(hyperparameters)}
        record.update({f"param:{k}": v for k, v in flat.items()})
        for index, atoms in enumerate(structures()):
            batch = model.atoms_to_batch(atoms)
            n = len(atoms)
            periodic = bool(atoms.pbc.all())
            results = model.predict(params, batch, stress=periodic)
            energies, state = model.apply(
                params,
                batch.atomic_numbers,
                batch.sr,
                batch.nopbc,
                batch.pbc,
                capture_intermediates=True,
                mutable=["intermediates"],
            )
            p = f"s{index}:"
            record[p + "numbers"] = atoms.numbers
            record[p + "positions"] = atoms.positions
            record[p + "cell"] = atoms.cell.array
            record[p + "pbc"] = atoms.pbc
            record[p + "atomic_energies"] = np.asarray(energies)[:n]
            record[p + "energy"] = np.asarray(results["energy"])[0]
            record[p + "forces"] = np.asarray(results["forces"])[:n]
            if periodic:
                record[p + "virial_like"] = np.asarray(results["stress"])[0]
            if model.lr:
                inter = state["intermediates"]
                # the charge MLP follows the energy heads of the initial block and of
                # every message-passing step
                scalar = np.asarray(inter[f"MLP_{1 + num_mp}"]["__call__"][0])[:n]
                spherical = np.asarray(inter["TensorDense_1"]["__call__"][0])[:n].reshape(n, -1)
                record[p + "charges"] = np.concatenate([scalar, spherical], axis=1)
        np.savez_compressed(folder / f"{name}.npz", **record)
        print(name, "written")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
