# CMake preset (cmake -C) for LAMMPS with pair_style lorem built in: see in_tree.cmake.
#   cmake -C <lorem-torch>/lammps_plugin/ml-lorem.cmake -D LOREM_PYTHON=$(which python) \
#         -D BUILD_MPI=on -D PKG_KSPACE=on ... <lammps>/cmake
set(CMAKE_PROJECT_lammps_INCLUDE "${CMAKE_CURRENT_LIST_DIR}/in_tree.cmake" CACHE FILEPATH
  "lorem-torch's ML-LOREM package, run by LAMMPS' project(lammps)")
set(PKG_ML-LOREM ON CACHE BOOL "pair_style lorem (lorem-torch) built into LAMMPS")
