// The first block's sum from the species-pair table as one multilinear form, on CPU
// (docs/design.md section 1.2):
//
//   F(radial, table, Y, G) = sum_p sum_{r, m, c} radial[p, r] table[t_p, r, l(m), c]
//                                                Y[p, m] G[i_p, m, c]
//
// radial [P, R], table [T, R, L+1, s], harmonics Y [P, (L+1)^2], node gradient G
// [N, (L+1)^2, s]; t_p = pair_type[p] and i_p = centers[p] are fixed. The first block's
// spherical sum is dF/dG: out[i, m, c] = sum_{p: i_p = i} Y[p, m] (radial[p] @
// table[t_p])[l(m), c]. `pair_form(target, ...)` returns dF/d(target) from the other three
// (multilinear_form.hpp), so its backward is itself and every order of derivatives is
// covered; `pair_form_adjoints` returns the backward of the sum, the three derivatives in
// radial, table and Y for a given G, in one pass.
//
// The kernels group the edges by centre and, within a centre, by pair type, and go through
// two [R, (L+1)^2] matrices per group (below): no [P, (L+1) s] coefficients, no edge rows
// gathered and scattered by pair type over the whole edge list (where the blocked path of
// edges_to_nodes_by_pair_type, which other devices keep, spent most of its time).
// edges_to_nodes_by_pair_type calls it for CPU tensors, and for CUDA tensors in a
// LOREM_CUDA_KERNELS build, where the device kernel of sparse_form_threads.hpp runs it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "channel_lanes.hpp"
#include "multilinear_form.hpp"
#include "pair_group_blocks.hpp"
#include "sparse_form_device.hpp"

#ifdef LOREM_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lorem {
namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kRadial = 0;
constexpr int64_t kTable = 1;
constexpr int64_t kHarmonics = 2;
constexpr int64_t kNodes = 3;
constexpr int64_t kNumFactors = 4;
constexpr const char* kNames[kNumFactors] = {"radial", "table", "harmonics", "node_grad"};
constexpr const char* kOp = "lorem::pair_form";

// body(std::integral_constant<int, n>) for n = count in 1..8 (8 for larger counts): the
// kernels' vector count as a compile-time constant, so that their accumulators are
// registers
template <typename Body>
void with_vector_count(int64_t count, Body&& body) {
  switch (count) {
    case 1:
      body(std::integral_constant<int, 1>{});
      break;
    case 2:
      body(std::integral_constant<int, 2>{});
      break;
    case 3:
      body(std::integral_constant<int, 3>{});
      break;
    case 4:
      body(std::integral_constant<int, 4>{});
      break;
    case 5:
      body(std::integral_constant<int, 5>{});
      break;
    case 6:
      body(std::integral_constant<int, 6>{});
      break;
    case 7:
      body(std::integral_constant<int, 7>{});
      break;
    default:
      body(std::integral_constant<int, 8>{});
  }
}

struct Sizes {
  int64_t P = 0, R = 0, T = 0, D = 0, S = 0, N = 0;
  int64_t M() const { return D * D; }
  int64_t DS() const { return D * S; }
};

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
  return out + "]";
}

// The factors (the target's slot from target_shape), checked against one another, and the
// fixed index tensors checked against them.
Sizes check(const std::array<std::vector<int64_t>, kNumFactors>& shapes, const Tensor& pair_type,
            const Tensor& centers, bool on_cpu = true) {
  const std::array<size_t, kNumFactors> ranks = {2, 4, 2, 3};
  for (int64_t k = 0; k < kNumFactors; ++k)
    TORCH_CHECK(shapes[k].size() == ranks[k], kOp, ": ", kNames[k], " must have ", ranks[k],
                " dimensions, got ", shape_string(shapes[k]));
  Sizes z;
  z.P = shapes[kRadial][0];
  z.R = shapes[kRadial][1];
  z.T = shapes[kTable][0];
  z.D = shapes[kTable][2];
  z.S = shapes[kTable][3];
  z.N = shapes[kNodes][0];
  const bool consistent = shapes[kTable][1] == z.R && shapes[kHarmonics][0] == z.P &&
                          shapes[kHarmonics][1] == z.M() && shapes[kNodes][1] == z.M() &&
                          shapes[kNodes][2] == z.S;
  TORCH_CHECK(consistent, kOp, ": inconsistent shapes: radial ", shape_string(shapes[kRadial]),
              ", table ", shape_string(shapes[kTable]), ", harmonics ",
              shape_string(shapes[kHarmonics]), ", node_grad ", shape_string(shapes[kNodes]));
  TORCH_CHECK(pair_type.dim() == 1 && pair_type.size(0) == z.P && centers.dim() == 1 &&
                  centers.size(0) == z.P && pair_type.scalar_type() == at::kLong &&
                  centers.scalar_type() == at::kLong,
              kOp, ": pair_type and centers must be [", z.P, "] int64, got ",
              shape_string(pair_type.sizes()), " and ", shape_string(centers.sizes()));
  if (!on_cpu) return z;  // the device kernel checks the ranges (sparse_form_device.cpp)
  TORCH_CHECK(pair_type.is_cpu() && centers.is_cpu(), kOp, ": CPU tensors only");
  const int64_t* t = pair_type.data_ptr<int64_t>();
  const int64_t* i = centers.data_ptr<int64_t>();
  for (int64_t p = 0; p < z.P; ++p) {
    TORCH_CHECK(t[p] >= 0 && t[p] < z.T, kOp, ": edge ", p, " has pair type ", t[p],
                ", outside the table's ", z.T);
    TORCH_CHECK(i[p] >= 0 && i[p] < z.N, kOp, ": edge ", p, " has centre ", i[p], ", outside the ",
                z.N, " atoms");
  }
  return z;
}

// The CPU kernels work per atom i and, within its edges, per pair type t (a group g of
// edges with the same centre and table row). Everything then factors through small
// matrices per group (M = (L+1)^2, l(m) the degree of component m, T_t = table[t]):
//   B[r, m] = sum_{p in g} radial[p, r] Y[p, m]            (node sum, table gradient)
//   H[r, m] = sum_c T_t[r, l(m), c] G[i, m, c]              (radial and harmonics gradients)
// node sum:  out[i, m, c] += sum_r B[r, m] T_t[r, l(m), c]
// radial:    d_radial[p, r] = sum_m Y[p, m] H[r, m]
// harmonics: d_Y[p, m] = sum_r radial[p, r] H[r, m]
// table:     d_table[t, r, l, c] += sum_{m of degree l} B[r, m] G[i, m, c]
// so each edge costs R x M multiply-adds per target and each group R x M x s. The loops
// run over vectors of 8 values along m (padded to Mp, a multiple of 8) or r, four
// accumulators at a time, and are compiled for x86-64-v3 as well (channel_lanes.hpp).
// The table is laid out once per call as Tm[t, r, c, m] = T_t[r, l(m), c].
template <typename scalar_t>
struct Groups {
  static constexpr int kLanes = 8;
  using L = Lanes<scalar_t, kLanes>;
  using V = typename L::Vector;

  const scalar_t* radial = nullptr;     // [P, R]
  const scalar_t* harmonics = nullptr;  // [P, M]
  const scalar_t* G = nullptr;          // [N, M, S]
  const int64_t* pair_type = nullptr;
  Sizes z;
  int64_t Mp = 0, Rp = 0;         // M and R rounded up to whole vectors
  int64_t max_group = 0;          // the most edges of one atom
  std::vector<scalar_t> table_m;  // Tm [T, R, S, Mp]
  std::vector<int64_t> offsets;   // the edges of atom i: order[offsets[i] .. offsets[i + 1])
  std::vector<int64_t> order;     // by centre, then by pair type

  Groups(const scalar_t* radial_in, const scalar_t* table, const scalar_t* harmonics_in,
         const scalar_t* G_in, const int64_t* pair_type_in, const int64_t* centers,
         const Sizes& sizes)
      : radial(radial_in), harmonics(harmonics_in), G(G_in), pair_type(pair_type_in), z(sizes) {
    const int64_t M = z.M(), S = z.S, D = z.D, R = z.R;
    Mp = (M + kLanes - 1) / kLanes * kLanes;
    Rp = (R + kLanes - 1) / kLanes * kLanes;
    if (table) {
      table_m.assign(z.T * R * S * Mp, scalar_t(0));
      for (int64_t t = 0; t < z.T; ++t)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < S; ++c)
            for (int64_t l = 0; l < D; ++l)
              for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m)
                table_m[((t * R + r) * S + c) * Mp + m] = table[((t * R + r) * D + l) * S + c];
    }
    offsets.assign(z.N + 1, 0);
    for (int64_t p = 0; p < z.P; ++p) ++offsets[centers[p] + 1];
    for (int64_t i = 0; i < z.N; ++i) {
      max_group = std::max(max_group, offsets[i + 1]);
      offsets[i + 1] += offsets[i];
    }
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    order.resize(z.P);
    for (int64_t p = 0; p < z.P; ++p) order[next[centers[p]]++] = p;
    at::parallel_for(0, z.N, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        std::stable_sort(order.begin() + offsets[i], order.begin() + offsets[i + 1],
                         [&](int64_t a, int64_t b) { return pair_type[a] < pair_type[b]; });
    });
  }

  // Per thread: B or H [R, Mp], HT [M, Rp], GT [S, Mp], node sums [S, Mp], and the group's
  // rows: radial [n, R] and harmonics [n, Mp] (padded), outputs [n, Rp] and [n, Mp].
  struct Scratch {
    std::vector<scalar_t> matrix, transposed, gt, sums, rad, y, out_r, out_y;
  };
  Scratch scratch() const {
    Scratch s;
    s.matrix.assign(z.R * Mp, scalar_t(0));
    s.transposed.assign(z.M() * Rp, scalar_t(0));
    s.gt.assign(z.S * Mp, scalar_t(0));
    s.sums.assign(z.S * Mp, scalar_t(0));
    s.rad.assign(std::max<int64_t>(max_group, 1) * z.R, scalar_t(0));
    s.y.assign(std::max<int64_t>(max_group, 1) * Mp, scalar_t(0));
    s.out_r.assign(std::max<int64_t>(max_group, 1) * Rp, scalar_t(0));
    s.out_y.assign(std::max<int64_t>(max_group, 1) * Mp, scalar_t(0));
    return s;
  }

  // the group's edges order[first, last) as contiguous rows (harmonics padded with zeros)
  void gather(int64_t first, int64_t last, Scratch& s) const {
    const int64_t M = z.M(), R = z.R;
    for (int64_t k = first; k < last; ++k) {
      const int64_t p = order[k], row = k - first;
      // the target's factor is absent (radial for d_radial, harmonics for d_Y)
      if (radial)
        for (int64_t r = 0; r < R; ++r) s.rad[row * R + r] = radial[p * R + r];
      if (harmonics)
        for (int64_t m = 0; m < M; ++m) s.y[row * Mp + m] = harmonics[p * M + m];
    }
  }

  // GT[c, m] = G[i, m, c], padded
  void node_gradient_t(int64_t i, scalar_t* gt) const {
    const int64_t M = z.M(), S = z.S;
    const scalar_t* g = G + i * M * S;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t c = 0; c < S; ++c) gt[c * Mp + m] = g[m * S + c];
  }

  // out[a, v] = sum_{k < K} x[a, k] * w[k, v] for a < rows and the vectors v < columns / 8:
  // x [rows, K] (stride x_stride), w [K, columns] (stride w_stride), out [rows, columns];
  // `accumulate` adds to out. Up to eight vectors of a row at once, their count fixed at
  // compile time so that the accumulators stay in registers.
  // Row a of x is x + x_index[a] * x_stride (a without an index), likewise for out: the
  // group's edges are read and written where they are, not gathered.
  void product(int64_t rows, int64_t K, int64_t columns, const scalar_t* x, int64_t x_stride,
               const scalar_t* w, int64_t w_stride, scalar_t* out, int64_t out_stride,
               bool accumulate, const int64_t* x_index = nullptr,
               const int64_t* out_index = nullptr) const {
    const int64_t vectors = columns / kLanes;
    for (int64_t v0 = 0; v0 < vectors; v0 += 8) {
      const int64_t count = std::min<int64_t>(8, vectors - v0);
      const scalar_t* wv = w + v0 * kLanes;
      scalar_t* ov = out + v0 * kLanes;
      with_vector_count(count, [&](auto vectors_fixed) {
        product_fixed<decltype(vectors_fixed)::value>(rows, K, x, x_stride, wv, w_stride, ov,
                                                      out_stride, accumulate, x_index, out_index);
      });
    }
  }

  template <int kVectors>
  LOREM_VECTOR_CLONES void product_fixed(int64_t rows, int64_t K, const scalar_t* x,
                                         int64_t x_stride, const scalar_t* w, int64_t w_stride,
                                         scalar_t* out, int64_t out_stride, bool accumulate,
                                         const int64_t* x_index, const int64_t* out_index) const {
    for (int64_t a = 0; a < rows; ++a) {
      const scalar_t* xa = x + (x_index ? x_index[a] : a) * x_stride;
      V acc[kVectors] = {};
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t xk = xa[k];
        const scalar_t* wk = w + k * w_stride;
#pragma GCC unroll 8
        for (int u = 0; u < kVectors; ++u) acc[u] += xk * L::load(wk + u * kLanes);
      }
      scalar_t* oa = out + (out_index ? out_index[a] : a) * out_stride;
#pragma GCC unroll 8
      for (int u = 0; u < kVectors; ++u)
        L::store(oa + u * kLanes, accumulate ? L::load(oa + u * kLanes) + acc[u] : acc[u]);
    }
  }

  // out[a, v] += sum_k x[k, a, v] * y[k, v] (elementwise along v): x [K, rows, columns]
  // with strides (x_k, x_a), y [K, columns] (stride y_k): the group terms
  void elementwise(int64_t rows, int64_t K, int64_t columns, const scalar_t* x, int64_t x_k,
                   int64_t x_a, const scalar_t* y, int64_t y_k, scalar_t* out,
                   int64_t out_stride) const {
    const int64_t vectors = columns / kLanes;
    for (int64_t v0 = 0; v0 < vectors; v0 += 8) {
      const int64_t count = std::min<int64_t>(8, vectors - v0);
      const int64_t shift = v0 * kLanes;
      with_vector_count(count, [&](auto vectors_fixed) {
        elementwise_fixed<decltype(vectors_fixed)::value>(rows, K, x + shift, x_k, x_a, y + shift,
                                                          y_k, out + shift, out_stride);
      });
    }
  }

  template <int kVectors>
  LOREM_VECTOR_CLONES void elementwise_fixed(int64_t rows, int64_t K, const scalar_t* x,
                                             int64_t x_k, int64_t x_a, const scalar_t* y,
                                             int64_t y_k, scalar_t* out, int64_t out_stride) const {
    for (int64_t a = 0; a < rows; ++a) {
      V acc[kVectors] = {};
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* xk = x + k * x_k + a * x_a;
        const scalar_t* yk = y + k * y_k;
#pragma GCC unroll 8
        for (int u = 0; u < kVectors; ++u)
          acc[u] += L::load(xk + u * kLanes) * L::load(yk + u * kLanes);
      }
      scalar_t* oa = out + a * out_stride;
#pragma GCC unroll 8
      for (int u = 0; u < kVectors; ++u)
        L::store(oa + u * kLanes, L::load(oa + u * kLanes) + acc[u]);
    }
  }

  // B [R, Mp] of the gathered group: B[r, :] = sum_p rad[p, r] y[p, :], as radT @ y
  void group_b(int64_t n, Scratch& s) const {
    const int64_t R = z.R;
    // rows r of B: x = rad^T, so x[r, p] = rad[p, r]: transpose the small block
    s.out_r.resize(std::max<int64_t>(s.out_r.size(), R * std::max<int64_t>(n, 1)));
    for (int64_t p = 0; p < n; ++p)
      for (int64_t r = 0; r < R; ++r) s.out_r[r * n + p] = s.rad[p * R + r];
    product(R, n, Mp, s.out_r.data(), n, s.y.data(), Mp, s.matrix.data(), Mp, false);
  }

  // H [R, Mp]: H[r, :] = sum_c Tm[t, r, c, :] GT[c, :]
  void group_h(int64_t t, Scratch& s) const {
    const int64_t R = z.R, S = z.S;
    std::fill(s.matrix.begin(), s.matrix.end(), scalar_t(0));
    elementwise(R, S, Mp, table_m.data() + t * R * S * Mp, Mp, S * Mp, s.gt.data(), Mp,
                s.matrix.data(), Mp);
  }

  // the node sum of atoms [begin, end) into out [N, M, S]
  void node_sums(int64_t begin, int64_t end, scalar_t* out) const {
    const int64_t M = z.M(), R = z.R, S = z.S;
    Scratch s = scratch();
    for (int64_t i = begin; i < end; ++i) {
      std::fill(s.sums.begin(), s.sums.end(), scalar_t(0));
      for_each_group(i, [&](int64_t t, int64_t first, int64_t last) {
        gather(first, last, s);
        group_b(last - first, s);
        // sums[c, :] += sum_r Tm[t, r, c, :] B[r, :]
        elementwise(S, R, Mp, table_m.data() + t * R * S * Mp, S * Mp, Mp, s.matrix.data(), Mp,
                    s.sums.data(), Mp);
      });
      scalar_t* node = out + i * M * S;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < S; ++c) node[m * S + c] = s.sums[c * Mp + m];
    }
  }

  // d_radial and d_harmonics (either may be null) of the edges of atoms [begin, end)
  void edge_gradients(int64_t begin, int64_t end, scalar_t* d_radial, scalar_t* d_y) const {
    const int64_t M = z.M(), R = z.R;
    Scratch s = scratch();
    for (int64_t i = begin; i < end; ++i) {
      if (offsets[i] == offsets[i + 1]) continue;
      node_gradient_t(i, s.gt.data());
      for_each_group(i, [&](int64_t t, int64_t first, int64_t last) {
        const int64_t n = last - first;
        const int64_t* edges = order.data() + first;
        group_h(t, s);
        if (d_radial) {
          // d_radial[p, :] = sum_m Y[p, m] HT[m, :], Y read in place
          for (int64_t r = 0; r < R; ++r)
            for (int64_t m = 0; m < M; ++m) s.transposed[m * Rp + r] = s.matrix[r * Mp + m];
          if (R == Rp) {
            product(n, M, Rp, harmonics, M, s.transposed.data(), Rp, d_radial, R, false, edges,
                    edges);
          } else {
            product(n, M, Rp, harmonics, M, s.transposed.data(), Rp, s.out_r.data(), Rp, false,
                    edges);
            for (int64_t k = 0; k < n; ++k)
              for (int64_t r = 0; r < R; ++r) d_radial[edges[k] * R + r] = s.out_r[k * Rp + r];
          }
        }
        if (d_y) {
          // d_y[p, :] = sum_r radial[p, r] H[r, :], radial read in place
          product(n, R, Mp, radial, R, s.matrix.data(), Mp, s.out_y.data(), Mp, false, edges);
          for (int64_t k = 0; k < n; ++k)
            for (int64_t m = 0; m < M; ++m) d_y[edges[k] * M + m] = s.out_y[k * Mp + m];
        }
      });
    }
  }

  // the table gradient of atoms [begin, end), added to d_table [T, R, D, S]
  void table_gradient(int64_t begin, int64_t end, scalar_t* d_table) const {
    const int64_t R = z.R, S = z.S, D = z.D;
    Scratch s = scratch();
    for (int64_t i = begin; i < end; ++i) {
      if (offsets[i] == offsets[i + 1]) continue;
      node_gradient_t(i, s.gt.data());
      for_each_group(i, [&](int64_t t, int64_t first, int64_t last) {
        gather(first, last, s);
        group_b(last - first, s);
        scalar_t* rows = d_table + t * R * D * S;
        if (S % kLanes == 0) {
          // per degree l: d_table[t, :, l, :] += B[:, l^2 : (l+1)^2] @ G[i, l^2 : (l+1)^2, :]
          const scalar_t* g = G + i * z.M() * S;
          for (int64_t l = 0; l < D; ++l)
            product(R, 2 * l + 1, S, s.matrix.data() + l * l, Mp, g + l * l * S, S, rows + l * S,
                    D * S, true);
          return;
        }
        for (int64_t r = 0; r < R; ++r) {
          const scalar_t* b = s.matrix.data() + r * Mp;
          for (int64_t c = 0; c < S; ++c) {
            const scalar_t* gt = s.gt.data() + c * Mp;
            for (int64_t l = 0; l < D; ++l) {
              scalar_t sum = 0;
              for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m) sum += b[m] * gt[m];
              rows[(r * D + l) * S + c] += sum;
            }
          }
        }
      });
    }
  }

  // the groups of atom i: [first, last) ranges of `order` with one pair type
  template <typename F>
  void for_each_group(int64_t i, F&& body) const {
    int64_t first = offsets[i];
    while (first < offsets[i + 1]) {
      const int64_t t = pair_type[order[first]];
      int64_t last = first + 1;
      while (last < offsets[i + 1] && pair_type[order[last]] == t) ++last;
      body(t, first, last);
      first = last;
    }
  }
};

// The table gradient over fixed chunks of atoms (at most 64, whatever the thread count),
// one partial sum each, added in chunk order: the same bits on any number of threads.
template <typename scalar_t>
void accumulate_table(const Groups<scalar_t>& g, scalar_t* d_table) {
  const int64_t size = g.z.T * g.z.R * g.z.DS();
  const int64_t per_chunk = std::max<int64_t>(256, (g.z.N + 63) / 64);
  const int64_t chunks = (g.z.N + per_chunk - 1) / per_chunk;
  std::vector<std::vector<scalar_t>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      partial[chunk].assign(size, scalar_t(0));
      g.table_gradient(chunk * per_chunk, std::min(g.z.N, (chunk + 1) * per_chunk),
                       partial[chunk].data());
    }
  });
  for (const auto& part : partial)
    for (int64_t k = 0; k < size; ++k) d_table[k] += part[k];
}

template <typename scalar_t>
Groups<scalar_t> groups_of(const std::array<Tensor, kNumFactors>& f, const Tensor& pair_type,
                           const Tensor& centers, const Sizes& z) {
  auto data = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
  return Groups<scalar_t>(data(f[kRadial]), data(f[kTable]), data(f[kHarmonics]), data(f[kNodes]),
                          pair_type.data_ptr<int64_t>(), centers.data_ptr<int64_t>(), z);
}

// the given factors, contiguous, of one dtype and device (on the CPU where asked); a slot
// left empty must be a target's, and takes its shape from target_shapes
std::array<Tensor, kNumFactors> load_factors(
    const std::array<OptionalTensor, kNumFactors>& given,
    const std::array<bool, kNumFactors>& targets,
    const std::array<std::vector<int64_t>, kNumFactors>& target_shapes,
    std::array<std::vector<int64_t>, kNumFactors>& shapes,
    std::optional<at::TensorOptions>& options, bool on_cpu) {
  std::array<Tensor, kNumFactors> factor;
  for (int64_t k = 0; k < kNumFactors; ++k) {
    if (!given[k].has_value() || !given[k]->defined()) {
      TORCH_CHECK(targets[k], kOp, ": ", kNames[k], " is missing");
      shapes[k] = target_shapes[k];
      continue;
    }
    factor[k] = given[k]->contiguous();
    shapes[k] = factor[k].sizes().vec();
    if (!options) options = factor[k].options();
    TORCH_CHECK(factor[k].scalar_type() == options->dtype() &&
                    factor[k].device() == options->device() && (!on_cpu || factor[k].is_cpu()) &&
                    factor[k].is_floating_point(),
                kOp, ": every factor must be a ", on_cpu ? "CPU " : "",
                "floating-point tensor of one dtype and device (", kNames[k], " differs)");
  }
  return factor;
}

// the same for one target (none for -1), whose slot must be empty
std::array<Tensor, kNumFactors> factors_of(const std::array<OptionalTensor, kNumFactors>& given,
                                           int64_t target,
                                           std::array<std::vector<int64_t>, kNumFactors>& shapes,
                                           at::IntArrayRef target_shape,
                                           std::optional<at::TensorOptions>& options,
                                           bool on_cpu = true) {
  std::array<bool, kNumFactors> targets = {};
  std::array<std::vector<int64_t>, kNumFactors> target_shapes;
  if (target >= 0) {
    TORCH_CHECK(!given[target].has_value() || !given[target]->defined(), kOp,
                ": the target's slot (", kNames[target], ") must be None");
    targets[target] = true;
    target_shapes[target] = target_shape.vec();
  }
  return load_factors(given, targets, target_shapes, shapes, options, on_cpu);
}

Tensor pair_form_cpu(int64_t target, at::IntArrayRef target_shape, const OptionalTensor& radial,
                     const OptionalTensor& table, const OptionalTensor& harmonics,
                     const OptionalTensor& node_grad, const Tensor& pair_type_in,
                     const Tensor& centers_in) {
  TORCH_CHECK(0 <= target && target < kNumFactors, kOp, ": target ", target,
              " is not a factor slot (0..3)");
  std::array<std::vector<int64_t>, kNumFactors> shapes;
  std::optional<at::TensorOptions> options;
  const auto factor =
      factors_of({radial, table, harmonics, node_grad}, target, shapes, target_shape, options);
  const Tensor pair_type = pair_type_in.contiguous(), centers = centers_in.contiguous();
  const Sizes z = check(shapes, pair_type, centers);
  // the node sum and the table gradient accumulate; the per-edge targets write every row
  Tensor out = target == kNodes || target == kTable ? at::zeros(shapes[target], *options)
                                                    : at::empty(shapes[target], *options);
  if (z.P == 0 || out.numel() == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem_pair_form", [&] {
    const Groups<scalar_t> g = groups_of<scalar_t>(factor, pair_type, centers, z);
    scalar_t* o = out.data_ptr<scalar_t>();
    switch (target) {
      case kNodes:
        at::parallel_for(0, z.N, 16,
                         [&](int64_t begin, int64_t end) { g.node_sums(begin, end, o); });
        break;
      case kTable:
        accumulate_table(g, o);
        break;
      case kRadial:
        at::parallel_for(0, z.N, 16, [&](int64_t begin, int64_t end) {
          g.edge_gradients(begin, end, o, nullptr);
        });
        break;
      default:  // kHarmonics
        at::parallel_for(0, z.N, 16, [&](int64_t begin, int64_t end) {
          g.edge_gradients(begin, end, nullptr, o);
        });
    }
  });
  return out;
}

// The backward of the node sum: dF/d(radial, table, harmonics) for the node gradient G,
// each only where `needed`, from one adjoint and one set of coefficients per edge.
std::vector<Tensor> pair_form_adjoints_cpu(const Tensor& radial, const Tensor& table,
                                           const Tensor& harmonics, const Tensor& node_grad,
                                           const Tensor& pair_type_in, const Tensor& centers_in,
                                           std::array<bool, 3> needed) {
  std::array<std::vector<int64_t>, kNumFactors> shapes;
  std::optional<at::TensorOptions> options;
  const auto factor = factors_of({radial, table, harmonics, node_grad}, -1, shapes, {}, options);
  const Tensor pair_type = pair_type_in.contiguous(), centers = centers_in.contiguous();
  const Sizes z = check(shapes, pair_type, centers);
  Tensor d_radial = needed[0] ? at::empty(shapes[kRadial], *options) : Tensor();
  Tensor d_table = needed[1] ? at::zeros(shapes[kTable], *options) : Tensor();
  Tensor d_harmonics = needed[2] ? at::empty(shapes[kHarmonics], *options) : Tensor();
  if (z.P > 0) {
    AT_DISPATCH_FLOATING_TYPES(radial.scalar_type(), "lorem_pair_form_adjoints", [&] {
      const Groups<scalar_t> g = groups_of<scalar_t>(factor, pair_type, centers, z);
      if (needed[0] || needed[2]) {
        scalar_t* dr = needed[0] ? d_radial.data_ptr<scalar_t>() : nullptr;
        scalar_t* dy = needed[2] ? d_harmonics.data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, z.N, 16,
                         [&](int64_t begin, int64_t end) { g.edge_gradients(begin, end, dr, dy); });
      }
      if (needed[1]) accumulate_table(g, d_table.data_ptr<scalar_t>());
    });
  } else {
    if (needed[0]) d_radial.zero_();
    if (needed[2]) d_harmonics.zero_();
  }
  return {d_radial, d_table, d_harmonics};
}

// -- device kernels --

// The form as the threads of the sparse-form kernel (sparse_form_threads.hpp): on CUDA the
// compiled kernel, on the CPU its threads one after another (what the tests hold to the
// CPU kernel). The table is read as [T, R (L+1), s], row t_p; the entries are the pairs
// (r, m) with columns (r, r (L+1) + l(m), m, m). Members are the edges: the node sum takes
// the edges of one centre per thread, the table blocks of edges sorted by pair type (added
// atomically per type), the radial and harmonic gradients one edge per thread. Every
// target costs R (L+1)^2 s per edge; CUDA runs it for the table alone (pair_form_device).
Tensor pair_form_threads(int64_t target, at::IntArrayRef target_shape, const OptionalTensor& radial,
                         const OptionalTensor& table, const OptionalTensor& harmonics,
                         const OptionalTensor& node_grad, const Tensor& pair_type_in,
                         const Tensor& centers_in) {
  TORCH_CHECK(0 <= target && target < kNumFactors, kOp, ": target ", target,
              " is not a factor slot (0..3)");
  std::array<std::vector<int64_t>, kNumFactors> shapes;
  std::optional<at::TensorOptions> options;
  const auto factor = factors_of({radial, table, harmonics, node_grad}, target, shapes,
                                 target_shape, options, false);
  const Tensor pair_type = pair_type_in.contiguous(), centers = centers_in.contiguous();
  const Sizes z = check(shapes, pair_type, centers, false);
  TORCH_CHECK(pair_type.device() == options->device() && centers.device() == options->device(), kOp,
              ": pair_type and centers must be on the factors' device");
  std::vector<int64_t> rows;  // the entries (r, r D + l(m), m, m)
  for (int64_t r = 0; r < z.R; ++r)
    for (int64_t l = 0; l < z.D; ++l)
      for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m)
        rows.insert(rows.end(), {r, r * z.D + l, m, m});
  using namespace sparse_form;
  sparse_form::Problem form;
  form.op = kOp;
  form.target = target;
  form.target_shape = shapes[target];
  form.entries = torch::tensor(rows, torch::kLong).view({z.R * z.M(), 4});
  form.coupling = torch::ones({z.R * z.M()}, *options);
  form.channels = z.S;
  form.num_members = z.P;
  form.factors = {{factor[kRadial], Tensor(), "", z.P, kRowIsMember, 0, z.R, false},
                  {factor[kTable], pair_type, "pair_type", z.T, kRowGathered, 1, z.R * z.D, true},
                  {factor[kHarmonics], Tensor(), "", z.P, kRowIsMember, 2, z.M(), false},
                  {factor[kNodes], centers, "centers", z.N, kRowGathered, 3, z.M(), true}};
  if (target == kNodes) form.group_kind = kGroupListed;        // by centre
  if (target == kTable) form.group_kind = kGroupListedBlocks;  // by pair type
  return sparse_form::run(form);
}

// The node sum, or the radial and harmonic gradients together, by the group blocks of
// pair_group_blocks.hpp: on CUDA one thread block per centre, on the CPU the blocks one
// after another (their work items in order). `targets` holds kNodes alone, or kRadial
// and/or kHarmonics; each asked target is returned in its slot.
std::array<Tensor, kNumFactors> pair_form_groups(
    const std::array<OptionalTensor, kNumFactors>& given,
    const std::array<bool, kNumFactors>& targets,
    const std::array<std::vector<int64_t>, kNumFactors>& target_shapes, const Tensor& pair_type_in,
    const Tensor& centers_in) {
  TORCH_CHECK(!targets[kTable], kOp, ": the group blocks do not form the table's gradient");
  const bool node_sum = targets[kNodes];
  TORCH_CHECK(node_sum != (targets[kRadial] || targets[kHarmonics]), kOp,
              ": the group blocks form the node sum or the edge gradients, not both");
  // a target's slot may hold its factor: the other edge gradient reads it
  std::array<std::vector<int64_t>, kNumFactors> shapes;
  std::optional<at::TensorOptions> options;
  const auto factor = load_factors(given, targets, target_shapes, shapes, options, false);
  const Tensor pair_type = pair_type_in.contiguous(), centers = centers_in.contiguous();
  const Sizes z = check(shapes, pair_type, centers, false);
  TORCH_CHECK(pair_type.device() == options->device() && centers.device() == options->device(), kOp,
              ": pair_type and centers must be on the factors' device");
  // every row of an asked target is written below, unless there is nothing to sum
  const bool nothing = z.P == 0 || z.R == 0 || z.M() == 0;
  std::array<Tensor, kNumFactors> out;
  for (int64_t k = 0; k < kNumFactors; ++k)
    if (targets[k])
      out[k] = nothing ? at::zeros(shapes[k], *options) : at::empty(shapes[k], *options);
  if (z.P == 0) return out;
  const auto index_options = options->dtype(torch::kLong);
  sparse_form::check_indices(kOp, torch::empty({0, 0}, index_options), {},
                             {{pair_type, z.T, "pair_type"}, {centers, z.N, "centers"}});
  // nothing to write (no atoms, or no channels for the node sum)
  if (nothing || (node_sum ? out[kNodes].numel() == 0 : z.N == 0)) return out;
  // the edges by centre, then by pair type (stable: the same sums every run), and where
  // each centre's edges begin
  const auto [sorted_keys, order] = (centers * z.T + pair_type).sort(true, 0, false);
  const Tensor offsets =
      torch::searchsorted(sorted_keys.contiguous(), torch::arange(z.N + 1, index_options) * z.T);
  AT_DISPATCH_FLOATING_TYPES(options->dtype().toScalarType(), "lorem pair_form groups", [&] {
    auto data = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    pair_groups::PairGroups<scalar_t> g;
    g.radial = data(factor[kRadial]);
    g.table = data(factor[kTable]);
    g.harmonics = data(factor[kHarmonics]);
    g.node_grad = data(factor[kNodes]);
    g.pair_type = pair_type.data_ptr<int64_t>();
    g.order = order.data_ptr<int64_t>();
    g.offsets = offsets.data_ptr<int64_t>();
    g.node_sum = node_sum;
    g.nodes = data(out[kNodes]);
    g.d_radial = data(out[kRadial]);
    g.d_harmonics = data(out[kHarmonics]);
    g.num_nodes = z.N;
    g.R = z.R;
    g.D = z.D;
    g.M = z.M();
    g.S = z.S;
    const int64_t scratch = pair_groups::block_scratch(g);
    if (options->device().is_cuda()) {
#ifdef LOREM_CUDA_KERNELS
      const c10::cuda::CUDAGuard guard(options->device());
      const char* error =
          pair_groups::launch_on_cuda(g, scratch * static_cast<int64_t>(sizeof(scalar_t)),
                                      c10::cuda::getCurrentCUDAStream().stream());
      TORCH_CHECK(error == nullptr, kOp, ": the group-block CUDA kernel failed: ", error);
      return;
#else
      TORCH_CHECK(false, kOp, ": this library was built without its CUDA kernels (LOREM_CUDA_KERNELS)");
#endif
    }
    TORCH_CHECK(options->device().is_cpu(), kOp, ": the group blocks run on CUDA or the CPU");
    // the blocks are independent (each writes its centre's row and its own edges)
    at::parallel_for(0, z.N, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> shared(scratch);
      const auto one_by_one = [](int64_t n, const auto& item) {
        for (int64_t k = 0; k < n; ++k) item(k);
      };
      for (int64_t i = begin; i < end; ++i)
        pair_groups::centre_block(g, i, shared.data(), one_by_one);
    });
  });
  return out;
}

// Whether the group blocks serve this table [T, R, L+1, s]: its [R, (L+1)^2] matrix fits
// the shared memory of one block.
bool groups_serve(const Tensor& table) {
  if (table.dim() != 4) return false;
  const int64_t values = table.size(1) * table.size(2) * table.size(2);
  return values * static_cast<int64_t>(c10::elementSize(table.scalar_type())) <=
         pair_groups::kMaxScratchBytes;
}

// pair_form as CUDA runs it in a LOREM_CUDA_KERNELS build: the node sum and the edge
// gradients by the group blocks, the table's gradient (training only) by the sparse-form
// threads, as is any target whose group matrix would not fit a block's shared memory.
Tensor pair_form_device(int64_t target, at::IntArrayRef target_shape, const OptionalTensor& radial,
                        const OptionalTensor& table, const OptionalTensor& harmonics,
                        const OptionalTensor& node_grad, const Tensor& pair_type,
                        const Tensor& centers) {
  TORCH_CHECK(0 <= target && target < kNumFactors, kOp, ": target ", target,
              " is not a factor slot (0..3)");
  if (target != kTable && table.has_value() && table->defined() && groups_serve(*table)) {
    const std::array<OptionalTensor, kNumFactors> given = {radial, table, harmonics, node_grad};
    TORCH_CHECK(!given[target].has_value() || !given[target]->defined(), kOp,
                ": the target's slot (", kNames[target], ") must be None");
    std::array<bool, kNumFactors> targets = {};
    targets[target] = true;
    std::array<std::vector<int64_t>, kNumFactors> shapes;
    shapes[target] = target_shape.vec();
    return pair_form_groups(given, targets, shapes, pair_type, centers)[target];
  }
  return pair_form_threads(target, target_shape, radial, table, harmonics, node_grad, pair_type,
                           centers);
}

// pair_form_adjoints as CUDA runs it: the radial and harmonic gradients in one pass of the
// group blocks (one H per group for both), the table's by the sparse-form threads.
std::vector<Tensor> pair_form_adjoints_device(const Tensor& radial, const Tensor& table,
                                              const Tensor& harmonics, const Tensor& node_grad,
                                              const Tensor& pair_type, const Tensor& centers,
                                              std::array<bool, 3> needed) {
  const std::array<Tensor, kNumFactors> given = {radial, table, harmonics, node_grad};
  std::vector<Tensor> out(3);
  if ((needed[kRadial] || needed[kHarmonics]) && groups_serve(table)) {
    std::array<bool, kNumFactors> targets = {needed[kRadial], false, needed[kHarmonics], false};
    std::array<std::vector<int64_t>, kNumFactors> shapes;
    shapes[kRadial] = radial.sizes().vec();
    shapes[kHarmonics] = harmonics.sizes().vec();
    const auto edge = pair_form_groups({radial, table, harmonics, node_grad}, targets, shapes,
                                       pair_type, centers);
    out[kRadial] = edge[kRadial];
    out[kHarmonics] = edge[kHarmonics];
  }
  for (int64_t k = 0; k < 3; ++k) {
    if (!needed[k] || out[k].defined()) continue;
    std::array<OptionalTensor, kNumFactors> slots;
    for (int64_t q = 0; q < kNumFactors; ++q)
      slots[q] = q == k ? std::nullopt : OptionalTensor(given[q]);
    out[k] = pair_form_threads(k, given[k].sizes(), slots[0], slots[1], slots[2], slots[3],
                               pair_type, centers);
  }
  return out;
}

// -- autograd --

using multilinear::slot;

Tensor pair_form_call(int64_t target, at::IntArrayRef target_shape, const OptionalTensor& radial,
                      const OptionalTensor& table, const OptionalTensor& harmonics,
                      const OptionalTensor& node_grad, const Tensor& pair_type,
                      const Tensor& centers) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::pair_form", "")
                       .typed<decltype(pair_form_cpu)>();
  return op.call(target, target_shape, radial, table, harmonics, node_grad, pair_type, centers);
}

std::vector<Tensor> adjoints_call(const Tensor& radial, const Tensor& table,
                                  const Tensor& harmonics, const Tensor& node_grad,
                                  const Tensor& pair_type, const Tensor& centers,
                                  std::array<bool, 3> needed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::pair_form_adjoints", "")
                       .typed<decltype(pair_form_adjoints_cpu)>();
  return op.call(radial, table, harmonics, node_grad, pair_type, centers, needed);
}

class PairForm : public torch::autograd::Function<PairForm> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, int64_t target,
                        at::IntArrayRef target_shape, const OptionalTensor& radial,
                        const OptionalTensor& table, const OptionalTensor& harmonics,
                        const OptionalTensor& node_grad, const Tensor& pair_type,
                        const Tensor& centers) {
    multilinear::save<kNumFactors>(ctx, target, target_shape, {radial, table, harmonics, node_grad},
                                   {pair_type, centers});
    at::AutoDispatchBelowADInplaceOrView guard;
    return pair_form_call(target, target_shape, radial, table, harmonics, node_grad, pair_type,
                          centers);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::autograd::variable_list grads(2 + kNumFactors + 2);
    return multilinear::backward<kNumFactors>(
        ctx, grad_outputs[0], 2, grads,
        [](int64_t k, const std::vector<int64_t>& shape, const auto& args, const auto& fixed) {
          return pair_form_call(k, shape, args[0], args[1], args[2], args[3], fixed[0], fixed[1]);
        });
  }
};

Tensor pair_form_autograd(int64_t target, at::IntArrayRef target_shape,
                          const OptionalTensor& radial, const OptionalTensor& table,
                          const OptionalTensor& harmonics, const OptionalTensor& node_grad,
                          const Tensor& pair_type, const Tensor& centers) {
  return PairForm::apply(target, target_shape, radial, table, harmonics, node_grad, pair_type,
                         centers);
}

// The adjoints' outputs are pair_form(radial), pair_form(table) and pair_form(harmonics)
// of the same four factors, so their derivatives are pair_form again: for output o with
// incoming gradient v, the gradient of factor k is pair_form(k) with v in o's slot.
class PairFormAdjoints : public torch::autograd::Function<PairFormAdjoints> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const Tensor& radial, const Tensor& table,
                                                const Tensor& harmonics, const Tensor& node_grad,
                                                const Tensor& pair_type, const Tensor& centers,
                                                std::array<bool, 3> needed) {
    ctx->save_for_backward({radial, table, harmonics, node_grad, pair_type, centers});
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = adjoints_call(radial, table, harmonics, node_grad, pair_type, centers, needed);
    // outputs not asked for come back undefined; autograd wants tensors
    for (auto& t : out)
      if (!t.defined()) t = at::empty({0}, radial.options());
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    torch::autograd::variable_list grads(kNumFactors + 3);
    const std::array<int64_t, 3> slots = {kRadial, kTable, kHarmonics};
    for (int64_t o = 0; o < 3; ++o) {
      const Tensor& incoming = grad_outputs[o];
      if (!incoming.defined() || incoming.numel() == 0) continue;
      std::array<Tensor, kNumFactors> factors = {saved[0], saved[1], saved[2], saved[3]};
      factors[slots[o]] = incoming;
      for (int64_t k = 0; k < kNumFactors; ++k) {
        if (k == slots[o] || !ctx->needs_input_grad(k)) continue;
        std::array<OptionalTensor, kNumFactors> args;
        for (int64_t q = 0; q < kNumFactors; ++q)
          args[q] = q == k ? std::nullopt : slot(factors[q]);
        const Tensor term = pair_form_call(k, saved[k].sizes(), args[0], args[1], args[2], args[3],
                                           saved[4], saved[5]);
        grads[k] = grads[k].defined() ? grads[k] + term : term;
      }
    }
    return grads;
  }
};

std::vector<Tensor> pair_form_adjoints_autograd(const Tensor& radial, const Tensor& table,
                                                const Tensor& harmonics, const Tensor& node_grad,
                                                const Tensor& pair_type, const Tensor& centers,
                                                std::array<bool, 3> needed) {
  return PairFormAdjoints::apply(radial, table, harmonics, node_grad, pair_type, centers, needed);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  // target 0..3: radial, table, harmonics, node_grad (the first block's node sum)
  m.def(
      "pair_form(int target, int[] target_shape, Tensor? radial, Tensor? table, "
      "Tensor? harmonics, Tensor? node_grad, Tensor pair_type, Tensor centers) -> Tensor");
  m.def(
      "pair_form_adjoints(Tensor radial, Tensor table, Tensor harmonics, Tensor node_grad, "
      "Tensor pair_type, Tensor centers, bool[3] needed) -> Tensor[]");
  // the device kernels under their own names (CUDA: the compiled kernels; CPU: their
  // threads one after another, which the tests hold to the CPU kernel): pair_form as CUDA
  // runs it (the node sum and edge gradients by the group blocks, the table by the
  // sparse-form threads), the sparse-form threads for every target, and the adjoints as
  // CUDA runs them
  m.def(
      "_pair_form_device(int target, int[] target_shape, Tensor? radial, Tensor? table, "
      "Tensor? harmonics, Tensor? node_grad, Tensor pair_type, Tensor centers) -> Tensor");
  m.def(
      "_pair_form_threads_device(int target, int[] target_shape, Tensor? radial, Tensor? table, "
      "Tensor? harmonics, Tensor? node_grad, Tensor pair_type, Tensor centers) -> Tensor");
  m.def(
      "_pair_form_adjoints_device(Tensor radial, Tensor table, Tensor harmonics, "
      "Tensor node_grad, Tensor pair_type, Tensor centers, bool[3] needed) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("pair_form", &lorem::pair_form_cpu);
  m.impl("pair_form_adjoints", &lorem::pair_form_adjoints_cpu);
  m.impl("_pair_form_device", &lorem::pair_form_device);
  m.impl("_pair_form_threads_device", &lorem::pair_form_threads);
  m.impl("_pair_form_adjoints_device", &lorem::pair_form_adjoints_device);
}

#ifdef LOREM_CUDA_KERNELS
TORCH_LIBRARY_IMPL(lorem, CUDA, m) {
  m.impl("pair_form", &lorem::pair_form_device);
  m.impl("pair_form_adjoints", &lorem::pair_form_adjoints_device);
  m.impl("_pair_form_device", &lorem::pair_form_device);
  m.impl("_pair_form_threads_device", &lorem::pair_form_threads);
  m.impl("_pair_form_adjoints_device", &lorem::pair_form_adjoints_device);
}
#endif

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("pair_form", &lorem::pair_form_autograd);
  m.impl("pair_form_adjoints", &lorem::pair_form_adjoints_autograd);
}
