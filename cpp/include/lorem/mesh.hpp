// A periodic mesh spread over ranks (particle-mesh Ewald across MPI ranks).
//
// Every rank holds boxes of mesh indices: a brick around its atoms (charges spread,
// potentials interpolated; indices may lie outside [0, N): periodic images), the part
// of the mesh it owns (a tiling of [0, N)^3 that follows the engine's domains), and
// pencils for the 3-D FFT. `remap` moves data between any two such layouts with one
// all-to-all of the overlapping pieces (periodic images included), so that no rank
// ever holds more than its share of the mesh, and no message grows with the whole mesh.
#pragma once

#include <torch/torch.h>

#include <array>
#include <vector>

#include "lorem/model.hpp"

namespace lorem {

using Index3 = std::array<int64_t, 3>;

// Mesh indices lo <= i < hi per axis.
struct Box {
  Index3 lo{0, 0, 0}, hi{0, 0, 0};
  Index3 shape() const { return {hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]}; }
  int64_t volume() const;
  bool empty() const { return volume() == 0; }
};

Box intersect(const Box& a, const Box& b);
// [start, stop) of part `index` of `parts` nearly equal parts of [0, n)
std::pair<int64_t, int64_t> block(int64_t n, int64_t parts, int64_t index);

// Every rank's box (one all-gather of six integers per rank).
std::vector<Box> gather_boxes(Communicator& comm, const Box& mine);

// Move `data` [lead, b0, b1, b2, trailing...] laid out on from_all[rank] to the layout
// to_all: returns [lead, t0, t1, t2, trailing...] on to_all[rank], where every target
// index receives the sum of all source values at the same mesh point modulo `period`.
torch::Tensor remap(Communicator& comm, const torch::Tensor& data, const std::vector<Box>& from_all,
                    const std::vector<Box>& to_all, const Index3& period);

// The pencils of the distributed FFT: the axes in the order transformed and every rank's
// pencil at each step (see MeshFFT).
struct PencilPlan {
  std::array<int, 3> order{0, 1, 2};
  std::array<std::vector<Box>, 3> layouts;
};
// align_with_domains false: always x-, y-, z-pencils on a square process grid (the layout
// before domain-aligned pencils; for comparisons).
PencilPlan pencil_plan(const Index3& mesh, const std::vector<Box>& owned_all,
                       bool align_with_domains = true);

// Values rank `rank` sends to other ranks when data moves from the layout from_all to
// to_all (remap's own plan, no data).
int64_t remap_values_sent(const std::vector<Box>& from_all, const std::vector<Box>& to_all,
                          const Index3& period, int rank);
// Bytes every rank sends in the mesh remaps of one PME evaluation (the potentials'
// convolution and the gradients'), from the owned parts and the bricks; value_bytes: 8
// for a float64 model, 4 for float32 (the mesh travels in the model's dtype).
std::vector<double> pme_bytes_sent(const Index3& mesh, const std::vector<Box>& owned_all,
                                   const std::vector<Box>& brick_all, int64_t channels,
                                   bool align_with_domains = true, int64_t value_bytes = 8);

// The 3-D FFT of a real multi-channel mesh distributed over ranks, with pencils: the
// mesh goes from the owned layout to pencils along each axis in turn, transformed along
// the full axis each time. When the owned parts are a processor grid that leaves an axis
// whole, the first pencils are the owned parts themselves (the owned <-> pencil remaps
// move nothing) and each transpose keeps one of the grid's splits;
// otherwise x-, y-, z-pencils on a square process grid. Channels are packed in pairs as
// real + imaginary parts (the kernels applied in between are real and even, so the
// pairs never mix). Unnormalised both ways.
class MeshFFT {
 public:
  MeshFFT(Communicator& comm, const Index3& mesh, const std::vector<Box>& owned_all);
  // this rank's indices of the spectrum (the last pencils), for the kernel
  const Box& spectrum_box() const { return pencils_[2]; }
  // real [C, owned box] -> complex [ceil(C/2), spectrum box]
  torch::Tensor forward(const torch::Tensor& owned, const std::vector<Box>& owned_all);
  // complex [ceil(C/2), spectrum box] -> real [channels, owned box]
  torch::Tensor inverse(const torch::Tensor& spectrum, const std::vector<Box>& owned_all,
                        int64_t channels);

 private:
  Communicator& comm_;
  Index3 mesh_;
  std::array<int, 3> order_{0, 1, 2};            // the axes in the order transformed
  std::array<Box, 3> pencils_;                   // this rank's pencil of each step
  std::array<std::vector<Box>, 3> all_pencils_;  // every rank's
};

}  // namespace lorem
