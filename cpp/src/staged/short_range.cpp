// Stages 0..T of the short range (docs/design.md section 4: forward 1-3, backward 3), and the
// helpers every stage shares.
#include <torch/torch.h>

#include "staged/staged.hpp"

namespace lorem::staged {

using torch::indexing::Slice;

torch::Tensor leaf(const torch::Tensor& x) { return x.detach().requires_grad_(true); }

const torch::Tensor& Gradients::operator[](const std::string& name) const {
  auto found = values_.find(name);
  if (found == values_.end()) throw Error("internal: no gradient to '" + name + "' was taken");
  return found->second;
}

Gradients gradients(const std::vector<torch::Tensor>& outputs,
                    const std::vector<torch::Tensor>& seeds, const Leaves& leaves) {
  std::vector<torch::Tensor> used_outputs, used_seeds, inputs;
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (outputs[k].requires_grad()) {
      used_outputs.push_back(outputs[k]);
      used_seeds.push_back(seeds[k]);
    }
  }
  for (const auto& [name, tensor] : leaves) inputs.push_back(tensor);
  std::vector<torch::Tensor> grads;
  if (!used_outputs.empty()) {
    grads = torch::autograd::grad(used_outputs, inputs, used_seeds, /*retain_graph=*/false,
                                  /*create_graph=*/false, /*allow_unused=*/true);
  } else {
    grads.resize(inputs.size());
  }
  std::map<std::string, torch::Tensor> named;
  for (size_t k = 0; k < inputs.size(); ++k)
    named[leaves[k].first] = grads[k].defined() ? grads[k] : torch::zeros_like(inputs[k]);
  return Gradients(std::move(named));
}

void Context::sync() const {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

namespace {

// Features of a layer as one [n, W] block for the ghost exchange, and back.
torch::Tensor pack(const torch::Tensor& scalar, const torch::Tensor& spherical) {
  return torch::cat(
      {scalar, spherical.reshape({spherical.size(0), spherical.size(1) * spherical.size(2)})}, 1);
}

std::pair<torch::Tensor, torch::Tensor> unpack(const torch::Tensor& packed,
                                               const torch::Tensor& scalar_like,
                                               const torch::Tensor& spherical_like) {
  const int64_t d = scalar_like.size(1);
  auto scalar = packed.index({Slice(), Slice(0, d)});
  auto spherical = packed.index({Slice(), Slice(d, torch::indexing::None)})
                       .reshape({packed.size(0), spherical_like.size(1), spherical_like.size(2)});
  return {scalar, spherical};
}

std::vector<torch::Tensor> tensors(const c10::IValue& tuple) {
  std::vector<torch::Tensor> out;
  for (const auto& element : tuple.toTuple()->elements()) out.push_back(element.toTensor());
  return out;
}

}  // namespace

void ShortRange::forward(const Context& ctx, const Inputs& in, int64_t layers, Communicator& comm) {
  stages_.clear();
  auto first = tensors(ctx.call("initial_features", {in.positions, in.numbers, in.centers,
                                                     in.others, in.strain, in.n_local}));
  stages_.push_back({first[0], first[1], first[2], {}});
  for (int64_t layer = 0; layer < layers; ++layer) {
    const auto& previous = stages_.back();
    auto local_scalar = leaf(previous.scalar);
    auto local_spherical = leaf(previous.spherical);
    auto ghosts = comm.forward_ghosts(pack(previous.scalar, previous.spherical).detach());
    auto [ghost_scalar_value, ghost_spherical_value] =
        unpack(ghosts, previous.scalar, previous.spherical);
    auto ghost_scalar = leaf(ghost_scalar_value);
    auto ghost_spherical = leaf(ghost_spherical_value);
    auto out = tensors(ctx.call("message_passing_step",
                                {layer, in.positions, in.centers, in.others, in.strain,
                                 torch::cat({local_scalar, ghost_scalar}),
                                 torch::cat({local_spherical, ghost_spherical}), in.n_local}));
    stages_.push_back({out[0],
                       out[1],
                       out[2],
                       {{"local_scalar", local_scalar},
                        {"local_spherical", local_spherical},
                        {"ghost_scalar", ghost_scalar},
                        {"ghost_spherical", ghost_spherical}}});
  }
}

torch::Tensor ShortRange::energies() const {
  auto total = stages_.front().energy.detach();
  for (size_t t = 1; t < stages_.size(); ++t) total = total + stages_[t].energy.detach();
  return total;
}

void ShortRange::backward(const Context& ctx, const Inputs& in, torch::Tensor grad_scalar,
                          torch::Tensor grad_spherical, const torch::Tensor& charges,
                          const torch::Tensor& grad_charges, Communicator& comm,
                          torch::Tensor& grad_positions, torch::Tensor& grad_strain) const {
  const auto last = static_cast<int64_t>(stages_.size()) - 1;
  for (int64_t t = last; t >= 0; --t) {
    const auto& stage = stages_[t];
    std::vector<torch::Tensor> outputs{stage.energy.sum(), stage.scalar, stage.spherical};
    std::vector<torch::Tensor> seeds{torch::ones({}, ctx.options), grad_scalar, grad_spherical};
    if (t == last) {  // the charges are a function of the final features
      outputs.push_back(charges);
      seeds.push_back(grad_charges);
    }
    Leaves leaves{{"positions", in.positions}, {"strain", in.strain}};
    leaves.insert(leaves.end(), stage.inputs.begin(), stage.inputs.end());
    auto grads = gradients(outputs, seeds, leaves);
    grad_positions = grad_positions + grads["positions"];
    grad_strain = grad_strain + grads["strain"];
    if (t > 0) {  // gradients of ghost features go back to their owners
      auto back =
          comm.reverse_ghosts(pack(grads["ghost_scalar"], grads["ghost_spherical"]), in.n_local);
      auto [back_scalar, back_spherical] =
          unpack(back, grads["local_scalar"], grads["local_spherical"]);
      grad_scalar = grads["local_scalar"] + back_scalar;
      grad_spherical = grads["local_spherical"] + back_spherical;
    }
  }
}

torch::Tensor born_effective_charges(const Context& ctx, const ShortRange& short_range,
                                     const torch::Tensor& potentials, int64_t n_local,
                                     Communicator& comm) {
  auto apt = torch::zeros({n_local, 3, 3}, ctx.options);
  const auto& stages = short_range.stages();
  for (int64_t t = 0; t < static_cast<int64_t>(stages.size()); ++t)
    apt = apt + ctx.tensor("stage_apt", {t, stages[t].spherical});
  if (potentials.defined())
    apt = apt + ctx.tensor("long_range_apt", {short_range.final_stage().spherical, potentials});
  // the acoustic sum rule over the whole system: 9 sums and the atom count, all ranks
  // (the count on apt's device: torch::cat refuses tensors on two devices)
  auto totals = comm.all_reduce_sum(torch::cat(
      {apt.sum(0).reshape({9}).to(torch::kFloat64),
       torch::full({1}, static_cast<double>(n_local), apt.options().dtype(torch::kFloat64))}));
  const double count = std::max(1.0, totals[9].item<double>());
  return apt - (totals.slice(0, 0, 9).reshape({1, 3, 3}) / count).to(ctx.options);
}

}  // namespace lorem::staged
