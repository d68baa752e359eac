// lorem::Model: load a lorem-torch export (TorchScript + metadata.json), read its
// contract, and evaluate a system of local and ghost atoms stage by stage with a
// caller-supplied Communicator (docs/design.md section 4): MPI ranks in LAMMPS, one
// process (SingleProcess), or ranks simulated in one process (lorem/simulated_ranks.hpp).
#pragma once

#include <torch/script.h>

#include <array>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "lorem/contract.hpp"

namespace lorem {

namespace staged {
class LongRangeMethod;
}

// Every error of the runtime: the message names the problem.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Two atoms closer than the contract's min_distance (or at non-finite positions):
// indices into System::positions, so that an engine can name its own atom ids.
class AtomsTooCloseError : public Error {
 public:
  AtomsTooCloseError(const std::string& message, int64_t first, int64_t second, double distance)
      : Error(message), first(first), second(second), distance(distance) {}
  int64_t first, second;
  double distance;
};

// What one rank knows of the system: local atoms first, then ghost atoms.
struct System {
  torch::Tensor positions;       // [n_all, 3] Angstrom
  torch::Tensor atomic_numbers;  // [n_all] int64
  int64_t n_local = 0;
  torch::Tensor centers;  // [P] int64, pairs i <- j with i < n_local
  torch::Tensor others;   // [P] int64, j (local or ghost)
  torch::Tensor cell;     // [3, 3] lattice vectors in rows (ignored when not periodic)
  bool periodic = true;
  // A 2D slab (periodic along x and y, open along z; `periodic` true as well): a and b in
  // the xy plane, c along z; the atoms' z must not wrap (LAMMPS boundary p p f). Needs a
  // contract that grants "slab" (docs/design.md section 2.1).
  bool slab = false;
  // Subtracted from the positions (in float64) before they are cast to the model's
  // dtype, so that float32 models keep their precision far from zero. Every rank
  // must use the same point (the energy is translation invariant). A periodic cell's
  // centre is added to it ((a + b + c) / 2; halves float32's spacing), and for a slab its
  // z is replaced by the atoms' mean z over all ranks (z has no lattice to wrap by).
  std::array<double, 3> origin{0.0, 0.0, 0.0};
  // Born effective charges (models whose contract grants "electric_field"): computed
  // when wanted or when a uniform field (V/Angstrom) is applied, which adds the forces
  // F_i = Z*_i E to the local atoms (energy and virial unchanged, as lorem-jax).
  bool want_born_effective_charges = false;
  bool apply_electric_field = false;
  std::array<double, 3> electric_field{0.0, 0.0, 0.0};
};

// Wall-clock seconds spent in each part of Model::compute, accumulated over calls.
struct Timings {
  double short_range = 0.0;    // initial block and message passing (forward)
  double long_range = 0.0;     // charges, structure factors, potentials, readout (forward)
  double backward = 0.0;       // the autograd passes
  double communication = 0.0;  // inside the Communicator
  double transfers = 0.0;      // inputs to the model's device and results back to the host
  double bytes = 0.0;          // sent by this rank through the Communicator (per-atom values
                               // and sums as float64, the PME mesh in the model's dtype)
  int64_t calls = 0;
  // PME's parts, forward and backward, their communication included (so also inside
  // long_range, backward and communication above): the atoms' visits and the spread of
  // their charges, the mesh convolutions (FFTs and transposes), the interpolation and
  // the shares going back to the owners
  double pme_spread = 0.0, pme_convolution = 0.0, pme_interpolation = 0.0;
};

struct Result {
  double energy = 0.0;     // this rank's share (sum over local atoms)
  torch::Tensor energies;  // [n_local] eV
  torch::Tensor forces;    // [n_all, 3] eV/A; ghost rows still to be sent to their owners
  torch::Tensor virial;    // [3, 3] dE/d(strain), this rank's share (eV)
  torch::Tensor born_effective_charges;  // [n_local, 3, 3] when computed (else undefined)
  Timings timings;                       // this call's (Model::timings() sums every call's)
};

// The collective operations of the staged model. Every rank calls every method in
// the same order, also with zero local atoms.
class Communicator {
 public:
  virtual ~Communicator() = default;
  // values [n_local, W] of this rank's atoms -> their owners' values on its ghosts
  // [n_ghost, W] (charges: W = C; message-passing features: W = the feature width)
  virtual torch::Tensor forward_ghosts(const torch::Tensor& local_values) = 0;
  // values on ghosts [n_ghost, W] -> summed onto their owners' local atoms [n_local, W]
  virtual torch::Tensor reverse_ghosts(const torch::Tensor& ghost_values, int64_t n_local) = 0;
  // element-wise sum over ranks (same shape everywhere)
  virtual torch::Tensor all_reduce_sum(const torch::Tensor& values) = 0;
  // rows [n_local, D] of every rank, concatenated in rank order; offset of ours
  virtual torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) = 0;
  // sends[r]: a 1-D tensor for rank r (maybe empty) -> what every rank sent to this one
  // (the distributed mesh of PME; only ranks with something to say exchange messages)
  virtual std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) = 0;
  // a few integers of every rank, concatenated in rank order (same count everywhere)
  virtual std::vector<int64_t> all_gather_ints(const std::vector<int64_t>& values) = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // How many of this rank's ghosts another rank owns: the ghost exchanges move only
  // theirs (a periodic image of one's own atom is a copy in place). -1: unknown, and
  // the byte counters then count every ghost.
  virtual int64_t ghosts_from_other_ranks() const { return -1; }
};

// One process holding the whole system: ghosts are periodic images of local atoms.
class SingleProcess : public Communicator {
 public:
  explicit SingleProcess(torch::Tensor ghost_owner);  // [n_ghost] local index of each ghost
  torch::Tensor forward_ghosts(const torch::Tensor& local_values) override;
  torch::Tensor reverse_ghosts(const torch::Tensor& ghost_values, int64_t n_local) override;
  torch::Tensor all_reduce_sum(const torch::Tensor& values) override;
  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override;
  std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) override {
    return sends;
  }
  int64_t ghosts_from_other_ranks() const override { return 0; }
  std::vector<int64_t> all_gather_ints(const std::vector<int64_t>& values) override {
    return values;
  }
  int rank() const override { return 0; }
  int size() const override { return 1; }

 private:
  torch::Tensor ghost_owner_;
};

class Model {
 public:
  // device: "cpu", "cuda", "cuda:N"; throws lorem::Error when unavailable.
  explicit Model(const std::string& path, const std::string& device = "cpu");

  const Contract& contract() const { return contract_; }
  // The k-space method for periodic cells: "ewald", "pme" or "auto" (among the
  // contract's long_range methods; default: the contract's method).
  void set_long_range_method(const std::string& method);
  const std::string& long_range_method() const { return method_; }
  // Local atoms per chunk of the short range: > 0 runs the short-range stages chunk by
  // chunk and computes each chunk again in the backward, so that only one chunk's
  // autograd graph is held at a time (less memory, the short range's forward twice);
  // 0 (the default): one pass. Same numbers either way, to round-off.
  void set_short_range_chunk(int64_t atoms);
  int64_t short_range_chunk() const { return short_range_chunk_; }
  const std::string& metadata_json() const { return metadata_json_; }
  torch::Device device() const { return device_; }

  // Energy, per-atom energies, forces on local and ghost atoms, virial share. Ranks of
  // one process (lorem/simulated_ranks.hpp) may call it at once on one Model.
  Result compute(const System& system, Communicator& comm, bool compute_virial = true);

  const Timings& timings() const { return timings_; }

 private:
  // the k-space unit for this system: direct sum (open), Ewald or PME (auto: by cost)
  std::unique_ptr<staged::LongRangeMethod> long_range_method_for(const System& system,
                                                                 const torch::Tensor& kcell,
                                                                 Communicator& comm) const;
  void add_timings(const Timings& call);

  torch::jit::script::Module module_;
  Contract contract_;
  std::string metadata_json_;
  std::string method_;
  int64_t short_range_chunk_ = 0;
  // PME (when the contract lists it), read once from the export: its B-spline order, and
  // whether it has pme_interpolate and pme_combine (else pme_potentials does both)
  int64_t pme_order_ = 0;
  bool pme_split_methods_ = false;
  torch::Device device_;
  Timings timings_;
  std::mutex timings_mutex_;
};

// The runtime's interface as code compiled against this header sees it: a version that
// changes with the classes above, and their sizes. A LAMMPS with pair_style lorem built
// in, or a plugin built against an installed lorem-torch, compares its own view
// (header_interface(), inlined where it is compiled) with the loaded library's
// (runtime_interface()) and stops with both named, instead of reading memory that
// another lorem-torch laid out otherwise.
constexpr int64_t kRuntimeInterfaceVersion = 20261209;  // Contract numerics, advisories
struct RuntimeInterface {
  int64_t version = 0;
  int64_t system = 0, timings = 0, result = 0, model = 0;  // sizeof of each
  bool operator==(const RuntimeInterface& other) const {
    return version == other.version && system == other.system && timings == other.timings &&
           result == other.result && model == other.model;
  }
  std::string describe() const;  // "version V (System S, Timings T, Result R, Model M bytes)"
};
inline RuntimeInterface header_interface() {
  return {kRuntimeInterfaceVersion, static_cast<int64_t>(sizeof(System)),
          static_cast<int64_t>(sizeof(Timings)), static_cast<int64_t>(sizeof(Result)),
          static_cast<int64_t>(sizeof(Model))};
}
RuntimeInterface runtime_interface();  // the library's own header_interface()

// Fold ghost forces [n_all, 3] onto their owners (single process).
torch::Tensor fold_ghost_forces(const torch::Tensor& forces, int64_t n_local,
                                const torch::Tensor& ghost_owner);

}  // namespace lorem
