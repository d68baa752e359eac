// pair_style lorem: glue between LAMMPS and the lorem-torch runtime (cpp/).
//
// Every step: the model's atoms (types not mapped to NULL), local first, then
// ghosts; pairs i <- j within the model cutoff from a full neighbour list; the
// staged long range with ghost charges by forward communication, their gradients
// by reverse communication and structure factors summed over `world`. Forces on
// ghosts go back to their owners through LAMMPS' reverse communication (newton on).
#include "pair_lorem.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <mpi.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "element_masses.h"
#include "error.h"
#include "force.h"
#include "lorem/model.hpp"
#include "lorem/vocabulary.hpp"
#include "memory.h"
#include "mpi_gpu_support.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

using namespace LAMMPS_NS;

namespace {

// Values per atom in one forward/reverse communication pass. Fixed at construction so
// that LAMMPS sizes its buffers for it whatever the model (pair_style hybrid takes its
// sub-styles' sizes in settings(), before any pair_coeff); wider exchanges (message-
// passing features) go in several passes.
constexpr int kExchangeChunk = 64;

constexpr double kEvToKcalPerMol = 23.060547830619029;

// An MPI count: MPI's counts are int, so a message of more values would be cut short
// (or wrap to a small count, silently) and is refused by name instead.
int mpi_count(int64_t values, const char* what) {
  if (values < 0 || values > static_cast<int64_t>(std::numeric_limits<int>::max()))
    throw lorem::Error(std::string("pair_style lorem: one ") + what + " message of " +
                       std::to_string(values) +
                       " values exceeds MPI's count limit (2^31 - 1): run on more ranks");
  return static_cast<int>(values);
}

// Host memory for what MPI or LAMMPS' buffers take from the model: pinned when the values
// come from a GPU (copies at full bus speed, through torch's caching host allocator), else
// ordinary memory.
torch::TensorOptions host_options(const torch::Tensor& like, torch::ScalarType dtype) {
  return torch::TensorOptions().dtype(dtype).pinned_memory(like.is_cuda());
}

torch::Tensor to_host(const torch::Tensor& values, torch::ScalarType dtype) {
  if (!values.is_cuda()) return values.to(torch::kCPU, dtype).contiguous();
  auto host = torch::empty(values.sizes(), host_options(values, dtype));
  host.copy_(values);
  return host;
}

// The Communicator of the staged long range, on LAMMPS' world and ghost atoms.
// device_buffers: the MPI is CUDA-aware (mpi_gpu_support.h), so the mesh exchange hands it
// the GPU's buffers; otherwise everything stages through (pinned) host memory.
class LammpsCommunicator : public lorem::Communicator {
 public:
  LammpsCommunicator(PairLorem* pair, Comm* comm, Atom* atom, MPI_Comm world,
                     const std::vector<int>& locals, const std::vector<int>& ghosts,
                     bool device_buffers)
      : pair_(pair),
        comm_(comm),
        atom_(atom),
        world_(world),
        locals_(locals),
        ghosts_(ghosts),
        device_buffers_(device_buffers) {}

  torch::Tensor forward_ghosts(const torch::Tensor& local_values) override {
    const int64_t width = local_values.size(1);
    auto values = to_host(local_values, torch::kFloat64);
    auto out = torch::zeros({static_cast<int64_t>(ghosts_.size()), width},
                            host_options(local_values, torch::kFloat64));
    const double* data = values.data_ptr<double>();
    double* o = out.data_ptr<double>();
    for (int64_t first = 0; first < width; first += kExchangeChunk) {
      const int chunk = static_cast<int>(std::min<int64_t>(kExchangeChunk, width - first));
      prepare(chunk);
      for (size_t k = 0; k < locals_.size(); ++k)
        std::memcpy(&pair_->exchange[locals_[k] * chunk], data + k * width + first,
                    sizeof(double) * chunk);
      comm_->forward_comm(pair_);
      for (size_t k = 0; k < ghosts_.size(); ++k)
        std::memcpy(o + k * width + first, &pair_->exchange[ghosts_[k] * chunk],
                    sizeof(double) * chunk);
    }
    return out.to(local_values.options());
  }

  torch::Tensor reverse_ghosts(const torch::Tensor& ghost_values, int64_t n_local) override {
    const int64_t width = ghost_values.size(1);
    auto values = to_host(ghost_values, torch::kFloat64);
    auto out = torch::zeros({n_local, width}, host_options(ghost_values, torch::kFloat64));
    const double* data = values.data_ptr<double>();
    double* o = out.data_ptr<double>();
    for (int64_t first = 0; first < width; first += kExchangeChunk) {
      const int chunk = static_cast<int>(std::min<int64_t>(kExchangeChunk, width - first));
      prepare(chunk);
      for (size_t k = 0; k < ghosts_.size(); ++k)
        std::memcpy(&pair_->exchange[ghosts_[k] * chunk], data + k * width + first,
                    sizeof(double) * chunk);
      comm_->reverse_comm(pair_);
      for (size_t k = 0; k < locals_.size(); ++k)
        std::memcpy(o + k * width + first, &pair_->exchange[locals_[k] * chunk],
                    sizeof(double) * chunk);
    }
    return out.to(ghost_values.options());
  }

  torch::Tensor all_reduce_sum(const torch::Tensor& values) override {
    auto buffer = to_host(values, torch::kFloat64);
    if (!values.is_cuda()) buffer = buffer.clone();  // reduced in place
    MPI_Allreduce(MPI_IN_PLACE, buffer.data_ptr<double>(), mpi_count(buffer.numel(), "all-reduce"),
                  MPI_DOUBLE, MPI_SUM, world_);
    return buffer.to(values.options());
  }

  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override {
    int nprocs = 1, me = 0;
    MPI_Comm_size(world_, &nprocs);
    MPI_Comm_rank(world_, &me);
    const int width = static_cast<int>(rows.size(1));
    auto buffer = to_host(rows, torch::kFloat64);
    int count = mpi_count(buffer.numel(), "all-gather");
    std::vector<int> counts(nprocs), displacements(nprocs, 0);
    MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, world_);
    int64_t gathered = 0;
    for (int p = 0; p < nprocs; ++p) gathered += counts[p];
    const int total = mpi_count(gathered, "all-gather (total)");  // the offsets fit in int
    for (int p = 1; p < nprocs; ++p) displacements[p] = displacements[p - 1] + counts[p - 1];
    auto out = torch::empty({total / std::max(width, 1), width}, torch::kFloat64);
    MPI_Allgatherv(buffer.data_ptr<double>(), count, MPI_DOUBLE, out.data_ptr<double>(),
                   counts.data(), displacements.data(), MPI_DOUBLE, world_);
    offset = displacements[me] / std::max(width, 1);
    return out.to(rows.options());
  }

  std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) override {
    const int ranks = size(), me = rank();
    // the mesh and the atoms visiting it travel in the model's dtype: a float32 model
    // sends half the bytes of float64, with the same values (the ranks' models agree on it)
    const auto dtype = sends[me].scalar_type();
    if (dtype != torch::kFloat32 && dtype != torch::kFloat64)
      throw lorem::Error(std::string("internal: all_to_all of ") + c10::toString(dtype) +
                         " values (float32 or float64 only)");
    const MPI_Datatype type = dtype == torch::kFloat32 ? MPI_FLOAT : MPI_DOUBLE;
    std::vector<torch::Tensor> buffers(ranks), received(ranks);
    std::vector<long long> send_counts(ranks), receive_counts(ranks);
    // a CUDA-aware MPI reads and writes the GPU's buffers; else they stage through pinned
    // host memory
    const bool on_device = device_buffers_ && sends[me].is_cuda();
    const auto receive_options =
        on_device ? sends[me].options().dtype(dtype) : host_options(sends[me], dtype);
    // this rank's own piece stays where it is (on the GPU): on one rank a remap of the
    // whole mesh is then no copy at all
    for (int r = 0; r < ranks; ++r) {
      send_counts[r] = sends[r].numel();
      if (r != me)
        buffers[r] = on_device ? sends[r].to(dtype).contiguous() : to_host(sends[r], dtype);
    }
    // MPI knows no CUDA streams: the buffers must be complete before it reads them
    if (on_device) torch::cuda::synchronize(sends[me].device().index());
    MPI_Alltoall(send_counts.data(), 1, MPI_LONG_LONG, receive_counts.data(), 1, MPI_LONG_LONG,
                 world_);
    // point to point between the ranks that have something for each other
    std::vector<MPI_Request> requests;
    for (int r = 0; r < ranks; ++r) {
      if (r == me || receive_counts[r] == 0) continue;
      received[r] = torch::empty({receive_counts[r]}, receive_options);
      requests.emplace_back();
      MPI_Irecv(received[r].data_ptr(), mpi_count(receive_counts[r], "mesh"), type, r, kMeshTag,
                world_, &requests.back());
    }
    for (int r = 0; r < ranks; ++r) {
      if (r == me || send_counts[r] == 0) continue;
      requests.emplace_back();
      MPI_Isend(buffers[r].data_ptr(), mpi_count(send_counts[r], "mesh"), type, r, kMeshTag, world_,
                &requests.back());
    }
    MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    received[me] = sends[me];
    for (int r = 0; r < ranks; ++r) {
      if (r == me) continue;
      received[r] = receive_counts[r] == 0 ? torch::empty({0}, sends[me].options())
                                           : received[r].to(sends[me].options());
    }
    return received;
  }

  std::vector<int64_t> all_gather_ints(const std::vector<int64_t>& values) override {
    std::vector<long long> mine(values.begin(), values.end());
    std::vector<long long> all(mine.size() * static_cast<size_t>(size()));
    MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_LONG_LONG, all.data(),
                  static_cast<int>(mine.size()), MPI_LONG_LONG, world_);
    return std::vector<int64_t>(all.begin(), all.end());
  }

  int rank() const override {
    int me = 0;
    MPI_Comm_rank(world_, &me);
    return me;
  }
  int size() const override {
    int ranks = 1;
    MPI_Comm_size(world_, &ranks);
    return ranks;
  }
  // the model's ghosts whose owner is another rank: none on one rank; else from LAMMPS'
  // atom map (atom_modify map), which points a tag at the owned atom when this rank has
  // it, so a periodic image of one's own atom maps below nlocal; unknown without a map
  int64_t ghosts_from_other_ranks() const override {
    if (size() == 1) return 0;
    if (atom_->map_style == Atom::MAP_NONE) return -1;
    if (remote_ghosts_ < 0) {
      remote_ghosts_ = 0;
      for (int g : ghosts_) {
        const int owner = atom_->map(atom_->tag[g]);
        if (owner < 0 || owner >= atom_->nlocal) ++remote_ghosts_;
      }
    }
    return remote_ghosts_;
  }

 private:
  mutable int64_t remote_ghosts_ = -1;  // counted once per evaluation (the communicator's life)
  static constexpr int kMeshTag = 0x10e3;
  void prepare(int width) {
    if (width > pair_->comm_forward || width > pair_->comm_reverse) {
      throw lorem::Error("internal: exchange width exceeds the pair's communication size");
    }
    pair_->exchange_width = width;
    const size_t size = static_cast<size_t>(atom_->nmax) * width;
    if (pair_->exchange.size() < size) pair_->exchange.resize(size);
    std::fill(pair_->exchange.begin(), pair_->exchange.begin() + size, 0.0);
  }

  PairLorem* pair_;
  Comm* comm_;
  Atom* atom_;
  MPI_Comm world_;
  const std::vector<int>& locals_;
  const std::vector<int>& ghosts_;
  bool device_buffers_;
};

}  // namespace

PairLorem::PairLorem(LAMMPS* lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  comm_forward = comm_reverse = kExchangeChunk;
  no_virial_fdotr_compute = 1;  // the virial comes from the strain derivative
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairLorem::~PairLorem() {
  if (model_ && model_->timings().calls > 0 && std::getenv("LOREM_TIMING")) {
    const auto& t = model_->timings();
    utils::logmesg(lmp,
                   "pair_style lorem timing (rank {}, {} calls, s): short range {:.4f} long range "
                   "{:.4f} backward {:.4f} communication {:.4f}; {:.0f} bytes sent per call\n",
                   comm->me, t.calls, t.short_range, t.long_range, t.backward, t.communication,
                   t.bytes / static_cast<double>(t.calls));
  }
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairLorem::allocate() {
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  for (int i = 1; i <= n; ++i)
    for (int j = i; j <= n; ++j) setflag[i][j] = 0;
}

void PairLorem::settings(int narg, char** arg) {
  // pair_style lorem given again keeps pair_coeff (LAMMPS calls only settings() when the
  // style is the same): every option starts from its default, so that one left out now
  // is off, and a loaded model takes the new ones below
  device_request_ = "auto";
  gpu_aware_request_ = "auto";
  long_range_request_.clear();
  accuracy_request_ = 0.0;
  chunk_atoms_ = 0;
  apply_electric_field_ = false;
  electric_field_ = {0.0, 0.0, 0.0};
  timers_ = true;
  int iarg = 0;
  while (iarg < narg) {
    if (std::strcmp(arg[iarg], "device") == 0 && iarg + 1 < narg) {
      device_request_ = arg[iarg + 1];
      iarg += 2;
    } else if (std::strcmp(arg[iarg], "long_range") == 0 && iarg + 1 < narg) {
      long_range_request_ = arg[iarg + 1];
      if (!lorem::vocabulary::is_long_range_method(long_range_request_))
        error->all(FLERR, "pair_style lorem: long_range must be one of {}, not '{}'",
                   lorem::vocabulary::long_range_method_list(", "), long_range_request_);
      iarg += 2;
    } else if (std::strcmp(arg[iarg], "efield") == 0 && iarg + 3 < narg) {
      for (int a = 0; a < 3; ++a)
        electric_field_[a] = utils::numeric(FLERR, arg[iarg + 1 + a], false, lmp);
      apply_electric_field_ = true;
      iarg += 4;
    } else if (std::strcmp(arg[iarg], "gpu_aware") == 0 && iarg + 1 < narg) {
      gpu_aware_request_ = arg[iarg + 1];
      if (gpu_aware_request_ != "auto" && gpu_aware_request_ != "on" && gpu_aware_request_ != "off")
        error->all(FLERR, "pair_style lorem: gpu_aware must be auto, on or off, not '{}'",
                   gpu_aware_request_);
      iarg += 2;
    } else if (std::strcmp(arg[iarg], "chunk") == 0 && iarg + 1 < narg) {
      chunk_atoms_ = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (chunk_atoms_ < 0)
        error->all(FLERR,
                   "pair_style lorem: chunk must be a number of local atoms >= 0 (0: the short "
                   "range in one pass), not {}",
                   arg[iarg + 1]);
      iarg += 2;
    } else if (std::strcmp(arg[iarg], "timers") == 0 && iarg + 1 < narg) {
      timers_ = utils::logical(FLERR, arg[iarg + 1], false, lmp) != 0;
      iarg += 2;
    } else if (std::strcmp(arg[iarg], "accuracy") == 0 && iarg + 1 < narg) {
      accuracy_request_ = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(accuracy_request_ > 0.0 && accuracy_request_ <= lorem::vocabulary::kMaxAccuracy))
        error->all(FLERR, "pair_style lorem: accuracy must lie in (0, {}], not {}",
                   lorem::vocabulary::kMaxAccuracy, accuracy_request_);
      iarg += 2;
    } else {
      error->all(FLERR,
                 "Illegal pair_style lorem argument '{}': use pair_style lorem [device "
                 "cpu|cuda|cuda:N|auto] [long_range ewald|pme|auto] [accuracy A] [efield Ex Ey Ez] "
                 "[gpu_aware auto|on|off] [chunk N] [timers on|off]",
                 arg[iarg]);
    }
  }
  if (model_) {  // given again after pair_coeff
    if (choose_device() != model_->device().str()) load_model();
    apply_settings();
  }
}

std::string PairLorem::choose_device() const {
  const bool have_cuda = torch::cuda::is_available();
  if (device_request_ == "cpu" || (device_request_ == "auto" && !have_cuda)) return "cpu";
  if (!have_cuda) {
    error->all(FLERR, "pair_style lorem: device {} requested but CUDA is not available",
               device_request_);
  }
  if (device_request_.rfind("cuda:", 0) == 0) return device_request_;
  // one GPU per rank: node-local rank modulo the visible devices
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  return "cuda:" + std::to_string(local_rank % static_cast<int>(torch::cuda::device_count()));
}

void PairLorem::coeff(int narg, char** arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes) {
    error->all(FLERR,
               "pair_coeff * * MODEL.pt ELEMENT... needs one element (or NULL) for each of the {} "
               "atom types, got {}",
               ntypes, narg - 3);
  }
  if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0) {
    error->all(FLERR, "pair_style lorem takes pair_coeff * * MODEL.pt ELEMENT...");
  }
  // this pair style was compiled against one lorem-torch, the runtime library loaded may
  // come from another (a built-in LAMMPS not rebuilt after an upgrade)
  if (!(lorem::header_interface() == lorem::runtime_interface())) {
    error->all(FLERR,
               "pair_style lorem was built against the lorem-torch runtime interface {}, but "
               "the runtime library loaded has {}: rebuild LAMMPS (tools/build_lammps.sh "
               "--with-lorem) or the plugin with the lorem-torch installed now",
               lorem::header_interface().describe(), lorem::runtime_interface().describe());
  }
  model_path_ = arg[2];
  load_model();
  const auto& contract = model_->contract();
  type_to_z_.assign(ntypes + 1, 0);
  type_symbol_.assign(ntypes + 1, "NULL");
  mass_checked_.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    const std::string symbol = arg[2 + t];
    if (symbol == "NULL") continue;
    const int64_t z = contract.atomic_number(symbol);
    if (z < 0) {
      error->all(FLERR,
                 "pair_style lorem: element {} (type {}) is not among the model's species: {}",
                 symbol, t, contract.species_list());
    }
    type_to_z_[t] = z;
    type_symbol_[t] = symbol;
  }
  // alone (not a sub-style of pair_style hybrid), no other style takes a NULL type: say
  // so here, before LAMMPS' "All pair coeffs are not set"
  if (force->pair == this) {
    for (int t = 1; t <= ntypes; ++t)
      if (type_to_z_[t] == 0)
        error->all(FLERR,
                   "pair_style lorem: type {} is NULL in pair_coeff, but no other pair style "
                   "takes it: NULL is for the types of another style of pair_style hybrid",
                   t);
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j)
      setflag[i][j] = (type_to_z_[i] > 0 && type_to_z_[j] > 0) ? 1 : 0;
  apply_settings();
}

void PairLorem::load_model() {
  try {
    model_ = std::make_unique<lorem::Model>(model_path_, choose_device());
  } catch (const std::exception& e) {
    error->all(FLERR, "pair_style lorem: {}", e.what());
  }
  cutoff_ = model_->contract().cutoff;
  if (comm->me == 0)
    for (const auto& advisory : model_->contract().advisories)
      error->warning(FLERR, "pair_style lorem: {}", advisory);
  // the timing table reports the difference to the last table: a new model starts at zero
  reported_.reset();
  reported_host_ = host_seconds_;
}

// pair_style's options on the loaded model (after pair_coeff, and when pair_style lorem
// is given again): the long-range method (the export's own unless asked), the chunks, the
// accuracy check, the MPI buffers, and the lines of the log that say what runs
void PairLorem::apply_settings() {
  const auto& contract = model_->contract();
  try {
    if (!long_range_request_.empty())
      model_->set_long_range_method(long_range_request_);
    else if (!contract.long_range_methods.empty())
      model_->set_long_range_method(contract.long_range_method);
    model_->set_short_range_chunk(chunk_atoms_);
  } catch (const std::exception& e) {
    error->all(FLERR, "pair_style lorem: {}", e.what());
  }
  if (accuracy_request_ > 0.0 && contract.accuracy > 0.0 &&
      std::abs(accuracy_request_ - contract.accuracy) > 1e-3 * contract.accuracy) {
    error->all(FLERR,
               "pair_style lorem: accuracy {} differs from the model's {} (its k-space grid "
               "and PME mesh are chosen when it is exported): export it again with "
               "lorem-export --accuracy {}",
               accuracy_request_, contract.accuracy, accuracy_request_);
  }
  choose_mpi_buffers();
  log_cuda_kernels();
  if (comm->me == 0) {
    utils::logmesg(lmp,
                   "pair_style lorem: {} on {}, cutoff {} A, {} message-passing layers, long "
                   "range {} ({} channels, accuracy {})\n",
                   model_path_, model_->device().str(), cutoff_, contract.num_message_passing,
                   model_->long_range_method(), contract.num_charges, contract.accuracy);
    if (chunk_atoms_ > 0)
      utils::logmesg(lmp,
                     "pair_style lorem: the short range in chunks of {} local atoms, each "
                     "computed again in the backward (less memory, its forward twice)\n",
                     chunk_atoms_);
  }
}

// Where the exchanges between ranks put their buffers (a model on a GPU only): GPU memory
// when the MPI is CUDA-aware and gpu_aware is auto or on, else pinned host memory; one line
// in the log says which, and gpu_aware on with an MPI that is not CUDA-aware is an error.
void PairLorem::choose_mpi_buffers() {
  device_buffers_ = false;
  if (!model_->device().is_cuda() || gpu_aware_request_ == "off") {
    if (model_->device().is_cuda() && comm->nprocs > 1 && comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style lorem: gpu_aware off: exchanges between ranks stage "
                     "through pinned host memory\n");
    return;
  }
  const lorem_lammps::MpiGpuSupport support = lorem_lammps::query_mpi_cuda_support();
  if (gpu_aware_request_ == "on" && !support.cuda_aware)
    error->all(FLERR,
               "pair_style lorem gpu_aware on: this MPI is not CUDA-aware ({}); use gpu_aware "
               "auto (exchanges through pinned host memory) or an MPI built with CUDA support",
               support.reason);
  device_buffers_ = support.cuda_aware;
  if (comm->nprocs > 1 && comm->me == 0)
    utils::logmesg(lmp, "pair_style lorem: {}: {}\n", support.reason,
                   device_buffers_ ? "the PME mesh exchange passes GPU buffers to MPI"
                                   : "exchanges between ranks stage through pinned host memory "
                                     "(a CUDA-aware MPI would pass GPU buffers)");
}

// A model on a GPU: one line when the operators' CUDA kernels are not in this build (they
// then run as torch operations over chunks: slower, more memory), so that it is not silent.
void PairLorem::log_cuda_kernels() const {
  if (!model_->device().is_cuda() || comm->me != 0) return;
  const auto op = c10::Dispatcher::singleton().findSchema({"lorem::cuda_kernels_compiled", ""});
  if (!op) return;  // a runtime from before the kernels: nothing to ask
  if (!op->typed<bool()>().call())
    utils::logmesg(lmp,
                   "pair_style lorem: this lorem-torch was built without its CUDA kernels "
                   "(LOREM_CUDA_KERNELS): the short range's operators and the PME mesh run "
                   "as torch operations over chunks\n");
}

void PairLorem::init_style() {
  if (!model_) error->all(FLERR, "pair_style lorem: pair_coeff * * MODEL.pt ELEMENT... is missing");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style lorem requires newton pair on");
  const std::string units = update->unit_style;
  if (units == "metal") {
    energy_unit_ = 1.0;
  } else if (units == "real") {
    energy_unit_ = kEvToKcalPerMol;
  } else {
    error->all(
        FLERR,
        "pair_style lorem requires units metal or real (eV or kcal/mol and Angstrom), not '{}'",
        units);
  }
  const bool periodic = domain->xperiodic && domain->yperiodic && domain->zperiodic;
  const bool open = !domain->xperiodic && !domain->yperiodic && !domain->zperiodic;
  try {
    const auto& contract = model_->contract();
    if (!periodic && !open) {
      // a 2D slab as kspace_modify slab takes it: boundary p p f, c along z (checked before
      // the contract, so that a box that no export takes is not sent to --slab)
      if (!domain->xperiodic || !domain->yperiodic || domain->boundary[2][0] != 1 ||
          domain->boundary[2][1] != 1) {
        error->all(FLERR,
                   "pair_style lorem: boxes must be periodic along all three axes, along none "
                   "(f, s or m), or, for a 2D slab, boundary p p f (periodic along x and y, "
                   "fixed along z)");
      }
    }
    contract.require(periodic ? "periodic"
                     : open   ? "non_periodic"
                              : "slab",
                     "pair_style lorem with this box");
    if (!periodic && !open) {
      if (domain->triclinic && (domain->xz != 0.0 || domain->yz != 0.0)) {
        error->all(FLERR,
                   "pair_style lorem: a 2D slab needs the box's xz and yz tilts to be zero (its "
                   "third edge along z)");
      }
    }
    contract.require("domain_decomposition", "pair_style lorem");
    if (apply_electric_field_) contract.require("electric_field", "pair_style lorem efield");
    if (open && long_range_request_ == lorem::vocabulary::kPme)
      error->all(FLERR,
                 "pair_style lorem: long_range pme needs a periodic box (open boundaries use the "
                 "direct sum; leave out long_range or use auto)");
  } catch (const std::exception& e) {
    error->all(FLERR, "{}", e.what());
  }
  check_pairs_kept();
  neighbor->add_request(this, NeighConst::REQ_FULL);
  check_masses();
}

// Pairs that LAMMPS leaves out of the neighbour list would be left out of the model with
// no error: neigh_modify exclude between two of this style's types (under hybrid, other
// styles' types may be excluded), and special_bonds weights of 0 for lj and coul both,
// which drop the bonded neighbours of an atom unless a k-space style (or a pair style that
// needs them, as LAMMPS' Neighbor::init decides) keeps them. Refused by name.
void PairLorem::check_pairs_kept() {
  const bool alone = force->pair == this;
  for (int k = 0; k < neighbor->nex_type; ++k) {
    const int a = neighbor->ex1_type[k], b = neighbor->ex2_type[k];
    if (alone || (type_to_z_[a] > 0 && type_to_z_[b] > 0))
      error->all(FLERR,
                 "pair_style lorem: neigh_modify exclude type {} {} removes pairs of its atoms "
                 "from the neighbour list, and the model would not see them: remove the "
                 "exclusion",
                 a, b);
  }
  if (neighbor->nex_group || neighbor->nex_mol) {
    if (alone)
      error->all(FLERR,
                 "pair_style lorem: neigh_modify exclude removes pairs from the neighbour list, "
                 "and the model would not see them: remove the exclusion");
    if (comm->me == 0)
      error->warning(FLERR,
                     "pair_style lorem: neigh_modify exclude group/molecule must not exclude "
                     "pairs of atoms of pair_style lorem's types (the model would not see them)");
  }
  if (atom->molecular == Atom::ATOMIC || force->kspace || force->pair_match("coul/wolf", 0) ||
      force->pair_match("coul/dsf", 0) || force->pair_match("thole", 0))
    return;
  bool dropped[4] = {false, false, false, false};
  for (int k = 1; k <= 3; ++k)
    dropped[k] = force->special_lj[k] == 0.0 && force->special_coul[k] == 0.0;
  if (!dropped[1] && !dropped[2] && !dropped[3]) return;
  // the 1-(k+1) level (1, 2, 3; 0: none) of a dropped bonded neighbour of a local atom of
  // this style's types
  int level = 0;
  if (atom->molecular == Atom::MOLECULAR && atom->nspecial) {
    for (int i = 0; i < atom->nlocal && !level; ++i) {
      if (type_to_z_[atom->type[i]] <= 0) continue;
      const int counts[4] = {0, atom->nspecial[i][0], atom->nspecial[i][1] - atom->nspecial[i][0],
                             atom->nspecial[i][2] - atom->nspecial[i][1]};
      for (int k = 1; k <= 3 && !level; ++k)
        if (dropped[k] && counts[k] > 0) level = k;
    }
  } else if (atom->nbonds > 0 || atom->nangles > 0 || atom->ndihedrals > 0) {
    // molecule templates: no per-atom lists to look at, the first dropped level
    for (int k = 3; k >= 1; --k)
      if (dropped[k]) level = k;
  }
  int any = 0;
  MPI_Allreduce(&level, &any, 1, MPI_INT, MPI_MAX, world);
  if (any)
    error->all(FLERR,
               "pair_style lorem: special_bonds weights of 0 for 1-{} pairs remove bonded "
               "neighbours of its atoms from the neighbour list, and the model would not see "
               "them: use special_bonds lj/coul 1.0 1.0 1.0 (the model takes every pair within "
               "its cutoff, whatever the weights)",
               any + 1);
}

// pair_coeff's elements against the types' masses: a swapped element order
// (pair_coeff * * model.pt H O on an O/H data file) runs with wrong energies and no
// other sign. A warning, not an error: isotopes and repartitioned masses are legitimate.
// Hydrogen at 1.5 to 4.1 g/mol (deuterium, tritium, hydrogen mass repartitioning up to
// 4x) gets a note in the log; any other type more than 30 % off its element's standard
// weight a warning naming the closest of the model's elements. Once per type and mapping.
void PairLorem::check_masses() {
  if (comm->me != 0 || atom->rmass_flag || atom->mass == nullptr) return;
  const auto& contract = model_->contract();
  for (int t = 1; t <= atom->ntypes; ++t) {
    const int64_t z = type_to_z_[t];
    if (z <= 0 || mass_checked_[t] || !atom->mass_setflag[t]) continue;
    mass_checked_[t] = 1;
    const double mass = atom->mass[t], expected = lorem_lammps::standard_mass(z);
    if (expected <= 0.0 || std::abs(mass / expected - 1.0) <= 0.3) continue;
    const std::string& symbol = type_symbol_[t];
    if (z == 1 && mass >= 1.5 && mass <= 4.1) {
      utils::logmesg(lmp,
                     "pair_style lorem: type {} (H) has mass {:.4g}: a hydrogen isotope or "
                     "repartitioned mass, computed as H\n",
                     t, mass);
      continue;
    }
    // the model's element whose standard weight is closest (by ratio) to this mass
    size_t closest = 0;
    double best = std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < contract.atomic_numbers.size(); ++k) {
      const double other = lorem_lammps::standard_mass(contract.atomic_numbers[k]);
      if (other <= 0.0) continue;
      const double distance = std::abs(std::log(mass / other));
      if (distance < best) best = distance, closest = k;
    }
    const std::string hint =
        contract.atomic_numbers[closest] == z
            ? std::string()
            : fmt::format(", closer to {} ({:.4g})", contract.symbols[closest],
                          lorem_lammps::standard_mass(contract.atomic_numbers[closest]));
    error->warning(FLERR,
                   "pair_style lorem: type {} is {} in pair_coeff (standard mass {:.4g}) but has "
                   "mass {:.4g}{}: check the order of the elements in pair_coeff (ignore this "
                   "for isotopes or repartitioned masses)",
                   t, symbol, expected, mass, hint);
  }
}

// LAMMPS asks for per-atom virials in the setup and on the last step of every run
// whenever a compute stress/atom (or centroid/stress/atom) exists, used or not; on other
// steps only when something uses its values. The model has no per-atom virial: NaN on
// the first and last step (with a warning), an error on a step in between that asks.
void PairLorem::refuse_per_atom_virial() {
  if (!update->setupflag && update->ntimestep != update->laststep) {
    error->all(FLERR,
               "pair_style lorem computes no per-atom virial, but step {} asks for it (compute "
               "stress/atom or centroid/stress/atom used in an output): remove that use",
               update->ntimestep);
  }
  const int nall = atom->nlocal + atom->nghost;
  for (int i = 0; i < nall; ++i)
    for (int c = 0; c < 6; ++c) vatom[i][c] = std::numeric_limits<double>::quiet_NaN();
  if (comm->me == 0 && !per_atom_virial_warned_) {
    per_atom_virial_warned_ = true;
    error->warning(FLERR,
                   "pair_style lorem computes no per-atom virial: compute stress/atom values "
                   "include NaN for it on a run's first and last step, and any other step that "
                   "uses them is an error");
  }
}

double PairLorem::init_one(int, int) { return cutoff_; }

void PairLorem::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  const double compute_start = MPI_Wtime();

  double** x = atom->x;
  double** f = atom->f;
  const int* type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  // the model's atoms: mapped types only, local first, then ghosts
  std::vector<int> locals, ghosts;
  std::vector<int64_t> model_index(nall, -1);
  for (int i = 0; i < nlocal; ++i)
    if (type_to_z_[type[i]] > 0) {
      model_index[i] = static_cast<int64_t>(locals.size());
      locals.push_back(i);
    }
  for (int i = nlocal; i < nall; ++i)
    if (type_to_z_[type[i]] > 0) {
      model_index[i] = static_cast<int64_t>(locals.size() + ghosts.size());
      ghosts.push_back(i);
    }
  const int64_t n_local = static_cast<int64_t>(locals.size());
  const int64_t n_model = n_local + static_cast<int64_t>(ghosts.size());

  auto positions = torch::empty({n_model, 3}, torch::kFloat64);
  auto numbers = torch::empty({n_model}, torch::kLong);
  auto* p = positions.data_ptr<double>();
  auto* z = numbers.data_ptr<int64_t>();
  for (int64_t k = 0; k < n_model; ++k) {
    const int i = k < n_local ? locals[k] : ghosts[k - n_local];
    p[3 * k] = x[i][0];
    p[3 * k + 1] = x[i][1];
    p[3 * k + 2] = x[i][2];
    z[k] = type_to_z_[type[i]];
  }

  std::vector<int64_t> centers, others;
  const double cutoff_squared = cutoff_ * cutoff_;
  // the closest pair (or a non-finite position) of this rank, for check_geometry()
  double closest_squared = std::numeric_limits<double>::infinity();
  int closest_i = -1, closest_j = -1;
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    if (model_index[i] < 0) continue;
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2])) {
      closest_squared = -1.0;
      closest_i = closest_j = i;
    }
    const int* neighbors = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = neighbors[jj] & NEIGHMASK;
      if (model_index[j] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double r2 = dx * dx + dy * dy + dz * dz;
      if (r2 < cutoff_squared) {
        centers.push_back(model_index[i]);
        others.push_back(model_index[j]);
        if (r2 < closest_squared) {
          closest_squared = r2;
          closest_i = i;
          closest_j = j;
        }
      }
    }
  }
  check_geometry(closest_squared, closest_i, closest_j);

  lorem::System system;
  system.positions = positions;
  system.atomic_numbers = numbers;
  system.n_local = n_local;
  system.centers = torch::tensor(centers, torch::kLong);
  system.others = torch::tensor(others, torch::kLong);
  const double* h = domain->h;  // xprd yprd zprd yz xz xy
  system.cell = torch::tensor({h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]}, torch::kFloat64)
                    .reshape({3, 3});
  // boundary p p f: a 2D slab (init_style checked the rest); its k-space is periodic too
  system.slab = domain->xperiodic && domain->yperiodic && !domain->zperiodic;
  system.periodic = (domain->xperiodic && domain->yperiodic && domain->zperiodic) || system.slab;
  // a point shared by all ranks, so that float32 models lose no precision far from zero:
  // the box origin when periodic or a slab (a lattice point; the runtime adds the cell's
  // centre, and for a slab takes the atoms' mean z, as Python does, so that a PME mesh
  // sits where Python puts it), the box centre otherwise
  if (system.periodic) {
    system.origin = {domain->boxlo[0], domain->boxlo[1], domain->boxlo[2]};
  } else {
    system.origin = {domain->boxlo[0] + 0.5 * (h[0] + h[5] + h[4]),
                     domain->boxlo[1] + 0.5 * (h[1] + h[3]), domain->boxlo[2] + 0.5 * h[2]};
  }

  // per-atom Born effective charges go to the custom array "bec" when the input defines
  // it (fix property/atom d2_bec 9), in the order xx xy xz yx yy yz zx zy zz
  int bec_flag = 0, bec_columns = 0;
  const int bec_index = atom->find_custom("bec", bec_flag, bec_columns);
  const bool store_bec = bec_index >= 0 && bec_flag == 1 && bec_columns == 9;
  system.want_born_effective_charges = store_bec;
  system.apply_electric_field = apply_electric_field_;
  system.electric_field = electric_field_;

  LammpsCommunicator communicator(this, comm, atom, world, locals, ghosts, device_buffers_);
  lorem::Result result;
  const double model_start = MPI_Wtime();
  try {
    result = model_->compute(system, communicator, vflag_global != 0);
  } catch (const std::exception& e) {
    error->one(FLERR, "pair_style lorem: {}", e.what());
  }
  const double model_end = MPI_Wtime();

  const double* forces = result.forces.data_ptr<double>();
  for (int64_t k = 0; k < n_model; ++k) {
    const int i = k < n_local ? locals[k] : ghosts[k - n_local];
    f[i][0] += energy_unit_ * forces[3 * k];
    f[i][1] += energy_unit_ * forces[3 * k + 1];
    f[i][2] += energy_unit_ * forces[3 * k + 2];
  }
  if (store_bec) {
    auto apt = result.born_effective_charges.contiguous();
    const double* z = apt.data_ptr<double>();
    double** bec = atom->darray[bec_index];
    for (int64_t k = 0; k < n_local; ++k)
      for (int c = 0; c < 9; ++c) bec[locals[k]][c] = z[9 * k + c];
  }
  if (eflag_global) eng_vdwl += energy_unit_ * result.energy;
  if (eflag_atom) {
    const double* energies = result.energies.data_ptr<double>();
    for (int64_t k = 0; k < n_local; ++k) eatom[locals[k]] += energy_unit_ * energies[k];
  }
  if (vflag_global) {
    // LAMMPS' virial is -dE/d(strain), symmetrised: xx yy zz xy xz yz
    auto w = result.virial.accessor<double, 2>();
    virial[0] -= energy_unit_ * w[0][0];
    virial[1] -= energy_unit_ * w[1][1];
    virial[2] -= energy_unit_ * w[2][2];
    virial[3] -= energy_unit_ * 0.5 * (w[0][1] + w[1][0]);
    virial[4] -= energy_unit_ * 0.5 * (w[0][2] + w[2][0]);
    virial[5] -= energy_unit_ * 0.5 * (w[1][2] + w[2][1]);
  }
  if (vflag_atom) refuse_per_atom_virial();
  host_seconds_ += (model_start - compute_start) + (MPI_Wtime() - model_end);
}

// The end of every run (LAMMPS' Finish, after the loop time, before its MPI task timing
// breakdown): where this run's evaluations (the setup's included) spent their time, per
// stage, as min/avg/max over ranks, like LAMMPS' own table. Collective: every rank
// calls finish(). Communication includes waiting for slower ranks.
void PairLorem::finish() {
  if (!model_) return;
  const auto& t = model_->timings();
  if (!reported_) reported_ = std::make_unique<lorem::Timings>();
  const lorem::Timings& before = *reported_;
  const int64_t calls = t.calls - before.calls;
  // seconds since the last table, one entry per stage
  // the six stages, then PME's parts (within them)
  const std::array<double, 9> mine{t.short_range - before.short_range,
                                   t.communication - before.communication,
                                   t.long_range - before.long_range,
                                   t.backward - before.backward,
                                   t.transfers - before.transfers,
                                   host_seconds_ - reported_host_,
                                   t.pme_spread - before.pme_spread,
                                   t.pme_convolution - before.pme_convolution,
                                   t.pme_interpolation - before.pme_interpolation};
  *reported_ = t;
  reported_host_ = host_seconds_;
  if (!timers_) return;
  int64_t most_calls = 0;
  MPI_Allreduce(&calls, &most_calls, 1, MPI_INT64_T, MPI_MAX, world);
  if (most_calls == 0) return;
  constexpr int kRows = static_cast<int>(mine.size());
  std::array<double, kRows> low{}, sum{}, high{};
  MPI_Allreduce(mine.data(), low.data(), kRows, MPI_DOUBLE, MPI_MIN, world);
  MPI_Allreduce(mine.data(), sum.data(), kRows, MPI_DOUBLE, MPI_SUM, world);
  MPI_Allreduce(mine.data(), high.data(), kRows, MPI_DOUBLE, MPI_MAX, world);
  if (comm->me != 0) return;
  static const char* names[kRows] = {"short range", "communication", "k-space",
                                     "backward",    "host<->device", "plugin (host)",
                                     "  spread",    "  convolve",    "  interpolate"};
  double total = 0.0;
  for (int k = 0; k < 6; ++k) total += sum[k];  // the stages, not PME's parts again
  std::string table = fmt::format(
      "\npair_style lorem timings ({} evaluations, seconds per rank; pair_style lorem ... "
      "timers off to leave out):\n"
      "Stage          |  min time  |  avg time  |  max time  | %total\n"
      "---------------------------------------------------------------\n",
      most_calls);
  const bool pme = sum[6] + sum[7] + sum[8] > 0.0;
  for (int k = 0; k < (pme ? kRows : 6); ++k) {
    if (k == 6)
      table +=
          "PME's parts (forward and backward, their communication included; within the rows "
          "above):\n";
    const double average = sum[k] / comm->nprocs;
    table += fmt::format("{:<15}| {:<10.4g} | {:<10.4g} | {:<10.4g} | {:6.2f}\n", names[k], low[k],
                         average, high[k], total > 0.0 ? 100.0 * sum[k] / total : 0.0);
  }
  utils::logmesg(lmp, table);
}

// Every rank takes part, so that all of them stop with the message of the rank that
// found the problem (an error on one rank alone would leave the others waiting in
// the model's collectives, and its message could be lost in MPI_Abort).
void PairLorem::check_geometry(double closest_squared, int i, int j) {
  const double min_distance = model_->contract().min_distance;
  struct {
    double value;
    int rank;
  } mine{closest_squared, comm->me}, worst{0.0, 0};
  MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
  if (worst.value >= min_distance * min_distance) return;
  char message[512] = {0};
  if (comm->me == worst.rank) {
    const auto tag_i = static_cast<int64_t>(atom->tag[i]);
    const auto tag_j = static_cast<int64_t>(atom->tag[j]);
    if (worst.value < 0.0) {
      std::snprintf(message, sizeof(message),
                    "pair_style lorem: atom %lld has a non-finite position (NaN or infinite)",
                    static_cast<long long>(tag_i));
    } else {
      std::snprintf(message, sizeof(message),
                    "pair_style lorem: atoms %lld and %lld are %.6f A apart, closer than the "
                    "model's minimum %g A",
                    static_cast<long long>(tag_i), static_cast<long long>(tag_j),
                    std::sqrt(worst.value), min_distance);
    }
  }
  MPI_Bcast(message, sizeof(message), MPI_CHAR, worst.rank, world);
  error->all(FLERR, "{}", message);
}

int PairLorem::pack_forward_comm(int n, int* list, double* buf, int, int*) {
  int m = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < exchange_width; ++c) buf[m++] = exchange[list[i] * exchange_width + c];
  return m;
}

void PairLorem::unpack_forward_comm(int n, int first, double* buf) {
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int c = 0; c < exchange_width; ++c) exchange[i * exchange_width + c] = buf[m++];
}

int PairLorem::pack_reverse_comm(int n, int first, double* buf) {
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int c = 0; c < exchange_width; ++c) buf[m++] = exchange[i * exchange_width + c];
  return m;
}

void PairLorem::unpack_reverse_comm(int n, int* list, double* buf) {
  int m = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < exchange_width; ++c) exchange[list[i] * exchange_width + c] += buf[m++];
}
