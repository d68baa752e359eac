// Whether the MPI library takes CUDA device buffers (is CUDA-aware), asked at run time
// through the MPI's own query: MPICH and its derivatives (MPIX_GPU_query_support), Open MPI
// (MPIX_Query_cuda_support from mpi-ext.h, when built with CUDA). Other MPIs have no query
// and count as not CUDA-aware: exchanges then stage through pinned host memory.
#pragma once

#include <mpi.h>

#if defined(OPEN_MPI) && OPEN_MPI && __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <string>

namespace lorem_lammps {

struct MpiGpuSupport {
  bool cuda_aware = false;
  std::string reason;  // how it was found out, for the log line
};

inline MpiGpuSupport query_mpi_cuda_support() {
#if defined(MPICH_VERSION) && defined(MPIX_GPU_SUPPORT_CUDA)
  int supported = 0;
  if (MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &supported) != MPI_SUCCESS)
    return {false, "MPIX_GPU_query_support failed"};
  return {supported != 0, std::string("MPICH ") + MPICH_VERSION + " MPIX_GPU_query_support says " +
                              (supported ? "yes" : "no")};
#elif defined(OPEN_MPI) && OPEN_MPI
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  const bool supported = MPIX_Query_cuda_support() == 1;
  return {supported,
          std::string("Open MPI MPIX_Query_cuda_support says ") + (supported ? "yes" : "no")};
#else
  return {false, "this Open MPI was built without CUDA support"};
#endif
#else
  return {false, "this MPI has no query of CUDA support"};
#endif
}

}  // namespace lorem_lammps
