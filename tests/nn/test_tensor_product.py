"""TensorProduct, dense (the default) and block_sparse, against a dense reference written
here: values, first and second derivatives, TorchScript, equivariance, and the coupling
blocks."""

import math

import pytest
import torch
from conftest import random_rotation

from lorem_torch.nn.layers import TensorProduct
from lorem_torch.nn.spherical import (
    SphericalHarmonics,
    clebsch_gordan,
    coupling_blocks,
    degree_of_component,
    reflection_classes,
)

# (L1, L2, L3, F): the model's uses (self product, messages and combine 6 x 6 -> 6 with
# F = 4..16, the charge projection 6 x 6 -> 2 with F = 1, the potential readout
# 2 x 6 -> 6), smaller max_degree models, and lopsided or degenerate degrees
SHAPES = [
    (6, 6, 6, 8),
    (6, 6, 6, 4),
    (6, 6, 6, 16),
    (6, 6, 2, 1),
    (2, 6, 6, 8),
    (6, 2, 6, 3),
    (6, 0, 6, 2),
    (0, 6, 6, 2),
    (1, 1, 1, 3),
    (4, 4, 4, 4),
    (4, 4, 2, 1),
    (2, 4, 4, 4),
    (3, 3, 3, 2),
    (2, 2, 2, 3),
    (1, 2, 3, 2),
    (3, 1, 0, 2),
    (0, 0, 0, 2),
    (2, 2, 5, 2),
]
# even_output (e3x's even-parity channel, pseudotensor outputs): the Born-charge head's
# 6 x 6 -> 2 with F = 1, and others
EVEN_SHAPES = [(6, 6, 2, 1), (2, 2, 2, 3), (1, 1, 1, 2), (3, 2, 4, 2), (6, 6, 6, 2)]
CASES = [(shape, False) for shape in SHAPES] + [(shape, True) for shape in EVEN_SHAPES]


def case_id(case):
    shape, even_output = case
    return str(shape) + ("-even" if even_output else "")


def path_mask(max_degree1, max_degree2, max_degree3, even_output=False):
    l1 = torch.arange(max_degree1 + 1)[:, None, None]
    l2 = torch.arange(max_degree2 + 1)[None, :, None]
    l3 = torch.arange(max_degree3 + 1)[None, None, :]
    parity = (l1 + l2) % 2 == 0 if even_output else (l1 + l2 + l3) % 2 == 0
    return parity & ((l1 - l2).abs() <= l3) & (l3 <= l1 + l2)


def dense_reference(kernel, x1, x2, max_degrees, even_output=False):
    """The implementation this one replaced: outer product [N, C1*C2, F] times the dense
    [C1*C2, C3] weights (kernel spread over the components, times CG), per feature."""
    max_degree1, max_degree2, max_degree3 = max_degrees
    mask = path_mask(*max_degrees, even_output).to(kernel.dtype)
    weights = (kernel * mask[..., None])[degree_of_component(max_degree1)]
    weights = weights[:, degree_of_component(max_degree2)][:, :, degree_of_component(max_degree3)]
    weights = weights * clebsch_gordan(*max_degrees).to(kernel.dtype)[..., None]
    weights = weights.reshape(-1, weights.shape[2], weights.shape[3])  # [C1*C2, C3, F]
    num, features = x1.shape[0], x1.shape[2]
    outer = (x1.unsqueeze(2) * x2.unsqueeze(1)).reshape(num, -1, features)
    return torch.bmm(outer.permute(2, 0, 1), weights.permute(2, 0, 1)).permute(1, 2, 0)


def make(shape, num=5, seed=0, dtype=torch.float64, even_output=False, block_sparse=True):
    """A TensorProduct with a random kernel (masked paths nonzero too: they must not
    count), and random inputs."""
    max_degree1, max_degree2, max_degree3, features = shape
    generator = torch.Generator().manual_seed(seed)
    module = TensorProduct(
        max_degree1,
        max_degree2,
        max_degree3,
        features,
        even_output=even_output,
        block_sparse=block_sparse,
    ).to(dtype)
    with torch.no_grad():
        module.kernel.copy_(torch.randn(module.kernel.shape, generator=generator, dtype=dtype))
    x1 = torch.randn(num, (max_degree1 + 1) ** 2, features, generator=generator, dtype=dtype)
    x2 = torch.randn(num, (max_degree2 + 1) ** 2, features, generator=generator, dtype=dtype)
    return module, x1, x2


def assert_relative(actual, expected, tolerance=1e-12):
    scale = expected.abs().max().clamp(min=1e-300)
    error = (actual - expected).abs().max() / scale
    assert error < tolerance, f"relative error {error:.3e}"


@pytest.mark.parametrize("block_sparse", [True, False], ids=["block", "dense"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_dense_reference(case, block_sparse):
    shape, even_output = case
    module, x1, x2 = make(shape, num=11, even_output=even_output, block_sparse=block_sparse)
    expected = dense_reference(module.kernel, x1, x2, shape[:3], even_output)
    actual = module(x1, x2)
    assert actual.shape == (11, (shape[2] + 1) ** 2, shape[3])
    assert_relative(actual, expected)


@pytest.mark.parametrize(
    "case",
    [
        ((6, 6, 6, 3), False),
        ((6, 6, 2, 1), False),
        ((2, 6, 6, 3), False),
        ((6, 2, 6, 2), False),
        ((3, 2, 4, 3), False),
        ((1, 1, 1, 2), False),
        ((0, 0, 0, 2), False),
        ((6, 6, 2, 1), True),
        ((2, 2, 2, 2), True),
    ],
    ids=case_id,
)
def test_first_and_second_derivatives_match_dense_reference(case):
    shape, even_output = case
    module, x1, x2 = make(shape, num=6, seed=1, even_output=even_output)
    generator = torch.Generator().manual_seed(2)
    out_shape = (6, (shape[2] + 1) ** 2, shape[3])
    cotangent = torch.randn(out_shape, generator=generator, dtype=torch.float64)
    directions = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in (x1, x2)]

    def derivatives(function):
        kernel = module.kernel.detach().clone().requires_grad_(True)
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        value = (function(kernel, a, b) * cotangent).sum()
        first = torch.autograd.grad(value, (a, b, kernel), create_graph=True)
        # a force-like loss: the second derivative reaches inputs and parameters
        loss = (first[0] * directions[0]).sum() + (first[1] * directions[1]).sum()
        loss = loss + (first[0] ** 2).sum() + (first[2] ** 2).sum()
        second = torch.autograd.grad(loss, (a, b, kernel))
        return [t.detach() for t in first] + list(second)

    def block_sparse(kernel, a, b):
        return torch.func.functional_call(module, {"kernel": kernel}, (a, b))

    def dense(kernel, a, b):
        return dense_reference(kernel, a, b, shape[:3], even_output)

    for actual, expected in zip(derivatives(block_sparse), derivatives(dense), strict=True):
        assert_relative(actual, expected)


def test_gradcheck_and_gradgradcheck():
    module, x1, x2 = make((2, 2, 2, 2), num=3, seed=3)
    kernel = module.kernel.detach().clone()

    def function(kernel, a, b):
        return torch.func.functional_call(module, {"kernel": kernel}, (a, b))

    inputs = tuple(t.clone().requires_grad_(True) for t in (kernel, x1, x2))
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


@pytest.mark.parametrize("even_output", [False, True])
def test_masked_paths_get_no_gradient(even_output):
    shape = (3, 3, 3, 2)
    module, x1, x2 = make(shape, seed=4, even_output=even_output)
    module(x1, x2).square().sum().backward()
    masked = ~path_mask(*shape[:3], even_output)
    assert (module.kernel.grad[masked] == 0).all()
    assert (module.kernel.grad[~masked] != 0).any()


@pytest.mark.parametrize("block_sparse", [True, False], ids=["block", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scripted_equals_eager_with_gradients(dtype, block_sparse):
    module, x1, x2 = make((6, 6, 6, 4), num=9, seed=5, dtype=dtype, block_sparse=block_sparse)
    scripted = torch.jit.script(module)
    results = []
    for function in (module, scripted):
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        out = function(a, b)
        (grad_a,) = torch.autograd.grad(out.square().sum(), a, create_graph=True)
        (grad_b,) = torch.autograd.grad(grad_a.square().sum(), b)
        results.append((out, grad_a, grad_b))
    for eager, script in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(script, eager, rtol=0, atol=0)
    # dynamic shapes: another number of rows, and none at all
    for num in (1, 0):
        torch.testing.assert_close(scripted(x1[:num], x2[:num]), module(x1[:num], x2[:num]))


def test_constants_exact_after_dtype_round_trip():
    module, x1, x2 = make((6, 6, 6, 2), seed=6)
    round_trip = TensorProduct(6, 6, 6, 2, block_sparse=True).float().double()
    round_trip.load_state_dict(module.state_dict())
    assert_relative(round_trip(x1, x2), dense_reference(module.kernel, x1, x2, (6, 6, 6)))


def test_state_dict_is_the_kernel_alone():
    """Checkpoints and lorem-jax imports hold only `kernel` [L1+1, L2+1, L3+1, F], and
    the two implementations load each other's."""
    dense = TensorProduct(6, 6, 2, 3).double()
    block = TensorProduct(6, 6, 2, 3, block_sparse=True).double()
    for module in (dense, block):
        state = module.state_dict()
        assert list(state) == ["kernel"]
        assert state["kernel"].shape == (7, 7, 3, 3)
    block.load_state_dict(dense.state_dict())
    x1, x2 = torch.randn(4, 49, 3, dtype=torch.float64), torch.randn(4, 49, 3, dtype=torch.float64)
    assert_relative(block(x1, x2), dense(x1, x2))


@pytest.mark.parametrize("block_sparse", [True, False], ids=["block", "dense"])
def test_wrong_shapes_are_refused_by_name(block_sparse):
    module = TensorProduct(2, 1, 2, 3, block_sparse=block_sparse)
    good1, good2 = torch.zeros(4, 9, 3), torch.zeros(4, 4, 3)
    assert module(good1, good2).shape == (4, 9, 3)
    for a, b in [
        (torch.zeros(4, 4, 3), good2),  # degrees swapped
        (good1, torch.zeros(5, 4, 3)),  # rows differ
        (good1[..., :2], good2[..., :2]),  # features differ from the kernel's
        (good1[0], good2[0]),  # no row axis
    ]:
        with pytest.raises(ValueError, match="TensorProduct expects inputs"):
            module(a, b)


def wigner_e3x(max_degree, rotation):
    """[(L+1)**2, (L+1)**2] block-diagonal D with Y(R r) = D Y(r) for the harmonics in use
    (e3x basis), fitted degree by degree on generic points: exact in float64."""
    harmonics = SphericalHarmonics(max_degree).double()
    points = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    points = points / points.norm(dim=1, keepdim=True)
    before, after = harmonics(points), harmonics(points @ rotation.T)
    blocks = []
    for l in range(max_degree + 1):
        part = slice(l * l, (l + 1) ** 2)
        # after = before @ D.T
        blocks.append(torch.linalg.lstsq(before[:, part], after[:, part]).solution.T)
    wigner = torch.block_diag(*blocks)
    identity = torch.eye(wigner.shape[0], dtype=torch.float64)
    torch.testing.assert_close(wigner @ wigner.T, identity, rtol=0, atol=1e-12)
    torch.testing.assert_close(after, before @ wigner.T, rtol=0, atol=1e-12)
    return wigner


@pytest.mark.parametrize(
    "case",
    [
        ((6, 6, 6, 3), False),
        ((6, 6, 2, 1), False),
        ((2, 6, 6, 2), False),
        ((3, 2, 4, 2), False),
        ((6, 6, 2, 1), True),
        ((3, 2, 4, 2), True),
    ],
    ids=case_id,
)
def test_equivariance_under_rotations_and_inversion(case):
    shape, even_output = case
    module, x1, x2 = make(shape, num=4, seed=7, even_output=even_output)
    rotation = torch.tensor(random_rotation(8), dtype=torch.float64)
    wigner = wigner_e3x(max(shape[:3]), rotation)

    def rotate(x, max_degree_x):
        size = (max_degree_x + 1) ** 2
        return torch.einsum("ij,njf->nif", wigner[:size, :size], x)

    expected = rotate(module(x1, x2), shape[2])
    actual = module(rotate(x1, shape[0]), rotate(x2, shape[1]))
    assert_relative(actual, expected)

    def invert(x, max_degree_x):
        return x * ((-1.0) ** degree_of_component(max_degree_x)).to(x.dtype)[None, :, None]

    inverted = module(invert(x1, shape[0]), invert(x2, shape[1]))
    if even_output:  # every output component is even (l = 1 a pseudovector, ...)
        assert_relative(inverted, module(x1, x2))
    else:
        assert_relative(inverted, invert(module(x1, x2), shape[2]))


def test_reflection_classes_of_the_cartesian_components():
    classes = reflection_classes(2)
    # l = 0 is even everywhere; l = 1 is (x, y, z) in e3x's Cartesian order
    assert classes[:4].tolist() == [0, 1, 2, 4]
    # l = 2: xy, yz, xz are odd in two coordinates (classes 3, 6, 5), the two
    # quadratics 3z^2 - r^2 and x^2 - y^2 in none
    assert sorted(classes[4:9].tolist()) == [0, 0, 3, 5, 6]


@pytest.mark.parametrize(
    "max_degrees, even_output",
    [
        ((6, 6, 6), False),
        ((6, 6, 2), False),
        ((2, 6, 6), False),
        ((3, 1, 0), False),
        ((6, 6, 6), True),
        ((6, 6, 2), True),
    ],
    ids=str,
)
def test_coupling_blocks_reassemble_the_parity_allowed_coefficients(max_degrees, even_output):
    blocks = coupling_blocks(*max_degrees, even_output)
    sizes = (blocks.class_sizes1, blocks.class_sizes2, blocks.class_sizes3)
    orders = (blocks.order1, blocks.order2, torch.argsort(blocks.inverse_order3))
    members = [list(torch.split(order, size)) for order, size in zip(orders, sizes, strict=True)]
    rebuilt = torch.zeros(*(order.shape[0] for order in orders), dtype=torch.float64)
    paths = torch.full_like(rebuilt, -1, dtype=torch.long)
    start = 0
    for g, j, k, count in zip(
        blocks.class1, blocks.class2, blocks.class3, blocks.entries, strict=True
    ):
        # the reflection selection rule: classes multiply as XOR, pseudotensor paths
        # (odd l1 + l2 + l3) flip all three
        assert g ^ j ^ k in ((0, 7) if even_output else (0,))
        c1, c2, c3 = members[0][g], members[1][j], members[2][k]
        assert count == len(c1) * len(c2) * len(c3)
        values = blocks.entry_coefficient[start : start + count].view(len(c3), len(c2), len(c1))
        path = blocks.entry_path[start : start + count].view(len(c3), len(c2), len(c1))
        index = torch.meshgrid(c1, c2, c3, indexing="ij")
        assert (rebuilt[index] == 0).all(), "a coefficient appears in two blocks"
        rebuilt[index] = values.permute(2, 1, 0)
        paths[index] = path.permute(2, 1, 0)
        start += count
    assert start == blocks.entry_coefficient.shape[0]
    assert blocks.class3 == sorted(blocks.class3), "blocks are grouped by output class"

    degrees = [degree_of_component(L) for L in max_degrees]
    allowed = path_mask(*max_degrees, even_output)[degrees[0]][:, degrees[1]][:, :, degrees[2]]
    torch.testing.assert_close(rebuilt, clebsch_gordan(*max_degrees) * allowed, rtol=0, atol=0)
    # every stored coefficient points at its own (l1, l2, l3) kernel entry
    stride2, stride1 = max_degrees[2] + 1, (max_degrees[1] + 1) * (max_degrees[2] + 1)
    expected_path = (
        degrees[0][:, None, None] * stride1 + degrees[1][None, :, None] * stride2 + degrees[2]
    )
    stored = paths >= 0
    assert (paths[stored] == expected_path[stored]).all()
    if max_degrees == (6, 6, 6):  # the blocks hold about 1/8 of the dense tensor
        assert sum(blocks.entries) < math.prod(order.shape[0] for order in orders) / 7
