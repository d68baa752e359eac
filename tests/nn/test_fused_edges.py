"""The fused edge -> atom operators (cpp/src/ops/edge_ops.cpp) and the model's switch.

The operators against plain PyTorch and against their chunked composite kernel, their
first and second derivatives (gradcheck, gradgradcheck), bad input; then the model with
fused edges == the eager reference path on every variant, for energies, forces, stress
and the parameter gradient of a force loss (double backward); scripted, saved, loaded
and in the C++ runtime.
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import FIXTURES, cluster, cpp_evaluate, nacl, small_model, triclinic_water

from lorem_torch import EnergyModel, Lorem
from lorem_torch.data import atoms_to_graph
from lorem_torch.export import export_model, load_exported
from lorem_torch.models import BECModel, LoremBEC
from lorem_torch.nn.edge_ops import (
    edges_to_nodes,
    edges_to_nodes_by_pair_type,
    edges_to_nodes_reference,
)

MAX_DEGREE, CHANNELS = 2, 3


def random_edges(num_edges, num_nodes, dtype=torch.float64, seed=0):
    """coefficients [P, L+1, s], harmonics [P, (L+1)**2], unsorted centres that leave
    the last atom without edges."""
    generator = torch.Generator().manual_seed(seed)
    coefficients = torch.randn(num_edges, MAX_DEGREE + 1, CHANNELS, generator=generator)
    harmonics = torch.randn(num_edges, (MAX_DEGREE + 1) ** 2, generator=generator)
    centers = torch.randint(0, max(num_nodes - 1, 1), (num_edges,), generator=generator)
    return coefficients.to(dtype), harmonics.to(dtype), centers


def coefficient_adjoint_reference(node_grad, harmonics, centers):
    products = node_grad[centers] * harmonics[:, :, None]
    return torch.stack(
        [products[:, l * l : (l + 1) ** 2].sum(1) for l in range(MAX_DEGREE + 1)], dim=1
    )


def harmonic_adjoint_reference(node_grad, coefficients, centers):
    degree = torch.repeat_interleave(
        torch.arange(MAX_DEGREE + 1), torch.arange(MAX_DEGREE + 1) * 2 + 1
    )
    return (node_grad[centers] * coefficients[:, degree]).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_edges", [0, 1, 40])
def test_operators_equal_plain_torch_and_chunked_kernel(dtype, num_edges):
    num_nodes = 6
    coefficients, harmonics, centers = random_edges(num_edges, num_nodes, dtype)
    node_grad = torch.randn(num_nodes, (MAX_DEGREE + 1) ** 2, CHANNELS, dtype=dtype)
    tolerance = dict(rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-13)
    by_chunks = torch.ops.lorem._edge_op_by_chunks

    summed = edges_to_nodes(coefficients, harmonics, centers, num_nodes)
    torch.testing.assert_close(
        summed, edges_to_nodes_reference(coefficients, harmonics, centers, num_nodes), **tolerance
    )
    assert summed.shape == (num_nodes, (MAX_DEGREE + 1) ** 2, CHANNELS)
    assert bool((summed[-1] == 0).all())  # the atom without edges
    chunked = by_chunks("edges_to_nodes", coefficients, harmonics, centers, num_nodes, 7)
    torch.testing.assert_close(chunked, summed, **tolerance)

    adjoint = torch.ops.lorem.edges_to_nodes_coefficient_adjoint(node_grad, harmonics, centers)
    torch.testing.assert_close(
        adjoint, coefficient_adjoint_reference(node_grad, harmonics, centers), **tolerance
    )
    chunked = by_chunks("coefficient_adjoint", node_grad, harmonics, centers, num_nodes, 7)
    torch.testing.assert_close(chunked, adjoint, **tolerance)

    adjoint = torch.ops.lorem.edges_to_nodes_harmonic_adjoint(node_grad, coefficients, centers)
    torch.testing.assert_close(
        adjoint, harmonic_adjoint_reference(node_grad, coefficients, centers), **tolerance
    )
    chunked = by_chunks("harmonic_adjoint", node_grad, coefficients, centers, num_nodes, 7)
    torch.testing.assert_close(chunked, adjoint, **tolerance)


@pytest.mark.parametrize("num_edges", [0, 9])
def test_operator_first_and_second_derivatives(num_edges):
    num_nodes = 4
    coefficients, harmonics, centers = random_edges(num_edges, num_nodes)
    coefficients.requires_grad_(True)
    harmonics.requires_grad_(True)

    def summed(c, y):
        return edges_to_nodes(c, y, centers, num_nodes)

    assert torch.autograd.gradcheck(summed, (coefficients, harmonics))
    assert torch.autograd.gradgradcheck(summed, (coefficients, harmonics))

    node_grad = torch.randn(num_nodes, (MAX_DEGREE + 1) ** 2, CHANNELS, dtype=torch.float64)
    node_grad.requires_grad_(True)

    def coefficient_adjoint(g, y):
        return torch.ops.lorem.edges_to_nodes_coefficient_adjoint(g, y, centers)

    def harmonic_adjoint(g, c):
        return torch.ops.lorem.edges_to_nodes_harmonic_adjoint(g, c, centers)

    for function, inputs in (
        (coefficient_adjoint, (node_grad, harmonics)),
        (harmonic_adjoint, (node_grad, coefficients)),
    ):
        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)


def blocked_by_pair_type(radial, table, pair_type, harmonics, centers, num_nodes):
    """The operator's blocked path (sorted by pair type, what CUDA runs) on any device."""
    return torch.ops.lorem._edges_to_nodes_by_pair_type_blocks(
        radial, table, pair_type, harmonics, centers, num_nodes
    )


@pytest.mark.parametrize("path", ["grouped", "blocks"])
@pytest.mark.parametrize("num_edges", [0, 11])
def test_pair_type_operator_equals_plain_and_is_twice_differentiable(num_edges, path):
    """edges_to_nodes_by_pair_type == edges_to_nodes of radial[p] @ table[pair_type[p]];
    gradcheck and gradgradcheck in radial, table and harmonics (its backward recomputes
    the coefficients). On CPU the operator groups edges by centre and pair type
    (lorem::pair_form); the blocked path, which other devices take, is tested here too."""
    operator = edges_to_nodes_by_pair_type if path == "grouped" else blocked_by_pair_type
    num_nodes, num_types, num_radial = 4, 3, 5
    _, harmonics, centers = random_edges(num_edges, num_nodes)
    generator = torch.Generator().manual_seed(1)
    radial = torch.randn(num_edges, num_radial, generator=generator, dtype=torch.float64)
    table = torch.randn(num_types, num_radial, MAX_DEGREE + 1, CHANNELS, dtype=torch.float64)
    # type 1 has no edge: its table rows get a zero gradient
    pair_type = torch.tensor([0, 2] * (num_edges // 2 + 1), dtype=torch.long)[:num_edges]
    coefficients = torch.einsum("pr,prlc->plc", radial, table[pair_type])
    torch.testing.assert_close(
        operator(radial, table, pair_type, harmonics, centers, num_nodes),
        edges_to_nodes_reference(coefficients, harmonics, centers, num_nodes),
        rtol=0,
        atol=1e-12,
    )
    inputs = (radial.requires_grad_(), table.requires_grad_(), harmonics.requires_grad_())

    def summed(r, t, y):
        return operator(r, t, pair_type, y, centers, num_nodes)

    assert torch.autograd.gradcheck(summed, inputs)
    assert torch.autograd.gradgradcheck(summed, inputs)
    # the backward without a graph (forces in MD) and with one (force training): the same
    # numbers
    node_grad = torch.randn(num_nodes, (MAX_DEGREE + 1) ** 2, CHANNELS, dtype=torch.float64)
    output = summed(*inputs)
    without_graph = torch.autograd.grad(output, inputs, node_grad, retain_graph=True)
    with_graph = torch.autograd.grad(output, inputs, node_grad, create_graph=True)
    for a, b in zip(without_graph, with_graph, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    if num_edges == 0:
        # a rank with no atoms: no species present, an empty table
        empty = operator(radial, table[:0], pair_type, harmonics, centers, num_nodes)
        assert empty.shape == (num_nodes, (MAX_DEGREE + 1) ** 2, CHANNELS)
        assert not empty.any()
    else:
        with pytest.raises(RuntimeError, match=r"pair_type must be \[P\] with P = 11"):
            operator(radial, table, pair_type[:5], harmonics, centers, num_nodes)
        with pytest.raises(RuntimeError, match=r"pair types must lie in \[0, 3\)"):
            operator(radial, table, pair_type + 3, harmonics, centers, num_nodes)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels", [8, 3])
def test_pair_type_grouped_equals_blocks_at_scale(dtype, channels):
    """The CPU grouped operator (lorem::pair_form) == the blocked path on a few
    thousand edges of four pair types, L = 6: the node sum and, for a random node
    gradient, the gradients in radial, table and harmonics, on two threads."""
    num_nodes, num_edges, num_types, num_radial, degrees = 150, 3000, 4, 8, 7
    generator = torch.Generator().manual_seed(7)

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    radial = random(num_edges, num_radial).requires_grad_()
    table = random(num_types, num_radial, degrees, channels).requires_grad_()
    harmonics = random(num_edges, degrees**2).requires_grad_()
    centers = torch.randint(0, num_nodes - 3, (num_edges,), generator=generator)
    pair_type = torch.randint(0, num_types, (num_edges,), generator=generator)
    node_grad = random(num_nodes, degrees**2, channels)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for operator in (edges_to_nodes_by_pair_type, blocked_by_pair_type):
            out = operator(radial, table, pair_type, harmonics, centers, num_nodes)
            grads = torch.autograd.grad(out, (radial, table, harmonics), node_grad)
            results.append((out.detach(),) + grads)
    finally:
        torch.set_num_threads(threads)
    relative = 1e-12 if dtype == torch.float64 else 2e-5
    for fused, blocked in zip(*results, strict=True):
        scale = float(blocked.abs().max())
        torch.testing.assert_close(fused, blocked, rtol=0, atol=relative * scale)
    assert not results[0][0][-3:].any()  # atoms without edges get nothing


@pytest.mark.parametrize("channels", [2, 8])
def test_pair_form_is_closed_under_differentiation(channels):
    """lorem::pair_form's derivatives are pair_form again (multilinear_form.hpp): every
    target against autograd of the plain form, and gradgradcheck of the adjoints in all
    four factors, the node gradient included (force training differentiates it); with
    whole vectors of channels (8) and without (2)."""
    num_nodes, num_edges, num_types, num_radial, degrees = 5, 13, 3, 4, 3
    generator = torch.Generator().manual_seed(3)

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    radial, table = random(num_edges, num_radial), random(num_types, num_radial, degrees, channels)
    harmonics, node_grad = random(num_edges, degrees**2), random(num_nodes, degrees**2, channels)
    centers = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    pair_type = torch.randint(0, num_types, (num_edges,), generator=generator)
    degree = torch.sqrt(torch.arange(degrees**2, dtype=torch.float64)).floor().long()

    def plain(r, t, y, g):
        coefficients = torch.einsum("pr,prlc->plc", r, t[pair_type])[:, degree, :]
        return (coefficients * y[:, :, None] * g[centers]).sum()

    factors = [radial, table, harmonics, node_grad]
    leaves = [f.clone().requires_grad_() for f in factors]
    expected = torch.autograd.grad(plain(*leaves), leaves)
    for target in range(4):
        args = [None if k == target else factors[k] for k in range(4)]
        result = torch.ops.lorem.pair_form(
            target, list(factors[target].shape), *args, pair_type, centers
        )
        torch.testing.assert_close(result, expected[target], rtol=0, atol=1e-12)

    def adjoints(r, t, y, g):
        return tuple(torch.ops.lorem.pair_form_adjoints(r, t, y, g, pair_type, centers, [True] * 3))

    inputs = tuple(f.clone().requires_grad_() for f in factors)
    assert torch.autograd.gradcheck(adjoints, inputs)
    assert torch.autograd.gradgradcheck(adjoints, inputs)
    with pytest.raises(RuntimeError, match="has centre 5, outside the 5 atoms"):
        torch.ops.lorem.pair_form(
            3,
            [num_nodes, degrees**2, channels],
            radial,
            table,
            harmonics,
            None,
            pair_type,
            centers + 5 - centers.max(),
        )
    with pytest.raises(RuntimeError, match="the target's slot \\(radial\\) must be None"):
        torch.ops.lorem.pair_form(0, [1], radial, table, harmonics, None, pair_type, centers)


def test_operator_refuses_bad_input():
    coefficients, harmonics, centers = random_edges(5, 3)
    with pytest.raises(RuntimeError, match="centre 3, outside the 3 atoms"):
        edges_to_nodes(coefficients, harmonics, torch.tensor([0, 1, 2, 3, 0]), 3)
    with pytest.raises(RuntimeError, match="centre -1, outside"):
        edges_to_nodes(coefficients, harmonics, torch.tensor([0, 1, 2, -1, 0]), 3)
    with pytest.raises(RuntimeError, match="need coefficients for 3 degrees, got 2"):
        edges_to_nodes(coefficients[:, :2], harmonics, centers, 3)
    with pytest.raises(RuntimeError, match="is not a square"):
        edges_to_nodes(coefficients, harmonics[:, :8], centers, 3)
    with pytest.raises(RuntimeError, match="different dtypes"):
        edges_to_nodes(coefficients.float(), harmonics, centers, 3)
    with pytest.raises(RuntimeError, match="centers must be int64"):
        edges_to_nodes(coefficients, harmonics, centers.int(), 3)
    node_grad = torch.zeros(2, 9, CHANNELS, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="outside the 2 atoms"):
        torch.ops.lorem.edges_to_nodes_harmonic_adjoint(
            node_grad, coefficients, torch.tensor([0, 1, 2, 0, 0])
        )


# -- the model: fused == eager reference --

VARIANTS = {
    "default": dict(),
    "short_range": dict(lr=False),
    "mp1_equivariant": dict(num_message_passing=1),
    "mp2_scalar": dict(num_message_passing=2, equivariant_message_passing=False),
    "mp2_equivariant_short_range": dict(num_message_passing=2, lr=False),
    "no_node_init": dict(initialize_node_features=False),
    "pme": dict(long_range="pme"),
}


def build(kind, dtype, options):
    if kind == "bec":
        torch.manual_seed(0)
        base = dict(num_features=16, num_radial=8, num_spherical_features=4, max_degree=4)
        return LoremBEC(**base, **options).to(dtype)
    options = dict(options)
    method = options.pop("long_range", None)
    model = small_model(dtype=dtype, **options)
    return model if method is None else model.with_long_range(method)


def outputs_and_force_loss_gradient(model, structures, kind):
    dtype = next(model.parameters()).dtype
    graph = atoms_to_graph(structures, model.cutoff, dtype=dtype)
    wrapper = BECModel(model) if kind == "bec" else EnergyModel(model)
    out = wrapper(**graph, compute_forces=True, compute_stress=True, create_graph=True)
    # the virial, not the stress: the stress of a non-periodic structure is 0 / 0 masked,
    # whose gradient is NaN
    loss = (out["forces"] ** 2).sum() + (out["virial"] ** 2).sum() + (out["energy"] ** 2).sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    values = {k: out[k].detach() for k in ("energy", "energies", "forces", "virial", "charges")}
    for index, grad in enumerate(grads):
        values[f"grad{index}"] = torch.zeros_like(parameters[index]) if grad is None else grad
    return values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind, variant",
    [("lorem", name) for name in VARIANTS] + [("bec", "default"), ("bec", "mp1_equivariant")],
)
def test_fused_equals_eager(kind, variant, dtype):
    model = build(kind, dtype, VARIANTS[variant])
    assert model.fused_edges  # the default
    structures = [triclinic_water(), nacl(), cluster()] if kind == "lorem" else [nacl()]
    fused = outputs_and_force_loss_gradient(model, structures, kind)
    eager = outputs_and_force_loss_gradient(model.use_fused_operators(False), structures, kind)
    assert not model.fused_edges
    for key, value in eager.items():
        scale = (float(value.abs().max()) if value.numel() else 0.0) + 1e-30
        # float32: round-off of a reassociated sum; float64: to the last digits
        relative = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(fused[key], value, rtol=0, atol=relative * scale, msg=key)


def test_fused_model_scripts_saves_and_loads(tmp_path):
    model = small_model(num_message_passing=1)
    graph = atoms_to_graph([triclinic_water(), cluster()], model.cutoff, dtype=torch.float64)
    reference = EnergyModel(small_model(num_message_passing=1).use_fused_operators(False))(
        **graph, compute_stress=True
    )
    scripted = torch.jit.script(EnergyModel(model))
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    assert "edges_to_nodes" in loaded.model.fused_edge_sums.code  # the saved code calls it
    for module in (scripted, loaded):
        out = module(**graph, compute_stress=True)
        for key in ("energy", "forces", "stress", "charges"):
            torch.testing.assert_close(out[key], reference[key], rtol=0, atol=1e-10)


def test_export_in_cpp_runtime_equals_eager(tmp_path):
    from lorem_torch._core import Model

    species = [1, 6, 8, 11, 17]
    model = small_model(species=species)
    reference_model = small_model(species=species).use_fused_operators(False)
    path = tmp_path / "model.pt"
    export_model(model, path, "float64")
    module, _ = load_exported(path)
    assert "edges_to_nodes" in module.model.fused_edge_sums.code
    for atoms in (triclinic_water(), cluster()):
        periodic = bool(atoms.pbc.all())
        reference = EnergyModel(reference_model)(
            **atoms_to_graph([atoms], 5.0, dtype=torch.float64), compute_stress=periodic
        )
        cpp = cpp_evaluate(Model(str(path), "cpu"), atoms)
        assert cpp["energy"] == pytest.approx(float(reference["energy"][0]), abs=1e-10)
        np.testing.assert_allclose(cpp["forces"], reference["forces"].numpy(), atol=1e-10)
        if periodic:
            np.testing.assert_allclose(cpp["virial"], reference["virial"][0].numpy(), atol=1e-10)


def test_export_made_before_the_fused_operators_loads_and_agrees():
    """tests/fixtures/export_before_fused_edges: written by tools/make_old_export_fixture.py
    with lorem-torch before this change; its archive carries the per-edge code."""
    from lorem_torch._core import Model

    folder = FIXTURES / "export_before_fused_edges"
    data = np.load(folder / "reference.npz")
    module, metadata = load_exported(folder / "model.pt")
    assert not hasattr(module.model, "fused_edges")  # the old code, as archived
    # the same weights in today's model (whose fused path is the default)
    model = Lorem(**metadata["hyperparameters"], species=[1, 8]).double()
    wanted = model.state_dict()
    model.load_state_dict({k: v for k, v in module.model.state_dict().items() if k in wanted})
    for name in ("triclinic_water", "cluster"):
        atoms = Atoms(
            numbers=data[f"{name}:numbers"],
            positions=data[f"{name}:positions"],
            cell=data[f"{name}:cell"],
            pbc=data[f"{name}:pbc"],
        )
        periodic = bool(atoms.pbc.all())
        graph = atoms_to_graph([atoms], 5.0, dtype=torch.float64)
        energy, _, forces, virial, _, _ = module.energy_forces_virial(*graph.values())
        cpp = cpp_evaluate(Model(str(folder / "model.pt"), "cpu"), atoms)
        fused = EnergyModel(model)(**graph, compute_stress=periodic)
        assert model.fused_edges
        for candidate_energy, candidate_forces in (
            (energy.numpy(), forces.numpy()),
            (np.array([cpp["energy"]]), cpp["forces"]),
            (fused["energy"].detach().numpy(), fused["forces"].numpy()),
        ):
            np.testing.assert_allclose(candidate_energy, data[f"{name}:energy"], rtol=0, atol=1e-10)
            np.testing.assert_allclose(candidate_forces, data[f"{name}:forces"], rtol=0, atol=1e-10)
        if periodic:
            np.testing.assert_allclose(virial.numpy(), data[f"{name}:virial"], atol=1e-10)
            np.testing.assert_allclose(fused["virial"].numpy(), data[f"{name}:virial"], atol=1e-10)
