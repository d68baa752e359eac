"""The C++ runtime's short range in chunks of local atoms (Model.short_range_chunk): each
chunk's stages run without their autograd graph and are computed again in the backward,
so only one chunk's graph is held at a time. The numbers are those of one pass, and of
the whole eager model, in float64: every stage kind (initial block, equivariant and scalar
message passing), every long-range method, Born effective charges with a field, over
simulated ranks, with chunks of one atom, of a few, and larger than a rank."""

import numpy as np
import pytest
from conftest import (
    FIELD,
    bec_outputs,
    cluster,
    cpp_evaluate,
    evaluate,
    nacl,
    small_bec,
    small_model,
    triclinic_water,
    water_slab,
)
from lorem_torch._core import LoremError, Model

from lorem_torch.export import evaluate_ranks, export_model, split_into_ranks

TOLERANCE = 1e-10


def along_x(atoms, ranks):
    fractional = atoms.get_scaled_positions(wrap=True)[:, 0]
    return np.minimum((fractional * ranks).astype(int), ranks - 1)


def assert_close(result, reference, periodic=True):
    assert result["energy"] == pytest.approx(float(reference["energy"].detach()), abs=TOLERANCE)
    np.testing.assert_allclose(
        result["forces"], reference["forces"].detach().numpy(), atol=TOLERANCE
    )
    if periodic:
        np.testing.assert_allclose(
            result["virial"], reference["virial"][0].detach().numpy(), atol=TOLERANCE
        )


MODELS = {
    "ewald": dict(),
    "pme": dict(long_range={"method": "pme"}),
    "equivariant_mp2": dict(num_message_passing=2),
    "scalar_mp1": dict(num_message_passing=1, equivariant_message_passing=False),
    "no_lr": dict(lr=False, num_message_passing=1),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("short_range_chunks")
    out = {}
    for name, options in MODELS.items():
        model = small_model(**options)
        path = folder / f"{name}.pt"
        export_model(model, path, "float64")
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("chunk", [1, 5, 11])
def test_chunks_equal_one_pass_and_the_model(exports, name, chunk):
    """Triclinic water of 12 atoms in one process: chunks of 1, 5 and 11 atoms (the last
    one short) against one pass and against the eager model."""
    model, path = exports[name]
    atoms = triclinic_water() * (2, 1, 1)
    cpp = Model(str(path))
    whole = cpp_evaluate(cpp, atoms)
    cpp.short_range_chunk = chunk
    assert cpp.short_range_chunk == chunk
    chunked = cpp_evaluate(cpp, atoms)
    for key in ("energies", "forces", "virial"):
        np.testing.assert_allclose(chunked[key], whole[key], atol=1e-12, rtol=0)
    assert_close(chunked, evaluate(model, [atoms], stress=True))


@pytest.mark.parametrize("ranks", [2, 3])
def test_chunks_over_ranks(exports, ranks):
    """Message passing with PME over simulated ranks: each rank chunks its own atoms, the
    ghost features' gradients go back to their owners after all of a stage's chunks."""
    model, path = exports["equivariant_mp2"]
    model = model.with_long_range("pme")
    export = path.with_name(f"pme_mp2_{ranks}.pt")
    export_model(model, export, "float64")
    atoms = nacl(1)
    rank_of_atom = along_x(atoms, ranks)
    systems = split_into_ranks(atoms, model.cutoff, rank_of_atom)
    cpp = Model(str(export))
    cpp.short_range_chunk = 3
    results = evaluate_ranks(cpp, systems, atoms.cell.array, True)
    reference = evaluate(model, [atoms], stress=True)
    forces = np.zeros((len(atoms), 3))
    for rank, result in enumerate(results):
        forces[rank_of_atom == rank] = result.forces.numpy()
    assert sum(r.energy for r in results) == pytest.approx(
        float(reference["energy"].detach()), abs=TOLERANCE
    )
    np.testing.assert_allclose(forces, reference["forces"].numpy(), atol=TOLERANCE)
    virial = sum(r.virial for r in results).numpy()
    np.testing.assert_allclose(virial, reference["virial"][0].numpy(), atol=TOLERANCE)


def test_chunks_with_open_boundaries_and_a_slab(exports, tmp_path):
    model, path = exports["equivariant_mp2"]
    cpp = Model(str(path))
    cpp.short_range_chunk = 4
    molecule = cluster()
    assert_close(cpp_evaluate(cpp, molecule), evaluate(model, [molecule]), periodic=False)

    slab_model = small_model(species=[1, 8], long_range={"slab": True}, num_message_passing=1)
    slab_path = tmp_path / "slab.pt"
    export_model(slab_model, slab_path, "float64")
    slab = water_slab()
    slab.wrap()
    cpp = Model(str(slab_path))
    cpp.short_range_chunk = 2
    assert_close(cpp_evaluate(cpp, slab), evaluate(slab_model, [slab], stress=True))


def test_chunks_with_born_effective_charges_and_a_field(tmp_path):
    model = small_bec(num_message_passing=1)
    path = tmp_path / "bec.pt"
    export_model(model, path, "float64", long_range="pme")
    atoms = triclinic_water() * (2, 1, 1)
    cpp = Model(str(path))
    cpp.short_range_chunk = 5
    result = cpp_evaluate(cpp, atoms, electric_field=FIELD)
    reference = bec_outputs(model.with_long_range("pme"), [atoms], field=[FIELD], stress=True)
    np.testing.assert_allclose(
        result["born_effective_charges"], reference["apt"].detach().numpy(), atol=TOLERANCE
    )
    np.testing.assert_allclose(
        result["forces"], reference["forces"].detach().numpy(), atol=TOLERANCE
    )


def test_a_negative_chunk_is_refused(exports):
    cpp = Model(str(exports["ewald"][1]))
    with pytest.raises(LoremError, match="chunk size must be >= 0"):
        cpp.short_range_chunk = -1
    assert cpp.short_range_chunk == 0


def test_chunks_refuse_a_pair_whose_centre_is_not_local(exports):
    """Chunks select pairs by centre: a centre outside the local atoms would fall out of
    every chunk, so it is refused by name instead."""
    cpp = Model(str(exports["ewald"][1]))
    cpp.short_range_chunk = 2
    atoms = triclinic_water()
    (system,) = split_into_ranks(atoms, cpp.cutoff, np.zeros(len(atoms), dtype=int))
    centers, others = system.centers.numpy().copy(), system.others.numpy()
    positions = system.positions.numpy()
    ghost = system.n_local  # the first ghost, made the centre of a pair
    pair = next(
        p
        for p in range(len(centers))
        if np.linalg.norm(positions[others[p]] - positions[ghost]) > 1
    )
    centers[pair] = ghost
    with pytest.raises(LoremError, match="centre must be a local atom"):
        cpp.compute(
            system.positions.numpy(),
            system.atomic_numbers.numpy(),
            system.n_local,
            centers,
            others,
            np.asarray(atoms.cell.array, dtype=float),
            True,
            system.ghost_index.numpy(),
        )


OUT_OF_MEMORY = """
import resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import nacl
from lorem_torch._core import LoremError, Model
from lorem_torch.export import split_into_ranks

cpp = Model({path!r})
cpp.short_range_chunk = {chunk}
atoms = nacl(6)
(system,) = split_into_ranks(atoms, cpp.cutoff, np.zeros(len(atoms), dtype=int))
inputs = (system.positions.numpy(), system.atomic_numbers.numpy(), system.n_local,
          system.centers.numpy(), system.others.numpy(), np.asarray(atoms.cell.array, float),
          True, system.ghost_index.numpy())
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
# a few MB more address space than now: the step's large tensors cannot be allocated
resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 20), resource.RLIM_INFINITY))
try:
    cpp.compute(*inputs)
except LoremError as error:
    print("ERROR", error)
"""


@pytest.mark.parametrize("chunk", [0, 7])
def test_running_out_of_memory_says_what_holds_less(exports, chunk):
    """A step that cannot allocate its tensors (a process limited to a few MB more than it
    holds) stops with one line that names the chunks, or a smaller chunk."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = OUT_OF_MEMORY.format(
        tests=str(Path(__file__).resolve().parents[1]), path=str(exports["ewald"][1]), chunk=chunk
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    ).stdout
    assert "ERROR lorem model evaluation ran out of memory (" in output, output[-2000:]
    # the allocator's own line, not the TorchScript traceback's first
    assert "can't allocate memory" in output.split("):")[0]
    if chunk == 0:
        assert "pair_style lorem ... chunk N" in output
    else:
        assert "a smaller chunk (now 7 local atoms)" in output


def test_chunks_hold_less_memory(tmp_path):
    """The point of the chunks: without their graphs kept, a step's peak falls (each
    setting in a fresh process, benchmarks/bench_short_range_chunks.py's first-step peak of
    the resident set; water 4,104, default model with PME, float32: 0.09 against 0.05 MB per
    atom). A chunked forward that kept its graphs would hold as much as one pass."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lorem_torch import Lorem

    export = tmp_path / "default.pt"
    export_model(Lorem(long_range={"method": "pme"}), export, "float32")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_short_range_chunks.py"
    env = dict(os.environ, OMP_NUM_THREADS="2")

    def peak(chunk):
        command = [sys.executable, str(script), "--one", "peak", "--system", "water4104"]
        command += ["--chunk", str(chunk), "--export", str(export), "--device", "cpu"]
        output = subprocess.run(
            command, check=True, capture_output=True, text=True, env=env, timeout=600
        ).stdout
        line = next(x for x in output.splitlines() if x.startswith("RESULT "))
        return json.loads(line[len("RESULT ") :])["peak_MB"]

    whole, chunked = peak(0), peak(1024)
    assert chunked < 0.75 * whole, (whole, chunked)
