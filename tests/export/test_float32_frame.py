"""The model's frame: positions are moved in float64 before the cast to the model's dtype
so that float32 keeps its digits (docs/design.md 1.12). A periodic cell's centre is the
origin (lattice vectors per atom, then half the cell's diagonal); a slab's z is centred on
its atoms' mean. Python (data.model_frame_offsets) and the C++ runtime must move the
same way, as a PME mesh sits at the frame's origin."""

import numpy as np
import pytest
from conftest import cpp_evaluate, evaluate, small_model, triclinic_water, water_slab
from lorem_torch._core import Model

from lorem_torch.data import model_frame_offsets
from lorem_torch.export import export_model


def test_periodic_positions_are_centred_on_the_cell():
    atoms = triclinic_water() * (2, 2, 2)
    atoms.positions += [13.0, -7.0, 40.0]  # outside the cell: wrapped by lattice vectors
    cell = atoms.cell.array
    frame = atoms.positions - model_frame_offsets(atoms.positions, cell, True)
    fractional = np.linalg.solve(cell.T, frame.T).T
    assert fractional.min() >= -0.5 and fractional.max() < 0.5


def test_slab_positions_are_centred_in_plane_and_on_their_mean_z():
    atoms = water_slab()
    atoms.positions += [3.0, 11.0, 250.0]
    cell = atoms.cell.array
    frame = atoms.positions - model_frame_offsets(atoms.positions, cell, True, slab=True)
    fractional = np.linalg.solve(cell[:2, :2].T, frame[:, :2].T).T
    assert fractional.min() >= -0.5 and fractional.max() < 0.5
    assert abs(frame[:, 2].mean()) < 1e-9
    np.testing.assert_allclose(np.ptp(frame[:, 2]), np.ptp(atoms.positions[:, 2]))


@pytest.mark.parametrize("shape", ["periodic", "slab"])
def test_runtime_and_python_share_the_frame(tmp_path, shape):
    """A PME mesh sits at the frame's origin: a coarse mesh (accuracy 1e-3) makes where it
    sits visible in float64, so the runtime equals Python only in the same frame."""
    settings = {"method": "pme", "accuracy": 1e-3, "slab": shape == "slab"}
    model = small_model(species=[1, 8], long_range=settings)
    atoms = triclinic_water() * (2, 2, 2) if shape == "periodic" else water_slab()
    reference = evaluate(model, [atoms])["forces"].numpy()
    path = tmp_path / "model.pt"
    export_model(model, path, "float64")
    runtime = Model(str(path))
    np.testing.assert_allclose(cpp_evaluate(runtime, atoms)["forces"], reference, atol=1e-10)
    # the same runtime with its origin moved by a fraction of the cell: another mesh
    moved = cpp_evaluate(runtime, atoms, origin=tuple(0.3 * atoms.cell.array.sum(axis=0)))
    assert np.abs(moved["forces"] - reference).max() > 1e-6
