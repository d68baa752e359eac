// What every long-range method shares (docs/design.md section 4: forward 4-5, backward 1-2): the
// readout of the potentials and the charge moments summed over ranks.
#include <torch/torch.h>

#include <chrono>

#include "staged/staged.hpp"

namespace lorem::staged {

Gradients Readout::operator()(const torch::Tensor& potentials, Leaves leaves,
                              LongRangeResult& result) {
  result.potentials = potentials.detach();
  auto energies = ctx_.tensor("readout", {lr_.scalar, lr_.spherical, potentials});
  result.energies = energies.detach();
  ctx_.sync();
  result.forward_end =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  result.comm_at_forward_end = comm_seconds_;
  leaves.emplace_back("scalar", lr_.scalar);
  leaves.emplace_back("spherical", lr_.spherical);
  auto grads = gradients({energies.sum()}, {torch::ones({}, ctx_.options)}, leaves);
  result.grad_scalar = grads["scalar"];
  result.grad_spherical = grads["spherical"];
  return grads;
}

ChargeMoments::ChargeMoments(const Context& ctx, const LongRangeInputs& lr) : ctx_(ctx), lr_(lr) {
  // a slab: Q, M, S along z of this rank's atoms [3, C]; otherwise its total charge [C]
  partial_ = lr.system.slab ? ctx.tensor("slab_moments", {lr.in.local_positions(), lr.charges,
                                                          lr.kcell, lr.in.strain})
                            : lr.charges.sum(0);
}

void ChargeMoments::sum(Communicator& comm) {
  total_ = leaf(comm.all_reduce_sum(partial_.detach()));
}

torch::Tensor ChargeMoments::total_charge() const {
  return lr_.system.slab ? total_.select(0, 0) : total_;
}

torch::Tensor ChargeMoments::corrected(const torch::Tensor& potentials) const {
  if (!lr_.system.slab) return potentials;
  return potentials + ctx_.tensor("slab_potentials",
                                  {lr_.in.local_positions(), total_, lr_.kcell, lr_.in.strain});
}

Gradients ChargeMoments::backward(const torch::Tensor& grad_total, Communicator& comm) const {
  auto grad_sum = comm.all_reduce_sum(grad_total);
  if (!lr_.system.slab) {
    return Gradients({{"positions", torch::zeros_like(lr_.in.positions)},
                      {"strain", torch::zeros_like(lr_.in.strain)},
                      {"charges", grad_sum.unsqueeze(0).expand_as(lr_.charges)}});
  }
  return gradients(
      {partial_}, {grad_sum},
      {{"positions", lr_.in.positions}, {"strain", lr_.in.strain}, {"charges", lr_.charges}});
}

void collect_periodic_gradients(LongRangeResult& result, const Gradients& own,
                                const std::vector<const Gradients*>& through,
                                const LongRangeInputs& lr, Communicator& comm) {
  result.grad_positions = own["positions"];
  result.grad_strain = own["strain"];
  result.grad_charges = own["charges"] + comm.reverse_ghosts(own["ghost_charges"], lr.in.n_local);
  for (const auto* part : through) {
    if (part->has("positions"))
      result.grad_positions = result.grad_positions + (*part)["positions"];
    if (part->has("strain")) result.grad_strain = result.grad_strain + (*part)["strain"];
    if (part->has("charges")) result.grad_charges = result.grad_charges + (*part)["charges"];
  }
}

}  // namespace lorem::staged
