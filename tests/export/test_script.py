"""TorchScript: scripted == eager on periodic, triclinic and non-periodic input."""

import pytest
import torch
from conftest import cluster, nacl, small_model, triclinic_water

from lorem_torch import EnergyModel
from lorem_torch.data import atoms_to_graph


@pytest.mark.parametrize(
    "options", [dict(), dict(num_message_passing=1), dict(lr=False, num_message_passing=1)]
)
def test_scripted_equals_eager(options):
    model = small_model(**options)
    eager = EnergyModel(model)
    scripted = torch.jit.script(EnergyModel(model))
    for structures in ([nacl()], [triclinic_water()], [cluster()], [cluster(), nacl()]):
        graph = atoms_to_graph(structures, model.cutoff, dtype=torch.float64)
        a = eager(**graph, compute_stress=True)
        b = scripted(**graph, compute_stress=True)
        for key in ("energy", "energies", "forces", "stress", "charges", "potentials"):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-10)
