# The lorem-torch runtime of a Python environment, for code built outside the Python
# package (the plugin on its own, LAMMPS with lorem-torch built in): an imported target
# lorem_runtime (liblorem_runtime.so, its headers, torch) from the environment whose
# interpreter is Python_EXECUTABLE and which has lorem_torch installed.
# Sets: target lorem_runtime, LOREM_RUNTIME_DIR (the folder of the library),
# LOREM_TORCH_LIB_DIR (torch's libraries), for the run paths.
if(NOT Python_EXECUTABLE)
  message(FATAL_ERROR "lorem_runtime.cmake: Python_EXECUTABLE (the Python with lorem_torch) is unset")
endif()
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE LOREM_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE LOREM_PYTHON_ERROR RESULT_VARIABLE LOREM_PYTHON_FAILED)
if(LOREM_PYTHON_FAILED)
  message(FATAL_ERROR "${Python_EXECUTABLE} cannot import torch: use the Python environment "
    "where lorem-torch is installed (${LOREM_PYTHON_ERROR})")
endif()
list(APPEND CMAKE_PREFIX_PATH "${LOREM_TORCH_PREFIX}")
# torch's config puts MKL_INCLUDE_DIR on its caffe2::mkl target: a project that looked for
# MKL without finding it (LAMMPS' FFT search caches MKL_INCLUDE_DIR-NOTFOUND) would make
# that a missing folder, which CMake refuses; torch ships what it needs of MKL.
if(NOT MKL_INCLUDE_DIR)
  set(MKL_INCLUDE_DIR "")
endif()
# this environment's torch on every configure, not one cached from an earlier Python
set(Torch_DIR "${LOREM_TORCH_PREFIX}/Torch" CACHE PATH "torch's CMake config (of LOREM_PYTHON)"
  FORCE)
find_package(Torch REQUIRED)
get_filename_component(LOREM_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
# the folder of lorem_torch._core: liblorem_runtime.so and include/ lie next to it
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('lorem_torch._core').origin))"
  OUTPUT_VARIABLE LOREM_RUNTIME_DIR OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE LOREM_PYTHON_ERROR RESULT_VARIABLE LOREM_PYTHON_FAILED)
if(LOREM_PYTHON_FAILED)
  message(FATAL_ERROR "${Python_EXECUTABLE} has no lorem_torch: pip install lorem-torch into "
    "that environment, or name the Python that has it (${LOREM_PYTHON_ERROR})")
endif()
# the files themselves, not cached find_library results: another Python on a re-configure
# must not keep the first one's library
set(LOREM_RUNTIME_LIBRARY "${LOREM_RUNTIME_DIR}/liblorem_runtime.so")
set(LOREM_RUNTIME_INCLUDE "${LOREM_RUNTIME_DIR}/include")
if(NOT EXISTS "${LOREM_RUNTIME_LIBRARY}" OR NOT EXISTS "${LOREM_RUNTIME_INCLUDE}/lorem/model.hpp")
  message(FATAL_ERROR "lorem_torch's runtime (liblorem_runtime.so, include/lorem) is not in "
    "${LOREM_RUNTIME_DIR}: pip install lorem-torch into the environment of ${Python_EXECUTABLE}")
endif()
add_library(lorem_runtime SHARED IMPORTED)
set_target_properties(lorem_runtime PROPERTIES IMPORTED_LOCATION "${LOREM_RUNTIME_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${LOREM_RUNTIME_INCLUDE}"
  INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}" INTERFACE_COMPILE_FEATURES cxx_std_20)
message(STATUS "lorem-torch runtime in ${LOREM_RUNTIME_DIR}")
