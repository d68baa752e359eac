"""Write reference outputs of lorem-jax's LoremBEC (Born effective charges) for several
hyperparameter sets.

Runs in lorem-jax's own virtual environment (its import name is `lorem`):

    /tmp/jax-venv/bin/python tools/make_jax_bec_fixtures.py tests/fixtures/jax_bec

For every configuration it writes CONFIG.npz with the hyperparameters (JSON),
`param:<flax path>` for every weight, the field `electric_field` [3] (V/A), and per
structure s<i>: numbers, positions, cell, pbc, atomic_energies, energy, forces,
apt (after the acoustic sum rule, [n, 3, 3]), apt_raw (before it), forces_field
(forces with the field term) and, for periodic cells, virial_like = dE/d(strain).
The structures are those of make_jax_fixtures.py (two periodic, one not).
Small feature widths keep the files small.
"""

import json
import sys
from pathlib import Path

import numpy as np

# the script's folder is on sys.path when it runs as a script
from make_jax_fixtures import DEFAULT_CHARGE_KERNEL_SCALE, flatten, structures, unflatten

CONFIGS = {
    "bec_default": dict(num_features=16, apt_kernel_scale=1e6),
    "bec_mp1_equivariant": dict(
        num_features=16,
        num_message_passing=1,
        equivariant_message_passing=True,
        initialize_node_features=True,
        cutoff=4.0,
        max_degree=4,
        num_spherical_features=4,
        apt_kernel_scale=1e6,
    ),
    "bec_mp1_scalar_lr_off": dict(
        num_features=16, num_radial=8, lr=False, num_message_passing=1, apt_kernel_scale=1e5
    ),
}

# the APT of a freshly initialised model is tiny (1e-8 to 1e-3: products of small
# spherical features); the coupling kernels of the tensor heads are scaled so that it
# is of order one on the periodic structures, where the parity test needs it

ELECTRIC_FIELD = np.array([0.3, -0.5, 0.7])  # V/A


def main(folder, only=None):
    import jax
    import jax.numpy as jnp
    from lorem.models.bec import LoremBEC

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, overrides in CONFIGS.items():
        if only and name not in only:
            continue
        overrides = dict(overrides)
        apt_scale = overrides.pop("apt_kernel_scale")
        model = LoremBEC(**overrides)
        params = model.init(jax.random.key(0), *model.dummy_inputs())
        flat = flatten(params["params"])
        for key in flat:
            if key.startswith("PerParticleTensorPredictor") and key.endswith("tensor/kernel"):
                flat[key] = flat[key] * apt_scale
        if model.lr:
            # the charge projection: order-one l > 0 charges (see make_jax_fixtures.py)
            key = "TensorDense_1/tensor/kernel"
            flat[key] = flat[key] * DEFAULT_CHARGE_KERNEL_SCALE
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
        record["electric_field"] = ELECTRIC_FIELD
        record.update({f"param:{k}": v for k, v in flat.items()})
        for index, atoms in enumerate(structures()):
            batch = model.atoms_to_batch(atoms)
            n = len(atoms)
            periodic = bool(atoms.pbc.all())
            results = model.predict(params, batch, stress=periodic)
            field = model.predict(params, batch, electric_field=jnp.asarray(ELECTRIC_FIELD))
            _, (energies, apt_raw) = model.energy(params, batch)
            p = f"s{index}:"
            record[p + "numbers"] = atoms.numbers
            record[p + "positions"] = atoms.positions
            record[p + "cell"] = atoms.cell.array
            record[p + "pbc"] = atoms.pbc
            record[p + "atomic_energies"] = np.asarray(energies)[:n]
            record[p + "energy"] = np.asarray(results["energy"])[0]
            record[p + "forces"] = np.asarray(results["forces"])[:n]
            record[p + "apt"] = np.asarray(results["apt"])[:n]
            record[p + "apt_raw"] = np.asarray(apt_raw)[:n]
            record[p + "forces_field"] = np.asarray(field["forces"])[:n]
            if periodic:
                record[p + "virial_like"] = np.asarray(results["stress"])[0]
        np.savez_compressed(folder / f"{name}.npz", **record)
        print(name, "written", {k: float(np.abs(v).max()) for k, v in record.items() if "apt" in k})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
