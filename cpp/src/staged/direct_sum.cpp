// Open boundaries (docs/design.md section 4, forward 4): every rank gathers all positions and
// charges and sums the potentials of its own atoms directly.
#include <torch/torch.h>

#include "staged/staged.hpp"

namespace lorem::staged {

namespace {

class DirectSum : public LongRangeMethod {
 public:
  LongRangeResult compute(const Context& ctx, const LongRangeInputs& lr, Communicator& comm,
                          Readout& readout) override {
    const auto& in = lr.in;
    int64_t offset = 0;
    auto all_positions = leaf(comm.all_gather_rows(in.local_positions().detach(), offset));
    auto all_charges = leaf(comm.all_gather_rows(lr.charges.detach(), offset));
    auto receivers = torch::arange(offset, offset + in.n_local, ctx.index_options);
    auto potentials =
        ctx.tensor("direct_potentials", {all_positions, all_charges, in.strain, receivers});
    LongRangeResult result;
    auto grads = readout(
        potentials,
        {{"strain", in.strain}, {"all_positions", all_positions}, {"all_charges", all_charges}},
        result);
    // every rank's energy depends on every atom: the gradients summed over ranks, our rows
    auto grad_all_positions = comm.all_reduce_sum(grads["all_positions"]);
    auto grad_all_charges = comm.all_reduce_sum(grads["all_charges"]);
    result.grad_positions = torch::zeros_like(in.positions);
    result.grad_positions.slice(0, 0, in.n_local) +=
        grad_all_positions.slice(0, offset, offset + in.n_local);
    result.grad_strain = grads["strain"];
    result.grad_charges = grad_all_charges.slice(0, offset, offset + in.n_local);
    return result;
  }
};

}  // namespace

std::unique_ptr<LongRangeMethod> make_direct_sum() { return std::make_unique<DirectSum>(); }

}  // namespace lorem::staged
