# pair_style lorem built into LAMMPS, for sites whose LAMMPS cannot load plugins (static
# or Cray builds, no PLUGIN package). LAMMPS' own CMake runs this file right after its
# project() call when configured with the preset next to it:
#
#   cmake -C <lorem-torch>/lammps_plugin/ml-lorem.cmake -D LOREM_PYTHON=<python> \
#         [LAMMPS' usual options] <lammps>/cmake
#
# No LAMMPS file is patched or copied. Right away, pair_lorem.h joins the pair styles
# that LAMMPS' style_pair.h will list; at the end of LAMMPS' configuration (a deferred
# call, once its targets exist) pair_lorem.cpp joins the lammps target, ML-LOREM the
# packages `lmp -h` prints, and the lorem-torch runtime and torch of the Python
# environment LOREM_PYTHON (the one every node runs lorem-torch from; python3 on PATH
# when unset) are linked.
if(CMAKE_VERSION VERSION_LESS 3.19)
  message(FATAL_ERROR "ML-LOREM needs CMake 3.19 or newer (cmake_language(DEFER)), "
    "this is ${CMAKE_VERSION}")
endif()
option(PKG_ML-LOREM "pair_style lorem (lorem-torch) built into LAMMPS" ON)
set(LOREM_PYTHON "" CACHE FILEPATH "The Python with lorem-torch installed (ML-LOREM)")
set(LOREM_IN_TREE_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(lorem_build_into_lammps)
  if(NOT TARGET lammps OR NOT DEFINED LAMMPS_STYLE_HEADERS_DIR)
    message(FATAL_ERROR "ML-LOREM: ${CMAKE_CURRENT_SOURCE_DIR} is not LAMMPS' cmake folder "
      "(no lammps target or style headers): configure <lammps>/cmake with "
      "-C ${LOREM_IN_TREE_DIR}/ml-lorem.cmake")
  endif()
  if(NOT BUILD_MPI)
    message(FATAL_ERROR "ML-LOREM needs LAMMPS built with MPI (-D BUILD_MPI=on): the long "
      "range sums over ranks with MPI calls that LAMMPS' serial stubs lack")
  endif()
  include("${LOREM_IN_TREE_DIR}/lammps_versions.cmake")
  lorem_lammps_version_from_header("${LAMMPS_SOURCE_DIR}" version)
  if(NOT version)
    message(FATAL_ERROR "ML-LOREM: no LAMMPS version in ${LAMMPS_SOURCE_DIR}/version.h")
  endif()
  lorem_check_lammps_version(${version})
  if(LOREM_PYTHON)
    set(Python_EXECUTABLE "${LOREM_PYTHON}")
  else()
    find_program(LOREM_PYTHON_ON_PATH NAMES python3 python)
    set(Python_EXECUTABLE "${LOREM_PYTHON_ON_PATH}")
    message(STATUS "ML-LOREM: LOREM_PYTHON unset, using ${Python_EXECUTABLE} from PATH")
  endif()
  include("${LOREM_IN_TREE_DIR}/lorem_runtime.cmake")

  # pair_lorem.cpp with lorem's C++20 and torch's headers, LAMMPS' definitions (integer
  # sizes, ...) and include folders; only its object file and the link reach the lammps
  # target, so LAMMPS itself keeps its own standard and flags.
  add_library(lorem_pair_style OBJECT "${LOREM_IN_TREE_DIR}/pair_lorem.cpp")
  set_target_properties(lorem_pair_style PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_include_directories(lorem_pair_style PRIVATE
    "$<TARGET_PROPERTY:lammps,INCLUDE_DIRECTORIES>" "${LOREM_IN_TREE_DIR}")
  target_compile_definitions(lorem_pair_style PRIVATE
    "$<TARGET_PROPERTY:lammps,COMPILE_DEFINITIONS>" OMPI_SKIP_MPICXX MPICH_SKIP_MPICXX)
  target_link_libraries(lorem_pair_style PRIVATE lorem_runtime MPI::MPI_CXX)
  target_sources(lammps PRIVATE "$<TARGET_OBJECTS:lorem_pair_style>")
  add_dependencies(lammps lorem_pair_style)
  target_link_libraries(lammps PRIVATE "$<LINK_ONLY:lorem_runtime>")
  foreach(target lammps lmp)
    if(TARGET ${target})
      set_property(TARGET ${target} APPEND PROPERTY INSTALL_RPATH
        "${LOREM_RUNTIME_DIR}" "${LOREM_TORCH_LIB_DIR}")
    endif()
  endforeach()

  # the style table (pair_lorem.h joined it when this file was included): LAMMPS'
  # force.cpp and lammps.cpp include style_pair.h by file name
  target_include_directories(lammps PRIVATE "${LOREM_IN_TREE_DIR}")
  set(installed "${LAMMPS_STYLE_HEADERS_DIR}/lmpinstalledpkgs.h")
  file(READ "${installed}" packages)
  if(NOT packages MATCHES "\"ML-LOREM\"")
    string(REPLACE "  NULL\n" "  \"ML-LOREM\",\n  NULL\n" packages "${packages}")
    file(WRITE "${installed}" "${packages}")
  endif()
  message(STATUS "ML-LOREM: pair_style lorem built into LAMMPS (lorem-torch runtime in "
    "${LOREM_RUNTIME_DIR})")
endfunction()

if(PKG_ML-LOREM)
  # into the list of pair-style headers that LAMMPS' own GenerateStyleHeaders writes to
  # style_pair.h (StyleHeaderUtils.cmake's AddStyleHeader, which only appends), so that a
  # re-configure writes the same file and recompiles nothing
  set_property(GLOBAL APPEND PROPERTY PAIR "${LOREM_IN_TREE_DIR}/pair_lorem.h")
  cmake_language(DEFER CALL lorem_build_into_lammps)
endif()
