"""The fused tensor product (lorem::coupling_form, nn/coupling_ops.py): every target of
the operator against the dense reference, its first and second derivatives, the CPU
kernel against the torch-op kernel other devices run, and TensorProduct's fused path
against its dense and block-sparse paths for every degree combination the models use."""

import pytest
import torch

from lorem_torch.nn.coupling_ops import coupled_product, product_entries
from lorem_torch.nn.layers import TensorDense, TensorProduct
from lorem_torch.nn.spherical import clebsch_gordan, degree_of_component

SLOTS = ("input1", "input2", "weights", "gradient")
OPERATORS = (torch.ops.lorem.coupling_form, torch.ops.lorem.coupling_form_chunked)


def random_problem(degrees, channels, num_atoms, even_output=False, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    entries, coupling, path_index = product_entries(*degrees, even_output)
    sizes = [(L + 1) ** 2 for L in degrees]

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return dict(
        input1=rand(num_atoms, sizes[0], channels),
        input2=rand(num_atoms, sizes[1], channels),
        weights=rand(path_index.shape[0], channels),
        gradient=rand(num_atoms, sizes[2], channels),
        entries=entries,
        coupling=coupling.to(dtype),
        path_index=path_index,
        degrees=degrees,
        even_output=even_output,
    )


def dense_product(problem, x1, x2, weights):
    """The product the dense way: every (m1, m2, m3) of the coupling tensor."""
    L1, L2, L3 = problem["degrees"]
    d1, d2, d3 = (degree_of_component(L) for L in (L1, L2, L3))
    channels = weights.shape[1]
    kernel = (
        weights.new_zeros((L1 + 1) * (L2 + 1) * (L3 + 1), channels)
        .index_copy(0, problem["path_index"], weights)
        .reshape(L1 + 1, L2 + 1, L3 + 1, channels)
    )
    degree_sum = d1[:, None, None] + d2[None, :, None]
    if not problem["even_output"]:
        degree_sum = degree_sum + d3[None, None, :]
    cg = clebsch_gordan(L1, L2, L3).to(weights.dtype) * (degree_sum % 2 == 0)
    expanded = kernel[d1][:, d2][:, :, d3] * cg[..., None]
    return torch.einsum("nac,nbc,abdc->ndc", x1, x2, expanded)


def call(op, problem, target, values):
    shape = list(problem[SLOTS[target]].shape)
    slots = [None if k == target else values[k] for k in range(4)]
    return op(target, shape, *slots, problem["entries"], problem["coupling"])


@pytest.mark.parametrize(
    "degrees, channels, num_atoms, even_output",
    [
        ((6, 6, 6), 8, 5, False),  # the self and combine products of the default model
        ((6, 6, 2), 1, 4, False),  # the charge product (TensorDense to one channel)
        ((2, 6, 6), 8, 3, False),  # the potential product of the readout
        ((2, 2, 2), 3, 6, True),  # LoremBEC's even-parity channel
        ((4, 4, 4), 5, 0, False),  # no atoms (an empty rank)
    ],
)
def test_every_target_equals_the_dense_reference(degrees, channels, num_atoms, even_output):
    """Each slot as the target is the gradient of <gradient, product> in that factor,
    from the CPU kernel and from the torch-op kernel alike."""
    problem = random_problem(degrees, channels, num_atoms, even_output)
    factors = [problem[name].clone().requires_grad_(True) for name in SLOTS[:3]]
    product = dense_product(problem, *factors)
    form = (product * problem["gradient"]).sum()
    references = (
        list(torch.autograd.grad(form, factors))
        if num_atoms
        else [torch.zeros_like(f) for f in factors]
    )
    references.append(product.detach())
    values = [problem[name] for name in SLOTS]
    for op in OPERATORS:
        for target in range(4):
            result = call(op, problem, target, values)
            torch.testing.assert_close(result, references[target], rtol=1e-12, atol=1e-12)


def test_entries_hold_every_allowed_coefficient():
    entries, coupling, path_index = product_entries(6, 6, 6)
    degree = degree_of_component(6)
    cg = clebsch_gordan(6, 6, 6)
    parity = (degree[:, None, None] + degree[None, :, None] + degree[None, None, :]) % 2 == 0
    dense = torch.zeros_like(cg)
    dense[entries[:, 0], entries[:, 1], entries[:, 2]] = coupling
    torch.testing.assert_close(dense, cg * parity, rtol=0, atol=1e-14)
    assert entries.shape[0] == 6460
    flat = (degree[entries[:, 0]] * 7 + degree[entries[:, 1]]) * 7 + degree[entries[:, 2]]
    assert torch.equal(path_index[entries[:, 3]], flat)


@pytest.mark.parametrize("even_output", [False, True])
def test_first_and_second_derivatives(even_output):
    problem = random_problem((2, 2, 2), 3, 4, even_output, seed=1)
    inputs = tuple(problem[name].clone().requires_grad_(True) for name in SLOTS[:3])

    def product(x1, x2, weights):
        return coupled_product(x1, x2, weights, problem["entries"], problem["coupling"], 9)

    assert torch.autograd.gradcheck(product, inputs)
    assert torch.autograd.gradgradcheck(product, inputs)


def test_derivatives_at_the_default_degree():
    problem = random_problem((6, 6, 6), 8, 2, seed=2)
    inputs = tuple(problem[name].clone().requires_grad_(True) for name in SLOTS[:3])

    def product(x1, x2, weights):
        return coupled_product(x1, x2, weights, problem["entries"], problem["coupling"], 49)

    assert torch.autograd.gradcheck(product, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(product, inputs, fast_mode=True)


def test_float32_matches_float64():
    problem = random_problem((6, 6, 6), 8, 30, seed=3)
    values = [problem[name] for name in SLOTS]
    exact = call(torch.ops.lorem.coupling_form, problem, 3, values)
    single = dict(problem, coupling=problem["coupling"].float())
    result = call(torch.ops.lorem.coupling_form, single, 3, [v.float() for v in values])
    torch.testing.assert_close(result.double(), exact, rtol=1e-4, atol=1e-5 * exact.abs().max())


def test_bad_input_is_named():
    problem = random_problem((2, 2, 2), 3, 4)
    values = [problem[name] for name in SLOTS]
    with pytest.raises(RuntimeError, match="target's slot"):
        torch.ops.lorem.coupling_form(
            3, [4, 9, 3], *values, problem["entries"], problem["coupling"]
        )
    bad = dict(problem, entries=problem["entries"].clone())
    bad["entries"][5, 0] = 40
    with pytest.raises(RuntimeError, match="entry 5 indexes outside"):
        call(torch.ops.lorem.coupling_form, bad, 3, values)
    with pytest.raises(RuntimeError, match="inconsistent atom count"):
        call(torch.ops.lorem.coupling_form, problem, 3, [values[0][:3], *values[1:]])


@pytest.mark.parametrize(
    "degrees, features, even_output",
    [((6, 6, 6), 8, False), ((2, 6, 6), 8, False), ((3, 3, 3), 4, True), ((6, 6, 6), 3, False)],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tensor_product_fused_equals_dense_and_block_sparse(degrees, features, even_output, dtype):
    torch.manual_seed(0)
    dense = TensorProduct(*degrees, features, even_output=even_output).to(dtype)
    sparse = TensorProduct(*degrees, features, even_output=even_output, block_sparse=True).to(dtype)
    sparse.load_state_dict(dense.state_dict())
    assert dense.fused_product  # the default
    x1 = torch.randn(7, (degrees[0] + 1) ** 2, features, dtype=dtype, requires_grad=True)
    x2 = torch.randn(7, (degrees[1] + 1) ** 2, features, dtype=dtype, requires_grad=True)
    fused = dense(x1, x2)
    fused_grads = torch.autograd.grad((fused**2).sum(), [x1, x2, dense.kernel])
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    for module in (dense, sparse):
        module.fused_product = False
        reference = module(x1, x2)
        scale = float(reference.detach().abs().max())
        torch.testing.assert_close(fused, reference, rtol=0, atol=tolerance * scale)
        reference_grads = torch.autograd.grad((reference**2).sum(), [x1, x2, module.kernel])
        for a, b in zip(fused_grads, reference_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=tolerance * float(b.abs().max()))


def test_tensor_dense_scripts_with_the_fused_product():
    torch.manual_seed(0)
    layer = TensorDense(6, 8, 1, 2).double()
    x = torch.randn(5, 49, 8, dtype=torch.float64)
    scripted = torch.jit.script(layer)
    assert "coupled_product" in scripted.tensor.code
    expected = layer(x)
    layer.tensor.fused_product = False
    torch.testing.assert_close(scripted(x), layer(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(expected, layer(x), rtol=0, atol=1e-13)
