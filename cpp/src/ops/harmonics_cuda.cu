// The GPU launch of the edge harmonics' threads (harmonics_threads.hpp): one CUDA thread
// per edge. Compiled only when LOREM_CUDA_KERNELS is on; the arithmetic and indexing are
// the host-tested edge_thread, so what is left to check on a GPU is this.
#include <cuda_runtime.h>

#include "harmonics_threads.hpp"

namespace lorem::harmonics_threads {
namespace {

constexpr int kThreadsPerBlock = 128;

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) harmonics_kernel(const HarmonicsForm<T> form) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < form.num_edges) edge_thread(form, p);
}

}  // namespace

template <typename T>
const char* launch_on_cuda(const HarmonicsForm<T>& form, void* stream) {
  if (form.num_edges == 0) return nullptr;
  const int64_t blocks = (form.num_edges + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > 0x7fffffff) return "more edges than one launch holds";
  harmonics_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          form);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template const char* launch_on_cuda<float>(const HarmonicsForm<float>&, void*);
template const char* launch_on_cuda<double>(const HarmonicsForm<double>&, void*);

}  // namespace lorem::harmonics_threads
