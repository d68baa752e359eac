// Loading a lorem-torch export and its staged evaluation (docs/design.md section 4): the
// steps in order, each in its own unit under staged/ (short range, one file per
// long-range method, Born effective charges).
#include "lorem/model.hpp"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "lorem/vocabulary.hpp"
#include "staged/staged.hpp"

namespace lorem {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Times the communicator's calls and counts the values they move.
class TimedCommunicator : public Communicator {
 public:
  TimedCommunicator(Communicator& inner, Timings& timings) : inner_(inner), timings_(timings) {}
  // ghost values received from other ranks stand for those sent (every ghost another
  // rank owns is that rank's send); one's own periodic images move nothing
  torch::Tensor forward_ghosts(const torch::Tensor& values) override {
    auto out = timed(0, [&] { return inner_.forward_ghosts(values); });
    timings_.bytes += 8.0 * static_cast<double>(remote_ghost_values(out));
    return out;
  }
  torch::Tensor reverse_ghosts(const torch::Tensor& values, int64_t n_local) override {
    return timed(remote_ghost_values(values),
                 [&] { return inner_.reverse_ghosts(values, n_local); });
  }
  // one rank sums and gathers with nobody
  torch::Tensor all_reduce_sum(const torch::Tensor& values) override {
    return timed(size() > 1 ? values.numel() : 0, [&] { return inner_.all_reduce_sum(values); });
  }
  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override {
    return timed(size() > 1 ? rows.numel() : 0,
                 [&] { return inner_.all_gather_rows(rows, offset); });
  }
  std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) override {
    const double start = now();
    for (int r = 0; r < static_cast<int>(sends.size()); ++r)
      if (r != inner_.rank())  // the mesh travels in its own dtype (the model's)
        timings_.bytes += static_cast<double>(sends[r].element_size() * sends[r].numel());
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
  int64_t ghosts_from_other_ranks() const override { return inner_.ghosts_from_other_ranks(); }
  double seconds = 0.0;

 private:
  // the values of a [n_ghost, W] tensor that belong to ghosts of other ranks
  int64_t remote_ghost_values(const torch::Tensor& ghost_values) const {
    const int64_t remote = inner_.ghosts_from_other_ranks();
    if (remote < 0 || ghost_values.dim() == 0 || ghost_values.size(0) == 0)
      return ghost_values.numel();
    return remote * (ghost_values.numel() / ghost_values.size(0));
  }
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

// The model raises errors with a code ("[lorem:memory] ..."; python/lorem_torch/errors.py)
// that TorchScript wraps in its traceback: the coded line alone (the last one: the
// traceback may quote code), or the whole text when there is none.
std::string evaluation_failure(const std::string& text, int64_t short_range_chunk) {
  const auto start = text.rfind("[lorem:");
  if (text.find("out of memory") != std::string::npos ||
      text.find("can't allocate memory") != std::string::npos) {
    // the short range's graphs are most of a step's memory: say what bounds them
    // the allocator's own line (a TorchScript traceback comes first)
    auto at = text.find("out of memory");
    if (at == std::string::npos) at = text.find("can't allocate memory");
    const auto line_start = text.rfind('\n', at);
    const auto from = line_start == std::string::npos ? 0 : line_start + 1;
    auto line = text.substr(from, text.find('\n', at) - from);
    const auto first = line.find_first_not_of(' ');
    line = first == std::string::npos ? line : line.substr(first, 300);
    return "lorem model evaluation ran out of memory (" + line + "): " +
           (short_range_chunk > 0
                ? "a smaller chunk (now " + std::to_string(short_range_chunk) +
                      " local atoms) or more ranks hold less"
                : std::string("the short range in chunks of local atoms holds one chunk's "
                              "graph at a time (pair_style lorem ... chunk N, "
                              "Model.short_range_chunk), or use more ranks"));
  }
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
    // an operator of a newer lorem-torch: "Unknown builtin op: lorem::name."
    const std::string unknown = "Unknown builtin op: lorem::";
    if (const auto at = reason.find(unknown); at != std::string::npos) {
      const auto begin = at + unknown.size() - 7;  // from "lorem::"
      const auto end = reason.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:", begin);
      throw Error("'" + path + "' calls the operator " + reason.substr(begin, end - begin) +
                  ", which this runtime does not have: it was exported by a newer lorem-torch; "
                  "rebuild the plugin from that version (or export the checkpoint again with "
                  "this one)");
    }
    reason.erase(0, reason.find_first_not_of(" \n"));
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
  if (std::find(contract_.long_range_methods.begin(), contract_.long_range_methods.end(),
                vocabulary::kPme) != contract_.long_range_methods.end()) {
    pme_split_methods_ =
        contract_.lists_method("pme_interpolate") && contract_.lists_method("pme_combine") &&
        module_.find_method("pme_interpolate") && module_.find_method("pme_combine");
    // the order is the width of one atom's brick, whatever the cell and mesh
    const auto options = torch::TensorOptions().dtype(contract_.dtype).device(device_);
    const auto one_atom = module_.get_method("pme_brick")(
        {torch::zeros({1, 3}, options), torch::eye(3, options), std::vector<int64_t>{1, 1, 1}});
    pme_order_ = one_atom.toTuple()->elements()[1].toIntVector()[0];
  }
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

void Model::set_short_range_chunk(int64_t atoms) {
  if (atoms < 0) {
    throw Error("the short range's chunk size must be >= 0 local atoms (0: one pass), not " +
                std::to_string(atoms));
  }
  short_range_chunk_ = atoms;
}

namespace {

// A NaN or infinity in what goes back to the engine is an error, not a number to integrate
// (the inputs were checked; this is what passes them and still fails, e.g. a model with
// non-finite weights): the first bad row named, per-atom values before forces.
void check_finite(const Result& result, int64_t n_local) {
  const std::vector<std::pair<const char*, torch::Tensor>> rows = {
      {"energy", result.energies.reshape({n_local, 1})},
      {"force", result.forces},  // local atoms, then ghosts
      {"Born effective charge", result.born_effective_charges.defined()
                                    ? result.born_effective_charges.reshape({n_local, 9})
                                    : torch::zeros({0, 1}, torch::kFloat64)}};
  for (const auto& [what, values] : rows) {
    if (values.numel() == 0) continue;
    const auto finite_rows = torch::isfinite(values).all(1);
    if (finite_rows.all().item<bool>()) continue;
    const auto bad = torch::nonzero(~finite_rows).flatten();
    throw Error(std::string("the model gave a non-finite ") + what + " (first at row " +
                std::to_string(bad[0].item<int64_t>()) +
                " of this rank's atoms, locals first): a model with non-finite weights, or "
                "atoms in a configuration it cannot describe");
  }
  if (!torch::isfinite(result.virial).all().item<bool>())
    throw Error("the model gave a non-finite virial");
}

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
  // The profiling executor re-specialises the graph whenever the number of atoms or pairs
  // changes, which in MD is every step: plain execution is far faster there. The setting
  // is per thread in libtorch, so it is made where every call runs (simulated ranks too).
  torch::jit::setGraphExecutorOptimize(false);
  Timings timings;  // this call's; added to timings_ at the end (ranks may share a Model)
  TimedCommunicator comm(outer_comm, timings);
  const auto& contract = contract_;
  const staged::Context ctx{module_, torch::TensorOptions().dtype(contract.dtype).device(device_),
                            torch::TensorOptions().dtype(torch::kLong).device(device_), device_,
                            &timings};
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
  staged::Inputs in;
  auto origin =
      torch::tensor({system.origin[0], system.origin[1], system.origin[2]}, torch::kFloat64);
  if (system.periodic) {
    // the cell's centre as the origin, as data/graph.py model_frame_offsets: float32's
    // spacing grows with |r|, and the positions' rounding is nearly all of a float32
    // model's force error (docs/design.md 1.12); a PME mesh then sits where Python puts it
    const auto cell = system.cell.to(torch::kCPU, torch::kFloat64);
    origin = origin + 0.5 * (cell[0] + cell[1] + (system.slab ? 0.0 : 1.0) * cell[2]);
  }
  if (system.slab) {
    // z of a slab has no lattice to wrap by: the origin's z is the atoms' mean z over all
    // ranks (data/graph.py model_frame_offsets, the same), so that a float32 model keeps
    // its precision where a slab sits far from z = 0 (forces off by 4e-3 eV/A at 1000 A)
    const auto local_z = system.positions.slice(0, 0, n_local).select(1, 2).to(torch::kFloat64);
    const auto sums = comm.all_reduce_sum(torch::stack(
        {local_z.sum(), torch::tensor(static_cast<double>(n_local), torch::kFloat64)}));
    origin[2] = sums[0] / std::max(1.0, sums[1].item<double>());
  }
  in.positions =
      (system.positions.to(torch::kFloat64) - origin).to(ctx.options).requires_grad_(true);
  in.numbers = system.atomic_numbers.to(ctx.index_options);
  in.centers = system.centers.to(ctx.index_options);
  in.others = system.others.to(ctx.index_options);
  in.cell = system.cell.to(ctx.options);
  in.n_local = n_local;
  // the strain always takes part (its gradient costs next to nothing); compute_virial only
  // decides whether the caller wants it
  in.strain = torch::zeros({3, 3}, ctx.options).requires_grad_(true);
  ctx.sync();
  const double copied_in = now();
  timings.transfers += copied_in - start;

  try {
    ctx.call("check_species", {in.numbers});
    // 1-2. the short-range stages and the charges of the final features
    staged::ShortRange short_range(short_range_chunk_);
    short_range.forward(ctx, in, contract.num_message_passing, comm);
    const auto& final = short_range.final_stage();
    auto charges = short_range.charges(ctx);
    auto energies = short_range.energies();
    ctx.sync();
    const double encoded_at = now();
    const double comm_encoded = comm.seconds;

    // 3-5. the long range, forward and back to the charges and final features
    staged::LongRangeResult long_range;
    long_range.forward_end = encoded_at;
    long_range.comm_at_forward_end = comm_encoded;
    long_range.grad_positions = torch::zeros_like(in.positions);
    long_range.grad_strain = torch::zeros_like(in.strain);
    long_range.grad_charges = torch::zeros_like(charges);
    long_range.grad_scalar = torch::zeros_like(final.scalar);
    long_range.grad_spherical = torch::zeros_like(final.spherical);
    if (contract.long_range_method != vocabulary::kNoLongRange) {
      staged::LongRangeInputs lr{system,
                                 in,
                                 staged::leaf(charges),
                                 staged::leaf(final.scalar),
                                 staged::leaf(final.spherical),
                                 system.slab ? ctx.tensor("slab_cell", {in.cell}) : in.cell};
      staged::Readout readout(ctx, lr, comm.seconds);
      auto method = long_range_method_for(system, lr.kcell, comm);
      long_range = method->compute(ctx, lr, comm, readout);
      energies = energies + long_range.energies;
    }

    // Born effective charges: no part of the energy, no backward pass
    const bool apt_needed = system.want_born_effective_charges || system.apply_electric_field;
    torch::Tensor apt;
    if (apt_needed) {
      contract.require("electric_field", "Born effective charges or an electric field");
      apt = staged::born_effective_charges(ctx, short_range, long_range.potentials, n_local, comm);
    }

    // 6. backward through the short-range stages, last first
    auto grad_positions = long_range.grad_positions;
    auto grad_strain = long_range.grad_strain;
    short_range.backward(ctx, in, long_range.grad_scalar, long_range.grad_spherical,
                         long_range.grad_charges, comm, grad_positions, grad_strain);

    ctx.sync();
    const double end = now();
    timings.short_range += encoded_at - copied_in - comm_encoded;
    timings.long_range +=
        long_range.forward_end - encoded_at - (long_range.comm_at_forward_end - comm_encoded);
    timings.backward +=
        end - long_range.forward_end - (comm.seconds - long_range.comm_at_forward_end);
    timings.communication += comm.seconds;
    timings.calls += 1;

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
    timings.transfers += now() - end;  // .to(kCPU) waits for the device
    check_finite(result, n_local);
    add_timings(timings);
    result.timings = timings;
    return result;
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& error) {
    throw Error(evaluation_failure(error.what_without_backtrace(), short_range_chunk_));
  } catch (const std::exception& error) {
    throw Error(evaluation_failure(error.what(), short_range_chunk_));
  }
}

std::unique_ptr<staged::LongRangeMethod> Model::long_range_method_for(const System& system,
                                                                      const torch::Tensor& kcell,
                                                                      Communicator& comm) const {
  if (!system.periodic) return staged::make_direct_sum();
  bool pme = method_ == vocabulary::kPme;
  if (method_ == vocabulary::kAuto) {  // the same choice on every rank: the global atom count
    auto atoms = comm.all_reduce_sum(torch::full({1}, static_cast<double>(system.n_local),
                                                 torch::TensorOptions().dtype(torch::kFloat64)));
    pme = module_.get_method("prefer_pme")({kcell, atoms.item<double>()}).toBool();
  }
  return pme ? staged::make_pme(pme_order_, pme_split_methods_) : staged::make_ewald();
}

RuntimeInterface runtime_interface() { return header_interface(); }

std::string RuntimeInterface::describe() const {
  return "version " + std::to_string(version) + " (System " + std::to_string(system) +
         ", Timings " + std::to_string(timings) + ", Result " + std::to_string(result) +
         ", Model " + std::to_string(model) + " bytes)";
}

void Model::add_timings(const Timings& call) {
  std::lock_guard<std::mutex> lock(timings_mutex_);
  timings_.short_range += call.short_range;
  timings_.long_range += call.long_range;
  timings_.backward += call.backward;
  timings_.communication += call.communication;
  timings_.transfers += call.transfers;
  timings_.bytes += call.bytes;
  timings_.calls += call.calls;
  timings_.pme_spread += call.pme_spread;
  timings_.pme_convolution += call.pme_convolution;
  timings_.pme_interpolation += call.pme_interpolation;
}

}  // namespace lorem
