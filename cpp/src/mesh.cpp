#include "lorem/mesh.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace lorem {

namespace {

using torch::indexing::Slice;

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Calls visit(overlap in target indices, offset) for every periodic image of `from`
// (shifted by offset = s * period, s integer per axis) that overlaps `to`, in a fixed
// order that the sending and the receiving rank both follow.
template <typename Visit>
void for_each_overlap(const Box& from, const Box& to, const Index3& period, Visit&& visit) {
  if (from.empty() || to.empty()) return;
  Index3 first{}, last{};
  for (int a = 0; a < 3; ++a) {
    first[a] = floor_div(to.lo[a] - from.hi[a], period[a]) + 1;
    last[a] = floor_div(to.hi[a] - from.lo[a] - 1, period[a]);
  }
  for (int64_t s0 = first[0]; s0 <= last[0]; ++s0)
    for (int64_t s1 = first[1]; s1 <= last[1]; ++s1)
      for (int64_t s2 = first[2]; s2 <= last[2]; ++s2) {
        const Index3 offset{s0 * period[0], s1 * period[1], s2 * period[2]};
        Box shifted;
        for (int a = 0; a < 3; ++a) {
          shifted.lo[a] = from.lo[a] + offset[a];
          shifted.hi[a] = from.hi[a] + offset[a];
        }
        const Box overlap = intersect(shifted, to);
        if (!overlap.empty()) visit(overlap, offset);
      }
}

// data[:, lo0:lo0+n0, lo1:lo1+n1, lo2:lo2+n2, ...]
torch::Tensor window(const torch::Tensor& data, const Index3& start, const Index3& size) {
  return data.index({Slice(), Slice(start[0], start[0] + size[0]),
                     Slice(start[1], start[1] + size[1]), Slice(start[2], start[2] + size[2])});
}

std::vector<int64_t> shape_with(const torch::Tensor& data, const Index3& spatial) {
  std::vector<int64_t> shape{data.size(0), spatial[0], spatial[1], spatial[2]};
  for (int64_t d = 4; d < data.dim(); ++d) shape.push_back(data.size(d));
  return shape;
}

}  // namespace

int64_t Box::volume() const {
  int64_t v = 1;
  for (int a = 0; a < 3; ++a) v *= std::max<int64_t>(0, hi[a] - lo[a]);
  return v;
}

Box intersect(const Box& a, const Box& b) {
  Box out;
  for (int k = 0; k < 3; ++k) {
    out.lo[k] = std::max(a.lo[k], b.lo[k]);
    out.hi[k] = std::max(out.lo[k], std::min(a.hi[k], b.hi[k]));
  }
  return out;
}

std::pair<int64_t, int64_t> block(int64_t n, int64_t parts, int64_t index) {
  return {n * index / parts, n * (index + 1) / parts};
}

std::vector<Box> gather_boxes(Communicator& comm, const Box& mine) {
  const auto flat = comm.all_gather_ints(
      {mine.lo[0], mine.lo[1], mine.lo[2], mine.hi[0], mine.hi[1], mine.hi[2]});
  std::vector<Box> boxes(flat.size() / 6);
  for (size_t r = 0; r < boxes.size(); ++r)
    for (int a = 0; a < 3; ++a) {
      boxes[r].lo[a] = flat[6 * r + a];
      boxes[r].hi[a] = flat[6 * r + 3 + a];
    }
  return boxes;
}

torch::Tensor remap(Communicator& comm, const torch::Tensor& data, const std::vector<Box>& from_all,
                    const std::vector<Box>& to_all, const Index3& period) {
  const int ranks = comm.size();
  const int me = comm.rank();
  const Box& from = from_all[me];
  const Box& to = to_all[me];
  // what this rank sends to each rank: its overlapping pieces, flattened, in order
  std::vector<torch::Tensor> sends(ranks);
  for (int destination = 0; destination < ranks; ++destination) {
    std::vector<torch::Tensor> pieces;
    for_each_overlap(from, to_all[destination], period,
                     [&](const Box& overlap, const Index3& offset) {
                       Index3 start;
                       for (int a = 0; a < 3; ++a)
                         start[a] = overlap.lo[a] - offset[a] - from.lo[a];
                       pieces.push_back(window(data, start, overlap.shape()).reshape({-1}));
                     });
    sends[destination] = pieces.empty() ? torch::zeros({0}, data.options()) : torch::cat(pieces);
  }
  auto received = comm.all_to_all(sends);
  auto out = torch::zeros(shape_with(data, to.shape()), data.options());
  for (int source = 0; source < ranks; ++source) {
    int64_t offset_in_message = 0;
    const auto& message = received[source];
    for_each_overlap(from_all[source], to, period, [&](const Box& overlap, const Index3&) {
      const auto shape = shape_with(data, overlap.shape());
      int64_t count = 1;
      for (auto s : shape) count *= s;
      Index3 start;
      for (int a = 0; a < 3; ++a) start[a] = overlap.lo[a] - to.lo[a];
      window(out, start, overlap.shape())
          .add_(message.narrow(0, offset_in_message, count).view(shape).to(data.options()));
      offset_in_message += count;
    });
    if (offset_in_message != message.numel())
      throw Error("internal: mesh remap received " + std::to_string(message.numel()) +
                  " values from rank " + std::to_string(source) + ", expected " +
                  std::to_string(offset_in_message));
  }
  return out;
}

namespace {

// The distinct intervals [lo, hi) of every axis among the boxes, sorted, when the boxes
// are exactly the products of them (a regular processor grid, as LAMMPS' domains are).
std::optional<std::array<std::vector<std::pair<int64_t, int64_t>>, 3>> regular_grid(
    const std::vector<Box>& boxes) {
  std::array<std::vector<std::pair<int64_t, int64_t>>, 3> intervals;
  for (int a = 0; a < 3; ++a) {
    for (const auto& box : boxes) intervals[a].emplace_back(box.lo[a], box.hi[a]);
    std::sort(intervals[a].begin(), intervals[a].end());
    intervals[a].erase(std::unique(intervals[a].begin(), intervals[a].end()), intervals[a].end());
  }
  if (intervals[0].size() * intervals[1].size() * intervals[2].size() != boxes.size())
    return std::nullopt;
  // every combination of intervals exactly once
  std::vector<std::array<int64_t, 3>> cells;
  for (const auto& box : boxes) {
    std::array<int64_t, 3> cell{};
    for (int a = 0; a < 3; ++a)
      cell[a] = std::find(intervals[a].begin(), intervals[a].end(),
                          std::make_pair(box.lo[a], box.hi[a])) -
                intervals[a].begin();
    cells.push_back(cell);
  }
  std::sort(cells.begin(), cells.end());
  if (std::adjacent_find(cells.begin(), cells.end()) != cells.end()) return std::nullopt;
  return intervals;
}

int64_t interval_index(const std::vector<std::pair<int64_t, int64_t>>& intervals, int64_t lo,
                       int64_t hi) {
  return std::find(intervals.begin(), intervals.end(), std::make_pair(lo, hi)) - intervals.begin();
}

}  // namespace

PencilPlan pencil_plan(const Index3& mesh, const std::vector<Box>& owned_all,
                       bool align_with_domains) {
  const auto ranks = static_cast<int64_t>(owned_all.size());
  PencilPlan plan;
  for (auto& layout : plan.layouts) layout.resize(ranks);
  // Domain-aligned pencils: when the owned parts form a grid that leaves some axis a
  // whole (a LAMMPS processor grid with one dimension 1: 1 x P, 2 x 2 x 1, ...), the first
  // pencils are the owned parts themselves (full along a), so the owned <-> pencil remaps
  // move nothing; each of the two transposes keeps one of the grid's splits and moves
  // only across the other (nothing at all where that split is 1).
  const auto grid = regular_grid(owned_all);
  int whole = -1;
  if (grid && align_with_domains) {
    for (int a = 0; a < 3 && whole < 0; ++a)
      if ((*grid)[a].size() == 1 && (*grid)[a][0] == std::pair<int64_t, int64_t>(0, mesh[a]))
        whole = a;
  }
  if (whole >= 0) {
    const int a = whole, b = (a + 1) % 3, c = (a + 2) % 3;
    plan.order = {a, b, c};
    const auto nb = static_cast<int64_t>((*grid)[b].size());
    const auto nc = static_cast<int64_t>((*grid)[c].size());
    for (int64_t r = 0; r < ranks; ++r) {
      const Box& owned = owned_all[r];
      const int64_t ib = interval_index((*grid)[b], owned.lo[b], owned.hi[b]);
      const int64_t ic = interval_index((*grid)[c], owned.lo[c], owned.hi[c]);
      const auto [a_lo, a_hi] = block(mesh[a], nb, ib);
      const auto [b_lo, b_hi] = block(mesh[b], nc, ic);
      plan.layouts[0][r] = owned;  // full along a; b and c as the domains
      Box second = owned;          // full along b; a split as b was, c unchanged
      second.lo[a] = a_lo, second.hi[a] = a_hi;
      second.lo[b] = 0, second.hi[b] = mesh[b];
      Box third = second;  // full along c; b split as c was
      third.lo[b] = b_lo, third.hi[b] = b_hi;
      third.lo[c] = 0, third.hi[c] = mesh[c];
      plan.layouts[1][r] = second;
      plan.layouts[2][r] = third;
    }
  } else {
    // otherwise pencils along x, y, z on a process grid as square as the rank count allows
    plan.order = {0, 1, 2};
    int64_t rows = 1;
    for (int64_t d = 1; d * d <= ranks; ++d)
      if (ranks % d == 0) rows = d;
    const int64_t columns = ranks / rows;
    for (int64_t r = 0; r < ranks; ++r) {
      const int64_t r1 = r / columns, r2 = r % columns;
      const auto [x1, y1] = block(mesh[1], rows, r1);
      const auto [x2, y2] = block(mesh[2], columns, r2);
      const auto [x0, y0] = block(mesh[0], rows, r1);
      const auto [w1, z1] = block(mesh[1], columns, r2);
      plan.layouts[0][r] = Box{{0, x1, x2}, {mesh[0], y1, y2}};
      plan.layouts[1][r] = Box{{x0, 0, x2}, {y0, mesh[1], y2}};
      plan.layouts[2][r] = Box{{x0, w1, 0}, {y0, z1, mesh[2]}};
    }
  }
  return plan;
}

int64_t remap_values_sent(const std::vector<Box>& from_all, const std::vector<Box>& to_all,
                          const Index3& period, int rank) {
  int64_t values = 0;
  for (int destination = 0; destination < static_cast<int>(to_all.size()); ++destination) {
    if (destination == rank) continue;
    for_each_overlap(from_all[rank], to_all[destination], period,
                     [&](const Box& overlap, const Index3&) { values += overlap.volume(); });
  }
  return values;
}

std::vector<double> pme_bytes_sent(const Index3& mesh, int64_t ranks, int64_t order,
                                   int64_t channels, const std::vector<int64_t>& visits_out,
                                   const std::vector<int64_t>& visits_in, int64_t value_bytes,
                                   int whole_axis) {
  if (static_cast<int64_t>(visits_out.size()) != ranks ||
      static_cast<int64_t>(visits_in.size()) != ranks)
    throw Error("pme_bytes_sent: one count of visits out and in per rank");
  const auto layout = owned_mesh_layout(mesh, ranks, order, whole_axis);
  const auto plan = pencil_plan(mesh, layout.owned);
  const int64_t complex_pairs = (channels + 1) / 2;
  std::vector<double> bytes(ranks, 0.0);
  for (int r = 0; r < static_cast<int>(ranks); ++r) {
    // one convolution: owned -> three pencils and back (complex pairs); the owned parts
    // are the first pencils, so the first step moves nothing
    double values = 0.0;
    const std::array<const std::vector<Box>*, 4> chain{&layout.owned, &plan.layouts[0],
                                                       &plan.layouts[1], &plan.layouts[2]};
    for (int step = 0; step < 3; ++step) {
      values += 2.0 * static_cast<double>(complex_pairs) *
                static_cast<double>(remap_values_sent(*chain[step], *chain[step + 1], mesh, r) +
                                    remap_values_sent(*chain[step + 1], *chain[step], mesh, r));
    }
    values *= 2.0;  // two convolutions
    // the visiting atoms: positions and charges there, partial potentials back; their
    // gradients there, gradients of positions and charges back
    const auto per_visit = static_cast<double>(3 + 2 * channels);
    values += per_visit * static_cast<double>(visits_out[r] + visits_in[r]);
    bytes[r] = static_cast<double>(value_bytes) * values;
  }
  return bytes;
}

namespace {
// Calls visit(start in from's data, start in to's data, shape) for every periodic image
// of box `from` that overlaps box `to` (fold sums pieces one way, unfold copies back).
template <typename Visit>
void for_each_piece(const Box& from, const Box& to, const Index3& period, Visit&& visit) {
  for_each_overlap(from, to, period, [&](const Box& overlap, const Index3& offset) {
    Index3 in_from, in_to;
    for (int a = 0; a < 3; ++a) {
      in_from[a] = overlap.lo[a] - offset[a] - from.lo[a];
      in_to[a] = overlap.lo[a] - to.lo[a];
    }
    visit(in_from, in_to, overlap.shape());
  });
}
}  // namespace

torch::Tensor fold(const torch::Tensor& data, const Box& from, const Box& to,
                   const Index3& period) {
  auto out = torch::zeros(shape_with(data, to.shape()), data.options());
  for_each_piece(from, to, period,
                 [&](const Index3& in_from, const Index3& in_to, const Index3& shape) {
                   window(out, in_to, shape).add_(window(data, in_from, shape));
                 });
  return out;
}

torch::Tensor unfold(const torch::Tensor& data, const Box& to, const Box& from,
                     const Index3& period) {
  auto out = torch::zeros(shape_with(data, from.shape()), data.options());
  for_each_piece(from, to, period,
                 [&](const Index3& in_from, const Index3& in_to, const Index3& shape) {
                   window(out, in_from, shape).copy_(window(data, in_to, shape));
                 });
  return out;
}

MeshLayout owned_mesh_layout(const Index3& mesh, int64_t ranks, int64_t order, int whole_axis) {
  if (whole_axis < 0 || whole_axis > 2) throw Error("owned_mesh_layout: whole_axis is 0, 1 or 2");
  MeshLayout layout;
  layout.whole_axis = whole_axis;
  const int w = whole_axis, s1 = (w + 1) % 3, s2 = (w + 2) % 3;
  // the FFT's later steps split axis w p_s1 ways and axis s1 p_s2 ways (pencil_plan)
  auto fits = [&](int64_t d, int64_t e) {
    return d <= mesh[s1] && d <= mesh[w] && e <= mesh[s2] && e <= mesh[s1];
  };
  int64_t p_s1 = 0;
  if (fits(1, ranks) && mesh[s2] >= ranks * order) {
    p_s1 = 1;  // slabs a stencil thick or more
  } else {
    // pencils: the square-most grid whose blocks and transposes are not empty
    for (int64_t d = 1; d <= ranks; ++d) {
      if (ranks % d != 0 || !fits(d, ranks / d)) continue;
      if (p_s1 == 0 || std::max(d, ranks / d) < std::max(p_s1, ranks / p_s1)) p_s1 = d;
    }
  }
  if (p_s1 == 0)
    throw Error("PME over " + std::to_string(ranks) + " ranks needs more mesh points than " +
                std::to_string(mesh[0]) + " x " + std::to_string(mesh[1]) + " x " +
                std::to_string(mesh[2]) +
                " (every rank holds a non-empty pencil): use fewer ranks, a larger system, "
                "or long_range ewald");
  layout.parts[s1] = p_s1;
  layout.parts[s2] = ranks / p_s1;
  for (int64_t r = 0; r < ranks; ++r) {
    Box box{{0, 0, 0}, mesh};
    std::tie(box.lo[s1], box.hi[s1]) = block(mesh[s1], layout.parts[s1], r / layout.parts[s2]);
    std::tie(box.lo[s2], box.hi[s2]) = block(mesh[s2], layout.parts[s2], r % layout.parts[s2]);
    layout.owned.push_back(box);
  }
  return layout;
}

int64_t MeshVisits::total() const {
  int64_t count = 0;
  for (const auto& list : atoms) count += static_cast<int64_t>(list.size());
  return count;
}

MeshVisits mesh_visits(const torch::Tensor& mesh_coordinates, const Index3& mesh,
                       const MeshLayout& layout, int64_t order) {
  const auto ranks = static_cast<int64_t>(layout.owned.size());
  const int w = layout.whole_axis, s1 = (w + 1) % 3, s2 = (w + 2) % 3;
  MeshVisits visits;
  visits.atoms.resize(ranks);
  visits.shifts.resize(ranks);
  // the block of each mesh index along the split axes
  const auto& parts = layout.parts;
  std::array<std::vector<int64_t>, 3> block_of;
  for (int a = 0; a < 3; ++a) {
    if (parts[a] == 1) continue;
    block_of[a].resize(mesh[a]);
    for (int64_t j = 0; j < parts[a]; ++j) {
      const auto [lo, hi] = block(mesh[a], parts[a], j);
      for (int64_t m = lo; m < hi; ++m) block_of[a][m] = j;
    }
  }
  const auto u = mesh_coordinates.to(torch::kFloat64).contiguous();
  const auto n = u.size(0);
  const double* data = u.data_ptr<double>();
  // (block, cells shifted) pairs of one atom along each axis
  std::array<std::vector<std::pair<int64_t, int64_t>>, 3> entries;
  auto add = [&](int a, int64_t index) {
    const int64_t cells = floor_div(index, mesh[a]);
    const int64_t j = block_of[a][index - cells * mesh[a]];
    for (const auto& entry : entries[a])
      if (entry.first == j) return;
    entries[a].emplace_back(j, cells);
  };
  for (int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < 3; ++a) {
      const double value = data[3 * i + a];
      // NaN, or so far from the cell that floor(u) is no exact integer
      if (!(std::abs(value) < 4.5e15))
        throw Error("PME: atom " + std::to_string(i) +
                    " has a non-finite position or one too far outside the cell (mesh "
                    "coordinate " +
                    std::to_string(value) + ")");
      const auto first = static_cast<int64_t>(std::floor(value));
      entries[a].clear();
      if (parts[a] == 1) {  // one block: the image that holds floor(u)
        entries[a].emplace_back(0, floor_div(first, mesh[a]));
        continue;
      }
      // the stencil's own points first, so that a block's image is one the stencil
      // reaches (compact bricks), then one more each side against rounding
      for (int64_t index = first - order + 1; index <= first; ++index) add(a, index);
      add(a, first - order);
      add(a, first + 1);
    }
    for (const auto& [j1, cells1] : entries[s1])
      for (const auto& [j2, cells2] : entries[s2]) {
        Index3 cells{};
        cells[w] = entries[w][0].second;
        cells[s1] = cells1;
        cells[s2] = cells2;
        const int64_t rank = j1 * parts[s2] + j2;
        visits.atoms[rank].push_back(i);
        visits.shifts[rank].insert(visits.shifts[rank].end(), cells.begin(), cells.end());
      }
  }
  return visits;
}

MeshFFT::MeshFFT(Communicator& comm, const Index3& mesh, const std::vector<Box>& owned_all)
    : comm_(comm), mesh_(mesh) {
  auto plan = pencil_plan(mesh, owned_all);
  order_ = plan.order;
  all_pencils_ = std::move(plan.layouts);
  for (int step = 0; step < 3; ++step) pencils_[step] = all_pencils_[step][comm.rank()];
}

namespace {
torch::Tensor remap_complex(Communicator& comm, const torch::Tensor& data,
                            const std::vector<Box>& from_all, const std::vector<Box>& to_all,
                            const Index3& period) {
  auto moved = remap(comm, torch::view_as_real(data.contiguous()), from_all, to_all, period);
  return torch::view_as_complex(moved.contiguous());
}
}  // namespace

torch::Tensor MeshFFT::forward(const torch::Tensor& owned, const std::vector<Box>& owned_all) {
  auto real = owned;
  if (real.size(0) % 2 == 1) real = torch::cat({real, torch::zeros_like(real.slice(0, 0, 1))});
  auto packed = torch::complex(real.slice(0, 0, real.size(0), 2).contiguous(),
                               real.slice(0, 1, real.size(0), 2).contiguous());
  auto x = remap_complex(comm_, packed, owned_all, all_pencils_[0], mesh_);
  x = torch::fft::fft(x, c10::nullopt, 1 + order_[0]);
  x = remap_complex(comm_, x, all_pencils_[0], all_pencils_[1], mesh_);
  x = torch::fft::fft(x, c10::nullopt, 1 + order_[1]);
  x = remap_complex(comm_, x, all_pencils_[1], all_pencils_[2], mesh_);
  return torch::fft::fft(x, c10::nullopt, 1 + order_[2]);
}

torch::Tensor MeshFFT::inverse(const torch::Tensor& spectrum, const std::vector<Box>& owned_all,
                               int64_t channels) {
  auto x = torch::fft::ifft(spectrum, c10::nullopt, 1 + order_[2], "forward");
  x = remap_complex(comm_, x, all_pencils_[2], all_pencils_[1], mesh_);
  x = torch::fft::ifft(x, c10::nullopt, 1 + order_[1], "forward");
  x = remap_complex(comm_, x, all_pencils_[1], all_pencils_[0], mesh_);
  x = torch::fft::ifft(x, c10::nullopt, 1 + order_[0], "forward");
  x = remap_complex(comm_, x, all_pencils_[0], owned_all, mesh_);
  auto real = torch::stack({torch::real(x), torch::imag(x)}, 1);  // [C2, 2, ...]
  real = real.reshape({2 * x.size(0), x.size(1), x.size(2), x.size(3)});
  return real.slice(0, 0, channels);
}

}  // namespace lorem
