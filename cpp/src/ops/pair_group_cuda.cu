// The GPU launch of pair_form's group blocks (pair_group_blocks.hpp): one block per centre
// atom, its phases' work items spread over the block's threads with a barrier after each.
// Compiled only when LOREM_CUDA_KERNELS is on; the arithmetic and indexing are the
// host-tested centre_block, so what is left to check on a GPU is this.
#include <cuda_runtime.h>

#include "pair_group_blocks.hpp"

namespace lorem::pair_groups {
namespace {

constexpr int kThreadsPerBlock = 128;

struct BlockForEach {
  template <typename Item>
  __device__ void operator()(int64_t n, const Item& item) const {
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) item(k);
    __syncthreads();
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) pair_group_kernel(const PairGroups<T> groups) {
  extern __shared__ __align__(16) unsigned char scratch[];
  T* matrix = reinterpret_cast<T*>(scratch);
  centre_block(groups, static_cast<int64_t>(blockIdx.x), matrix, BlockForEach{});
}

}  // namespace

template <typename T>
const char* launch_on_cuda(const PairGroups<T>& groups, int64_t scratch_bytes, void* stream) {
  if (groups.num_nodes == 0) return nullptr;
  if (groups.num_nodes > 0x7fffffff) return "more centres than one launch holds";
  if (scratch_bytes > kMaxScratchBytes) return "the group's matrix exceeds 48 KiB";
  pair_group_kernel<T>
      <<<static_cast<unsigned>(groups.num_nodes), kThreadsPerBlock,
         static_cast<size_t>(scratch_bytes), static_cast<cudaStream_t>(stream)>>>(groups);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template const char* launch_on_cuda<float>(const PairGroups<float>&, int64_t, void*);
template const char* launch_on_cuda<double>(const PairGroups<double>&, int64_t, void*);

}  // namespace lorem::pair_groups
