"""The per-edge radial contraction (lorem::radial_form, nn/radial_ops.py): every target
against autograd of the plain einsum, first and second derivatives, bad shapes named,
and RadialCoefficients' fused path against its plain path (values and the gradients of
a force-like loss); whole models are held to the reference in test_fused_edges.py."""

import pytest
import torch

from lorem_torch.models.lorem import RadialCoefficients
from lorem_torch.nn.radial_ops import radial_contraction

SLOTS = ("features", "radial", "weights", "gradient")


def random_factors(edges, hidden, radial, out, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return [rand(edges, hidden), rand(edges, radial), rand(hidden, radial, out), rand(edges, out)]


def plain(features, radial, weights):
    return torch.einsum("pk,pr,krf->pf", features, radial, weights)


@pytest.mark.parametrize("edges", [0, 1, 7, 5000])
def test_every_target_equals_autograd_of_the_einsum(edges):
    values = random_factors(edges, 5, 4, 3)
    leaves = [v.clone().requires_grad_(True) for v in values[:3]]
    out = plain(*leaves)
    expected = list(torch.autograd.grad((out * values[3]).sum(), leaves, allow_unused=True))
    expected = [
        torch.zeros_like(v) if e is None else e for v, e in zip(values[:3], expected, strict=True)
    ]
    expected.append(out.detach())
    for target in range(4):
        slots = [None if k == target else values[k] for k in range(4)]
        result = torch.ops.lorem.radial_form(target, list(values[target].shape), *slots)
        torch.testing.assert_close(result, expected[target], rtol=1e-12, atol=1e-12)


def test_first_and_second_derivatives():
    inputs = tuple(v.requires_grad_(True) for v in random_factors(6, 3, 2, 4, seed=1)[:3])
    assert torch.autograd.gradcheck(radial_contraction, inputs)
    assert torch.autograd.gradgradcheck(radial_contraction, inputs)


def test_bad_shapes_are_named():
    features, radial, weights, _ = random_factors(4, 3, 2, 5)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        radial_contraction(features, radial[:3], weights)
    with pytest.raises(RuntimeError, match="target's slot"):
        torch.ops.lorem.radial_form(3, [4, 5], features, radial, weights, features)


def test_radial_coefficients_fused_equals_plain():
    torch.manual_seed(0)
    module = RadialCoefficients(12, 8, 16).double()
    pair_features = torch.randn(300, 12, dtype=torch.float64, requires_grad=True)
    radial = torch.rand(300, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for fused in (True, False):
        module.fused_radial = fused
        out = module(pair_features, radial)
        # a force-like loss: the gradient of a first derivative (force training)
        (g,) = torch.autograd.grad(out.pow(2).sum(), radial, create_graph=True)
        grads = torch.autograd.grad(g.pow(2).sum(), [pair_features, *module.parameters()])
        results.append([out.detach(), g.detach(), *grads])
    for fused_value, plain_value in zip(*results, strict=True):
        scale = float(plain_value.abs().max())
        torch.testing.assert_close(fused_value, plain_value, rtol=0, atol=1e-12 * scale)


def test_both_adjoints_in_one_pass_equal_the_single_targets():
    values = random_factors(900, 6, 5, 4, seed=4)
    d_features, d_radial = torch.ops.lorem.radial_form_adjoints(*values)
    for target, result in ((0, d_features), (1, d_radial)):
        slots = [None if k == target else values[k] for k in range(4)]
        single = torch.ops.lorem.radial_form(target, list(values[target].shape), *slots)
        torch.testing.assert_close(result, single, rtol=1e-12, atol=1e-12)
    inputs = tuple(v.clone().requires_grad_(True) for v in random_factors(5, 3, 2, 4, seed=5))
    assert torch.autograd.gradcheck(lambda *f: torch.ops.lorem.radial_form_adjoints(*f), inputs)
