"""Export and inference: the parity ladder eager == scripted == exported and reloaded ==
C++ runtime (lorem_torch._core), stage by stage == whole, the ASE calculator in MD,
and named errors for bad files."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.md.verlet import VelocityVerlet
from ase.units import fs
from conftest import (
    RUNTIME_DEVICE,
    cluster,
    cpp_evaluate,
    evaluate,
    nacl,
    rewrite_code,
    rewrite_metadata,
    small_model,
    triclinic_water,
)
from lorem_torch._core import LoremError, Model

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import save_checkpoint
from lorem_torch.data import atoms_to_graph
from lorem_torch.export import (
    ExportedLorem,
    ExportError,
    evaluate_ranks,
    export_model,
    load_exported,
    split_into_ranks,
)


def one_atom():
    return Atoms("O", positions=[[0.0, 0.0, 0.0]], cell=[6.0, 6.0, 6.0], pbc=True)


def no_neighbours():
    return Atoms("OH", positions=[[0.0, 0.0, 0.0], [7.0, 0.0, 0.0]])


def small_cell():
    # cell shorter than twice the cutoff along every direction: many images of each atom
    atoms = Atoms(
        "OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[3.1, 3.3, 3.2], pbc=True
    )
    atoms.rattle(0.02, seed=4)
    return atoms


STRUCTURES = {
    "orthorhombic": lambda: nacl(1),
    "triclinic": triclinic_water,
    "non_periodic": cluster,
    "small_cell": small_cell,
    "one_atom": one_atom,
    "no_neighbours": no_neighbours,
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    model = small_model(species=[1, 6, 8, 11, 17])
    paths = {}
    for dtype in ("float64", "float32"):
        paths[dtype] = folder / f"model-{dtype}.pt"
        export_model(model, paths[dtype], dtype)
    return model, paths


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_parity_ladder(exports, name, dtype, tolerance):
    model, paths = exports
    atoms = STRUCTURES[name]()
    periodic = bool(atoms.pbc.all())
    reference = evaluate(model, [atoms], stress=periodic)  # eager, float64
    energy = float(reference["energy"])
    scale = max(1.0, abs(energy))

    torch_dtype = getattr(torch, dtype)
    eager = small_model(species=[1, 6, 8, 11, 17]).to(torch_dtype)
    scripted = torch.jit.script(ExportedLorem(eager))
    reloaded, metadata = load_exported(paths[dtype])
    assert metadata["contract"]["dtype"] == dtype
    graph = atoms_to_graph([atoms], 5.0, dtype=torch_dtype)
    inputs = [graph[k] for k in graph]
    for module in (scripted, reloaded):
        e, energies, forces, virial, charges, _ = module.energy_forces_virial(*inputs)
        assert float(e[0]) == pytest.approx(energy, abs=tolerance * scale)
        np.testing.assert_allclose(
            forces.detach().double().numpy(), reference["forces"].numpy(), atol=tolerance * scale
        )
        np.testing.assert_allclose(
            charges.double().numpy(), reference["charges"].detach().numpy(), atol=tolerance * scale
        )
        if periodic:
            np.testing.assert_allclose(
                virial[0].detach().double().numpy(),
                reference["virial"][0].numpy(),
                atol=tolerance * scale,
            )

    cpp = cpp_evaluate(Model(str(paths[dtype]), RUNTIME_DEVICE), atoms)
    assert cpp["energy"] == pytest.approx(energy, abs=tolerance * scale)
    np.testing.assert_allclose(
        cpp["energies"], reference["energies"].detach().numpy(), atol=tolerance * scale
    )
    np.testing.assert_allclose(cpp["forces"], reference["forces"].numpy(), atol=tolerance * scale)
    if periodic:
        np.testing.assert_allclose(
            cpp["virial"], reference["virial"][0].numpy(), atol=tolerance * scale
        )


@pytest.mark.parametrize("name", ["orthorhombic", "triclinic", "non_periodic", "small_cell"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_stage_by_stage_equals_whole(exports, name, ranks):
    """The C++ runtime's staged algorithm over simulated ranks, exported module."""
    model, paths = exports
    atoms = STRUCTURES[name]()
    if name == "orthorhombic":
        atoms = atoms * (2, 1, 1)
    periodic = bool(atoms.pbc.all())
    reference = evaluate(model, [atoms], stress=periodic)
    # a slab decomposition along x, so that ranks own contiguous regions (some may be empty)
    fractional = (
        atoms.get_scaled_positions(wrap=True)[:, 0]
        if periodic
        else np.argsort(np.argsort(atoms.positions[:, 0])) / len(atoms)
    )
    rank_of_atom = np.minimum((fractional * ranks).astype(int), ranks - 1)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    results = evaluate_ranks(paths["float64"], systems, atoms.cell.array, periodic)
    assert sum(r.energy for r in results) == pytest.approx(float(reference["energy"]), abs=1e-10)
    forces = np.zeros((len(atoms), 3))
    for r, result in enumerate(results):
        forces[np.where(rank_of_atom == r)[0]] = result.forces.numpy()
    np.testing.assert_allclose(forces, reference["forces"].numpy(), atol=1e-10)
    if periodic:
        virial = sum(r.virial for r in results)
        np.testing.assert_allclose(virial.numpy(), reference["virial"][0].numpy(), atol=1e-10)


def test_empty_rank(exports):
    model, paths = exports
    atoms = nacl(1)
    rank_of_atom = np.zeros(len(atoms), dtype=int)  # rank 1 owns nothing
    rank_of_atom[0] = 0
    systems = split_into_ranks(atoms, 5.0, np.concatenate([rank_of_atom, [1]])[: len(atoms)])
    assert len(systems) == 1
    atoms2 = atoms.copy()
    systems = split_into_ranks(atoms2, 5.0, rank_of_atom)
    results = evaluate_ranks(paths["float64"], systems, atoms.cell.array, True)
    reference = evaluate(model, [atoms])
    assert sum(r.energy for r in results) == pytest.approx(float(reference["energy"]), abs=1e-10)


def test_calculator_takes_checkpoint_export_and_model(exports, tmp_path):
    model, paths = exports
    checkpoint = tmp_path / "model.ckpt"
    save_checkpoint(checkpoint, model)
    atoms = triclinic_water()
    values = []
    for source, dtype in ((model, None), (checkpoint, torch.float64), (paths["float64"], None)):
        atoms.calc = LoremCalculator(source, dtype=dtype)
        values.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
        assert atoms.calc.results["charges"].shape == (len(atoms), 10)
    for energy, forces, stress in values[1:]:
        assert energy == pytest.approx(values[0][0], abs=1e-10)
        np.testing.assert_allclose(forces, values[0][1], atol=1e-10)
        np.testing.assert_allclose(stress, values[0][2], atol=1e-10)
    with pytest.raises(ValueError, match="exported in float32"):
        LoremCalculator(paths["float32"], dtype=torch.float64)


def test_skin_reuse_equals_rebuilding(exports):
    model, _ = exports
    atoms = triclinic_water()
    reuse = LoremCalculator(model, skin=1.0)
    rebuild = LoremCalculator(model, skin=0.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        atoms.positions += rng.normal(0, 0.05, size=atoms.positions.shape)
        atoms.calc = reuse
        e1, f1 = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = rebuild
        e2, f2 = atoms.get_potential_energy(), atoms.get_forces()
        assert e1 == pytest.approx(e2, abs=1e-12)
        np.testing.assert_allclose(f1, f2, atol=1e-12)
    assert reuse.rebuilds < rebuild.rebuilds


@pytest.mark.parametrize("make", [cluster, triclinic_water])
def test_nve_conserves_energy(exports, make):
    model, _ = exports
    atoms = make()
    atoms.calc = LoremCalculator(model, skin=0.5)
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.25 * fs)
    totals = []
    for _ in range(200):
        dynamics.run(1)
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
    drift = max(totals) - min(totals)
    # bound: 1 meV per atom over 50 fs (random small model, 0.25 fs steps)
    assert drift < 1e-3 * len(atoms), drift


def test_bad_files(exports, tmp_path):
    model, paths = exports
    checkpoint = tmp_path / "model.ckpt"
    save_checkpoint(checkpoint, model)
    with pytest.raises(ExportError, match="not a TorchScript archive"):
        load_exported(checkpoint)
    with pytest.raises(
        LoremError, match="is a training checkpoint, not an export: run `lorem-export"
    ):
        Model(str(checkpoint))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(paths["float64"].read_bytes()[:5000])
    with pytest.raises(LoremError) as error:
        Model(str(truncated))
    # one line that names the file and says what is wrong, without libtorch's advice
    message = str(error.value)
    assert message.startswith(f"'{truncated}' cannot be loaded: it is truncated or corrupt")
    assert message.endswith(")") and "\n" not in message and "checkpoint" not in message
    with pytest.raises(ExportError, match=f"{truncated} is truncated or corrupt"):
        load_exported(truncated)
    with pytest.raises(LoremError, match="does not exist"):
        Model(str(tmp_path / "missing.pt"))
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ExportError, match="not a lorem-torch export"):
        load_exported(plain)
    with pytest.raises(LoremError, match="not a lorem-torch export"):
        Model(str(plain))
    # a newer format version: rewrite the metadata inside the archive
    newer = rewrite_metadata(
        paths["float64"], tmp_path / "newer.pt", lambda m: {**m, "format_version": 99}
    )
    with pytest.raises(ExportError, match="newer"):
        load_exported(newer)
    with pytest.raises(LoremError, match="version 99, newer"):
        Model(str(newer))
    # an operator this library lacks (an export from a newer lorem-torch): named, with
    # what to do, instead of "truncated or corrupt"
    future = rewrite_code(
        paths["float64"],
        tmp_path / "future.pt",
        b"ops.lorem.harmonics(",
        b"ops.lorem.operator_from_the_future(",
    )
    with pytest.raises(ExportError) as error:
        load_exported(future)
    assert "calls the operator lorem::operator_from_the_future, which this lorem-torch does " in (
        str(error.value)
    )
    with pytest.raises(LoremError) as error:
        Model(str(future))
    message = str(error.value)
    assert "calls the operator lorem::operator_from_the_future, which this runtime does not" in (
        message
    )
    assert "rebuild the plugin" in message and "\n" not in message
    if not torch.cuda.is_available():
        with pytest.raises(LoremError, match="CUDA is not available"):
            Model(str(paths["float64"]), "cuda")
    with pytest.raises(LoremError, match="unknown device"):
        Model(str(paths["float64"]), "tpu")


def test_unknown_element_in_cpp(exports):
    _, paths = exports
    atoms = Atoms("OU", positions=[[0, 0, 0], [2.0, 0, 0]])
    with pytest.raises(LoremError, match=r"unknown element.*\[92\]"):
        cpp_evaluate(Model(str(paths["float64"]), RUNTIME_DEVICE), atoms)


def test_non_finite_weights_are_not_exported(tmp_path):
    model = small_model()
    with torch.no_grad():
        model.embedding[0, 0] = float("nan")
    with pytest.raises(ExportError, match=r"non-finite weights \(embedding\)"):
        export_model(model, tmp_path / "model.pt", "float64")
    assert not (tmp_path / "model.pt").exists()


def test_runtime_refuses_a_non_finite_result(exports, tmp_path):
    """What passes the input checks and still gives NaN (here coincident atoms, with the
    contract's min_distance set to 0) stops with a named error, not NaN forces."""
    _, paths = exports

    def no_minimum(metadata):
        metadata["contract"]["min_distance"] = 0.0
        return metadata

    path = rewrite_metadata(paths["float64"], tmp_path / "no_minimum.pt", no_minimum)
    atoms = cluster()
    atoms.positions[1] = atoms.positions[0]
    with pytest.raises(LoremError, match=r"non-finite energy \(first at row 0"):
        cpp_evaluate(Model(str(path), RUNTIME_DEVICE), atoms)
