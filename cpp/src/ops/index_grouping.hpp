// Edges (or pairs) grouped by the atom they write to, so that the CPU kernels of the
// operators that sum onto atoms (message_ops.cpp, pair_sum_ops.cpp) give each thread
// whole output rows.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace lorem::grouping {

// Every index in [0, num_atoms), else an error naming the operator, the index tensor,
// the position and the value.
inline void check_range(const char* op, const torch::Tensor& index, int64_t num_atoms,
                        const char* name) {
  const int64_t* key = index.data_ptr<int64_t>();
  for (int64_t p = 0; p < index.size(0); ++p)
    TORCH_CHECK(0 <= key[p] && key[p] < num_atoms, op, ": ", name, "[", p, "] = ", key[p],
                " is outside [0, ", num_atoms, ")");
}

// A counting sort by atom (stable, so a sorted index gives the identity order):
// offsets [atoms + 1], order [edges]. The keys must have passed check_range.
struct Grouping {
  std::vector<int64_t> offsets, order;
};

inline Grouping group_by(const torch::Tensor& index, int64_t num_atoms) {
  const int64_t* key = index.data_ptr<int64_t>();
  const int64_t n = index.size(0);
  Grouping g;
  g.offsets.assign(num_atoms + 1, 0);
  for (int64_t p = 0; p < n; ++p) ++g.offsets[key[p] + 1];
  for (int64_t a = 0; a < num_atoms; ++a) g.offsets[a + 1] += g.offsets[a];
  g.order.resize(n);
  std::vector<int64_t> cursor(g.offsets.begin(), g.offsets.end() - 1);
  for (int64_t p = 0; p < n; ++p) g.order[cursor[key[p]]++] = p;
  return g;
}

}  // namespace lorem::grouping
