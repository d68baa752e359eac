"""One call surface (lorem_torch.predict): an eager model and its export answer a graph
with the same keys and the same numbers, with and without stress, Born charges and a
field; exports written before `compute` existed answer alike through their old methods."""

import numpy as np
import pytest
import torch
from conftest import FIELD, cluster, small_bec, small_model, triclinic_water

from lorem_torch import keys
from lorem_torch.data import atoms_to_graph
from lorem_torch.export import export_model, load_exported
from lorem_torch.export.loading import export_outputs
from lorem_torch.predict import predict


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    out = {}
    for name, model in (("lorem", small_model()), ("bec", small_bec(num_message_passing=1))):
        path = folder / f"{name}.pt"
        export_model(model, path, "float64")
        out[name] = (model, load_exported(path)[0])
    return out


class BeforeCompute:
    """An export as written before `compute`: every method but that one."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if name == "compute":
            raise AttributeError(name)
        return getattr(self._module, name)


def assert_same(first, second):
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_allclose(
            first[key].numpy(), second[key].numpy(), atol=1e-10, rtol=0, err_msg=key
        )


@pytest.mark.parametrize("name", ["lorem", "bec"])
@pytest.mark.parametrize("stress", [False, True])
def test_eager_and_export_answer_alike(models, name, stress):
    model, module = models[name]
    graph = atoms_to_graph([triclinic_water(), cluster()], model.cutoff, dtype=torch.float64)
    field = torch.tensor([FIELD, (0.0, 0.2, -0.1)], dtype=torch.float64) if name == "bec" else None
    eager = predict(model, graph, stress, field)
    exported = predict(module, graph, stress, field)
    expected = {keys.ENERGY, keys.ENERGIES, keys.FORCES, keys.CHARGES, keys.POTENTIALS}
    if stress:
        expected |= {keys.VIRIAL, keys.STRESS}
    if name == "bec":
        expected |= {keys.APT}
    assert set(eager) == expected
    assert_same(eager, exported)
    assert not any(value.requires_grad for value in exported.values())
    if name == "bec":  # the field adds Z* E to the forces and nothing else
        plain = predict(module, graph, stress)
        per_atom = field[graph[keys.ATOM_STRUCTURE]]
        np.testing.assert_allclose(
            exported[keys.FORCES].numpy(),
            (plain[keys.FORCES] + torch.einsum("nab,nb->na", plain[keys.APT], per_atom)).numpy(),
            atol=1e-12,
        )
        assert torch.equal(plain[keys.ENERGY], exported[keys.ENERGY])


@pytest.mark.parametrize("name", ["lorem", "bec"])
def test_exports_before_compute_answer_alike(models, name):
    model, module = models[name]
    graph = atoms_to_graph([triclinic_water(), cluster()], model.cutoff, dtype=torch.float64)
    field = torch.tensor(FIELD, dtype=torch.float64) if name == "bec" else None
    old = export_outputs(BeforeCompute(module), graph, True, field)
    assert_same(predict(module, graph, True, field), old)


def test_field_refused_by_a_model_without_the_head(models):
    model, module = models["lorem"]
    graph = atoms_to_graph([triclinic_water()], model.cutoff, dtype=torch.float64)
    with pytest.raises(Exception, match=r"\[lorem:field\]"):
        predict(module, graph, False, torch.tensor(FIELD, dtype=torch.float64))
