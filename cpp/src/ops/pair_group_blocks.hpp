// The device kernel of pair_form's node sum and edge gradients by groups (docs/design.md
// section 1.11): one thread block per centre atom goes through the centre's edges one pair
// type at a time (a group, as the CPU kernel of pair_form_ops.cpp takes them) and through
// one [R, (L+1)^2] matrix per group in shared memory,
//
//   node sum:        B[r, m] = sum_{p in group} radial[p, r] Y[p, m]
//                    out[i, m, c] += sum_r B[r, m] table[t, r, l(m), c]
//   edge gradients:  H[r, m] = sum_c table[t, r, l(m), c] G[i, m, c]
//                    d_radial[p, r] = sum_m Y[p, m] H[r, m],  d_Y[p, m] = sum_r radial[p, r] H[r,
//                    m]
//
// so an edge costs R (L+1)^2 multiply-adds per target and a group R (L+1)^2 s, where the
// sparse-form threads (sparse_form_threads.hpp) spend R (L+1)^2 s per edge. Every output
// value is written by one work item of one block: no atomics, the same sums every run.
//
// The block's work is a sequence of phases, each a set of independent work items k in
// [0, n) and a barrier after it. The phases are plain C++ here; `for_each(n, item)` runs
// them: on CUDA the block's threads take k = threadIdx.x, + blockDim.x, ... and meet at
// __syncthreads() (pair_group_cuda.cu), on the CPU one item after another (what the tests
// hold to the CPU kernel of pair_form).
#pragma once

#include <cstdint>

#include "sparse_form_threads.hpp"  // LOREM_HOST_DEVICE

namespace lorem::pair_groups {

template <typename T>
struct PairGroups {
  const T* radial = nullptr;           // [P, R]; may be absent when only d_radial is asked
  const T* table = nullptr;            // [T, R, D, S]
  const T* harmonics = nullptr;        // [P, M]; may be absent when only d_Y is asked
  const T* node_grad = nullptr;        // [N, M, S]: the edge gradients' G
  const int64_t* pair_type = nullptr;  // [P]
  const int64_t* order = nullptr;      // [P] the edges by centre, then by pair type
  const int64_t* offsets = nullptr;    // [N + 1]: centre i's edges are order[offsets[i] ..
                                       // offsets[i + 1])
  bool node_sum = false;               // the node sum (nodes), else the edge gradients
  T* nodes = nullptr;                  // [N, M, S] the node sum
  T* d_radial = nullptr;               // [P, R], or null
  T* d_harmonics = nullptr;            // [P, M], or null
  int64_t num_nodes = 0, R = 0, D = 0, M = 0, S = 0;
};

// Shared values a block needs: the group's matrix [R, M].
template <typename T>
LOREM_HOST_DEVICE inline int64_t block_scratch(const PairGroups<T>& g) {
  return g.R * g.M;
}

LOREM_HOST_DEVICE inline int64_t degree_of(int64_t m) {
  int64_t l = 0;
  while ((l + 1) * (l + 1) <= m) ++l;
  return l;
}

// Centre i's block: `matrix` is its shared scratch. Every call of for_each is reached by
// the whole block (the loop bounds depend on i only), so its barriers match. The centre's
// node sums accumulate in its output row: item k of a node-sum phase is always value k.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename ForEach>
LOREM_HOST_DEVICE void centre_block(const PairGroups<T>& g, int64_t i, T* matrix,
                                    const ForEach& for_each) {
  const int64_t R = g.R, D = g.D, M = g.M, S = g.S;
  const int64_t begin = g.offsets[i], end = g.offsets[i + 1];
  const bool node_sum = g.node_sum;
  T* sums = node_sum ? g.nodes + i * M * S : nullptr;
  if (node_sum) for_each(M * S, [&](int64_t k) { sums[k] = T(0); });
  for (int64_t first = begin; first < end;) {
    const int64_t t = g.pair_type[g.order[first]];
    int64_t last = first + 1;
    while (last < end && g.pair_type[g.order[last]] == t) ++last;
    const T* table_t = g.table + t * R * D * S;
    if (node_sum) {
      for_each(R * M, [&](int64_t k) {  // B[r, m]
        const int64_t r = k / M, m = k % M;
        T b = T(0);
        for (int64_t q = first; q < last; ++q) {
          const int64_t p = g.order[q];
          b += g.radial[p * R + r] * g.harmonics[p * M + m];
        }
        matrix[k] = b;
      });
      for_each(M * S, [&](int64_t k) {  // sums[m, c] += B[:, m] . table[t, :, l(m), c]
        const int64_t m = k / S, c = k % S, l = degree_of(m);
        T s = sums[k];
        for (int64_t r = 0; r < R; ++r) s += matrix[r * M + m] * table_t[(r * D + l) * S + c];
        sums[k] = s;
      });
    } else {
      const T* G = g.node_grad + i * M * S;
      for_each(R * M, [&](int64_t k) {  // H[r, m]
        const int64_t r = k / M, m = k % M, l = degree_of(m);
        const T* row = table_t + (r * D + l) * S;
        T h = T(0);
        for (int64_t c = 0; c < S; ++c) h += row[c] * G[m * S + c];
        matrix[k] = h;
      });
      const int64_t n = last - first;
      const int64_t radial_items = g.d_radial ? n * R : 0;
      const int64_t harmonic_items = g.d_harmonics ? n * M : 0;
      for_each(radial_items + harmonic_items, [&](int64_t k) {
        if (k < radial_items) {  // d_radial[p, r] = H[r, :] . Y[p, :]
          const int64_t p = g.order[first + k / R], r = k % R;
          const T* y = g.harmonics + p * M;
          T v = T(0);
          for (int64_t m = 0; m < M; ++m) v += matrix[r * M + m] * y[m];
          g.d_radial[p * R + r] = v;
        } else {  // d_Y[p, m] = radial[p, :] . H[:, m]
          const int64_t j = k - radial_items;
          const int64_t p = g.order[first + j / M], m = j % M;
          const T* rad = g.radial + p * R;
          T v = T(0);
          for (int64_t r = 0; r < R; ++r) v += rad[r] * matrix[r * M + m];
          g.d_harmonics[p * M + m] = v;
        }
      });
    }
    first = last;
  }
}

// The GPU launch (pair_group_cuda.cu, compiled when LOREM_CUDA_KERNELS is on): one block
// per centre, `scratch_bytes` of shared memory each; nullptr or the CUDA error's text.
template <typename T>
const char* launch_on_cuda(const PairGroups<T>& groups, int64_t scratch_bytes, void* stream);

// The most shared memory a block may ask for without opting in (48 KiB on every GPU).
constexpr int64_t kMaxScratchBytes = 48 * 1024;

}  // namespace lorem::pair_groups
