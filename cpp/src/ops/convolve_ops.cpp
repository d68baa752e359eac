// lorem::mesh_convolve: the k-space step of single-process PME (docs/design.md section
// 1.10), a charge mesh [C, N0, N1, N2] -> its convolution with a real kernel G(m) given on
// the real FFT's half spectrum [N0, N1, N2 / 2 + 1]:
//   out = irfftn(rfftn(mesh) * kernel), both transforms unnormalised.
//
// With an even kernel (G(m) = G(-m)) the map is real and symmetric, so its adjoint is
// itself: the gradient of the mesh is the same convolution of the incoming gradient, two
// FFTs as in the forward. (Autograd through torch.fft differentiated irfftn and rfftn
// instead: a real-to-complex transform, a full complex transform and the padded copies
// between them.) The kernel's gradient, for the virial, is
//   dL/dG(m) = w(m) Re(rfftn(mesh)(m) conj(rfftn(grad)(m))) summed over channels,
// w = 2 on the half spectrum's interior planes, which stand for m and -m, and 1 on the
// planes m2 = 0 and m2 = N2 / 2, which hold both. Interior planes make the kernel even by
// construction; on the other two the operator checks it, and refuses a kernel that is not.
//
// One implementation for every device (torch.fft). The backward is two FFTs of the
// incoming gradient (its spectrum serves the mesh's gradient and the kernel's), made of
// torch operations so that training differentiates it again; the forward's spectrum is
// kept for the kernel's gradient when no graph is built, recomputed when one is.
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <vector>

namespace lorem {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const std::vector<int64_t> kMeshDims = {1, 2, 3};

void check_inputs(const Tensor& mesh, const Tensor& kernel) {
  TORCH_CHECK(mesh.dim() == 4, "lorem::mesh_convolve: the mesh must be [C, N0, N1, N2], got ",
              mesh.sizes());
  TORCH_CHECK(mesh.is_floating_point() && kernel.scalar_type() == mesh.scalar_type(),
              "lorem::mesh_convolve: the mesh and the kernel must be real, of one dtype");
  TORCH_CHECK(kernel.device() == mesh.device(),
              "lorem::mesh_convolve: the mesh and the kernel must be on one device");
  const std::vector<int64_t> half = {mesh.size(1), mesh.size(2), mesh.size(3) / 2 + 1};
  TORCH_CHECK(kernel.sizes().vec() == half, "lorem::mesh_convolve: the kernel must be [", half[0],
              ", ", half[1], ", ", half[2], "] for a mesh ", mesh.sizes(), ", got ",
              kernel.sizes());
}

// G(-m0, -m1, m2) on a plane m2 whose negative is itself (0, and N2 / 2 when N2 is even)
Tensor negated(const Tensor& plane) {
  // index i -> (-i) mod N along both axes: flip, then roll the flipped index 0 back
  return plane.flip({0, 1}).roll({1, 1}, {0, 1});
}

void check_even(const Tensor& kernel, int64_t n2) {
  std::vector<int64_t> planes = {0};
  if (n2 % 2 == 0 && n2 / 2 != 0) planes.push_back(n2 / 2);
  const Tensor k = kernel.detach();
  const double scale = k.numel() ? k.abs().max().item<double>() : 0.0;
  for (int64_t m2 : planes) {
    const Tensor plane = k.select(2, m2);
    const double odd = (plane - negated(plane)).abs().max().item<double>();
    TORCH_CHECK(odd <= 1e-6 * scale,
                "lorem::mesh_convolve: the kernel is not even on the plane m2 = ", m2,
                " (max |G(m) - G(-m)| ", odd, " of ", scale,
                "): the convolution would not be symmetric and its gradient would be wrong");
  }
}

std::vector<int64_t> mesh_sizes(const Tensor& mesh) {
  return {mesh.size(1), mesh.size(2), mesh.size(3)};
}

Tensor mesh_convolve_forward(const Tensor& mesh, const Tensor& kernel) {
  check_inputs(mesh, kernel);
  const Tensor spectrum = at::fft_rfftn(mesh, c10::nullopt, kMeshDims);
  return at::fft_irfftn(spectrum * kernel, mesh_sizes(mesh), kMeshDims, "forward");
}

// w(m2): 2 on the half spectrum's interior planes, 1 on m2 = 0 and m2 = N2 / 2 (N2 even)
Tensor plane_weights(int64_t n2, const Tensor& like) {
  Tensor w = torch::full({n2 / 2 + 1}, 2.0, like.options());
  w.index_put_({0}, 1.0);
  if (n2 % 2 == 0) w.index_put_({n2 / 2}, 1.0);
  return w;
}

class MeshConvolve : public torch::autograd::Function<MeshConvolve> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& mesh, const Tensor& kernel) {
    check_inputs(mesh, kernel);
    check_even(kernel, mesh.size(3));
    const Tensor spectrum = at::fft_rfftn(mesh, c10::nullopt, kMeshDims);
    // the mesh and its spectrum only if the kernel's gradient will be asked (the virial)
    const bool virial = kernel.requires_grad();
    ctx->save_for_backward({virial ? mesh : Tensor(), virial ? spectrum : Tensor(), kernel});
    return at::fft_irfftn(spectrum * kernel, mesh_sizes(mesh), kMeshDims, "forward");
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& incoming = grads[0];
    const auto saved = ctx->get_saved_variables();
    const Tensor& mesh = saved[0];
    const Tensor& kernel = saved[2];
    Tensor grad_mesh, grad_kernel;
    if (!incoming.defined()) return {grad_mesh, grad_kernel};
    // torch operations, so that force and stress training differentiate them again
    const Tensor from_grad = at::fft_rfftn(incoming, c10::nullopt, kMeshDims);
    // symmetric: the adjoint is the same convolution
    if (ctx->needs_input_grad(0))
      grad_mesh = at::fft_irfftn(from_grad * kernel, mesh_sizes(incoming), kMeshDims, "forward");
    if (ctx->needs_input_grad(1)) {
      // the saved spectrum has no graph back to the mesh: recomputed when one is built
      const Tensor from_mesh =
          torch::GradMode::is_enabled() ? at::fft_rfftn(mesh, c10::nullopt, kMeshDims) : saved[1];
      grad_kernel =
          at::real(from_mesh * from_grad.conj()).sum(0) * plane_weights(incoming.size(3), kernel);
    }
    return {grad_mesh, grad_kernel};
  }
};

Tensor mesh_convolve_autograd(const Tensor& mesh, const Tensor& kernel) {
  return MeshConvolve::apply(mesh, kernel);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) { m.def("mesh_convolve(Tensor mesh, Tensor kernel) -> Tensor"); }

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("mesh_convolve", lorem::mesh_convolve_forward);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) { m.impl("mesh_convolve", lorem::mesh_convolve_autograd); }
