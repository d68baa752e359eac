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

// The chunks of local atoms [k c, (k + 1) c) and their pairs (found by one stable sort of
// the centres, so that each chunk's pairs keep their order). Every centre must be local.
std::vector<Chunk> make_chunks(const Inputs& in, int64_t chunk_atoms) {
  std::vector<Chunk> chunks;
  const int64_t pairs = in.centers.numel();
  auto sorted = torch::sort(in.centers, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto& centers = std::get<0>(sorted);
  const auto& order = std::get<1>(sorted);
  std::vector<int64_t> starts;
  for (int64_t begin = 0; begin < in.n_local; begin += chunk_atoms) starts.push_back(begin);
  starts.push_back(in.n_local);
  auto bounds =
      torch::searchsorted(centers, torch::tensor(starts, in.centers.options())).to(torch::kCPU);
  const auto* offset = bounds.data_ptr<int64_t>();
  if (offset[0] != 0 || offset[starts.size() - 1] != pairs)
    throw Error("every pair's centre must be a local atom (0 <= centers < n_local)");
  for (size_t k = 0; k + 1 < starts.size(); ++k)
    chunks.push_back({starts[k], starts[k + 1], order.slice(0, offset[k], offset[k + 1])});
  return chunks;
}

// A chunk's view of the system: its atoms first (the stage's nodes, in order), then the
// other atoms its pairs reach (sorted), and its pairs renumbered into the view, so that a
// chunk's work and memory follow its atoms and their neighbours, not the rank's.
struct ChunkView {
  torch::Tensor atoms;    // [n_view] rank index of each atom of the view
  torch::Tensor centers;  // [P_chunk] indices into the view
  torch::Tensor others;
  int64_t nodes = 0;
};

ChunkView view_of(const Inputs& in, const Chunk& chunk) {
  const int64_t n_all = in.positions.size(0), begin = chunk.begin, end = chunk.end;
  const auto opts = in.centers.options();
  ChunkView view;
  view.nodes = end - begin;
  view.centers = in.centers.index_select(0, chunk.pairs) - begin;
  // sort keys that put the chunk's atoms first (0..nodes-1) and every other atom after
  // (n_all + its index); the chunk's own atoms are all present, so they keep 0..nodes-1
  auto others = in.others.index_select(0, chunk.pairs);
  auto keys = torch::where((others >= begin) & (others < end), others - begin, others + n_all);
  auto unique = at::_unique2(torch::cat({torch::arange(view.nodes, opts), keys}),
                             /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/false);
  const auto& values = std::get<0>(unique);
  view.atoms = torch::where(values < n_all, values + begin, values - n_all);
  view.others = std::get<1>(unique).slice(0, view.nodes);
  return view;
}

// A layer stage's feature input over the rank's atoms [n_all, ...]: local then ghosts
std::pair<torch::Tensor, torch::Tensor> all_features(const Stage& stage) {
  std::map<std::string, torch::Tensor> named(stage.inputs.begin(), stage.inputs.end());
  return {torch::cat({named.at("local_scalar"), named.at("ghost_scalar")}).detach(),
          torch::cat({named.at("local_spherical"), named.at("ghost_spherical")}).detach()};
}

}  // namespace

ShortRange::ChunkCall ShortRange::chunk_call(
    const Context& ctx, const Inputs& in, int64_t t,
    const std::pair<torch::Tensor, torch::Tensor>& features, const Chunk& chunk) const {
  const auto view = view_of(in, chunk);
  ChunkCall call;
  call.atoms = view.atoms;
  // the view's own leaves: gradients to them are [n_view, ...], added into the rank's
  call.leaves.emplace_back("positions", leaf(in.positions.index_select(0, view.atoms)));
  call.leaves.emplace_back("strain", in.strain);
  if (t == 0) {
    call.outputs = tensors(
        ctx.call("initial_features", {call.leaves[0].second, in.numbers.index_select(0, view.atoms),
                                      view.centers, view.others, in.strain, view.nodes}));
    return call;
  }
  call.leaves.emplace_back("scalar", leaf(features.first.index_select(0, view.atoms)));
  call.leaves.emplace_back("spherical", leaf(features.second.index_select(0, view.atoms)));
  call.outputs = tensors(ctx.call(
      "message_passing_step", {t - 1, call.leaves[0].second, view.centers, view.others, in.strain,
                               call.leaves[2].second, call.leaves[3].second, view.nodes}));
  return call;
}

void ShortRange::forward(const Context& ctx, const Inputs& in, int64_t layers, Communicator& comm) {
  stages_.clear();
  chunks_.clear();
  if (chunk_atoms_ < 0) throw Error("the short range's chunk size must be >= 0 (0: no chunks)");
  if (chunk_atoms_ > 0 && in.n_local > chunk_atoms_) chunks_ = make_chunks(in, chunk_atoms_);
  // stage t's outputs chunk by chunk, without graphs (computed again in the backward)
  auto by_chunks = [&](int64_t t, const Stage& inputs) {
    torch::NoGradGuard no_graph;
    const auto features = t == 0 ? std::pair<torch::Tensor, torch::Tensor>{} : all_features(inputs);
    std::vector<torch::Tensor> energy, scalar, spherical;
    for (const auto& chunk : chunks_) {
      auto out = chunk_call(ctx, in, t, features, chunk).outputs;
      energy.push_back(out[0]);
      scalar.push_back(out[1]);
      spherical.push_back(out[2]);
    }
    return Stage{torch::cat(energy), torch::cat(scalar), torch::cat(spherical), inputs.inputs};
  };
  if (chunks_.empty()) {
    auto first = tensors(ctx.call("initial_features", {in.positions, in.numbers, in.centers,
                                                       in.others, in.strain, in.n_local}));
    stages_.push_back({first[0], first[1], first[2], {}});
  } else {
    stages_.push_back(by_chunks(0, Stage{}));
  }
  for (int64_t layer = 0; layer < layers; ++layer) {
    const auto& previous = stages_.back();
    auto local_scalar = leaf(previous.scalar);
    auto local_spherical = leaf(previous.spherical);
    auto ghosts = comm.forward_ghosts(pack(previous.scalar, previous.spherical).detach());
    auto [ghost_scalar_value, ghost_spherical_value] =
        unpack(ghosts, previous.scalar, previous.spherical);
    auto ghost_scalar = leaf(ghost_scalar_value);
    auto ghost_spherical = leaf(ghost_spherical_value);
    Stage inputs{{},
                 {},
                 {},
                 {{"local_scalar", local_scalar},
                  {"local_spherical", local_spherical},
                  {"ghost_scalar", ghost_scalar},
                  {"ghost_spherical", ghost_spherical}}};
    if (!chunks_.empty()) {
      stages_.push_back(by_chunks(layer + 1, inputs));
      continue;
    }
    auto out = tensors(ctx.call("message_passing_step",
                                {layer, in.positions, in.centers, in.others, in.strain,
                                 torch::cat({local_scalar, ghost_scalar}),
                                 torch::cat({local_spherical, ghost_spherical}), in.n_local}));
    stages_.push_back({out[0], out[1], out[2], inputs.inputs});
  }
}

torch::Tensor ShortRange::charges(const Context& ctx) {
  const auto& final = stages_.back();
  auto scalar = leaf(final.scalar);
  auto spherical = leaf(final.spherical);
  charge_inputs_ = {{"scalar", scalar}, {"spherical", spherical}};
  charges_ = ctx.tensor("charges", {scalar, spherical});
  return charges_;
}

torch::Tensor ShortRange::energies() const {
  auto total = stages_.front().energy.detach();
  for (size_t t = 1; t < stages_.size(); ++t) total = total + stages_[t].energy.detach();
  return total;
}

// Stage t's gradients as gradients() gives them for one pass, chunk by chunk: each
// chunk's graph again, its gradients to its own leaves added into the rank's.
Gradients ShortRange::chunk_gradients(const Context& ctx, const Inputs& in, int64_t t,
                                      const Stage& stage, const torch::Tensor& grad_scalar,
                                      const torch::Tensor& grad_spherical) const {
  const auto features = t == 0 ? std::pair<torch::Tensor, torch::Tensor>{} : all_features(stage);
  const auto one = torch::ones({}, ctx.options);
  auto positions = torch::zeros_like(in.positions);
  auto strain = torch::zeros_like(in.strain);
  torch::Tensor scalar, spherical;
  if (t > 0) {
    scalar = torch::zeros_like(features.first);
    spherical = torch::zeros_like(features.second);
  }
  for (const auto& chunk : chunks_) {
    auto call = chunk_call(ctx, in, t, features, chunk);
    auto grads = gradients({call.outputs[0].sum(), call.outputs[1], call.outputs[2]},
                           {one, grad_scalar.slice(0, chunk.begin, chunk.end),
                            grad_spherical.slice(0, chunk.begin, chunk.end)},
                           call.leaves);
    positions.index_add_(0, call.atoms, grads["positions"]);
    strain += grads["strain"];
    if (t > 0) {
      scalar.index_add_(0, call.atoms, grads["scalar"]);
      spherical.index_add_(0, call.atoms, grads["spherical"]);
    }
  }
  std::map<std::string, torch::Tensor> summed{{"positions", positions}, {"strain", strain}};
  if (t > 0) {
    summed["local_scalar"] = scalar.slice(0, 0, in.n_local);
    summed["ghost_scalar"] = scalar.slice(0, in.n_local);
    summed["local_spherical"] = spherical.slice(0, 0, in.n_local);
    summed["ghost_spherical"] = spherical.slice(0, in.n_local);
  }
  return Gradients(std::move(summed));
}

void ShortRange::backward(const Context& ctx, const Inputs& in, torch::Tensor grad_scalar,
                          torch::Tensor grad_spherical, const torch::Tensor& grad_charges,
                          Communicator& comm, torch::Tensor& grad_positions,
                          torch::Tensor& grad_strain) const {
  // the charges are a function of the final features
  if (charges_.defined()) {
    auto grads = gradients({charges_}, {grad_charges}, charge_inputs_);
    grad_scalar = grad_scalar + grads["scalar"];
    grad_spherical = grad_spherical + grads["spherical"];
  }
  const auto last = static_cast<int64_t>(stages_.size()) - 1;
  for (int64_t t = last; t >= 0; --t) {
    const auto& stage = stages_[t];
    Gradients grads;
    if (chunks_.empty()) {
      Leaves leaves{{"positions", in.positions}, {"strain", in.strain}};
      leaves.insert(leaves.end(), stage.inputs.begin(), stage.inputs.end());
      grads = gradients({stage.energy.sum(), stage.scalar, stage.spherical},
                        {torch::ones({}, ctx.options), grad_scalar, grad_spherical}, leaves);
    } else {
      grads = chunk_gradients(ctx, in, t, stage, grad_scalar, grad_spherical);
    }
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
  // (the count on apt's device: torch::cat refuses tensors on two devices). In float64,
  // rounded once, as models/bec.py acoustic_sum_rule: N subtractions of a mean rounded to
  // float32 leave a sum of N times its rounding
  const auto wide = apt.to(torch::kFloat64);
  auto totals = comm.all_reduce_sum(torch::cat(
      {wide.sum(0).reshape({9}), torch::full({1}, static_cast<double>(n_local), wide.options())}));
  const double count = std::max(1.0, totals[9].item<double>());
  return (wide - totals.slice(0, 0, 9).reshape({1, 3, 3}) / count).to(ctx.options);
}

}  // namespace lorem::staged
