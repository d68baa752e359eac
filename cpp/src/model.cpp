// The staged evaluation of a lorem-torch export; the same algorithm as
// python/lorem_torch/export/driver.py (its docstring describes the stages).
#include "lorem/model.hpp"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "lorem/mesh.hpp"
#include "lorem/vocabulary.hpp"

namespace lorem {

namespace {

using torch::indexing::Slice;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Times the communicator's calls and counts the values they move.
class TimedCommunicator : public Communicator {
 public:
  TimedCommunicator(Communicator& inner, Timings& timings) : inner_(inner), timings_(timings) {}
  // ghost values received stand for those sent (every ghost is some rank's send)
  torch::Tensor forward_ghosts(const torch::Tensor& values) override {
    auto out = timed(0, [&] { return inner_.forward_ghosts(values); });
    timings_.bytes += 8.0 * static_cast<double>(out.numel());
    return out;
  }
  torch::Tensor reverse_ghosts(const torch::Tensor& values, int64_t n_local) override {
    return timed(values.numel(), [&] { return inner_.reverse_ghosts(values, n_local); });
  }
  torch::Tensor all_reduce_sum(const torch::Tensor& values) override {
    return timed(values.numel(), [&] { return inner_.all_reduce_sum(values); });
  }
  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override {
    return timed(rows.numel(), [&] { return inner_.all_gather_rows(rows, offset); });
  }
  std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) override {
    const double start = now();
    for (int r = 0; r < static_cast<int>(sends.size()); ++r)
      if (r != inner_.rank()) timings_.bytes += 8.0 * static_cast<double>(sends[r].numel());
    auto out = inner_.all_to_all(sends);
    seconds += now() - start;
    return out;
  }
  std::vector<int64_t> all_gather_ints(const std::vector<int64_t>& values) override {
    const double start = now();
    auto out = inner_.all_gather_ints(values);
    seconds += now() - start;
    return out;
  }
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  double seconds = 0.0;

 private:
  template <typename F>
  torch::Tensor timed(int64_t count, F&& call) {
    const double start = now();
    auto out = call();
    seconds += now() - start;
    timings_.bytes += 8.0 * static_cast<double>(count);
    return out;
  }
  Communicator& inner_;
  Timings& timings_;
};

torch::Tensor leaf(const torch::Tensor& x) { return x.detach().requires_grad_(true); }

// Gradients of `outputs` (with `seeds`) to `inputs`; zeros where unused, and for
// outputs that do not depend on anything that requires a gradient.
std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& outputs,
                                     const std::vector<torch::Tensor>& seeds,
                                     const std::vector<torch::Tensor>& inputs) {
  std::vector<torch::Tensor> used_outputs, used_seeds;
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (outputs[k].requires_grad()) {
      used_outputs.push_back(outputs[k]);
      used_seeds.push_back(seeds[k]);
    }
  }
  std::vector<torch::Tensor> grads;
  if (!used_outputs.empty()) {
    grads = torch::autograd::grad(used_outputs, inputs, used_seeds, /*retain_graph=*/false,
                                  /*create_graph=*/false, /*allow_unused=*/true);
  } else {
    grads.resize(inputs.size());
  }
  for (size_t k = 0; k < inputs.size(); ++k)
    if (!grads[k].defined()) grads[k] = torch::zeros_like(inputs[k]);
  return grads;
}

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

// The model raises errors with a code ("[lorem:memory] ..."; python/lorem_torch/errors.py)
// that TorchScript wraps in its traceback: the coded line alone (the last one: the
// traceback may quote code), or the whole text when there is none.
std::string evaluation_failure(const std::string& text) {
  const auto start = text.rfind("[lorem:");
  if (start == std::string::npos) return "lorem model evaluation failed: " + text;
  auto line = text.substr(start, text.find('\n', start) - start);
  if (line.rfind("[lorem:memory]", 0) == 0) {
    line +=
        " (the memory limit is fixed in the export: export again with lorem-export "
        "--max-memory-gb)";
  }
  return line;
}

// A torch.save file (a training checkpoint) is a zip archive too, without TorchScript code.
bool looks_like_checkpoint(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    return reader.hasRecord("data.pkl") && !reader.hasRecord("constants.pkl");
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

SingleProcess::SingleProcess(torch::Tensor ghost_owner) : ghost_owner_(std::move(ghost_owner)) {}

torch::Tensor SingleProcess::forward_ghosts(const torch::Tensor& local_values) {
  return local_values.index_select(0, ghost_owner_.to(local_values.device()));
}

torch::Tensor SingleProcess::reverse_ghosts(const torch::Tensor& ghost_values, int64_t n_local) {
  auto out = torch::zeros({n_local, ghost_values.size(1)}, ghost_values.options());
  return out.index_add(0, ghost_owner_.to(ghost_values.device()), ghost_values);
}

torch::Tensor SingleProcess::all_reduce_sum(const torch::Tensor& values) { return values; }

torch::Tensor SingleProcess::all_gather_rows(const torch::Tensor& rows, int64_t& offset) {
  offset = 0;
  return rows;
}

torch::Tensor fold_ghost_forces(const torch::Tensor& forces, int64_t n_local,
                                const torch::Tensor& ghost_owner) {
  auto local = forces.slice(0, 0, n_local).clone();
  return local.index_add(0, ghost_owner.to(forces.device()), forces.slice(0, n_local));
}

Model::Model(const std::string& path, const std::string& device) : device_(torch::kCPU) {
  try {
    device_ = torch::Device(device);
  } catch (const std::exception&) {
    throw Error("unknown device '" + device + "' (use cpu, cuda or cuda:N)");
  }
  if (device_.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw Error("device '" + device + "' requested but CUDA is not available to libtorch");
    }
    if (device_.has_index() && device_.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw Error("device '" + device + "' requested but only " +
                  std::to_string(torch::cuda::device_count()) + " CUDA devices are visible");
    }
  }
  {
    std::ifstream probe(path);
    if (!probe.good()) throw Error("model file '" + path + "' does not exist or cannot be read");
  }
  std::unordered_map<std::string, std::string> extra{{"metadata.json", ""}};
  try {
    module_ = torch::jit::load(path, device_, extra);
  } catch (const std::exception& error) {
    if (looks_like_checkpoint(path)) {
      throw Error("'" + path + "' is a training checkpoint, not an export: run `lorem-export " +
                  path + " -o model.pt` and give model.pt");
    }
    // libtorch's own text runs over many lines (and a stack trace) and advice about
    // checkpoints: its first sentence only
    std::string reason = error.what();
    reason = reason.substr(0, reason.find('\n'));
    reason = reason.substr(0, reason.find(". "));
    throw Error("'" + path +
                "' cannot be loaded: it is truncated or corrupt, or not a lorem-torch export (" +
                reason + ")");
  }
  metadata_json_ = extra["metadata.json"];
  if (metadata_json_.empty()) {
    throw Error("'" + path +
                "' is a TorchScript archive but not a lorem-torch export (no metadata.json)");
  }
  contract_ = Contract::from_metadata(metadata_json_, path);
  // the methods this runtime calls, for what the contract says the model does
  std::vector<std::string> needed{"check_species", "initial_features", "charges"};
  if (contract_.num_message_passing > 0) needed.push_back("message_passing_step");
  if (contract_.long_range_method != vocabulary::kNoLongRange) needed.push_back("readout");
  for (const auto& method : contract_.long_range_methods) {
    if (method == vocabulary::kEwald) {
      needed.insert(needed.end(), {"grid_shape", "structure_factors", "potentials"});
    } else if (method == vocabulary::kPme) {
      needed.insert(needed.end(),
                    {"pme_mesh", "pme_brick", "pme_spread", "pme_kernel", "pme_potentials"});
    } else if (method == vocabulary::kAuto) {
      needed.push_back("prefer_pme");
    } else {
      throw Error("'" + path + "': long-range method '" + method +
                  "' is not known to this runtime: rebuild the plugin from a newer lorem-torch");
    }
  }
  if (contract_.non_periodic == vocabulary::kDirectSum) needed.push_back("direct_potentials");
  if (contract_.grants("slab") && contract_.long_range_method != vocabulary::kNoLongRange) {
    needed.insert(needed.end(), {"slab_cell", "slab_moments", "slab_potentials"});
  }
  if (contract_.grants("electric_field")) {
    needed.insert(needed.end(), {"stage_apt", "long_range_apt"});
  }
  for (const auto& method : needed) {
    if (!contract_.lists_method(method) || !module_.find_method(method)) {
      throw Error("'" + path + "' lacks the staged method '" + method +
                  "' that this runtime needs: export it again with a matching lorem-torch");
    }
  }
  method_ = contract_.long_range_method;
  module_.eval();
  // The profiling executor re-specialises the graph whenever the number of atoms or
  // pairs changes, which in MD is every step: plain execution is far faster there.
  torch::jit::setGraphExecutorOptimize(false);
}

void Model::set_long_range_method(const std::string& method) {
  const auto& available = contract_.long_range_methods;
  if (std::find(available.begin(), available.end(), method) == available.end()) {
    std::string list;
    for (const auto& m : available) list += (list.empty() ? "" : ", ") + m;
    throw Error("long-range method '" + method + "' is not available for this model (" +
                (list.empty() ? std::string("it has no long range") : "available: " + list) + ")");
  }
  method_ = method;
}

namespace {

// Refuse pairs closer than the contract allows (and non-finite positions), in float64.
void check_distances(const System& system, double min_distance) {
  auto positions = system.positions.to(torch::kFloat64);
  if (!torch::isfinite(positions).all().item<bool>()) {
    auto bad = torch::nonzero(~torch::isfinite(positions).all(1)).flatten();
    const int64_t first = bad[0].item<int64_t>();
    throw AtomsTooCloseError(
        "atom " + std::to_string(first) + " has a non-finite position (NaN or infinite)", first,
        first, std::nan(""));
  }
  if (system.centers.numel() == 0) return;
  auto distances = (positions.index_select(0, system.others.to(torch::kCPU)) -
                    positions.index_select(0, system.centers.to(torch::kCPU)))
                       .norm(2, 1);
  auto closest = distances.argmin().item<int64_t>();
  const double distance = distances[closest].item<double>();
  if (distance < min_distance) {
    const int64_t i = system.centers[closest].item<int64_t>();
    const int64_t j = system.others[closest].item<int64_t>();
    throw AtomsTooCloseError("atoms " + std::to_string(i) + " and " + std::to_string(j) + " are " +
                                 std::to_string(distance) +
                                 " A apart, closer than the model's minimum " +
                                 std::to_string(min_distance) + " A",
                             i, j, distance);
  }
}

}  // namespace

Result Model::compute(const System& system, Communicator& outer_comm, bool compute_virial) {
  TimedCommunicator comm(outer_comm, timings_);
  auto sync = [this]() {
    if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
  };
  const auto& contract = contract_;
  const auto options = torch::TensorOptions().dtype(contract.dtype).device(device_);
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(device_);
  const int64_t n_all = system.positions.size(0);
  const int64_t n_local = system.n_local;
  if (system.positions.dim() != 2 || system.positions.size(1) != 3) {
    throw Error("positions must have shape [n_all, 3]");
  }
  if (n_local < 0 || n_local > n_all) throw Error("n_local must lie in [0, n_all]");
  if (system.atomic_numbers.numel() != n_all) throw Error("one atomic number per atom is needed");
  if (system.centers.numel() != system.others.numel())
    throw Error("centers and others differ in length");
  contract.require("domain_decomposition", "staged evaluation");
  if (system.slab && !system.periodic) throw Error("a slab System must be periodic as well");
  contract.require(system.slab       ? "slab"
                   : system.periodic ? "periodic"
                                     : "non_periodic",
                   system.slab       ? "a 2D slab (periodic along x and y only)"
                   : system.periodic ? "a periodic cell"
                                     : "open boundaries");
  check_distances(system, contract.min_distance);

  const double start = now();
  auto origin =
      torch::tensor({system.origin[0], system.origin[1], system.origin[2]}, torch::kFloat64);
  auto positions = (system.positions.to(torch::kFloat64) - origin).to(options).requires_grad_(true);
  auto numbers = system.atomic_numbers.to(index_options);
  auto centers = system.centers.to(index_options);
  auto others = system.others.to(index_options);
  auto cell = system.cell.to(options);
  sync();
  const double copied_in = now();
  timings_.transfers += copied_in - start;
  // the strain always takes part (its gradient costs next to nothing); compute_virial only
  // decides whether the caller wants it
  auto strain = torch::zeros({3, 3}, options).requires_grad_(true);

  try {
    module_.get_method("check_species")({numbers});

    // -- forward: the short-range stages; each sees its inputs as leaves
    struct Stage {
      torch::Tensor energy, scalar, spherical;  // outputs (local atoms)
      std::vector<torch::Tensor> inputs;        // leaves: local scalar, spherical, ghost ...
    };
    std::vector<Stage> stages;
    {
      auto out = module_
                     .get_method("initial_features")(
                         {positions, numbers, centers, others, strain, n_local})
                     .toTuple()
                     ->elements();
      stages.push_back({out[0].toTensor(), out[1].toTensor(), out[2].toTensor(), {}});
    }
    for (int64_t layer = 0; layer < contract.num_message_passing; ++layer) {
      const auto& previous = stages.back();
      auto local_scalar = leaf(previous.scalar);
      auto local_spherical = leaf(previous.spherical);
      auto ghosts = comm.forward_ghosts(pack(previous.scalar, previous.spherical).detach());
      auto [ghost_scalar_value, ghost_spherical_value] =
          unpack(ghosts, previous.scalar, previous.spherical);
      auto ghost_scalar = leaf(ghost_scalar_value);
      auto ghost_spherical = leaf(ghost_spherical_value);
      auto out = module_
                     .get_method("message_passing_step")(
                         {layer, positions, centers, others, strain,
                          torch::cat({local_scalar, ghost_scalar}),
                          torch::cat({local_spherical, ghost_spherical}), n_local})
                     .toTuple()
                     ->elements();
      stages.push_back({out[0].toTensor(),
                        out[1].toTensor(),
                        out[2].toTensor(),
                        {local_scalar, local_spherical, ghost_scalar, ghost_spherical}});
    }
    auto energies = torch::zeros({n_local}, options);
    for (const auto& stage : stages) energies = energies + stage.energy.detach();
    const auto& final = stages.back();
    auto charges = module_.get_method("charges")({final.scalar, final.spherical}).toTensor();
    sync();
    const double encoded_at = now();
    const double comm_encoded = comm.seconds;

    // -- long range: everything it sees is a leaf
    auto grad_positions = torch::zeros_like(positions);
    auto grad_strain = torch::zeros_like(strain);
    auto grad_charges = torch::zeros_like(charges);
    auto grad_scalar = torch::zeros_like(final.scalar);
    auto grad_spherical = torch::zeros_like(final.spherical);
    double forward_at = encoded_at, comm_forward = comm_encoded;
    torch::Tensor final_potentials;  // for the long-range APT head
    if (contract.long_range_method != vocabulary::kNoLongRange) {
      auto q = leaf(charges);
      auto scalar_leaf = leaf(final.scalar);
      auto spherical_leaf = leaf(final.spherical);
      // every method ends alike: the readout of the potentials, the end of the forward
      // timing, and the gradients of the long-range energy to the method's leaves (then
      // to scalar_leaf and spherical_leaf, the last two)
      auto read_out = [&](const torch::Tensor& potentials, std::vector<torch::Tensor> leaves) {
        final_potentials = potentials.detach();
        auto energies_long_range =
            module_.get_method("readout")({scalar_leaf, spherical_leaf, potentials}).toTensor();
        energies = energies + energies_long_range.detach();
        sync();
        forward_at = now();
        comm_forward = comm.seconds;
        leaves.push_back(scalar_leaf);
        leaves.push_back(spherical_leaf);
        return gradients({energies_long_range.sum()}, {torch::ones({}, options)}, leaves);
      };
      // a slab: the k-space methods run over its cell extended along z (slab_cell); the
      // moments Q, M, S along z travel in the sum over ranks that carries Q otherwise,
      // and the dipole correction (slab_potentials) joins the potentials
      const bool slab = system.slab;
      auto kcell = slab ? module_.get_method("slab_cell")({cell}).toTensor() : cell;
      // partial moments of this rank [3, C] (slab) or its total charge [C]; their sum over
      // ranks (a leaf) and the total charge it holds
      auto partial_moments =
          slab ? module_
                     .get_method("slab_moments")({positions.slice(0, 0, n_local), q, kcell, strain})
                     .toTensor()
               : q.sum(0);
      torch::Tensor total_moments, total_q;
      auto sum_moments = [&]() {
        total_moments = leaf(comm.all_reduce_sum(partial_moments.detach()));
        total_q = slab ? total_moments.select(0, 0) : total_moments;
      };
      auto add_correction = [&](const torch::Tensor& potentials) {
        if (!slab) return potentials;
        return potentials + module_
                                .get_method("slab_potentials")(
                                    {positions.slice(0, 0, n_local), total_moments, kcell, strain})
                                .toTensor();
      };
      // dE/d(moments) summed over ranks, through this rank's moments (a slab) or onto
      // every local charge (the total charge)
      auto through_moments = [&](const torch::Tensor& grad_total) {
        auto grad_sum = comm.all_reduce_sum(grad_total);
        if (!slab)
          return std::vector<torch::Tensor>{torch::zeros_like(positions), torch::zeros_like(strain),
                                            grad_sum.unsqueeze(0).expand_as(q)};
        return gradients({partial_moments}, {grad_sum}, {positions, strain, q});
      };
      bool pme = false;
      if (system.periodic && method_ != vocabulary::kEwald) {
        pme = method_ == vocabulary::kPme;
        if (method_ == vocabulary::kAuto) {  // the same choice on every rank: the global atom count
          auto atoms = comm.all_reduce_sum(torch::full(
              {1}, static_cast<double>(n_local), torch::TensorOptions().dtype(torch::kFloat64)));
          pme = module_.get_method("prefer_pme")({kcell, atoms.item<double>()}).toBool();
        }
      }
      if (pme) {
        // particle-mesh Ewald on a mesh spread over the ranks (cpp/src/mesh.cpp)
        const auto mesh_list = module_.get_method("pme_mesh")({kcell}).toIntVector();
        const Index3 mesh{mesh_list[0], mesh_list[1], mesh_list[2]};
        Box owned;
        for (int a = 0; a < 3; ++a) {  // exact tiling: neighbours share their bounds
          owned.lo[a] = static_cast<int64_t>(std::ceil(system.domain_lo[a] * mesh[a]));
          owned.hi[a] = static_cast<int64_t>(std::ceil(system.domain_hi[a] * mesh[a]));
        }
        const auto owned_all = gather_boxes(comm, owned);
        auto brick_out = module_
                             .get_method("pme_brick")(
                                 {positions.slice(0, 0, n_local).detach(), kcell, mesh_list})
                             .toTuple()
                             ->elements();
        const auto brick_lo = brick_out[0].toIntVector();
        const auto brick_shape = brick_out[1].toIntVector();
        Box brick;
        for (int a = 0; a < 3; ++a) {
          brick.lo[a] = brick_lo[a];
          brick.hi[a] = brick_lo[a] + brick_shape[a];
        }
        const auto brick_all = gather_boxes(comm, brick);
        auto charge_brick =
            module_
                .get_method("pme_spread")({positions.slice(0, 0, n_local), q, kcell, strain,
                                           brick_lo, brick_shape, mesh_list})
                .toTensor();
        MeshFFT fft(comm, mesh);
        const auto& box = fft.spectrum_box();
        const std::vector<std::vector<int64_t>> ranges{
            {box.lo[0], box.hi[0]}, {box.lo[1], box.hi[1]}, {box.lo[2], box.hi[2]}};
        auto kernel =
            module_.get_method("pme_kernel")({kcell, strain, mesh_list, ranges}).toTensor();
        auto charge_spectrum =
            fft.forward(remap(comm, charge_brick.detach(), brick_all, owned_all, mesh), owned_all);
        auto potential_owned =
            fft.inverse(charge_spectrum * kernel.detach(), owned_all, charges.size(1));
        auto potential_brick = leaf(remap(comm, potential_owned, owned_all, brick_all, mesh));
        sum_moments();
        auto ghost_q = leaf(comm.forward_ghosts(q.detach()));
        auto potentials = module_
                              .get_method("pme_potentials")(
                                  {positions, torch::cat({q, ghost_q}), potential_brick, brick_lo,
                                   mesh_list, total_q, kcell, strain, centers, others, n_local})
                              .toTensor();
        auto first = read_out(add_correction(potentials),
                              {positions, strain, q, ghost_q, potential_brick, total_moments});
        // the mesh operator is real and symmetric: the gradient of the charge mesh is the
        // same convolution of the potential mesh's gradient
        auto gradient_spectrum =
            fft.forward(remap(comm, first[4], brick_all, owned_all, mesh), owned_all);
        auto gradient_owned =
            fft.inverse(gradient_spectrum * kernel.detach(), owned_all, charges.size(1));
        auto gradient_brick = remap(comm, gradient_owned, owned_all, brick_all, mesh);
        // the kernel depends on the cell (strain): dE/dG(m) = Re(rho^(m) conj(a^(m)))
        auto weights = torch::real(charge_spectrum * torch::conj(gradient_spectrum)).sum(0);
        auto through_kernel = gradients({(kernel * weights.to(kernel.dtype())).sum()},
                                        {torch::ones({}, options)}, {strain});
        auto through_spread = gradients({charge_brick}, {gradient_brick.to(charge_brick.dtype())},
                                        {positions, strain, q});
        auto through_sums = through_moments(first[5]);
        grad_positions = grad_positions + first[0] + through_spread[0] + through_sums[0];
        grad_strain =
            grad_strain + first[1] + through_spread[1] + through_kernel[0] + through_sums[1];
        grad_charges =
            first[2] + comm.reverse_ghosts(first[3], n_local) + through_sums[2] + through_spread[2];
        grad_scalar = first[6];
        grad_spherical = first[7];
      } else if (system.periodic) {
        auto grid = module_.get_method("grid_shape")({kcell}).toIntVector();
        auto partial_sf = module_
                              .get_method("structure_factors")(
                                  {positions.slice(0, 0, n_local), q, kcell, strain, grid})
                              .toTensor();
        auto total_sf = leaf(comm.all_reduce_sum(partial_sf.detach()));
        sum_moments();
        auto ghost_q = leaf(comm.forward_ghosts(q.detach()));
        auto potentials =
            module_
                .get_method("potentials")({positions, torch::cat({q, ghost_q}), total_sf, total_q,
                                           kcell, strain, grid, centers, others, n_local})
                .toTensor();
        auto first = read_out(add_correction(potentials),
                              {positions, strain, q, ghost_q, total_sf, total_moments});
        // the sums over ranks of dE/dS and dE/dQ (a slab: dE/d(Q, M, S)); dE/dq of ghosts
        // back to their owners
        auto grad_sf = comm.all_reduce_sum(first[4]);
        auto through_sums = through_moments(first[5]);
        auto through_sf = gradients({partial_sf}, {grad_sf}, {positions, strain, q});
        grad_positions = grad_positions + first[0] + through_sf[0] + through_sums[0];
        grad_strain = grad_strain + first[1] + through_sf[1] + through_sums[1];
        grad_charges =
            first[2] + comm.reverse_ghosts(first[3], n_local) + through_sums[2] + through_sf[2];
        grad_scalar = first[6];
        grad_spherical = first[7];
      } else {
        int64_t offset = 0;
        auto all_positions =
            leaf(comm.all_gather_rows(positions.slice(0, 0, n_local).detach(), offset));
        auto all_charges = leaf(comm.all_gather_rows(q.detach(), offset));
        auto receivers = torch::arange(offset, offset + n_local, index_options);
        auto potentials =
            module_.get_method("direct_potentials")({all_positions, all_charges, strain, receivers})
                .toTensor();
        auto first = read_out(potentials, {strain, all_positions, all_charges});
        auto grad_all_positions = comm.all_reduce_sum(first[1]);
        auto grad_all_charges = comm.all_reduce_sum(first[2]);
        grad_positions.slice(0, 0, n_local) +=
            grad_all_positions.slice(0, offset, offset + n_local);
        grad_strain = grad_strain + first[0];
        grad_charges = grad_all_charges.slice(0, offset, offset + n_local);
        grad_scalar = first[3];
        grad_spherical = first[4];
      }
    }

    // -- Born effective charges: no part of the energy, no backward pass
    const bool apt_needed = system.want_born_effective_charges || system.apply_electric_field;
    torch::Tensor apt;
    if (apt_needed) {
      contract.require("electric_field", "Born effective charges or an electric field");
      apt = torch::zeros({n_local, 3, 3}, options);
      for (int64_t t = 0; t < static_cast<int64_t>(stages.size()); ++t)
        apt = apt + module_.get_method("stage_apt")({t, stages[t].spherical}).toTensor();
      if (final_potentials.defined()) {
        apt = apt +
              module_.get_method("long_range_apt")({final.spherical, final_potentials}).toTensor();
      }
      // the acoustic sum rule over the whole system: 9 sums and the atom count, all ranks
      // (the count on apt's device: torch::cat refuses tensors on two devices)
      auto totals = comm.all_reduce_sum(torch::cat(
          {apt.sum(0).reshape({9}).to(torch::kFloat64),
           torch::full({1}, static_cast<double>(n_local), apt.options().dtype(torch::kFloat64))}));
      const double count = std::max(1.0, totals[9].item<double>());
      apt = apt - (totals.slice(0, 0, 9).reshape({1, 3, 3}) / count).to(options);
    }

    // -- backward through the short-range stages, last first
    for (int64_t t = static_cast<int64_t>(stages.size()) - 1; t >= 0; --t) {
      const auto& stage = stages[t];
      std::vector<torch::Tensor> outputs{stage.energy.sum(), stage.scalar, stage.spherical};
      std::vector<torch::Tensor> seeds{torch::ones({}, options), grad_scalar, grad_spherical};
      if (t == static_cast<int64_t>(stages.size()) - 1) {
        outputs.push_back(charges);
        seeds.push_back(grad_charges);
      }
      std::vector<torch::Tensor> inputs{positions, strain};
      inputs.insert(inputs.end(), stage.inputs.begin(), stage.inputs.end());
      auto grads = gradients(outputs, seeds, inputs);
      grad_positions = grad_positions + grads[0];
      grad_strain = grad_strain + grads[1];
      if (t > 0) {  // gradients of ghost features go back to their owners
        auto back = comm.reverse_ghosts(pack(grads[4], grads[5]), n_local);
        auto [back_scalar, back_spherical] = unpack(back, grads[2], grads[3]);
        grad_scalar = grads[2] + back_scalar;
        grad_spherical = grads[3] + back_spherical;
      }
    }

    sync();
    const double end = now();
    timings_.short_range += encoded_at - copied_in - comm_encoded;
    timings_.long_range += forward_at - encoded_at - (comm_forward - comm_encoded);
    timings_.backward += end - forward_at - (comm.seconds - comm_forward);
    timings_.communication += comm.seconds;
    timings_.calls += 1;

    Result result;
    result.energies = energies.detach().to(torch::kCPU, torch::kFloat64);
    result.energy = result.energies.sum().item<double>();
    result.forces = (-grad_positions).detach().to(torch::kCPU, torch::kFloat64);
    result.virial = compute_virial ? grad_strain.detach().to(torch::kCPU, torch::kFloat64)
                                   : torch::zeros({3, 3}, torch::kFloat64);
    if (apt_needed) {
      result.born_effective_charges = apt.detach().to(torch::kCPU, torch::kFloat64);
      if (system.apply_electric_field) {
        auto field = torch::tensor(
            {system.electric_field[0], system.electric_field[1], system.electric_field[2]},
            torch::kFloat64);
        result.forces.slice(0, 0, n_local) +=
            torch::einsum("nab,b->na", {result.born_effective_charges, field});
      }
    }
    timings_.transfers += now() - end;  // .to(kCPU) waits for the device
    return result;
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& error) {
    throw Error(evaluation_failure(error.what_without_backtrace()));
  } catch (const std::exception& error) {
    throw Error(evaluation_failure(error.what()));
  }
}

}  // namespace lorem
