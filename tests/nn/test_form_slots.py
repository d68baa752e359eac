"""The slot checks that every form operator shares (cpp/src/ops/multilinear_form.hpp,
`check_slots`): each operator refuses, naming itself and the slot, a target that is not
a slot, a negative target size, a filled target slot, a missing factor, an integer
factor and factors of two dtypes."""

import pytest
import torch

from lorem_torch.nn.coupling_ops import product_entries
from lorem_torch.nn.message_ops import sparse_coupling


def message_case():
    entries, coupling, path_index = sparse_coupling(1)
    edges, atoms, s = 5, 3, 2
    factors = [
        torch.randn(edges, 4, dtype=torch.float64),
        torch.randn(edges, 2, s, dtype=torch.float64),
        torch.randn(path_index.shape[0], s, dtype=torch.float64),
        torch.randn(atoms, 4, s, dtype=torch.float64),
        torch.randn(atoms, 4, s, dtype=torch.float64),
    ]
    fixed = [torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 2, 0, 0, 1]), entries, coupling]
    return "message_form", factors, fixed, ["harmonics", "coefficients"]


def coupling_case():
    entries, coupling, path_index = product_entries(1, 1, 1)
    atoms, s = 3, 2
    factors = [
        torch.randn(atoms, 4, s, dtype=torch.float64),
        torch.randn(atoms, 4, s, dtype=torch.float64),
        torch.randn(path_index.shape[0], s, dtype=torch.float64),
        torch.randn(atoms, 4, s, dtype=torch.float64),
    ]
    return "coupling_form", factors, [entries, coupling], ["input1", "input2"]


def radial_case():
    pairs, hidden, radial, out = 4, 3, 2, 5
    factors = [
        torch.randn(pairs, hidden, dtype=torch.float64),
        torch.randn(pairs, radial, dtype=torch.float64),
        torch.randn(hidden, radial, out, dtype=torch.float64),
        torch.randn(pairs, out, dtype=torch.float64),
    ]
    return "radial_form", factors, [], ["features", "radial"]


def pair_sum_case():
    factors = [
        torch.randn(4, dtype=torch.float64),
        torch.randn(3, 2, dtype=torch.float64),
        torch.randn(2, 2, dtype=torch.float64),
    ]
    fixed = [torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0, 1, 1])]
    return "pair_sum_form", factors, fixed, ["pair_values", "sources"]


@pytest.mark.parametrize("case", [message_case, coupling_case, radial_case, pair_sum_case])
def test_every_form_operator_checks_its_slots_alike(case):
    name, factors, fixed, (first, second) = case()
    op = getattr(torch.ops.lorem, name)
    slots = len(factors)

    def call(target, shape, inputs):
        return op(target, shape, *inputs, *fixed)

    # a valid call first: the refusals below come from what each one changes
    target_shape = list(factors[0].shape)
    valid = [None] + factors[1:]
    assert call(0, target_shape, valid).shape == factors[0].shape
    with pytest.raises(RuntimeError, match=f"lorem::{name}: target {slots} is not a factor slot"):
        call(slots, target_shape, valid)
    with pytest.raises(RuntimeError, match=f"lorem::{name}: the target's shape .* negative size"):
        call(0, [-1] + target_shape[1:], valid)
    with pytest.raises(RuntimeError, match=rf"lorem::{name}: the target's slot \({first}\)"):
        call(0, target_shape, factors)
    with pytest.raises(RuntimeError, match=f"lorem::{name}: {second} is missing"):
        call(0, target_shape, [None, None] + factors[2:])
    integer = [None, factors[1].long()] + factors[2:]
    with pytest.raises(RuntimeError, match=f"lorem::{name}: {second} must be floating point"):
        call(0, target_shape, integer)
    mixed = [None, factors[1].float()] + factors[2:]
    with pytest.raises(RuntimeError, match=r"one dtype and device \(\w+ differs\)"):
        call(0, target_shape, mixed)
