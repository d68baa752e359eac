// N ranks in one process, one thread each: the collectives of lorem::Communicator over
// shared memory, so that the staged algorithm LAMMPS runs over MPI (Model::compute) runs
// unchanged in one process, for tests and tools (lorem_torch._core.Model.compute_ranks).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "lorem/model.hpp"

namespace lorem {

// Who owns each ghost of one rank: the owner's rank and the atom's index among its
// local atoms (both [n_ghost] int64).
struct GhostOwners {
  torch::Tensor rank;
  torch::Tensor index;
};

class SimulatedRanks {
 public:
  explicit SimulatedRanks(std::vector<GhostOwners> ghosts);  // one entry per rank
  int size() const { return static_cast<int>(ghosts_.size()); }
  // body(rank, communicator) on one thread per rank, all at once. When a rank throws,
  // the others are released at their next collective; the first error (by rank) that is
  // not such a release is rethrown after every thread has ended.
  void run(const std::function<void(int, Communicator&)>& body);

 private:
  std::vector<GhostOwners> ghosts_;
};

}  // namespace lorem
