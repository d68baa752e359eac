// Whether the running LAMMPS is the one this plugin was compiled for. A plugin built
// against other headers or integer sizes (LAMMPS_SMALLBIG vs LAMMPS_BIGBIG) would still
// load and then read LAMMPS' arrays with the wrong layout: wrong numbers or a crash, no
// error. Kept free of LAMMPS and torch headers so that a test can compile it alone.
#pragma once

#include <string>

namespace lorem_plugin {

struct LammpsBuild {
  int version = 0;  // YYYYMMDD, as lammps_version() returns it
  int bigint_bytes = 0;
  int tagint_bytes = 0;
  int imageint_bytes = 0;
};

inline std::string integer_sizes_name(const LammpsBuild& build) {
  if (build.tagint_bytes == 4 && build.bigint_bytes == 8) return "smallbig";
  if (build.tagint_bytes == 8 && build.bigint_bytes == 8) return "bigbig";
  if (build.tagint_bytes == 4 && build.bigint_bytes == 4) return "smallsmall";
  return "tagint " + std::to_string(build.tagint_bytes) + " bytes, bigint " +
         std::to_string(build.bigint_bytes) + " bytes";
}

// An empty string when `running` can host a plugin built for `built`, else one line
// naming both builds and what to do.
inline std::string build_mismatch(const LammpsBuild& built, const LammpsBuild& running) {
  std::string problem;
  if (built.version != running.version)
    problem = "it was built for LAMMPS version " + std::to_string(built.version) +
              ", this LAMMPS is version " + std::to_string(running.version);
  if (built.bigint_bytes != running.bigint_bytes || built.tagint_bytes != running.tagint_bytes ||
      built.imageint_bytes != running.imageint_bytes) {
    if (!problem.empty()) problem += "; ";
    problem += "it was built for integer sizes " + integer_sizes_name(built) +
               ", this LAMMPS uses " + integer_sizes_name(running);
  }
  if (problem.empty()) return problem;
  return "lorem plugin not loaded: " + problem +
         ". Rebuild it against this LAMMPS (its headers, -DLOREM_LAMMPS_INTEGER_SIZES=" +
         integer_sizes_name(running) + "; README, section 'LAMMPS builds')";
}

}  // namespace lorem_plugin
