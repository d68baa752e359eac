// One thread of the device kernel of the sparse multilinear forms (message_form,
// coupling_form; docs/design.md section 1.11), in plain C++ that nvcc compiles for the GPU
// and the host compiler for the CPU, so that the tests run every thread's arithmetic and
// indexing on the CPU (one thread after another) against the CPU kernels, and a GPU run
// only has the launch left to check.
//
// A form F = sum over members m (edges or atoms), entries e and channels c of
//   cg_e prod_q factor_q[row_q(m), column_q(e), c]
// is differentiated in one factor, the target: out[row, key, c] sums the product of the
// others over the entries whose target column is `key` and over the members whose target
// row is `row`. A thread owns one (group, key, channel) of the output; a group is the
// member itself (per-member targets), the members listed for one output row (the edges of
// one centre or one sending atom, no atomics), or a block of members whose sums meet in a
// fixed row (the weights: atomic adds on the GPU).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LOREM_HOST_DEVICE __host__ __device__
#else
#define LOREM_HOST_DEVICE
#endif

namespace lorem::sparse_form {

constexpr int kMaxFactors = 5;

// where a factor's row is for member m
enum RowKind : int32_t {
  kRowIsMember = 0,  // row m (per-edge or per-atom factors of the members themselves)
  kRowGathered = 1,  // row rows[m] (the sending atom's features, the centre's gradient)
  kRowFixed = 2,     // row 0 (the weights)
};

// which members a thread sums over
enum GroupKind : int32_t {
  kGroupIsMember = 0,  // group g is member g
  kGroupListed = 1,    // members group_members[group_offsets[g] .. group_offsets[g + 1])
  kGroupBlock = 2,     // members [g * block, (g + 1) * block), summed into row 0 atomically
  // positions [g * block, (g + 1) * block) of the members listed by output row, each row's
  // run summed and added atomically (a target row that many members share: the table of
  // pair types)
  kGroupListedBlocks = 3,
};

template <typename T>
struct Factor {
  const T* data = nullptr;        // contiguous [rows, components(, channels)]
  const int64_t* rows = nullptr;  // kRowGathered: the row of each member
  int32_t row_kind = kRowIsMember;
  int32_t column = 0;        // the entry column that holds this factor's component
  int32_t has_channels = 1;  // 0: [rows, components], shared by every channel
  int64_t row_stride = 0;    // elements per row
};

template <typename T>
struct Form {
  Factor<T> factors[kMaxFactors];
  int32_t num_factors = 0;
  int32_t target = 0;  // the factor whose layout `out` has (its data unused)
  T* out = nullptr;    // zero on entry
  int64_t channels = 0;
  // entries sorted by the target's column: [E, columns] int32 and their coefficients;
  // key k's entries are [key_offsets[k], key_offsets[k + 1])
  const int32_t* entries = nullptr;
  int32_t columns = 0;
  const T* coupling = nullptr;
  const int64_t* key_offsets = nullptr;
  int64_t num_keys = 0;
  int32_t group_kind = kGroupIsMember;
  int64_t num_groups = 0;
  const int64_t* group_offsets = nullptr;  // kGroupListed
  const int64_t* group_members = nullptr;  // kGroupListed, kGroupListedBlocks
  int64_t block = 0;                       // kGroupBlock, kGroupListedBlocks
  int64_t num_members = 0;                 // kGroupBlock, kGroupListedBlocks
};

template <typename T>
LOREM_HOST_DEVICE inline int64_t lanes(const Form<T>& f) {
  return f.factors[f.target].has_channels ? f.channels : 1;
}

template <typename T>
LOREM_HOST_DEVICE inline int64_t num_threads(const Form<T>& f) {
  return f.num_groups * f.num_keys * lanes(f);
}

template <typename T>
LOREM_HOST_DEVICE inline void add_to(T* where, T value, bool atomic) {
#if defined(__CUDA_ARCH__)
  if (atomic) {
    atomicAdd(where, value);
    return;
  }
#else
  (void)atomic;  // the host runs the threads one after another
#endif
  *where += value;
}

// Thread `tid` in [0, num_threads(f)): channel fastest, then key, then group, so that
// neighbouring threads read neighbouring channels of the same rows.
template <typename T>
LOREM_HOST_DEVICE inline void form_thread(const Form<T>& f, int64_t tid) {
  const Factor<T>& target = f.factors[f.target];
  const int64_t width = lanes(f);
  const int64_t lane = tid % width;
  const int64_t key = (tid / width) % f.num_keys;
  const int64_t group = tid / (width * f.num_keys);
  const bool blocks = f.group_kind == kGroupBlock || f.group_kind == kGroupListedBlocks;
  const bool listed = f.group_kind == kGroupListed || f.group_kind == kGroupListedBlocks;
  int64_t first = group, last = group + 1;
  if (f.group_kind == kGroupListed) {
    first = f.group_offsets[group];
    last = f.group_offsets[group + 1];
  } else if (blocks) {
    first = group * f.block;
    last = first + f.block < f.num_members ? first + f.block : f.num_members;
  }
  const int64_t entries_begin = f.key_offsets[key], entries_end = f.key_offsets[key + 1];
  const int64_t offset = key * width + lane;  // within an output row
  T total = T(0);
  int64_t run_row = -1;  // kGroupListedBlocks: the output row being summed
  for (int64_t at = first; at < last; ++at) {
    const int64_t member = listed ? f.group_members[at] : at;
    if (f.group_kind == kGroupListedBlocks) {
      const int64_t row_now = target.rows[member];
      if (row_now != run_row) {
        if (run_row >= 0) add_to(f.out + run_row * target.row_stride + offset, total, true);
        run_row = row_now;
        total = T(0);
      }
    }
    // each factor's row for this member, found once (the target's is written, not read)
    const T* row[kMaxFactors] = {};
    for (int q = 0; q < f.num_factors; ++q) {
      if (q == f.target) continue;
      const Factor<T>& factor = f.factors[q];
      const int64_t r = factor.row_kind == kRowIsMember   ? member
                        : factor.row_kind == kRowGathered ? factor.rows[member]
                                                          : 0;
      row[q] = factor.data + r * factor.row_stride;
    }
    for (int64_t k = entries_begin; k < entries_end; ++k) {
      const int32_t* entry = f.entries + k * f.columns;
      T shared = f.coupling[k];  // the product of the factors without channels
      const T* channel_rows[kMaxFactors];
      int with_channels = 0;
      for (int q = 0; q < f.num_factors; ++q) {
        if (q == f.target) continue;
        const Factor<T>& factor = f.factors[q];
        if (factor.has_channels)
          channel_rows[with_channels++] = row[q] + entry[factor.column] * f.channels;
        else
          shared *= row[q][entry[factor.column]];
      }
      if (target.has_channels) {
        T value = shared;
        for (int j = 0; j < with_channels; ++j) value *= channel_rows[j][lane];
        total += value;
      } else {  // the target has no channel axis: its thread sums the channels too
        T sum = T(0);
        for (int64_t c = 0; c < f.channels; ++c) {
          T value = T(1);
          for (int j = 0; j < with_channels; ++j) value *= channel_rows[j][c];
          sum += value;
        }
        total += shared * sum;
      }
    }
  }
  if (f.group_kind == kGroupListedBlocks) {
    if (run_row >= 0) add_to(f.out + run_row * target.row_stride + offset, total, true);
  } else if (f.group_kind == kGroupBlock) {
    add_to(f.out + offset, total, true);
  } else {
    f.out[group * target.row_stride + offset] = total;
  }
}

// The GPU launch (sparse_form_cuda.cu, compiled when LOREM_CUDA_KERNELS is on): returns
// nullptr or the CUDA error's text. `stream` is the cudaStream_t to run on.
template <typename T>
const char* launch_on_cuda(const Form<T>& form, void* stream);

}  // namespace lorem::sparse_form
