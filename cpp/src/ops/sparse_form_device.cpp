// See sparse_form_device.hpp.
#include "sparse_form_device.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#ifdef LOREM_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lorem::sparse_form {
namespace {

using torch::Tensor;

template <typename T>
void run_threads(const Form<T>& form, const Tensor& out) {
  if (out.is_cuda()) {
#ifdef LOREM_CUDA_KERNELS
    // the blocks' atomic adds (the weights, the table) vary at round-off from run to run
    if (form.group_kind == kGroupBlock || form.group_kind == kGroupListedBlocks)
      at::globalContext().alertNotDeterministic("lorem sparse form (CUDA kernel, atomic target)");
    const c10::cuda::CUDAGuard guard(out.device());
    const char* error = launch_on_cuda(form, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(error == nullptr, "lorem: the sparse-form CUDA kernel failed: ", error);
    return;
#else
    TORCH_CHECK(false,
                "lorem: this library was built without its CUDA kernels (LOREM_CUDA_KERNELS)");
#endif
  }
  TORCH_CHECK(out.is_cpu(), "lorem: the sparse-form kernel runs on CUDA or the CPU, not ",
              out.device());
  const int64_t total = num_threads(form);
  if (form.group_kind == kGroupBlock || form.group_kind == kGroupListedBlocks) {
    // threads add into shared rows: one after another
    for (int64_t tid = 0; tid < total; ++tid) form_thread(form, tid);
    return;
  }
  at::parallel_for(0, total, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t tid = begin; tid < end; ++tid) form_thread(form, tid);
  });
}

// Members per block of the atomic (weights) target: enough that few blocks meet in one
// output row, few enough that the GPU has many threads.
constexpr int64_t kBlock = 64;

}  // namespace

void check_indices(const char* op, const Tensor& entries, const std::vector<int64_t>& column_bounds,
                   std::vector<IndexCheck> checks) {
  std::stable_sort(checks.begin(), checks.end(), [](const IndexCheck& a, const IndexCheck& b) {
    return a.what == "centers" && b.what != "centers";
  });
  std::vector<Tensor> extremes;
  if (entries.size(0) > 0) {
    extremes.push_back(std::get<0>(entries.min(0)));
    extremes.push_back(std::get<0>(entries.max(0)));
  }
  for (const IndexCheck& check : checks) {
    if (check.values.numel() == 0) continue;
    extremes.push_back(check.values.min().view({1}));
    extremes.push_back(check.values.max().view({1}));
  }
  if (extremes.empty()) return;
  const Tensor host = torch::cat(extremes).cpu();
  const int64_t* at = host.data_ptr<int64_t>();
  if (entries.size(0) > 0) {
    const int64_t columns = entries.size(1);
    bool inside = true;
    for (size_t c = 0; c < column_bounds.size(); ++c)
      inside = inside && at[c] >= 0 && at[columns + c] < column_bounds[c];
    if (!inside) {
      Tensor bad = torch::zeros({entries.size(0)}, entries.options().dtype(torch::kBool));
      for (size_t c = 0; c < column_bounds.size(); ++c) {
        const Tensor column = entries.select(1, static_cast<int64_t>(c));
        bad = bad | (column < 0) | (column >= column_bounds[c]);
      }
      TORCH_CHECK(false, op, ": entry ", bad.nonzero()[0][0].item<int64_t>(),
                  " indexes outside the factors");
    }
    at += 2 * columns;
  }
  for (const IndexCheck& check : checks) {
    if (check.values.numel() == 0) continue;
    const int64_t low = *at++, high = *at++;
    if (low >= 0 && high < check.bound) continue;
    const Tensor bad = ((check.values < 0) | (check.values >= check.bound)).nonzero();
    const int64_t position = bad[0][0].item<int64_t>();
    TORCH_CHECK(false, op, ": ", check.what, "[", position,
                "] = ", check.values[position].item<int64_t>(), " is outside [0, ", check.bound,
                ")");
  }
}

Tensor run(const Problem& p) {
  const FactorSpec& target = p.factors[p.target];
  const Tensor* any = nullptr;
  for (const FactorSpec& f : p.factors)
    if (f.data.defined()) any = &f.data;
  TORCH_CHECK(any != nullptr, p.op, ": no factor given");
  const auto options = any->options();
  Tensor out = torch::zeros(p.target_shape, options);
  const int64_t num_entries = p.entries.size(0);
  if (p.num_members == 0) return out;

  const auto index_options = options.dtype(torch::kLong);
  // the indices are checked whenever there are members, even with nothing to sum
  const Tensor entries = p.entries.to(index_options).contiguous();
  std::vector<IndexCheck> checks;
  std::vector<int64_t> column_bounds(entries.size(1), std::numeric_limits<int64_t>::max());
  std::vector<Tensor> rows(p.factors.size());
  for (size_t q = 0; q < p.factors.size(); ++q) {
    const FactorSpec& f = p.factors[q];
    column_bounds[f.column] = std::min(column_bounds[f.column], f.num_components);
    if (f.row_kind == kRowGathered) {
      rows[q] = f.rows.to(index_options).contiguous();
      checks.push_back({rows[q], f.num_rows, f.rows_name});
    }
  }
  check_indices(p.op, entries, column_bounds, checks);
  if (num_entries == 0 || out.numel() == 0 || p.channels == 0) return out;

  // entries sorted by the target's component, and where each component's run begins
  const int64_t num_keys = target.num_components;
  const auto [sorted_keys, order] = entries.select(1, target.column).sort(true, 0, false);
  const Tensor sorted_entries = entries.index_select(0, order).to(torch::kInt).contiguous();
  const Tensor coupling = p.coupling.to(options).index_select(0, order);
  const Tensor key_offsets =
      torch::searchsorted(sorted_keys.contiguous(), torch::arange(num_keys + 1, index_options));

  Tensor group_offsets, group_members;
  int64_t num_groups = p.num_members;
  if (p.group_kind == kGroupListed || p.group_kind == kGroupListedBlocks) {
    TORCH_CHECK(target.row_kind == kRowGathered, p.op, ": a listed target needs its rows");
    const auto [sorted_rows, members] = rows[p.target].sort(true, 0, false);
    group_members = members.contiguous();
    if (p.group_kind == kGroupListed) {
      num_groups = target.num_rows;
      group_offsets = torch::searchsorted(sorted_rows.contiguous(),
                                          torch::arange(num_groups + 1, index_options));
    }
  }
  if (p.group_kind == kGroupBlock || p.group_kind == kGroupListedBlocks)
    num_groups = (p.num_members + kBlock - 1) / kBlock;
  if (num_groups == 0) return out;

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem sparse form", [&] {
    Form<scalar_t> form;
    form.num_factors = static_cast<int32_t>(p.factors.size());
    TORCH_CHECK(form.num_factors <= kMaxFactors, p.op, ": too many factors");
    form.target = static_cast<int32_t>(p.target);
    for (size_t q = 0; q < p.factors.size(); ++q) {
      const FactorSpec& spec = p.factors[q];
      Factor<scalar_t>& factor = form.factors[q];
      factor.data = spec.data.defined() ? spec.data.data_ptr<scalar_t>() : nullptr;
      factor.rows = rows[q].defined() ? rows[q].data_ptr<int64_t>() : nullptr;
      factor.row_kind = spec.row_kind;
      factor.column = spec.column;
      factor.has_channels = spec.has_channels ? 1 : 0;
      factor.row_stride = spec.num_components * (spec.has_channels ? p.channels : 1);
    }
    form.out = out.data_ptr<scalar_t>();
    form.channels = p.channels;
    form.entries = sorted_entries.data_ptr<int32_t>();
    form.columns = static_cast<int32_t>(sorted_entries.size(1));
    form.coupling = coupling.data_ptr<scalar_t>();
    form.key_offsets = key_offsets.data_ptr<int64_t>();
    form.num_keys = num_keys;
    form.group_kind = p.group_kind;
    form.num_groups = num_groups;
    form.group_offsets = group_offsets.defined() ? group_offsets.data_ptr<int64_t>() : nullptr;
    form.group_members = group_members.defined() ? group_members.data_ptr<int64_t>() : nullptr;
    form.block = kBlock;
    form.num_members = p.num_members;
    run_threads(form, out);
  });
  return out;
}

bool cuda_kernels_compiled() {
#ifdef LOREM_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

}  // namespace lorem::sparse_form
