// The GPU launch of the sparse-form threads (sparse_form_threads.hpp): one CUDA thread per
// (group, key, channel). Compiled only when LOREM_CUDA_KERNELS is on; the arithmetic and
// indexing are the host-tested form_thread, so what is left to check on a GPU is this.
#include <cuda_runtime.h>

#include "sparse_form_threads.hpp"

namespace lorem::sparse_form {
namespace {

constexpr int kThreadsPerBlock = 256;

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    sparse_form_kernel(const Form<T> form, int64_t total) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid < total) form_thread(form, tid);
}

}  // namespace

template <typename T>
const char* launch_on_cuda(const Form<T>& form, void* stream) {
  const int64_t total = num_threads(form);
  if (total == 0) return nullptr;
  const int64_t blocks = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > 0x7fffffff) return "more threads than one launch holds";
  sparse_form_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          form, total);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template const char* launch_on_cuda<float>(const Form<float>&, void*);
template const char* launch_on_cuda<double>(const Form<double>&, void*);

}  // namespace lorem::sparse_form
