// The GPU launch of the PME mesh operators' threads (mesh_threads.hpp): one CUDA thread per
// atom. Compiled only when LOREM_CUDA_KERNELS is on; the arithmetic and indexing are the
// host-tested atom_thread, so what is left to check on a GPU is this.
#include <cuda_runtime.h>

#include "mesh_threads.hpp"

namespace lorem::mesh_threads {
namespace {

constexpr int kThreadsPerBlock = 128;

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) mesh_kernel(const MeshForm<T> form) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < form.atoms) atom_thread(form, i);
}

}  // namespace

template <typename T>
const char* launch_on_cuda(const MeshForm<T>& form, void* stream) {
  if (form.atoms == 0) return nullptr;
  const int64_t blocks = (form.atoms + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > 0x7fffffff) return "more atoms than one launch holds";
  mesh_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          form);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template const char* launch_on_cuda<float>(const MeshForm<float>&, void*);
template const char* launch_on_cuda<double>(const MeshForm<double>&, void*);

}  // namespace lorem::mesh_threads
