// pair_style lorem: glue between LAMMPS and the lorem-torch runtime (cpp/).
//
// Every step: the model's atoms (types not mapped to NULL), local first, then
// ghosts; pairs i <- j within the model cutoff from a full neighbour list; the
// staged long range with ghost charges by forward communication, their gradients
// by reverse communication and structure factors summed over `world`. Forces on
// ghosts go back to their owners through LAMMPS' reverse communication (newton on).
#include "pair_lorem.h"

#include <mpi.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

using namespace LAMMPS_NS;

namespace {

const char *const kSymbols[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es"};
constexpr int kNumSymbols = sizeof(kSymbols) / sizeof(kSymbols[0]);

int atomic_number(const std::string &symbol) {
  for (int z = 1; z < kNumSymbols; ++z) {
    if (symbol == kSymbols[z]) return z;
  }
  return -1;
}

constexpr double kEvToKcalPerMol = 23.060547830619029;

// The Communicator of the staged long range, on LAMMPS' world and ghost atoms.
class LammpsCommunicator : public lorem::Communicator {
 public:
  LammpsCommunicator(PairLorem *pair, Comm *comm, Atom *atom, MPI_Comm world,
                     const std::vector<int> &locals, const std::vector<int> &ghosts)
      : pair_(pair), comm_(comm), atom_(atom), world_(world), locals_(locals), ghosts_(ghosts) {}

  torch::Tensor forward_ghosts(const torch::Tensor &local_values) override {
    const int width = static_cast<int>(local_values.size(1));
    prepare(width);
    auto values = local_values.to(torch::kCPU, torch::kFloat64).contiguous();
    const double *data = values.data_ptr<double>();
    for (size_t k = 0; k < locals_.size(); ++k) {
      std::memcpy(&pair_->exchange[locals_[k] * width], data + k * width, sizeof(double) * width);
    }
    comm_->forward_comm(pair_);
    auto out = torch::empty({static_cast<int64_t>(ghosts_.size()), width}, torch::kFloat64);
    double *o = out.data_ptr<double>();
    for (size_t k = 0; k < ghosts_.size(); ++k) {
      std::memcpy(o + k * width, &pair_->exchange[ghosts_[k] * width], sizeof(double) * width);
    }
    return out.to(local_values.options());
  }

  torch::Tensor reverse_ghosts(const torch::Tensor &ghost_values, int64_t n_local) override {
    const int width = static_cast<int>(ghost_values.size(1));
    prepare(width);
    auto values = ghost_values.to(torch::kCPU, torch::kFloat64).contiguous();
    const double *data = values.data_ptr<double>();
    for (size_t k = 0; k < ghosts_.size(); ++k) {
      std::memcpy(&pair_->exchange[ghosts_[k] * width], data + k * width, sizeof(double) * width);
    }
    comm_->reverse_comm(pair_);
    auto out = torch::empty({n_local, width}, torch::kFloat64);
    double *o = out.data_ptr<double>();
    for (size_t k = 0; k < locals_.size(); ++k) {
      std::memcpy(o + k * width, &pair_->exchange[locals_[k] * width], sizeof(double) * width);
    }
    return out.to(ghost_values.options());
  }

  torch::Tensor all_reduce_sum(const torch::Tensor &values) override {
    auto buffer = values.to(torch::kCPU, torch::kFloat64).contiguous().clone();
    MPI_Allreduce(MPI_IN_PLACE, buffer.data_ptr<double>(), static_cast<int>(buffer.numel()),
                  MPI_DOUBLE, MPI_SUM, world_);
    return buffer.to(values.options());
  }

  torch::Tensor all_gather_rows(const torch::Tensor &rows, int64_t &offset) override {
    int nprocs = 1, me = 0;
    MPI_Comm_size(world_, &nprocs);
    MPI_Comm_rank(world_, &me);
    const int width = static_cast<int>(rows.size(1));
    auto buffer = rows.to(torch::kCPU, torch::kFloat64).contiguous();
    int count = static_cast<int>(buffer.numel());
    std::vector<int> counts(nprocs), displacements(nprocs, 0);
    MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, world_);
    for (int p = 1; p < nprocs; ++p) displacements[p] = displacements[p - 1] + counts[p - 1];
    const int total = displacements[nprocs - 1] + counts[nprocs - 1];
    auto out = torch::empty({total / std::max(width, 1), width}, torch::kFloat64);
    MPI_Allgatherv(buffer.data_ptr<double>(), count, MPI_DOUBLE, out.data_ptr<double>(),
                   counts.data(), displacements.data(), MPI_DOUBLE, world_);
    offset = displacements[me] / std::max(width, 1);
    return out.to(rows.options());
  }

 private:
  void prepare(int width) {
    if (width > pair_->comm_forward) {
      throw lorem::Error("internal: exchange width exceeds the pair's communication size");
    }
    pair_->exchange_width = width;
    const size_t size = static_cast<size_t>(atom_->nmax) * width;
    if (pair_->exchange.size() < size) pair_->exchange.resize(size);
    std::fill(pair_->exchange.begin(), pair_->exchange.begin() + size, 0.0);
  }

  PairLorem *pair_;
  Comm *comm_;
  Atom *atom_;
  MPI_Comm world_;
  const std::vector<int> &locals_;
  const std::vector<int> &ghosts_;
};

}  // namespace

PairLorem::PairLorem(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;  // the virial comes from the strain derivative
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairLorem::~PairLorem() {
  if (model_ && model_->timings().calls > 0 && std::getenv("LOREM_TIMING")) {
    const auto &t = model_->timings();
    utils::logmesg(lmp,
                   "pair_style lorem timing (rank {}, {} calls, s): short range {:.4f} long range "
                   "{:.4f} backward {:.4f} communication {:.4f}\n",
                   comm->me, t.calls, t.short_range, t.long_range, t.backward, t.communication);
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

void PairLorem::settings(int narg, char **arg) {
  int iarg = 0;
  while (iarg < narg) {
    if (std::strcmp(arg[iarg], "device") == 0 && iarg + 1 < narg) {
      device_request_ = arg[iarg + 1];
      iarg += 2;
    } else {
      error->all(FLERR,
                 "Illegal pair_style lorem argument '{}': use pair_style lorem [device "
                 "cpu|cuda|cuda:N|auto]",
                 arg[iarg]);
    }
  }
}

torch::Device PairLorem::choose_device() const {
  const bool have_cuda = torch::cuda::is_available();
  if (device_request_ == "cpu" || (device_request_ == "auto" && !have_cuda)) return torch::kCPU;
  if (!have_cuda) {
    error->all(FLERR, "pair_style lorem: device {} requested but CUDA is not available",
               device_request_);
  }
  if (device_request_.rfind("cuda:", 0) == 0) return torch::Device(device_request_);
  // one GPU per rank: node-local rank modulo the visible devices
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  return torch::Device(torch::kCUDA, local_rank % static_cast<int>(torch::cuda::device_count()));
}

void PairLorem::coeff(int narg, char **arg) {
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
  const auto device = choose_device();
  try {
    model_ = std::make_unique<lorem::Model>(arg[2], device.str());
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style lorem: {}", e.what());
  }
  const auto &metadata = model_->metadata();
  cutoff_ = metadata.cutoff;
  type_to_z_.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    const std::string symbol = arg[2 + t];
    if (symbol == "NULL") continue;
    const int z = atomic_number(symbol);
    if (z < 0)
      error->all(FLERR, "pair_style lorem: unknown element '{}' for atom type {}", symbol, t);
    bool known = false;
    std::string species;
    for (auto s : metadata.species) {
      known = known || s == z;
      if (s > 0 && s < kNumSymbols) species += std::string(" ") + kSymbols[s];
    }
    if (!known) {
      error->all(FLERR,
                 "pair_style lorem: element {} (type {}) is not among the model's species:{}",
                 symbol, t, species);
    }
    type_to_z_[t] = z;
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j)
      setflag[i][j] = (type_to_z_[i] > 0 && type_to_z_[j] > 0) ? 1 : 0;
  // ghost charges and their gradients travel through forward and reverse communication
  comm_forward = comm_reverse = std::max<int64_t>(metadata.num_charges, 1);
  if (comm->me == 0) {
    utils::logmesg(lmp, "pair_style lorem: {} on {}, cutoff {} A, {} long-range channels\n", arg[2],
                   model_->device().str(), cutoff_, metadata.num_charges);
  }
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
  if (!periodic && !open) {
    error->all(
        FLERR,
        "pair_style lorem supports fully periodic or fully non-periodic boxes only (no slabs yet)");
  }
  if (model_->metadata().num_message_passing > 0 && model_->metadata().long_range) {
    error->all(
        FLERR,
        "pair_style lorem: models with num_message_passing > 0 are not supported in LAMMPS yet");
  }
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairLorem::init_one(int, int) { return cutoff_; }

void PairLorem::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  if (vflag_atom) error->all(FLERR, "pair_style lorem does not compute per-atom virials");

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
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
  auto *p = positions.data_ptr<double>();
  auto *z = numbers.data_ptr<int64_t>();
  for (int64_t k = 0; k < n_model; ++k) {
    const int i = k < n_local ? locals[k] : ghosts[k - n_local];
    p[3 * k] = x[i][0];
    p[3 * k + 1] = x[i][1];
    p[3 * k + 2] = x[i][2];
    z[k] = type_to_z_[type[i]];
  }

  std::vector<int64_t> centers, others;
  const double cutoff_squared = cutoff_ * cutoff_;
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    if (model_index[i] < 0) continue;
    const int *neighbors = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = neighbors[jj] & NEIGHMASK;
      if (model_index[j] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cutoff_squared) {
        centers.push_back(model_index[i]);
        others.push_back(model_index[j]);
      }
    }
  }

  lorem::System system;
  system.positions = positions;
  system.atomic_numbers = numbers;
  system.n_local = n_local;
  system.centers = torch::tensor(centers, torch::kLong);
  system.others = torch::tensor(others, torch::kLong);
  const double *h = domain->h;  // xprd yprd zprd yz xz xy
  system.cell = torch::tensor({h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]}, torch::kFloat64)
                    .reshape({3, 3});
  system.periodic = domain->xperiodic && domain->yperiodic && domain->zperiodic;

  LammpsCommunicator communicator(this, comm, atom, world, locals, ghosts);
  lorem::Result result;
  try {
    result = model_->compute(system, communicator, vflag_global != 0);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style lorem: {}", e.what());
  }

  const double *forces = result.forces.data_ptr<double>();
  for (int64_t k = 0; k < n_model; ++k) {
    const int i = k < n_local ? locals[k] : ghosts[k - n_local];
    f[i][0] += energy_unit_ * forces[3 * k];
    f[i][1] += energy_unit_ * forces[3 * k + 1];
    f[i][2] += energy_unit_ * forces[3 * k + 2];
  }
  if (eflag_global) eng_vdwl += energy_unit_ * result.energy;
  if (eflag_atom) {
    const double *energies = result.energies.data_ptr<double>();
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
}

int PairLorem::pack_forward_comm(int n, int *list, double *buf, int, int *) {
  int m = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < exchange_width; ++c) buf[m++] = exchange[list[i] * exchange_width + c];
  return m;
}

void PairLorem::unpack_forward_comm(int n, int first, double *buf) {
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int c = 0; c < exchange_width; ++c) exchange[i * exchange_width + c] = buf[m++];
}

int PairLorem::pack_reverse_comm(int n, int first, double *buf) {
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int c = 0; c < exchange_width; ++c) buf[m++] = exchange[i * exchange_width + c];
  return m;
}

void PairLorem::unpack_reverse_comm(int n, int *list, double *buf) {
  int m = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < exchange_width; ++c) exchange[list[i] * exchange_width + c] += buf[m++];
}
