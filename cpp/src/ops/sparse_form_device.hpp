// The device kernel of the sparse multilinear forms as the operators call it (docs/design.md
// section 1.11): the tables every thread reads (entries sorted by the target's column,
// members grouped by the row they write), built with torch operations on the factors'
// device; the index checks; then the threads of sparse_form_threads.hpp, on CUDA as a
// kernel launch (built with LOREM_CUDA_KERNELS) and on the CPU one after another (what the
// tests hold to the CPU kernels).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "sparse_form_threads.hpp"

namespace lorem::sparse_form {

struct FactorSpec {
  torch::Tensor data;  // the factor, contiguous; undefined for the target
  torch::Tensor rows;  // kRowGathered: int64 [members], the factor's row of each member
  const char* rows_name = "";
  int64_t num_rows = 0;  // rows of the factor (of the output for the target)
  int32_t row_kind = kRowIsMember;
  int32_t column = 0;  // the entries' column of its component
  int64_t num_components = 0;
  bool has_channels = true;
};

struct Problem {
  const char* op = "";
  int64_t target = 0;
  std::vector<int64_t> target_shape;
  std::vector<FactorSpec> factors;  // the target's spec too (data undefined)
  torch::Tensor entries;            // int64 [E, columns]
  torch::Tensor coupling;           // [E], the factors' dtype
  int64_t channels = 0;
  int64_t num_members = 0;
  // kGroupListed and kGroupListedBlocks list the members by the target's rows
  int32_t group_kind = kGroupIsMember;
};

// Every index in range, with one copy to the host for all of them; on a failure the error
// names what the CPU kernels name: the first entry with a column out of range, else the
// first position of an index tensor (centres before the others) out of range.
struct IndexCheck {
  torch::Tensor values;  // int64 [n]
  int64_t bound;
  std::string what;  // "centers", "others", "pair_type"
};
void check_indices(const char* op, const torch::Tensor& entries,
                   const std::vector<int64_t>& column_bounds, std::vector<IndexCheck> checks);

// dF/d(target) as a new tensor of target_shape on the factors' device.
torch::Tensor run(const Problem& problem);

// Whether this library was built with the CUDA kernel (LOREM_CUDA_KERNELS).
bool cuda_kernels_compiled();

}  // namespace lorem::sparse_form
