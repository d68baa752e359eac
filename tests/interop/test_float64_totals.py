"""Energy totals are float64 whatever the model dtype (docs/design.md section 2).

A float32 model with trained-size per-element baselines (hundreds of eV per atom) on
4,096 atoms of NaCl: a float32 sum of the per-atom energies is off by electronvolts
(ulp of -2.2e6 is 0.25 eV), the float32 baseline by 2e-5 eV per atom. Every consumer
must give the float64 sum of its per-atom energies, and agree with a float64 evaluation
of the same weights to 1e-3 eV: the calculator (a Lorem, a checkpoint, an export), the
C++ runtime, lorem-eval, lorem-ipi and the training loss.
"""

import socket

import ase.io
import numpy as np
import pytest
import torch
from conftest import cpp_evaluate, evaluate, nacl, small_model
from test_ipi import ScriptedServer, message, serve

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import save_checkpoint
from lorem_torch.export import export_model
from lorem_torch.ipi_driver import BOHR_PER_ANGSTROM, HARTREE_PER_EV

# trained models have baselines of this size (water: O about -430 eV, H about -13 eV;
# heavier elements run to thousands); digits beyond float32's on purpose
BASELINE = {11: -612.3456789123, 17: -437.8912345678}
TOTAL_TOLERANCE = 1e-3  # eV, on totals of about -2.2e6 eV


def with_baseline(model):
    """The model with BASELINE: set through the state dict, as a checkpoint loads it."""
    state = model.state_dict()
    table = state["baseline"].clone()
    for z, energy in BASELINE.items():
        table[z] = energy
    state["baseline"] = table
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module", params=["short_range", "pme"])
def models(request):
    """(float32 model, its float64 twin, the 4,096-atom structure, the float64 total)."""
    options = dict(num_features=8, num_radial=8, max_degree=2, num_spherical_features=2)
    if request.param == "short_range":
        options["lr"] = False
    else:
        options["long_range"] = "pme"
    single = with_baseline(small_model(torch.float32, **options))
    double = with_baseline(small_model(torch.float64, **options))
    double.load_state_dict(single.state_dict())
    atoms = nacl(repeat=8, rattle=0.05)
    assert len(atoms) == 4096
    reference = float(evaluate(double, [atoms])["energy"][0])
    return single, double, atoms, reference


def check_total(energy, energies, reference):
    """The total equals the float64 sum of the per-atom energies and the float64 model."""
    energies = np.asarray(energies, dtype=np.float64)
    assert energy == pytest.approx(energies.sum(), abs=1e-6)
    assert abs(energy - reference) < TOTAL_TOLERANCE, (energy, reference)


def test_baseline_stays_float64(models):
    single, _, _, _ = models
    assert single.baseline.dtype == torch.float64
    assert single.embedding.dtype == torch.float32
    assert float(single.baseline[11]) == BASELINE[11]
    assert float(single.to(torch.float32).baseline[17]) == BASELINE[17]


def test_model_outputs(models):
    single, _, atoms, reference = models
    out = evaluate(single, [atoms])
    assert out["energy"].dtype == torch.float64
    check_total(float(out["energy"][0]), out["energies"].detach().numpy(), reference)


def test_calculator_lorem_and_checkpoint(models, tmp_path):
    single, _, atoms, reference = models
    save_checkpoint(tmp_path / "model.ckpt", single)
    for calculator in (
        LoremCalculator(single),
        LoremCalculator(tmp_path / "model.ckpt", dtype="float32"),
    ):
        atoms.calc = calculator
        energy = atoms.get_potential_energy()
        check_total(energy, atoms.get_potential_energies(), reference)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    single, _, _, _ = models
    path = tmp_path_factory.mktemp("export") / "model.pt"
    export_model(single, path, dtype="float32")
    return path


def test_calculator_export_and_cpp_runtime(models, exported):
    from lorem_torch._core import Model as CppModel

    _, _, atoms, reference = models
    atoms.calc = LoremCalculator(exported)
    check_total(atoms.get_potential_energy(), atoms.get_potential_energies(), reference)
    result = cpp_evaluate(CppModel(str(exported), "cpu"), atoms)
    check_total(result["energy"], result["energies"], reference)


def test_lorem_eval(models, exported, tmp_path):
    from lorem_torch.train import evaluate_checkpoint

    _, _, atoms, reference = models
    unlabelled = atoms.copy()
    ase.io.write(tmp_path / "nacl.xyz", unlabelled)
    result = evaluate_checkpoint(exported, str(tmp_path / "nacl.xyz"), output=str(tmp_path / "out"))
    predicted = ase.io.read(result["predictions"])
    check_total(predicted.info["lorem_energy"], predicted.arrays["lorem_energies"], reference)


def test_lorem_ipi(models):
    single, _, atoms, reference = models
    server_socket, client_socket = socket.socketpair()
    thread, _ = serve(LoremCalculator(single), atoms, client_socket)
    server = ScriptedServer(server_socket)
    assert server.status() == "NEEDINIT"
    server.init()
    cell_h = atoms.cell.array.T * BOHR_PER_ANGSTROM
    server.positions([cell_h], [atoms.positions * BOHR_PER_ANGSTROM])
    energies, _, _, _ = server.forces(1, len(atoms))
    server.sock.sendall(message("EXIT"))
    thread.join(timeout=60)
    assert abs(energies[0] / HARTREE_PER_EV - reference) < TOTAL_TOLERANCE


def test_training_loss_compares_totals_in_float64(models):
    """A label equal to the float64 prediction gives an energy loss of (1e-3 eV / N)^2 at
    most; in float32 the label alone is rounded by 0.1 eV."""
    from lorem_torch.train.data import Sample, make_batch
    from lorem_torch.train.loop import loss_terms, output_model, predict

    single, _, atoms, reference = models
    from lorem_torch.data import structure_to_graph

    sample = Sample(
        graph=structure_to_graph(atoms, single.cutoff, 0),
        energy=reference,
        forces=None,
        stress=None,
        num_atoms=len(atoms),
        config_type="nacl",
    )
    batch = make_batch([sample], torch.float32)
    assert batch.energy.dtype == torch.float64
    out = predict(output_model(single), batch, training=False, stress=False)
    energy_term = float(loss_terms(out, batch)["energy"])
    assert energy_term < (TOTAL_TOLERANCE / len(atoms)) ** 2
