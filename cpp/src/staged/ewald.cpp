// Ewald summation across ranks (docs/design.md section 4, forward 4): the structure factors S(k)
// of every rank's atoms summed over ranks, real-space pairs with the ghosts' charges.
#include <torch/torch.h>

#include "staged/staged.hpp"

namespace lorem::staged {

namespace {

class Ewald : public LongRangeMethod {
 public:
  LongRangeResult compute(const Context& ctx, const LongRangeInputs& lr, Communicator& comm,
                          Readout& readout) override {
    const auto& in = lr.in;
    const auto& q = lr.charges;
    auto grid = ctx.call("grid_shape", {lr.kcell}).toIntVector();
    auto partial_sf =
        ctx.tensor("structure_factors", {in.local_positions(), q, lr.kcell, in.strain, grid});
    auto total_sf = leaf(comm.all_reduce_sum(partial_sf.detach()));
    ChargeMoments moments(ctx, lr);
    moments.sum(comm);
    auto ghost_q = leaf(comm.forward_ghosts(q.detach()));
    auto potentials = ctx.tensor(
        "potentials", {in.positions, torch::cat({q, ghost_q}), total_sf, moments.total_charge(),
                       lr.kcell, in.strain, grid, in.centers, in.others, in.n_local});
    LongRangeResult result;
    auto grads = readout(moments.corrected(potentials),
                         {{"positions", in.positions},
                          {"strain", in.strain},
                          {"charges", q},
                          {"ghost_charges", ghost_q},
                          {"structure_factors", total_sf},
                          {"moments", moments.total()}},
                         result);
    // dE/dS and the moments' gradients summed over ranks, through this rank's parts;
    // dE/dq of ghosts back to their owners
    auto grad_sf = comm.all_reduce_sum(grads["structure_factors"]);
    auto through_moments = moments.backward(grads["moments"], comm);
    auto through_sf =
        gradients({partial_sf}, {grad_sf},
                  {{"positions", in.positions}, {"strain", in.strain}, {"charges", q}});
    collect_periodic_gradients(result, grads, {&through_sf, &through_moments}, lr, comm);
    return result;
  }
};

}  // namespace

std::unique_ptr<LongRangeMethod> make_ewald() { return std::make_unique<Ewald>(); }

}  // namespace lorem::staged
