// The staged evaluation of a lorem-torch export; mirrors lorem_torch/export/driver.py.
#include "lorem/model.hpp"

#include <torch/torch.h>

#include <chrono>
#include <regex>
#include <sstream>

namespace lorem {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Times the communicator's calls (and synchronises CUDA so that the times are real).
class TimedCommunicator : public Communicator {
 public:
  TimedCommunicator(Communicator& inner, double& seconds) : inner_(inner), seconds_(seconds) {}
  torch::Tensor forward_ghosts(const torch::Tensor& values) override {
    const double start = now();
    auto out = inner_.forward_ghosts(values);
    seconds_ += now() - start;
    return out;
  }
  torch::Tensor reverse_ghosts(const torch::Tensor& values, int64_t n_local) override {
    const double start = now();
    auto out = inner_.reverse_ghosts(values, n_local);
    seconds_ += now() - start;
    return out;
  }
  torch::Tensor all_reduce_sum(const torch::Tensor& values) override {
    const double start = now();
    auto out = inner_.all_reduce_sum(values);
    seconds_ += now() - start;
    return out;
  }
  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override {
    const double start = now();
    auto out = inner_.all_gather_rows(rows, offset);
    seconds_ += now() - start;
    return out;
  }

 private:
  Communicator& inner_;
  double& seconds_;
};

std::string json_raw_value(const std::string& json, const std::string& key) {
  // metadata.json is written by lorem-export (json.dumps); top-level scalars only
  const std::regex pattern("\"" + key + "\"\\s*:\\s*(\"[^\"]*\"|[-+0-9.eE]+|true|false)");
  std::smatch match;
  if (!std::regex_search(json, match, pattern)) {
    throw Error("model metadata lacks '" + key + "'");
  }
  std::string value = match[1];
  if (!value.empty() && value.front() == '"') value = value.substr(1, value.size() - 2);
  return value;
}

torch::Tensor defined_or_zeros(const torch::Tensor& gradient, const torch::Tensor& like) {
  return gradient.defined() ? gradient : torch::zeros_like(like);
}

std::vector<torch::Tensor> gradients(const torch::Tensor& output,
                                     const std::vector<torch::Tensor>& inputs, bool retain) {
  if (!output.requires_grad()) {
    std::vector<torch::Tensor> zeros;
    for (const auto& input : inputs) zeros.push_back(torch::zeros_like(input));
    return zeros;
  }
  auto grads = torch::autograd::grad({output}, inputs, /*grad_outputs=*/{}, retain,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  for (size_t k = 0; k < grads.size(); ++k) grads[k] = defined_or_zeros(grads[k], inputs[k]);
  return grads;
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
  std::unordered_map<std::string, std::string> extra{{"metadata.json", ""}};
  try {
    module_ = torch::jit::load(path, device_, extra);
  } catch (const std::exception& error) {
    std::ifstream probe(path);
    if (!probe.good()) throw Error("model file '" + path + "' does not exist or cannot be read");
    throw Error("'" + path +
                "' is not a TorchScript archive: " + std::string(error.what()).substr(0, 200));
  }
  metadata_.json = extra["metadata.json"];
  if (metadata_.json.empty()) {
    throw Error("'" + path +
                "' is a TorchScript archive but not a lorem-torch export (no metadata.json)");
  }
  if (json_raw_value(metadata_.json, "format") != "lorem-torch-export") {
    throw Error("'" + path + "' is not a lorem-torch export");
  }
  metadata_.format_version = std::stoll(json_raw_value(metadata_.json, "format_version"));
  if (metadata_.format_version > kExportFormatVersion) {
    throw Error("'" + path + "' has export format version " +
                std::to_string(metadata_.format_version) + ", newer than this runtime reads (" +
                std::to_string(kExportFormatVersion) +
                "): rebuild the plugin from a newer lorem-torch");
  }
  metadata_.cutoff = std::stod(json_raw_value(metadata_.json, "cutoff"));
  metadata_.num_charges = std::stoll(json_raw_value(metadata_.json, "num_charges"));
  metadata_.num_message_passing = std::stoll(json_raw_value(metadata_.json, "num_message_passing"));
  metadata_.long_range = module_.attr("has_long_range").toBool();
  metadata_.species = module_.attr("model").toModule().attr("species").toIntVector();
  const auto dtype = json_raw_value(metadata_.json, "dtype");
  if (dtype == "float32") {
    metadata_.dtype = torch::kFloat32;
  } else if (dtype == "float64") {
    metadata_.dtype = torch::kFloat64;
  } else {
    throw Error("model dtype '" + dtype + "' is not supported (float32 or float64)");
  }
  module_.eval();
  // The profiling executor re-specialises the graph whenever the number of atoms or
  // pairs changes, which in MD is every step: plain execution is far faster there.
  torch::jit::setGraphExecutorOptimize(false);
}

Result Model::compute(const System& system, Communicator& outer_comm, bool compute_virial) {
  double comm_seconds = 0.0;
  TimedCommunicator comm(outer_comm, comm_seconds);
  auto sync = [this]() {
    if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
  };
  const double start = now();
  const auto options = torch::TensorOptions().dtype(metadata_.dtype).device(device_);
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
  if (metadata_.num_message_passing > 0 && metadata_.long_range) {
    // ghost features would need a ghost shell of (1 + num_message_passing) cutoffs
    throw Error("staged evaluation supports num_message_passing = 0 only; this model has " +
                std::to_string(metadata_.num_message_passing));
  }

  auto positions = system.positions.to(options).detach().requires_grad_(true);
  auto numbers = system.atomic_numbers.to(index_options);
  auto centers = system.centers.to(index_options);
  auto others = system.others.to(index_options);
  auto cell = system.cell.to(options);
  // the strain always takes part (its gradient costs next to nothing); compute_virial only
  // decides whether the caller wants it
  auto strain = torch::zeros({3, 3}, options).requires_grad_(true);

  try {
    module_.get_method("check_species")({numbers});
    auto encoded =
        module_.get_method("encode")({positions, numbers, centers, others, strain, n_local})
            .toTuple()
            ->elements();
    auto energies_sr = encoded[0].toTensor();
    auto scalar = encoded[1].toTensor();
    auto spherical = encoded[2].toTensor();
    auto charges = encoded[3].toTensor();
    sync();
    const double encoded_at = now();

    // The long-range stages see the encoder's outputs as leaves, so that autograd runs
    // through the encoder once, at the end, with every gradient collected.
    auto energies = energies_sr;
    auto grad_positions = torch::zeros_like(positions);
    auto grad_strain = torch::zeros_like(strain);
    auto grad_charges = torch::zeros_like(charges);
    auto grad_scalar = torch::zeros_like(scalar);
    auto grad_spherical = torch::zeros_like(spherical);
    double forward_at = 0.0, forward_comm = 0.0;
    if (metadata_.long_range) {
      auto q = charges.detach().requires_grad_(true);
      auto scalar_leaf = scalar.detach().requires_grad_(true);
      auto spherical_leaf = spherical.detach().requires_grad_(true);
      if (system.periodic) {
        auto grid = module_.get_method("grid_shape")({cell}).toIntVector();
        auto partial_sf = module_
                              .get_method("structure_factors")(
                                  {positions.slice(0, 0, n_local), q, cell, strain, grid})
                              .toTensor();
        auto total_sf = comm.all_reduce_sum(partial_sf.detach()).detach().requires_grad_(true);
        auto total_q = comm.all_reduce_sum(q.detach().sum(0)).detach().requires_grad_(true);
        auto ghost_q = comm.forward_ghosts(q.detach()).detach().requires_grad_(true);
        auto potentials =
            module_
                .get_method("potentials")({positions, torch::cat({q, ghost_q}), total_sf, total_q,
                                           cell, strain, grid, centers, others, n_local})
                .toTensor();
        auto energies_lr =
            module_.get_method("readout")({scalar_leaf, spherical_leaf, potentials}).toTensor();
        energies = energies_sr.detach() + energies_lr.detach();
        sync();
        forward_at = now();
        forward_comm = comm_seconds;
        auto first = gradients(
            energies_lr.sum(),
            {positions, strain, q, ghost_q, total_sf, total_q, scalar_leaf, spherical_leaf},
            /*retain=*/false);
        // the sums over ranks of dE/dS and dE/dQ; dE/dq of ghosts back to their owners
        auto grad_sf = comm.all_reduce_sum(first[4]);
        auto grad_q_total = comm.all_reduce_sum(first[5]);
        grad_charges =
            first[2] + comm.reverse_ghosts(first[3], n_local) + grad_q_total.unsqueeze(0);
        // S(k) of this rank's atoms depends on their positions and charges
        if (partial_sf.requires_grad()) {
          auto through_sf = torch::autograd::grad({partial_sf}, {positions, strain, q}, {grad_sf},
                                                  /*retain_graph=*/false, /*create_graph=*/false,
                                                  /*allow_unused=*/true);
          grad_positions = grad_positions + defined_or_zeros(through_sf[0], positions);
          grad_strain = grad_strain + defined_or_zeros(through_sf[1], strain);
          grad_charges = grad_charges + defined_or_zeros(through_sf[2], q);
        }
        grad_positions = grad_positions + first[0];
        grad_strain = grad_strain + first[1];
        grad_scalar = first[6];
        grad_spherical = first[7];
      } else {
        int64_t offset = 0;
        auto all_positions = comm.all_gather_rows(positions.slice(0, 0, n_local).detach(), offset)
                                 .detach()
                                 .requires_grad_(true);
        auto all_charges = comm.all_gather_rows(q.detach(), offset).detach().requires_grad_(true);
        auto receivers = torch::arange(offset, offset + n_local, index_options);
        auto potentials =
            module_.get_method("direct_potentials")({all_positions, all_charges, strain, receivers})
                .toTensor();
        auto energies_lr =
            module_.get_method("readout")({scalar_leaf, spherical_leaf, potentials}).toTensor();
        energies = energies_sr.detach() + energies_lr.detach();
        sync();
        forward_at = now();
        forward_comm = comm_seconds;
        auto first = gradients(energies_lr.sum(),
                               {strain, all_positions, all_charges, scalar_leaf, spherical_leaf},
                               /*retain=*/false);
        auto grad_all_positions = comm.all_reduce_sum(first[1]);
        auto grad_all_charges = comm.all_reduce_sum(first[2]);
        grad_positions.slice(0, 0, n_local) +=
            grad_all_positions.slice(0, offset, offset + n_local);
        grad_strain = grad_strain + first[0];
        grad_charges = grad_all_charges.slice(0, offset, offset + n_local);
        grad_scalar = first[3];
        grad_spherical = first[4];
      }
    } else {
      sync();
      forward_at = now();
      forward_comm = comm_seconds;
    }
    // one backward pass through the encoder with everything it receives
    std::vector<torch::Tensor> outputs{energies_sr.sum()}, seeds{torch::ones({}, options)};
    if (metadata_.long_range) {
      outputs.insert(outputs.end(), {charges, scalar, spherical});
      seeds.insert(seeds.end(), {grad_charges, grad_scalar, grad_spherical});
    }
    if (outputs[0].requires_grad()) {
      auto through_encoder = torch::autograd::grad(outputs, {positions, strain}, seeds,
                                                   /*retain_graph=*/false, /*create_graph=*/false,
                                                   /*allow_unused=*/true);
      grad_positions = grad_positions + defined_or_zeros(through_encoder[0], positions);
      grad_strain = grad_strain + defined_or_zeros(through_encoder[1], strain);
    }

    sync();
    const double end = now();
    timings_.short_range += encoded_at - start;
    timings_.long_range += forward_at - encoded_at - forward_comm;
    timings_.backward += end - forward_at - (comm_seconds - forward_comm);
    timings_.communication += comm_seconds;
    timings_.calls += 1;

    Result result;
    result.energies = energies.detach().to(torch::kCPU, torch::kFloat64);
    result.energy = result.energies.sum().item<double>();
    result.forces = (-grad_positions).detach().to(torch::kCPU, torch::kFloat64);
    result.virial = compute_virial ? grad_strain.detach().to(torch::kCPU, torch::kFloat64)
                                   : torch::zeros({3, 3}, torch::kFloat64);
    return result;
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& error) {
    throw Error(std::string("lorem model evaluation failed: ") + error.what_without_backtrace());
  } catch (const std::exception& error) {
    throw Error(std::string("lorem model evaluation failed: ") + error.what());
  }
}

}  // namespace lorem
