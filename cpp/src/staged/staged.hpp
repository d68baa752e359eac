// The pieces of Model::compute (docs/design.md section 4): what every stage shares.
// Private to the runtime: the public interface is lorem/model.hpp.
#pragma once

#include <torch/script.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lorem/model.hpp"

namespace lorem::staged {

torch::Tensor leaf(const torch::Tensor& x);

// Inputs named where they are declared, so that a gradient is read by name
// (grads["potential_brick"]) and not by its place in a list.
using Leaves = std::vector<std::pair<std::string, torch::Tensor>>;

class Gradients {
 public:
  Gradients() = default;
  explicit Gradients(std::map<std::string, torch::Tensor> values) : values_(std::move(values)) {}
  // throws lorem::Error naming the leaf when it was not an input
  const torch::Tensor& operator[](const std::string& name) const;
  bool has(const std::string& name) const { return values_.count(name) > 0; }

 private:
  std::map<std::string, torch::Tensor> values_;
};

// Gradients of `outputs` (with `seeds`) to `leaves`; zeros where unused, and for outputs
// that depend on nothing that requires a gradient.
Gradients gradients(const std::vector<torch::Tensor>& outputs,
                    const std::vector<torch::Tensor>& seeds, const Leaves& leaves);

// What every stage needs: the exported module's methods, the options of the model's
// tensors, and a clock that waits for the device (so that stage times are real on CUDA).
struct Context {
  torch::jit::script::Module& module;
  torch::TensorOptions options;        // the model's dtype, on its device
  torch::TensorOptions index_options;  // int64 on its device
  torch::Device device;
  Timings* timings = nullptr;  // this call's (the long-range methods add their parts)
  c10::IValue call(const std::string& method, std::vector<c10::IValue> inputs) const {
    return module.get_method(method)(std::move(inputs));
  }
  torch::Tensor tensor(const std::string& method, std::vector<c10::IValue> inputs) const {
    return call(method, std::move(inputs)).toTensor();
  }
  void sync() const;
};

// The system on the model's device and in its frame (origin subtracted in float64).
struct Inputs {
  torch::Tensor positions;  // [n_all, 3] leaf
  torch::Tensor strain;     // [3, 3] leaf: dE/d(strain) is the virial
  torch::Tensor numbers;    // [n_all]
  torch::Tensor centers;    // [P]
  torch::Tensor others;     // [P]
  torch::Tensor cell;       // [3, 3]
  int64_t n_local = 0;
  torch::Tensor local_positions() const { return positions.slice(0, 0, n_local); }
};

// ---- short range: stage 0 (initial features) and one stage per message-passing layer

struct Stage {
  torch::Tensor energy, scalar, spherical;  // outputs (local atoms)
  Leaves inputs;                            // local and ghost features (layers only)
};

// Local atoms [begin, end) and the pairs whose centre is one of them: the short range of
// a chunk is that of its atoms alone (a stage's outputs for an atom depend only on the
// pairs it is the centre of), so a stage can run chunk by chunk.
struct Chunk {
  int64_t begin = 0, end = 0;
  torch::Tensor pairs;  // [P_chunk] indices into Inputs::centers / others, in their order
};

class ShortRange {
 public:
  // chunk_atoms > 0: the stages run over chunks of that many local atoms without keeping
  // their autograd graphs, and each chunk is computed again in the backward (memory
  // bounded by one chunk's graph, the short range's forward twice); 0: one pass, graphs
  // kept (docs/design.md section 4)
  explicit ShortRange(int64_t chunk_atoms = 0) : chunk_atoms_(chunk_atoms) {}
  // stage 0, then each layer after its ghosts got their owners' features
  void forward(const Context& ctx, const Inputs& in, int64_t layers, Communicator& comm);
  // the learned charges [n_local, C] of the final features (kept, with the features as
  // leaves, for the backward)
  torch::Tensor charges(const Context& ctx);
  torch::Tensor energies() const;  // [n_local] detached, summed over stages
  const Stage& final_stage() const { return stages_.back(); }
  const std::vector<Stage>& stages() const { return stages_; }
  // Backward through the charges and the stages, last first, from the gradients of the
  // final features and of the charges; gradients of ghost features go back to their
  // owners. Adds to grad_positions and grad_strain.
  void backward(const Context& ctx, const Inputs& in, torch::Tensor grad_scalar,
                torch::Tensor grad_spherical, const torch::Tensor& grad_charges, Communicator& comm,
                torch::Tensor& grad_positions, torch::Tensor& grad_strain) const;

 private:
  // stage t for one chunk's atoms: outputs {energy, scalar, spherical} (a graph when grad
  // mode is on) from leaves of the chunk's view (positions, strain; for layers the
  // features [n_all, ...] of the rank's atoms picked for the view), and the view's atoms
  struct ChunkCall {
    std::vector<torch::Tensor> outputs;
    Leaves leaves;
    torch::Tensor atoms;  // [n_view] rank indices of the leaves' rows
  };
  ChunkCall chunk_call(const Context& ctx, const Inputs& in, int64_t t,
                       const std::pair<torch::Tensor, torch::Tensor>& features,
                       const Chunk& chunk) const;
  // stage t's gradients (as gradients() names them for one pass), chunk by chunk
  Gradients chunk_gradients(const Context& ctx, const Inputs& in, int64_t t, const Stage& stage,
                            const torch::Tensor& grad_scalar,
                            const torch::Tensor& grad_spherical) const;
  int64_t chunk_atoms_ = 0;
  std::vector<Chunk> chunks_;  // empty: one pass
  std::vector<Stage> stages_;
  torch::Tensor charges_;
  Leaves charge_inputs_;  // the final features, leaves of the charges
};

// ---- long range: one unit per k-space method behind one interface

// What the long range sees: the charges and the final features as leaves.
struct LongRangeInputs {
  const System& system;
  const Inputs& in;
  torch::Tensor charges;    // [n_local, C] leaf
  torch::Tensor scalar;     // [n_local, F] leaf
  torch::Tensor spherical;  // [n_local, (L+1)^2, S] leaf
  torch::Tensor kcell;      // the cell of the k-space sum (a slab: extended along z)
};

// The long-range energy of this rank's atoms and its gradients (through every sum over
// ranks) to this rank's positions, strain, charges and final features.
struct LongRangeResult {
  torch::Tensor energies;    // [n_local] detached
  torch::Tensor potentials;  // [n_local, ...] detached (the Born-charge head reads them)
  torch::Tensor grad_positions, grad_strain, grad_charges, grad_scalar, grad_spherical;
  double forward_end = 0.0;          // clock when the forward pass ended
  double comm_at_forward_end = 0.0;  // communication seconds by then
};

// The readout every method ends with: potentials -> energies, then the gradients of the
// long-range energy to the method's leaves and to the final features.
class Readout {
 public:
  Readout(const Context& ctx, const LongRangeInputs& lr, const double& comm_seconds)
      : ctx_(ctx), lr_(lr), comm_seconds_(comm_seconds) {}
  // leaves: the method's own (named); "scalar" and "spherical" are added
  Gradients operator()(const torch::Tensor& potentials, Leaves leaves, LongRangeResult& result);

 private:
  const Context& ctx_;
  const LongRangeInputs& lr_;
  const double& comm_seconds_;
};

// The total charge (or, for a slab, the moments Q, M, S along z) summed over ranks,
// which every periodic method needs; a slab adds the dipole correction to the potentials.
class ChargeMoments {
 public:
  ChargeMoments(const Context& ctx, const LongRangeInputs& lr);
  void sum(Communicator& comm);  // the leaf `total()`
  const torch::Tensor& total() const { return total_; }
  torch::Tensor total_charge() const;  // [C]
  torch::Tensor corrected(const torch::Tensor& potentials) const;
  // dE/d(total) summed over ranks, through this rank's moments (a slab) or onto every
  // local charge: named gradients "positions", "strain", "charges"
  Gradients backward(const torch::Tensor& grad_total, Communicator& comm) const;

 private:
  const Context& ctx_;
  const LongRangeInputs& lr_;
  torch::Tensor partial_, total_;
};

// A periodic method's gradients: those to its own leaves (positions, strain, charges,
// ghost_charges) plus those that came back through its parts summed over ranks (each
// with some of positions, strain, charges); ghost charges' go back to their owners.
void collect_periodic_gradients(LongRangeResult& result, const Gradients& own,
                                const std::vector<const Gradients*>& through,
                                const LongRangeInputs& lr, Communicator& comm);

class LongRangeMethod {
 public:
  virtual ~LongRangeMethod() = default;
  virtual LongRangeResult compute(const Context& ctx, const LongRangeInputs& lr, Communicator& comm,
                                  Readout& readout) = 0;
};

std::unique_ptr<LongRangeMethod> make_ewald();  // long_range/ewald.cpp
// order: the B-spline order; split_methods: the export has pme_interpolate and pme_combine
// (else pme_potentials does both)
std::unique_ptr<LongRangeMethod> make_pme(int64_t order, bool split_methods);  // pme.cpp
std::unique_ptr<LongRangeMethod> make_direct_sum();  // long_range/direct_sum.cpp

// ---- Born effective charges: no part of the energy, no backward pass

// [n_local, 3, 3], with the acoustic sum rule imposed over all ranks
torch::Tensor born_effective_charges(const Context& ctx, const ShortRange& short_range,
                                     const torch::Tensor& potentials, int64_t n_local,
                                     Communicator& comm);

}  // namespace lorem::staged
