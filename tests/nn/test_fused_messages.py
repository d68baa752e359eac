"""The fused equivariant message (lorem::message_form, nn/message_ops.py): the operator
against a dense reference for every factor it differentiates, its first and second
derivatives (gradcheck, gradgradcheck), the CPU kernel against the torch-op kernel
other devices run, and models with the fused path against the eager dense path."""

import zipfile

import numpy as np
import pytest
import torch
from conftest import cluster, cpp_evaluate, evaluate, small_model, triclinic_water
from lorem_torch._core import Model

from lorem_torch.data import atoms_to_graph
from lorem_torch.export import export_model
from lorem_torch.models import BECModel, EnergyModel, LoremBEC
from lorem_torch.nn.message_ops import equivariant_messages, sparse_coupling
from lorem_torch.nn.spherical import clebsch_gordan, degree_of_component

FACTORS = ("harmonics", "coefficients", "weights", "features", "gradient")


def random_problem(max_degree, channels, num_edges, num_atoms, seed=0, dtype=torch.float64):
    """Random factors; centres unsorted, and with num_atoms > edges some atoms get none."""
    generator = torch.Generator().manual_seed(seed)
    entries, coupling, path_index = sparse_coupling(max_degree)
    num_components = (max_degree + 1) ** 2

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return dict(
        harmonics=rand(num_edges, num_components),
        coefficients=rand(num_edges, max_degree + 1, channels),
        weights=rand(path_index.shape[0], channels),
        features=rand(num_atoms, num_components, channels),
        gradient=rand(num_atoms, num_components, channels),
        centers=torch.randint(0, num_atoms, (num_edges,), generator=generator),
        others=torch.randint(0, num_atoms, (num_edges,), generator=generator),
        entries=entries,
        coupling=coupling.to(dtype),
        path_index=path_index,
        max_degree=max_degree,
    )


def dense_messages(problem, harmonics, coefficients, weights, features):
    """The messages the dense way: every (m1, m2, m3) of the coupling tensor."""
    max_degree = problem["max_degree"]
    num_l = max_degree + 1
    degree = degree_of_component(max_degree)
    channels = weights.shape[1]
    kernel = (
        weights.new_zeros(num_l**3, channels)
        .index_copy(0, problem["path_index"], weights)
        .reshape(num_l, num_l, num_l, channels)
    )
    cg = clebsch_gordan(max_degree, max_degree, max_degree).to(weights.dtype)
    parity = (degree[:, None, None] + degree[None, :, None] + degree[None, None, :]) % 2 == 0
    expanded = kernel[degree][:, degree][:, :, degree] * (cg * parity)[..., None]
    x1 = harmonics[:, :, None] * coefficients[:, degree, :]
    products = torch.einsum("pac,pbc,abdc->pdc", x1, features[problem["others"]], expanded)
    num_atoms = problem["gradient"].shape[0]
    return products.new_zeros(num_atoms, *products.shape[1:]).index_add(
        0, problem["centers"], products
    )


def call(op, problem, target, factors):
    shape = list(problem[FACTORS[target]].shape)
    slots = [None if k == target else factors[k] for k in range(5)]
    return op(
        target,
        shape,
        *slots,
        problem["centers"],
        problem["others"],
        problem["entries"],
        problem["coupling"],
    )


def test_sparse_coupling_holds_every_allowed_coefficient():
    entries, coupling, path_index = sparse_coupling(6)
    degree = degree_of_component(6)
    cg = clebsch_gordan(6, 6, 6)
    parity = (degree[:, None, None] + degree[None, :, None] + degree[None, None, :]) % 2 == 0
    dense = torch.zeros_like(cg)
    dense[entries[:, 0], entries[:, 1], entries[:, 2]] = coupling
    # everything but round-off of the basis change (coefficients that are zero)
    torch.testing.assert_close(dense, cg * parity, rtol=0, atol=1e-14)
    assert torch.equal(dense[dense != 0], (cg * parity)[dense != 0])
    assert entries.shape[0] == 6460 < cg.numel() // 18
    assert torch.equal(entries[:, 4], degree[entries[:, 0]])
    num_l = 7
    flat = (degree[entries[:, 0]] * num_l + degree[entries[:, 1]]) * num_l + degree[entries[:, 2]]
    assert torch.equal(path_index[entries[:, 3]], flat)


@pytest.mark.parametrize(
    "max_degree, channels, num_edges, num_atoms",
    [(2, 3, 7, 5), (2, 3, 4, 9), (6, 8, 5, 4), (6, 5, 3, 6), (3, 8, 0, 3)],
)
def test_every_target_equals_the_dense_reference(max_degree, channels, num_edges, num_atoms):
    """Each slot as the target is the gradient of <gradient, messages> in that factor,
    from the CPU kernel and from the torch-op kernel alike."""
    problem = random_problem(max_degree, channels, num_edges, num_atoms)
    factors = [problem[name].clone().requires_grad_(True) for name in FACTORS[:4]]
    messages = dense_messages(problem, *factors)
    form = (messages * problem["gradient"]).sum()
    references = torch.autograd.grad(form, factors, allow_unused=True)
    references = [
        torch.zeros_like(f) if r is None else r for f, r in zip(factors, references, strict=True)
    ]
    references.append(messages.detach())
    values = [problem[name] for name in FACTORS]
    for op in (torch.ops.lorem.message_form, torch.ops.lorem.message_form_chunked):
        for target in range(5):
            result = call(op, problem, target, values)
            torch.testing.assert_close(result, references[target], rtol=1e-12, atol=1e-12)


def test_first_and_second_derivatives_small_degree():
    problem = random_problem(2, 3, 6, 4, seed=1)
    inputs = tuple(problem[name].clone().requires_grad_(True) for name in FACTORS[:4])

    def messages(*factors):
        return equivariant_messages(
            *factors,
            problem["centers"],
            problem["others"],
            problem["entries"],
            problem["coupling"],
            problem["gradient"].shape[0],
        )

    assert torch.autograd.gradcheck(messages, inputs)
    assert torch.autograd.gradgradcheck(messages, inputs)


def test_first_and_second_derivatives_default_degree():
    problem = random_problem(6, 8, 3, 3, seed=2)
    inputs = tuple(problem[name].clone().requires_grad_(True) for name in FACTORS[:4])

    def messages(*factors):
        return equivariant_messages(
            *factors,
            problem["centers"],
            problem["others"],
            problem["entries"],
            problem["coupling"],
            3,
        )

    assert torch.autograd.gradcheck(messages, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(messages, inputs, fast_mode=True)


def test_float32_matches_float64():
    problem = random_problem(6, 8, 40, 12, seed=3)
    values = [problem[name] for name in FACTORS]
    exact = call(torch.ops.lorem.message_form, problem, 4, values)
    single = dict(problem, coupling=problem["coupling"].float())
    result = call(torch.ops.lorem.message_form, single, 4, [v.float() for v in values])
    torch.testing.assert_close(result.double(), exact, rtol=1e-4, atol=1e-4 * exact.abs().max())


def test_bad_indices_are_named():
    problem = random_problem(2, 3, 4, 3)
    problem["centers"] = problem["centers"].clone()
    problem["centers"][2] = 7
    values = [problem[name] for name in FACTORS]
    with pytest.raises(RuntimeError, match=r"centers\[2\] = 7 is outside \[0, 3\)"):
        call(torch.ops.lorem.message_form, problem, 4, values)
    with pytest.raises(RuntimeError, match="target's slot"):
        torch.ops.lorem.message_form(
            4, [3, 9, 3], *values, problem["centers"], problem["others"],
            problem["entries"], problem["coupling"],
        )  # fmt: skip


# -- models: fused == eager --


def set_fused(model, enabled):
    for module in model.modules():
        if hasattr(module, "fused_messages"):
            module.fused_messages = enabled
    return model


def force_loss_gradients(model, atoms_list):
    dtype = next(model.parameters()).dtype
    graph = atoms_to_graph(atoms_list, model.cutoff, dtype=dtype)
    periodic = all(atoms.pbc.all() for atoms in atoms_list)  # else the stress is NaN
    out = EnergyModel(model)(
        **graph, compute_forces=True, compute_stress=periodic, create_graph=True
    )
    loss = (out["forces"] ** 2).sum() + out["energy"].sum()
    if periodic:
        loss = loss + (out["stress"] ** 2).sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


def assert_fused_equals_eager(model, atoms_list, tolerance):
    assert any(getattr(m, "fused_messages", False) for m in model.modules())
    fused = evaluate(model, atoms_list, stress=True)
    fused_grads = force_loss_gradients(model, atoms_list)
    set_fused(model, False)
    try:
        eager = evaluate(model, atoms_list, stress=True)
        eager_grads = force_loss_gradients(model, atoms_list)
    finally:
        set_fused(model, True)
    for key in ("energy", "forces", "stress"):  # a non-periodic structure's stress is NaN
        scale = eager[key].nan_to_num().abs().max().item()
        torch.testing.assert_close(
            fused[key], eager[key], rtol=0, atol=tolerance * scale, equal_nan=True
        )
    for fused_grad, eager_grad in zip(fused_grads, eager_grads, strict=True):
        scale = max(eager_grad.abs().max().item(), 1e-30)
        torch.testing.assert_close(fused_grad, eager_grad, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "layers, lr, spherical_features", [(1, True, 8), (2, True, 4), (1, False, 4), (2, False, 8)]
)
def test_fused_model_equals_eager(layers, lr, spherical_features, dtype):
    model = small_model(
        dtype=dtype,
        num_message_passing=layers,
        lr=lr,
        num_spherical_features=spherical_features,
    )
    atoms_list = [triclinic_water()] if lr else [triclinic_water(), cluster()]
    # float32: the two paths add the same terms in another order
    assert_fused_equals_eager(model, atoms_list, 1e-10 if dtype == torch.float64 else 2e-4)


def test_fused_bec_model_equals_eager():
    torch.manual_seed(0)
    model = LoremBEC(
        num_features=16,
        num_radial=8,
        num_spherical_features=4,
        max_degree=4,
        num_message_passing=1,
        equivariant_message_passing=True,
    ).double()
    atoms = triclinic_water()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    field = torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64)
    fused = BECModel(model)(**graph, compute_stress=True, electric_field=field)
    set_fused(model, False)
    eager = BECModel(model)(**graph, compute_stress=True, electric_field=field)
    set_fused(model, True)
    for key in ("energy", "forces", "stress", "apt"):
        torch.testing.assert_close(fused[key], eager[key], rtol=0, atol=1e-11)
    assert_fused_equals_eager(model, [atoms], 1e-10)


def test_scripted_saved_loaded_equals_eager(tmp_path):
    model = small_model(num_message_passing=1, num_spherical_features=8)
    atoms = triclinic_water()
    graph = atoms_to_graph([atoms], model.cutoff, dtype=torch.float64)
    torch.jit.script(EnergyModel(model)).save(str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    set_fused(model, False)
    eager = EnergyModel(model)(**graph, compute_stress=True)
    set_fused(model, True)
    scripted = loaded(**graph, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(scripted[key], eager[key], rtol=0, atol=1e-10)


def test_cpp_runtime_runs_the_fused_export(tmp_path):
    model = small_model(num_message_passing=2, num_spherical_features=8)
    path = tmp_path / "mp.pt"
    export_model(model, path, "float64")
    with zipfile.ZipFile(path) as archive:
        code = "".join(
            archive.read(name).decode() for name in archive.namelist() if name.endswith(".py")
        )
    assert "ops.lorem.message_form(" in code  # the export runs the operator
    atoms = triclinic_water()
    result = cpp_evaluate(Model(str(path)), atoms)
    set_fused(model, False)
    reference = evaluate(model, [atoms], stress=True)
    scale = max(1.0, abs(float(reference["energy"].detach())))
    assert result["energy"] == pytest.approx(float(reference["energy"].detach()), abs=1e-10 * scale)
    np.testing.assert_allclose(result["forces"], reference["forces"].numpy(), atol=1e-10 * scale)
    np.testing.assert_allclose(result["virial"], reference["virial"][0].numpy(), atol=1e-10 * scale)
