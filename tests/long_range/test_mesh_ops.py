"""The fused PME mesh operators (cpp/src/ops/mesh_ops.cpp) against the plain PyTorch
path of long_range/pme.py, against their own chunked torch-op kernel, and their first and
second derivatives; PME with and without them, in float64 and float32."""

import pytest
import torch

from lorem_torch.long_range import PME

CELL = [[7.0, 0.3, 0.1], [0.2, 8.0, 0.4], [0.1, -0.3, 6.5]]


def setup(num_atoms=30, channels=3, order=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cell = torch.tensor(CELL, dtype=dtype)
    positions = (torch.rand(num_atoms, 3, dtype=dtype) @ cell).requires_grad_()
    charges = torch.randn(num_atoms, channels, dtype=dtype, requires_grad=True)
    pme = PME(smearing=1.0, spacing=0.6, order=order, channels=channels)
    return pme, cell, positions, charges


def plain(pme: PME) -> PME:
    copy = PME(pme.smearing, spacing=pme.spacing, order=pme.order, channels=pme.channels)
    copy.fused_mesh = False
    return copy


def bricks(pme, positions, cell, mesh):
    """The whole periodic mesh, and the brick these atoms touch (not wrapped)."""
    lo, shape = pme.brick_of_atoms(positions, cell, mesh)
    return [([0, 0, 0], mesh), (lo, shape)]


@pytest.mark.parametrize("order", [4, 6, 8, 10])
@pytest.mark.parametrize("num_atoms", [0, 1, 30])
def test_spread_and_interpolate_equal_plain_torch(order, num_atoms):
    pme, cell, positions, charges = setup(num_atoms=num_atoms, order=order)
    reference = plain(pme)
    mesh = pme.mesh_shape(cell)
    for lo, shape in bricks(pme, positions, cell, mesh):
        fused_brick = pme.spread(positions, charges, cell, lo, shape, mesh)
        plain_brick = reference.spread(positions, charges, cell, lo, shape, mesh)
        assert fused_brick.shape == plain_brick.shape
        torch.testing.assert_close(fused_brick, plain_brick, rtol=0, atol=1e-14)
        potential = torch.randn_like(plain_brick)
        torch.testing.assert_close(
            pme.interpolate(positions, potential, cell, lo, mesh),
            reference.interpolate(positions, potential, cell, lo, mesh),
            rtol=0,
            atol=1e-13,
        )


def cpu_kernel_cases(q, u, h, brick, lo, shape, mesh, order):
    """name -> (the CPU kernel's result, the operator's first and second operands)."""
    return {
        "spread": (torch.ops.lorem.mesh_spread(q, u, h, lo, shape, mesh, order), q, None),
        "interpolate": (
            torch.ops.lorem.mesh_interpolate(brick, u, h, lo, mesh, order),
            brick,
            None,
        ),
        "gradient": (torch.ops.lorem.mesh_gradient(brick, q, u, h, lo, mesh, order), brick, q),
    }


@pytest.mark.parametrize("order", [4, 6, 8, 10])
@pytest.mark.parametrize("directional", [False, True])
@pytest.mark.parametrize("chunk_atoms", [1, 7, 1000])
def test_cpu_kernels_equal_the_chunked_kernel(order, directional, chunk_atoms):
    """Every order (the CPU loops are compiled per order), on the whole periodic mesh
    (where stencils near a face wrap around, point by point, and the others are
    consecutive rows) and on a brick; a zero charge row is skipped by the spread."""
    pme, cell, positions, charges = setup(num_atoms=25, order=order)
    mesh = pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach()
    q = charges.detach().clone()
    q[3] = 0.0
    q[5, 1] = 0.0
    h = torch.randn(25, 3, dtype=torch.float64) if directional else None
    for lo, shape in bricks(pme, positions, cell, mesh):
        brick = torch.randn(3, *shape, dtype=torch.float64)
        cases = cpu_kernel_cases(q, u, h, brick, lo, shape, mesh, order)
        for name, (fused, first, second) in cases.items():
            chunked = torch.ops.lorem._mesh_op_by_chunks(
                name, first, second, u, h, lo, shape, mesh, order, chunk_atoms
            )
            torch.testing.assert_close(fused, chunked, rtol=0, atol=1e-12, msg=name)


def test_operators_first_and_second_derivatives():
    """gradcheck and gradgradcheck (float64) of the three operators on a whole mesh and a
    brick: the backward of each is made of the others, the second derivatives of the
    directional forms."""
    pme, cell, positions, charges = setup(num_atoms=4, channels=2, order=4)
    mesh = pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach().requires_grad_()
    q = charges.detach().requires_grad_()
    for lo, shape in bricks(pme, positions, cell, mesh):
        brick = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
        functions = [
            lambda q, u: torch.ops.lorem.mesh_spread(q, u, None, lo, shape, mesh, 4),
            lambda b, u: torch.ops.lorem.mesh_interpolate(b, u, None, lo, mesh, 4),
        ]
        for function, inputs in zip(functions, [(q, u), (brick, u)], strict=True):
            assert torch.autograd.gradcheck(function, inputs)
            assert torch.autograd.gradgradcheck(function, inputs)
        # the gradient itself (forces), once more differentiable (force training)
        gradient = lambda b, q, u: torch.ops.lorem.mesh_gradient(b, q, u, None, lo, mesh, 4)  # noqa: E731
        assert torch.autograd.gradcheck(gradient, (brick, q, u))


def test_pme_forces_virial_and_force_training_equal_plain_torch():
    """k-space potentials, their derivatives in positions, cell and charges, and the
    derivative of a loss on those derivatives, fused against plain."""
    pme, cell, positions, charges = setup(num_atoms=30)
    cell = cell.clone().requires_grad_()
    results = []
    for module in (pme, plain(pme)):
        potentials = module.kspace_potentials(positions, charges, cell)
        energy = (potentials * charges).sum()
        forces, virial, charge_grad = torch.autograd.grad(
            energy, [positions, cell, charges], create_graph=True
        )
        loss = (forces**2).sum() + (virial**2).sum() + (charge_grad**2).sum()
        second = torch.autograd.grad(loss, [positions, cell, charges])
        results.append([potentials, forces, virial, charge_grad, *second])
    for fused, reference in zip(*results, strict=True):
        scale = float(reference.abs().max())
        torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12 * scale)


def test_float32_moves_at_round_off_only():
    pme, cell, positions, charges = setup(num_atoms=200, dtype=torch.float32)
    fused = pme.kspace_potentials(positions, charges, cell)
    forces = torch.autograd.grad((fused * charges).sum(), positions)[0]
    reference_module = plain(pme)
    reference = reference_module.kspace_potentials(positions, charges, cell)
    reference_forces = torch.autograd.grad((reference * charges).sum(), positions)[0]
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    torch.testing.assert_close(
        forces, reference_forces, rtol=0, atol=1e-5 * float(reference_forces.abs().max())
    )


def test_refusals_name_the_problem():
    pme, cell, positions, charges = setup(num_atoms=10, order=6)
    mesh = pme.mesh_shape(cell)
    lo, shape = pme.brick_of_atoms(positions, cell, mesh)
    moved = [lo[0] + 1, lo[1], lo[2]]
    # the same ValueError as the plain path, from PME; a RuntimeError from the operator
    with pytest.raises(ValueError, match="outside the brick"):
        pme.spread(positions, charges, cell, moved, shape, mesh)
    u = pme.mesh_coordinates(positions, cell, mesh)
    with pytest.raises(RuntimeError, match="outside the brick"):
        torch.ops.lorem.mesh_spread(charges, u, None, moved, shape, mesh, 6)
    with pytest.raises(RuntimeError, match="PME order must be 4, 6, 8 or 10"):
        torch.ops.lorem.mesh_spread(charges, u, None, lo, shape, mesh, 5)
    bad = u.detach().clone()
    bad[3, 1] = float("nan")
    with pytest.raises(RuntimeError, match="atom 3 are not finite"):
        torch.ops.lorem.mesh_spread(charges, bad, None, [0, 0, 0], mesh, mesh, 6)
    # the torch-op kernel (CUDA) refuses alike, on a whole mesh and on a brick
    for brick_lo, brick_shape in (([0, 0, 0], mesh), (lo, shape)):
        with pytest.raises(RuntimeError, match="not finite"):
            torch.ops.lorem._mesh_op_by_chunks(
                "spread", charges.detach(), None, bad, None, brick_lo, brick_shape, mesh, 6, 4
            )
    with pytest.raises(RuntimeError, match=r"charges must be \[10, C\]"):
        torch.ops.lorem.mesh_spread(charges[:5], u, None, lo, shape, mesh, 6)
    # a third derivative is refused by name, not silently zero
    brick = torch.randn(3, *mesh, dtype=torch.float64, requires_grad=True)
    potentials = torch.ops.lorem.mesh_interpolate(brick, u, None, [0, 0, 0], mesh, 6)
    (forces,) = torch.autograd.grad((potentials * charges).sum(), positions, create_graph=True)
    (second,) = torch.autograd.grad((forces**2).sum(), positions, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivative of the PME mesh operators"):
        torch.autograd.grad(second.sum(), positions)


def test_atoms_outside_an_empty_brick_or_with_no_channels_are_refused():
    """Nothing to spread (an empty brick, no channels) still checks where the atoms are,
    as the chunked kernel does: an atom outside gives an error, not an empty result."""
    pme, cell, positions, charges = setup(num_atoms=5, order=4)
    mesh = pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach()
    q = charges.detach()
    empty = [0, 0, 0]
    with pytest.raises(RuntimeError, match="outside the brick"):
        torch.ops.lorem.mesh_spread(q, u, None, [1, 1, 1], empty, mesh, 4)
    with pytest.raises(RuntimeError, match="outside the brick"):
        torch.ops.lorem._mesh_op_by_chunks("spread", q, None, u, None, [1, 1, 1], empty, mesh, 4, 5)
    no_channels = torch.zeros(0, *empty, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="outside the brick"):
        torch.ops.lorem.mesh_interpolate(no_channels, u, None, [1, 1, 1], mesh, 4)
    with pytest.raises(RuntimeError, match="outside the brick"):
        torch.ops.lorem.mesh_gradient(no_channels, q[:, :0], u, None, [1, 1, 1], mesh, 4)


def test_a_nan_in_the_brick_reaches_the_forces_under_a_zero_charge():
    """0 x NaN is NaN in every kernel: an atom with zero charges on a brick with a NaN
    gets NaN forces (as from the chunked kernel), not zero."""
    pme, cell, positions, charges = setup(num_atoms=5, order=4)
    mesh = pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach()
    q = charges.detach().clone()
    q[2] = 0.0
    brick = torch.randn(3, *mesh, dtype=torch.float64)
    brick[:] = float("nan")
    fused = torch.ops.lorem.mesh_gradient(brick, q, u, None, [0, 0, 0], mesh, 4)
    chunked = torch.ops.lorem._mesh_op_by_chunks(
        "gradient", brick, q, u, None, [0, 0, 0], mesh, mesh, 4, 5
    )
    assert torch.isnan(chunked[2]).all()
    assert torch.isnan(fused).all()


def plain_convolve(mesh_values, kernel):
    shape = list(mesh_values.shape[1:])
    spectrum = torch.fft.rfftn(mesh_values, dim=(1, 2, 3))
    return torch.fft.irfftn(spectrum * kernel, s=shape, dim=(1, 2, 3), norm="forward")


def even(free, n2):
    """An even kernel for a mesh of last size n2 from free values on the half spectrum:
    the planes m2 = 0 and, for even n2, m2 = n2 / 2 (which hold both m and -m) averaged
    with their negation."""
    out = free.clone()
    for m2 in [0, n2 // 2] if n2 % 2 == 0 else [0]:
        plane = free[:, :, m2]
        negated = plane.flip(0, 1).roll((1, 1), (0, 1))
        out[:, :, m2] = (plane + negated) / 2
    return out


@pytest.mark.parametrize("shape", [[6, 5, 8], [5, 7, 9], [4, 6, 2], [3, 3, 1]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mesh_convolve_equals_autograd_through_the_ffts(shape, dtype):
    """lorem::mesh_convolve (its own symmetric backward) against autograd through
    torch.fft, with a PME kernel (even by construction), even and odd mesh sizes:
    values, the gradients of mesh and kernel, and a second derivative."""
    torch.manual_seed(0)
    pme = PME(smearing=1.0, spacing=0.6, order=4, channels=3)
    cell = torch.tensor(CELL, dtype=dtype, requires_grad=True)
    mesh_values = torch.randn(3, *shape, dtype=dtype, requires_grad=True)
    weights = torch.randn(3, *shape, dtype=dtype)
    results = []
    for convolve in (torch.ops.lorem.mesh_convolve, plain_convolve):
        kernel = pme.kernel(cell, shape, [[0, shape[0]], [0, shape[1]], [0, shape[2] // 2 + 1]])
        out = convolve(mesh_values, kernel)
        d_mesh, d_cell = torch.autograd.grad(
            (out * weights).sum(), [mesh_values, cell], create_graph=True
        )
        (second,) = torch.autograd.grad((d_mesh**2).sum() + (d_cell**2).sum(), [cell])
        results.append((out, d_mesh, d_cell, second))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for fused, reference in zip(*results, strict=True):
        scale = float(reference.abs().max()) + 1e-30
        torch.testing.assert_close(fused, reference, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("shape", [[4, 3, 6], [3, 4, 5]])
def test_mesh_convolve_first_and_second_derivatives(shape):
    torch.manual_seed(1)
    mesh_values = torch.randn(2, *shape, dtype=torch.float64, requires_grad=True)
    free = torch.randn(shape[0], shape[1], shape[2] // 2 + 1, dtype=torch.float64)
    free.requires_grad_()

    def convolve(m, f):
        return torch.ops.lorem.mesh_convolve(m, even(f, shape[2]))

    assert torch.autograd.gradcheck(convolve, (mesh_values, free))
    assert torch.autograd.gradgradcheck(convolve, (mesh_values, free))


def test_mesh_convolve_refusals():
    mesh_values = torch.randn(2, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    kernel = even(torch.rand(4, 3, 4, dtype=torch.float64), 6)
    odd = kernel.clone()
    odd[1, 2, 0] += 0.5  # G(1, 2, 0) != G(-1, -2, 0)
    with pytest.raises(RuntimeError, match="kernel is not even on the plane m2 = 0"):
        torch.ops.lorem.mesh_convolve(mesh_values, odd)
    odd = kernel.clone()
    odd[1, 0, 3] += 0.5  # on the Nyquist plane m2 = N2 / 2 = 3
    with pytest.raises(RuntimeError, match="kernel is not even on the plane m2 = 3"):
        torch.ops.lorem.mesh_convolve(mesh_values, odd)
    with pytest.raises(RuntimeError, match=r"the kernel must be \[4, 3, 4\]"):
        torch.ops.lorem.mesh_convolve(mesh_values, kernel[:, :, :3])
    with pytest.raises(RuntimeError, match="of one dtype"):
        torch.ops.lorem.mesh_convolve(mesh_values, kernel.float())
    with pytest.raises(RuntimeError, match=r"mesh must be \[C, N0, N1, N2\]"):
        torch.ops.lorem.mesh_convolve(mesh_values[0], kernel)


# -- the device kernel's threads (cpp/src/ops/mesh_threads.hpp): on the CPU one atom after
# another, and on CUDA the kernel itself where a LOREM_CUDA_KERNELS build has a GPU --

CUDA_KERNELS = torch.cuda.is_available() and torch.ops.lorem.cuda_kernels_compiled()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build"
        ),
    ),
]


@pytest.mark.parametrize("order", [4, 6, 8, 10])
@pytest.mark.parametrize("directional", [False, True])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_device_threads_equal_the_cpu_kernels(order, directional, dtype, tolerance, coarse, device):
    """One thread per atom (what a LOREM_CUDA_KERNELS build runs on CUDA) == the CPU
    kernels, on the whole periodic mesh (stencils wrapping around; on a coarse mesh, fewer
    points than the order, a stencil visits a point twice) and on a brick, with zero
    charges, every order, float64 and float32."""
    pme, cell, positions, charges = setup(num_atoms=25, order=order)
    mesh = [3, 4, 5] if coarse else pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach().to(dtype)
    q = charges.detach().clone().to(dtype)
    q[3] = 0.0
    q[5, 1] = 0.0
    h = torch.randn(25, 3, dtype=torch.float64).to(dtype) if directional else None
    for lo, shape in bricks(pme, positions, cell, mesh):
        brick = torch.randn(3, *shape, dtype=torch.float64).to(dtype)
        cases = cpu_kernel_cases(q, u, h, brick, lo, shape, mesh, order)
        for name, (expected, first, second) in cases.items():
            on = [t.to(device) if t is not None else None for t in (first, second, u, h)]
            actual = torch.ops.lorem._mesh_op_device(name, *on[:3], on[3], lo, shape, mesh, order)
            actual = actual.cpu()
            assert actual.shape == expected.shape
            scale = max(float(expected.abs().max()), 1.0)
            assert float((actual - expected).abs().max()) <= tolerance * scale, name


@pytest.mark.parametrize("on", DEVICES)
def test_device_threads_refuse_as_the_cpu_kernels_do(on):
    pme, cell, positions, charges = setup(num_atoms=10, order=6)
    mesh = pme.mesh_shape(cell)
    lo, shape = pme.brick_of_atoms(positions, cell, mesh)
    u = pme.mesh_coordinates(positions, cell, mesh).detach().to(on)
    q = charges.detach().to(on)

    def device(name, first, second, *rest):
        first = first.to(on)
        second = second.to(on) if second is not None else None
        return torch.ops.lorem._mesh_op_device(name, first, second, *rest)

    moved = [lo[0] + 1, lo[1], lo[2]]
    with pytest.raises(RuntimeError, match="outside the brick"):
        device("spread", q, None, u, None, moved, shape, mesh, 6)
    bad = u.clone()
    bad[3, 1] = float("nan")
    bad[7, 0] = float("inf")
    for name, first, second in (
        ("spread", q, None),
        ("interpolate", torch.randn(3, *mesh, dtype=torch.float64), None),
        ("gradient", torch.randn(3, *mesh, dtype=torch.float64), q),
    ):
        with pytest.raises(RuntimeError, match=f"lorem::mesh_{name}: mesh coordinates of atom 3"):
            device(name, first, second, bad, None, [0, 0, 0], mesh, mesh, 6)
    # the first bad atom decides: atom 2 outside the brick comes before atom 3's NaN
    outside = bad.clone()
    outside[2] = outside[2] - 40.0
    with pytest.raises(RuntimeError, match="outside the brick"):
        device("spread", q, None, outside, None, lo, shape, mesh, 6)
    with pytest.raises(RuntimeError, match="PME order must be 4, 6, 8 or 10"):
        device("spread", q, None, u, None, lo, shape, mesh, 5)
    with pytest.raises(RuntimeError, match="outside the brick"):  # an empty brick
        device("spread", q, None, u, None, [1, 1, 1], [0, 0, 0], mesh, 4)
    brick = torch.full((3, *mesh), float("nan"), dtype=torch.float64)
    zero = q.clone()
    zero[2] = 0.0
    assert torch.isnan(device("gradient", brick, zero, u, None, [0, 0, 0], mesh, mesh, 4)[2]).all()
    with pytest.raises(RuntimeError, match="spread takes no second operand"):
        device("spread", q, q, u, None, [0, 0, 0], mesh, mesh, 4)


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and a LOREM_CUDA_KERNELS build")
@pytest.mark.parametrize("directional", [False, True])
def test_cuda_mesh_kernel_equals_the_cpu_kernel(directional):
    """The operators on CUDA take the kernel in such a build: == the CPU kernels, float64,
    3,000 atoms, order 6, the whole mesh and a brick."""
    pme, cell, positions, charges = setup(num_atoms=3000, order=6)
    mesh = pme.mesh_shape(cell)
    u = pme.mesh_coordinates(positions, cell, mesh).detach()
    q = charges.detach()
    h = torch.randn(3000, 3, dtype=torch.float64) if directional else None
    for lo, shape in bricks(pme, positions, cell, mesh):
        brick = torch.randn(3, *shape, dtype=torch.float64)
        on = [t.cuda() if t is not None else None for t in (q, u, h, brick)]
        pairs = [
            (torch.ops.lorem.mesh_spread(q, u, h, lo, shape, mesh, 6),
             torch.ops.lorem.mesh_spread(on[0], on[1], on[2], lo, shape, mesh, 6)),
            (torch.ops.lorem.mesh_interpolate(brick, u, h, lo, mesh, 6),
             torch.ops.lorem.mesh_interpolate(on[3], on[1], on[2], lo, mesh, 6)),
            (torch.ops.lorem.mesh_gradient(brick, q, u, h, lo, mesh, 6),
             torch.ops.lorem.mesh_gradient(on[3], on[0], on[1], on[2], lo, mesh, 6)),
        ]  # fmt: skip
        for expected, actual in pairs:
            scale = max(float(expected.abs().max()), 1.0)
            assert float((actual.cpu() - expected).abs().max()) <= 1e-12 * scale
