// Particle-mesh Ewald across ranks (docs/design.md section 4.1): the mesh is owned in
// slabs (or pencils) that do not depend on the engine's domains; each atom visits the
// ranks that hold its B-spline stencil, which spread its charges onto their part, run
// the pencil FFT convolution (lorem/mesh.hpp) and interpolate their part back at it; the
// owner sums the partial potentials and adds real space over pairs with the ghosts'
// charges. What crosses ranks is a few values per visit and the FFT's transposes.
#include <torch/torch.h>

#include <chrono>
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

// Rows of per-atom values between the atoms' owners and the ranks they visit, in the
// order of MeshVisits (destination by destination); one all-to-all each way.
class VisitExchange {
 public:
  VisitExchange(Communicator& comm, const MeshVisits& visits, const torch::TensorOptions& index)
      : comm_(comm) {
    std::vector<int64_t> flat;
    for (const auto& list : visits.atoms) {
      counts_out_.push_back(static_cast<int64_t>(list.size()));
      flat.insert(flat.end(), list.begin(), list.end());
    }
    atoms_ = torch::tensor(flat, torch::kInt64).to(index.device());
  }
  const torch::Tensor& atoms() const { return atoms_; }  // [V] local index of each visit
  // [V, W] rows, one per visit -> [M, W] rows of the atoms visiting this rank
  torch::Tensor to_visited(const torch::Tensor& rows) {
    const auto width = rows.size(1);
    auto out = comm_.all_to_all(split(rows, counts_out_));
    counts_in_.clear();
    std::vector<torch::Tensor> pieces;
    for (const auto& message : out) {
      counts_in_.push_back(message.numel() / std::max<int64_t>(width, 1));
      pieces.push_back(message.view({-1, width}));
    }
    return torch::cat(pieces);
  }
  // [M, W] rows of the visiting atoms (as to_visited gave them) -> [n_local, W], each
  // atom's rows from all the ranks it visited summed
  torch::Tensor to_owners(const torch::Tensor& rows, int64_t n_local) {
    const auto width = rows.size(1);
    auto back = comm_.all_to_all(split(rows, counts_in_));
    std::vector<torch::Tensor> pieces;
    for (const auto& message : back) pieces.push_back(message.view({-1, width}));
    auto per_visit = torch::cat(pieces);
    return torch::zeros({n_local, width}, rows.options()).index_add_(0, atoms_, per_visit);
  }

 private:
  static std::vector<torch::Tensor> split(const torch::Tensor& rows,
                                          const std::vector<int64_t>& counts) {
    std::vector<torch::Tensor> messages;
    int64_t start = 0;
    for (auto count : counts) {
      messages.push_back(rows.narrow(0, start, count).contiguous().view({-1}));
      start += count;
    }
    return messages;
  }
  Communicator& comm_;
  torch::Tensor atoms_;
  std::vector<int64_t> counts_out_, counts_in_;
};

// The wall time of one of PME's parts (the device waited for at both ends), added to
// the call's Timings by stop().
class PartClock {
 public:
  PartClock(const Context& ctx, double Timings::* slot) : ctx_(ctx), slot_(slot) {
    ctx_.sync();
    start_ = std::chrono::steady_clock::now();
  }
  void stop() {
    ctx_.sync();
    if (ctx_.timings)
      ctx_.timings->*slot_ +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  const Context& ctx_;
  double Timings::* slot_;
  std::chrono::steady_clock::time_point start_;
};

class Pme : public LongRangeMethod {
 public:
  Pme(int64_t order, bool split_methods) : order_(order), split_methods_(split_methods) {}
  LongRangeResult compute(const Context& ctx, const LongRangeInputs& lr, Communicator& comm,
                          Readout& readout) override {
    const auto& in = lr.in;
    const auto& q = lr.charges;
    const auto channels = q.size(1);
    const auto mesh_list = ctx.call("pme_mesh", {lr.kcell}).toIntVector();
    const Index3 mesh{mesh_list[0], mesh_list[1], mesh_list[2]};
    const int64_t order = order_;
    // a 2D slab's atoms fill the lowest third of the extended cell's z: blocks of x and y
    const auto layout = owned_mesh_layout(mesh, comm.size(), order, lr.system.slab ? 2 : 0);
    const Box& owned = layout.owned[comm.rank()];
    // where each local atom's stencil lies, and so which ranks it visits
    PartClock spread_clock(ctx, &Timings::pme_spread);
    const auto sizes = torch::tensor({mesh[0], mesh[1], mesh[2]}, torch::kFloat64);
    const auto cell64 = lr.kcell.detach().to(torch::kCPU, torch::kFloat64);
    const auto coordinates =
        torch::matmul(in.local_positions().detach().to(torch::kCPU, torch::kFloat64),
                      torch::linalg_inv(cell64)) *
        sizes;
    const auto visits = mesh_visits(coordinates, mesh, layout, order);
    VisitExchange exchange(comm, visits, ctx.index_options);
    std::vector<int64_t> flat_shifts;
    for (const auto& list : visits.shifts)
      flat_shifts.insert(flat_shifts.end(), list.begin(), list.end());
    const auto shifts = torch::tensor(flat_shifts, torch::kInt64)
                            .view({-1, 3})
                            .to(ctx.device, ctx.options.dtype().toScalarType());
    // the visiting atoms, at the image next to this rank's part of the mesh
    auto outgoing = torch::cat({in.local_positions().detach().index_select(0, exchange.atoms()) -
                                    torch::matmul(shifts, lr.kcell.detach()),
                                q.detach().index_select(0, exchange.atoms())},
                               1);
    auto visiting = exchange.to_visited(outgoing);
    auto visiting_positions = leaf(visiting.slice(1, 0, 3));
    auto visiting_charges = leaf(visiting.slice(1, 3));
    auto brick_out =
        ctx.call("pme_brick", {visiting_positions.detach(), lr.kcell, mesh_list}).toTuple();
    const auto brick_lo = brick_out->elements()[0].toIntVector();
    const auto brick_shape = brick_out->elements()[1].toIntVector();
    const Box brick = box_from(brick_lo, brick_shape);
    auto charge_brick = ctx.tensor("pme_spread", {visiting_positions, visiting_charges, lr.kcell,
                                                  in.strain, brick_lo, brick_shape, mesh_list});
    spread_clock.stop();
    MeshFFT fft(comm, mesh, layout.owned);
    const auto& box = fft.spectrum_box();
    const std::vector<std::vector<int64_t>> ranges{
        {box.lo[0], box.hi[0]}, {box.lo[1], box.hi[1]}, {box.lo[2], box.hi[2]}};
    auto kernel = ctx.tensor("pme_kernel", {lr.kcell, in.strain, mesh_list, ranges});
    // the mesh operator is real and symmetric: a brick -> its part of the mesh ->
    // the convolution of the whole mesh, this part of it, on the brick
    auto convolve = [&](const torch::Tensor& brick_values, torch::Tensor& spectrum) {
      PartClock clock(ctx, &Timings::pme_convolution);
      spectrum = fft.forward(fold(brick_values, brick, owned, mesh), layout.owned);
      auto convolved = fft.inverse(spectrum * kernel.detach(), layout.owned, channels);
      auto out = unfold(convolved, owned, brick, mesh);
      clock.stop();
      return out;
    };
    torch::Tensor charge_spectrum, gradient_spectrum;
    auto potential_brick = leaf(convolve(charge_brick.detach(), charge_spectrum));
    // this rank's share of the visiting atoms' k-space potentials, summed by their owners
    PartClock interpolation_clock(ctx, &Timings::pme_interpolation);
    auto visiting_kspace =
        interpolate(ctx, lr, visiting_positions, potential_brick, brick_lo, mesh_list);
    auto kspace = leaf(exchange.to_owners(visiting_kspace.detach(), in.n_local));
    interpolation_clock.stop();
    ChargeMoments moments(ctx, lr);
    moments.sum(comm);
    auto ghost_q = leaf(comm.forward_ghosts(q.detach()));
    auto potentials = combine(ctx, lr, kspace, torch::cat({q, ghost_q}), moments, mesh_list);
    LongRangeResult result;
    auto grads = readout(moments.corrected(potentials),
                         {{"positions", in.positions},
                          {"strain", in.strain},
                          {"charges", q},
                          {"ghost_charges", ghost_q},
                          {"kspace", kspace},
                          {"moments", moments.total()}},
                         result);
    // backward: dE/d(k-space potentials) to the ranks the atoms visited, through their
    // interpolation to the potential mesh, the same convolution (dE/d(charge mesh)) and
    // their spread to the visiting atoms; those gradients back to the owners
    PartClock interpolation_back_clock(ctx, &Timings::pme_interpolation);
    auto grad_visiting_kspace =
        exchange.to_visited(grads["kspace"].index_select(0, exchange.atoms()));
    auto through_interpolation =
        gradients({visiting_kspace}, {grad_visiting_kspace.to(visiting_kspace.dtype())},
                  {{"positions", visiting_positions},
                   {"strain", in.strain},
                   {"potential_brick", potential_brick}});
    interpolation_back_clock.stop();
    auto gradient_brick = convolve(through_interpolation["potential_brick"], gradient_spectrum);
    // the kernel depends on the cell (strain): dE/dG(m) = Re(rho^(m) conj(a^(m)))
    auto weights = torch::real(charge_spectrum * torch::conj(gradient_spectrum)).sum(0);
    auto through_kernel = gradients({(kernel * weights.to(kernel.dtype())).sum()},
                                    {torch::ones({}, ctx.options)}, {{"strain", in.strain}});
    PartClock spread_back_clock(ctx, &Timings::pme_spread);
    auto through_spread = gradients(
        {charge_brick}, {gradient_brick.to(charge_brick.dtype())},
        {{"positions", visiting_positions}, {"strain", in.strain}, {"charges", visiting_charges}});
    auto returned = exchange.to_owners(
        torch::cat({through_interpolation["positions"] + through_spread["positions"],
                    through_spread["charges"]},
                   1),
        in.n_local);
    spread_back_clock.stop();
    const auto n_ghost = in.positions.size(0) - in.n_local;
    Gradients through_visits(
        {{"positions",
          torch::cat({returned.slice(1, 0, 3), torch::zeros({n_ghost, 3}, returned.options())})},
         {"strain", through_interpolation["strain"] + through_spread["strain"]},
         {"charges", returned.slice(1, 3)}});
    auto through_moments = moments.backward(grads["moments"], comm);
    collect_periodic_gradients(result, grads, {&through_visits, &through_kernel, &through_moments},
                               lr, comm);
    return result;
  }

 private:
  int64_t order_;  // the B-spline order
  // Exports before pme_interpolate and pme_combine have pme_potentials alone, which is
  // linear in its k-space part: with no charges, pairs or total charge it gives
  // prefactor / 2 times the interpolated potentials, and with a brick of zeros the rest.
  bool split_methods_;

  torch::Tensor interpolate(const Context& ctx, const LongRangeInputs& lr,
                            const torch::Tensor& positions, const torch::Tensor& potential_brick,
                            const std::vector<int64_t>& brick_lo,
                            const std::vector<int64_t>& mesh) const {
    if (split_methods_)
      return ctx.tensor("pme_interpolate",
                        {positions, potential_brick, brick_lo, mesh, lr.kcell, lr.in.strain});
    const auto n = positions.size(0);
    const auto channels = potential_brick.size(0);
    auto none = torch::zeros({0}, ctx.index_options);
    return ctx.tensor(
        "pme_potentials",
        {positions, torch::zeros({n, channels}, ctx.options), potential_brick, brick_lo, mesh,
         torch::zeros({channels}, ctx.options), lr.kcell, lr.in.strain, none, none, n});
  }

  torch::Tensor combine(const Context& ctx, const LongRangeInputs& lr, const torch::Tensor& kspace,
                        const torch::Tensor& charges_all, const ChargeMoments& moments,
                        const std::vector<int64_t>& mesh) {
    const auto& in = lr.in;
    if (split_methods_)
      return ctx.tensor("pme_combine", {in.positions, charges_all, kspace, moments.total_charge(),
                                        lr.kcell, in.strain, in.centers, in.others, in.n_local});
    auto brick = ctx.call("pme_brick", {in.local_positions().detach(), lr.kcell, mesh}).toTuple();
    const auto lo = brick->elements()[0].toIntVector();
    const auto shape = brick->elements()[1].toIntVector();
    auto zeros = torch::zeros({kspace.size(1), shape[0], shape[1], shape[2]}, ctx.options);
    return ctx.tensor("pme_potentials",
                      {in.positions, charges_all, zeros, lo, mesh, moments.total_charge(), lr.kcell,
                       in.strain, in.centers, in.others, in.n_local}) +
           kspace;
  }
};

}  // namespace

std::unique_ptr<LongRangeMethod> make_pme(int64_t order, bool split_methods) {
  return std::make_unique<Pme>(order, split_methods);
}

}  // namespace lorem::staged
