// A periodic mesh spread over ranks (particle-mesh Ewald across MPI ranks).
//
// Every rank owns a part of the mesh (slabs, or x-pencils when there are more ranks
// than a slab layout allows; `owned_mesh_layout`, independent of the engine's domains)
// and the atoms visit the ranks that hold their B-spline stencils (`mesh_visits`): a
// rank spreads the charges of the atoms that visit it onto a brick around them (indices
// may lie outside [0, N): periodic images), folds the brick onto its part, and after the
// convolution interpolates its part at the same atoms; the partial potentials go back to
// the atoms' owners, who sum them. So no mesh halo crosses ranks: what crosses is a few
// values per visiting atom and the FFT's transposes (`remap`: one all-to-all of the
// overlapping pieces), which fall as 1/P, and no rank holds more than its share.
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

// The sum of the periodic images of `data` [C, from box] that fall in box `to`: [C, to box]
// (this rank alone; a brick onto the rank's own part of the mesh).
torch::Tensor fold(const torch::Tensor& data, const Box& from, const Box& to, const Index3& period);
// The adjoint of fold: values [C, to box] at every index of box `from` whose periodic
// image lies in `to`, zeros elsewhere: [C, from box].
torch::Tensor unfold(const torch::Tensor& data, const Box& to, const Box& from,
                     const Index3& period);

// The owned parts of a mesh over `ranks`, all of axis w (`whole_axis`) and blocks of the
// other two, s1 = w + 1 and s2 = w + 2 (mod 3): slabs (p_s1 = 1, p_s2 = ranks) while they
// are at least a stencil (`order` planes) thick (the 3-D FFT then needs one transpose
// each way), else a p_s1 x p_s2 grid of pencils as square as the mesh allows (two
// transposes, but thin slabs would make every atom visit many ranks and every rank's
// brick many times its part), else thin slabs (a prime rank count above N / order); rank
// r = j1 * p_s2 + j2 owns block j1 of axis s1 and block j2 of axis s2. w = 0 for a
// periodic cell; w = 2 for a 2D slab, whose atoms fill only the lowest third of the
// extended cell's z, so that the blocks split x and y and every rank gets atoms.
struct MeshLayout {
  int whole_axis = 0;
  std::array<int64_t, 3> parts{1, 1, 1};  // blocks per axis
  std::vector<Box> owned;
};
MeshLayout owned_mesh_layout(const Index3& mesh, int64_t ranks, int64_t order, int whole_axis = 0);

// The ranks each atom visits: every rank holding a point of its stencil (mesh
// coordinates u = N s, the `order` points floor(u) - order + 1 .. floor(u) per axis, one
// more each side against rounding), each once, with the lattice shift (in cells, per
// axis) that brings the stencil next to that rank's part, so that the bricks of the
// visiting atoms stay compact.
struct MeshVisits {
  std::vector<std::vector<int64_t>> atoms;   // [rank]: local atom indices
  std::vector<std::vector<int64_t>> shifts;  // [rank]: three integers per atom
  int64_t total() const;
};
// mesh_coordinates: [n, 3] float64 on the CPU
MeshVisits mesh_visits(const torch::Tensor& mesh_coordinates, const Index3& mesh,
                       const MeshLayout& layout, int64_t order);

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
// Bytes every rank sends in one PME evaluation: the transposes of the two convolutions
// (the potentials' and the gradients') from the plan, and per visit of an atom to
// another rank 3 + C values there and C back in the forward pass, C there and 3 + C back
// in the backward (visits_out[r]: rank r's atoms' visits to other ranks; visits_in[r]:
// other ranks' atoms' visits to r); value_bytes: 8 for a float64 model, 4 for float32.
std::vector<double> pme_bytes_sent(const Index3& mesh, int64_t ranks, int64_t order,
                                   int64_t channels, const std::vector<int64_t>& visits_out,
                                   const std::vector<int64_t>& visits_in, int64_t value_bytes = 8,
                                   int whole_axis = 0);

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
