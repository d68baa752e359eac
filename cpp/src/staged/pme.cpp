// Particle-mesh Ewald across ranks (docs/design.md section 4.1): charges spread onto a
// brick of mesh around each rank's atoms, the mesh owned in parts that follow the
// engine's domains, a pencil FFT convolution (lorem/mesh.hpp), potentials interpolated
// from the brick, real-space pairs with the ghosts' charges.
#include <torch/torch.h>

#include <cmath>

#include "lorem/mesh.hpp"
#include "staged/staged.hpp"

namespace lorem::staged {

namespace {

Box box_from(const std::vector<int64_t>& lo, const std::vector<int64_t>& shape) {
  Box box;
  for (int a = 0; a < 3; ++a) {
    box.lo[a] = lo[a];
    box.hi[a] = lo[a] + shape[a];
  }
  return box;
}

// The ranks' owned parts must tile the mesh exactly: overlapping domains would add their
// charges twice (remap sums), gaps would lose them.
void require_tiling(const std::vector<Box>& owned_all, const Index3& mesh) {
  int64_t volume = 0;
  for (size_t r = 0; r < owned_all.size(); ++r) {
    const Box& box = owned_all[r];
    for (int a = 0; a < 3; ++a)
      if (box.lo[a] < 0 || box.hi[a] > mesh[a] || box.lo[a] > box.hi[a])
        throw Error("rank " + std::to_string(r) +
                    "'s domain lies outside the cell: the ranks' domains (fractional, [0, 1) "
                    "per axis) must tile the cell");
    volume += box.volume();
    for (size_t s = 0; s < r; ++s)
      if (!intersect(box, owned_all[s]).empty())
        throw Error("the domains of ranks " + std::to_string(s) + " and " + std::to_string(r) +
                    " overlap: the ranks' domains must tile the cell");
  }
  if (volume != mesh[0] * mesh[1] * mesh[2])
    throw Error("the ranks' domains leave part of the cell to no rank: they must tile it");
}

class Pme : public LongRangeMethod {
 public:
  LongRangeResult compute(const Context& ctx, const LongRangeInputs& lr, Communicator& comm,
                          Readout& readout) override {
    const auto& in = lr.in;
    const auto& q = lr.charges;
    const auto channels = q.size(1);
    const auto mesh_list = ctx.call("pme_mesh", {lr.kcell}).toIntVector();
    const Index3 mesh{mesh_list[0], mesh_list[1], mesh_list[2]};
    Box owned;
    for (int a = 0; a < 3; ++a) {  // exact tiling: neighbours share their bounds
      owned.lo[a] = static_cast<int64_t>(std::ceil(lr.system.domain_lo[a] * mesh[a]));
      owned.hi[a] = static_cast<int64_t>(std::ceil(lr.system.domain_hi[a] * mesh[a]));
    }
    const auto owned_all = gather_boxes(comm, owned);
    require_tiling(owned_all, mesh);
    auto brick_out =
        ctx.call("pme_brick", {in.local_positions().detach(), lr.kcell, mesh_list}).toTuple();
    const auto brick_lo = brick_out->elements()[0].toIntVector();
    const auto brick_shape = brick_out->elements()[1].toIntVector();
    const auto brick_all = gather_boxes(comm, box_from(brick_lo, brick_shape));
    auto charge_brick = ctx.tensor("pme_spread", {in.local_positions(), q, lr.kcell, in.strain,
                                                  brick_lo, brick_shape, mesh_list});
    MeshFFT fft(comm, mesh, owned_all);
    const auto& box = fft.spectrum_box();
    const std::vector<std::vector<int64_t>> ranges{
        {box.lo[0], box.hi[0]}, {box.lo[1], box.hi[1]}, {box.lo[2], box.hi[2]}};
    auto kernel = ctx.tensor("pme_kernel", {lr.kcell, in.strain, mesh_list, ranges});
    // the mesh operator is real and symmetric: a mesh -> its convolution, back in the bricks
    auto convolve = [&](const torch::Tensor& brick_values, torch::Tensor& spectrum) {
      spectrum = fft.forward(remap(comm, brick_values, brick_all, owned_all, mesh), owned_all);
      auto convolved = fft.inverse(spectrum * kernel.detach(), owned_all, channels);
      return remap(comm, convolved, owned_all, brick_all, mesh);
    };
    torch::Tensor charge_spectrum, gradient_spectrum;
    auto potential_brick = leaf(convolve(charge_brick.detach(), charge_spectrum));
    ChargeMoments moments(ctx, lr);
    moments.sum(comm);
    auto ghost_q = leaf(comm.forward_ghosts(q.detach()));
    auto potentials =
        ctx.tensor("pme_potentials", {in.positions, torch::cat({q, ghost_q}), potential_brick,
                                      brick_lo, mesh_list, moments.total_charge(), lr.kcell,
                                      in.strain, in.centers, in.others, in.n_local});
    LongRangeResult result;
    auto grads = readout(moments.corrected(potentials),
                         {{"positions", in.positions},
                          {"strain", in.strain},
                          {"charges", q},
                          {"ghost_charges", ghost_q},
                          {"potential_brick", potential_brick},
                          {"moments", moments.total()}},
                         result);
    // dE/d(charge mesh) is the same convolution of dE/d(potential mesh)
    auto gradient_brick = convolve(grads["potential_brick"], gradient_spectrum);
    // the kernel depends on the cell (strain): dE/dG(m) = Re(rho^(m) conj(a^(m)))
    auto weights = torch::real(charge_spectrum * torch::conj(gradient_spectrum)).sum(0);
    auto through_kernel = gradients({(kernel * weights.to(kernel.dtype())).sum()},
                                    {torch::ones({}, ctx.options)}, {{"strain", in.strain}});
    auto through_spread =
        gradients({charge_brick}, {gradient_brick.to(charge_brick.dtype())},
                  {{"positions", in.positions}, {"strain", in.strain}, {"charges", q}});
    auto through_moments = moments.backward(grads["moments"], comm);
    collect_periodic_gradients(result, grads, {&through_spread, &through_kernel, &through_moments},
                               lr, comm);
    return result;
  }
};

}  // namespace

std::unique_ptr<LongRangeMethod> make_pme() { return std::make_unique<Pme>(); }

}  // namespace lorem::staged
