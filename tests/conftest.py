"""Shared helpers: bundled data and ../shared (optional), small models, evaluation of ASE structures."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from lorem_torch import EnergyModel, Lorem
from lorem_torch.data import atoms_to_graph
from lorem_torch.models import BECModel, LoremBEC

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BUNDLED = ROOT / "examples" / "data"
SHARED = Path(os.environ.get("LOREM_SHARED", ROOT.parent / "shared"))
# the device of the C++ runtime in parity tests (LOREM_TEST_DEVICE=cuda on a GPU machine:
# benchmarks/gpu_batch.sh); the Python references stay on the CPU
RUNTIME_DEVICE = os.environ.get("LOREM_TEST_DEVICE", "cpu")


def shared_file(relative: str) -> Path:
    """A file of the shared data folder (../shared or $LOREM_SHARED, which CI lays
    beside the clone); the calling test is skipped, saying what is missing, without it."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/{relative}): set LOREM_SHARED to the shared folder")
    return path


def small_model(dtype=torch.float64, seed=0, boost_charges=True, **overrides) -> Lorem:
    """A small LOREM with default structure; l > 0 charges boosted to order one."""
    torch.manual_seed(seed)
    options = dict(num_features=16, num_radial=8, num_spherical_features=4)
    options.update(overrides)
    model = Lorem(**options).to(dtype)
    if boost_charges and model.long_range is not None:
        with torch.no_grad():
            model.long_range.charge_tensor.tensor.kernel.mul_(30.0)
    return model


def evaluate(model, atoms_list, stress=False, dtype=None):
    dtype = dtype or next(model.parameters()).dtype
    slab = bool(getattr(model, "slab", False))
    graph = atoms_to_graph(atoms_list, model.cutoff, dtype=dtype, slab=slab)
    return EnergyModel(model)(**graph, compute_forces=True, compute_stress=stress)


def nacl(repeat=1, rattle=0.1, seed=1) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def triclinic_water(seed=2) -> Atoms:
    atoms = molecule("H2O")
    # no lattice vector of length exactly 5 A: a pair at exactly the cutoff is in or
    # out of the list by round-off, and the real-space Ewald term jumps there
    atoms.set_cell([[5.3, 0.0, 0.0], [1.2, 5.4, 0.0], [0.6, -0.9, 5.2]])
    atoms.pbc = True
    atoms = atoms * (1, 2, 1)
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def water_slab(seed=6) -> Atoms:
    """Three water molecules as a 2D slab: pbc (True, True, False), a triclinic in-plane
    cell and c along z, the atoms between z = 4 and 8 A in a 12 A tall cell."""
    atoms = Atoms()
    for k, (x, y, z) in enumerate([(1.0, 1.2, 5.0), (4.1, 1.6, 6.6), (2.6, 4.3, 5.6)]):
        water = molecule("H2O")
        water.rotate(70 * k, "x")
        water.rotate(40 * k, "z")
        water.positions += [x, y, z]
        atoms += water
    atoms.set_cell([[6.1, 0.0, 0.0], [0.9, 5.8, 0.0], [0.0, 0.0, 12.0]])
    atoms.pbc = [True, True, False]
    atoms.rattle(0.05, seed=seed)
    return atoms


def cluster(seed=3) -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_rotation(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rewrite_metadata(source, target, edit):
    """Copy an export, changing its metadata.json with edit(dict) -> dict (or str)."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as reader, zipfile.ZipFile(target, "w") as writer:
        for item in reader.infolist():
            data = reader.read(item.filename)
            if item.filename.endswith("extra/metadata.json"):
                edited = edit(json.loads(data))
                data = (edited if isinstance(edited, str) else json.dumps(edited)).encode()
            writer.writestr(item, data)
    return target


def rewrite_code(source, target, old: bytes, new: bytes):
    """Copy an export, replacing old by new in its TorchScript code (asserted present)."""
    import zipfile

    found = False
    with zipfile.ZipFile(source) as reader, zipfile.ZipFile(target, "w") as writer:
        for item in reader.infolist():
            data = reader.read(item.filename)
            if item.filename.endswith(".py") and old in data:
                data, found = data.replace(old, new), True
            writer.writestr(item, data)
    assert found, f"{old!r} is not in {source}'s code"
    return target


def cpp_evaluate(cpp_model, atoms, **options):
    """lorem_torch._core.Model.compute on one process (every atom local, periodic images as
    ghosts; a 2D slab when pbc is True, True, False); options: origin, electric_field,
    born_effective_charges."""
    import numpy as np

    from lorem_torch.data import is_slab
    from lorem_torch.export import split_into_ranks

    (system,) = split_into_ranks(atoms, cpp_model.cutoff, np.zeros(len(atoms), dtype=int))
    return cpp_model.compute(
        system.positions.numpy(),
        system.atomic_numbers.numpy(),
        system.n_local,
        system.centers.numpy(),
        system.others.numpy(),
        np.asarray(atoms.cell.array, dtype=float),
        bool(atoms.pbc.all()),
        system.ghost_index.numpy(),
        slab=is_slab(atoms),
        **options,
    )


FIELD = (0.3, -0.5, 0.7)  # V/A


def small_bec(dtype=torch.float64, seed=0, **overrides) -> LoremBEC:
    """A small LoremBEC with APT and l > 0 charges of order one."""
    torch.manual_seed(seed)
    options = dict(num_features=16, num_radial=8, num_spherical_features=4, max_degree=4)
    options.update(overrides)
    model = LoremBEC(**options).to(dtype)
    with torch.no_grad():
        if model.long_range is not None:
            model.long_range.charge_tensor.tensor.kernel.mul_(30.0)
        for head in [model.apt_initial, *model.apt_steps, model.apt_long_range]:
            if head is not None:
                head.coupling.tensor.kernel.mul_(300.0)
    return model


def bec_outputs(model, atoms_list, field=None, stress=False):
    """BECModel's outputs of a LoremBEC for a list of structures (field [S, 3] or None)."""
    dtype = next(model.parameters()).dtype
    graph = atoms_to_graph(atoms_list, model.cutoff, dtype=dtype)
    if field is not None:
        field = torch.as_tensor(np.asarray(field), dtype=dtype)
    return BECModel(model)(**graph, compute_stress=stress, electric_field=field)
