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
  // The MPI family: "Open MPI", "MPICH" (MPICH and its derivatives, which share its ABI:
  // Intel MPI, MVAPICH, Cray MPICH) or "" (unknown: not compared). Built: from mpi.h;
  // running: from MPI_Get_library_version, which resolves to the MPI the LAMMPS process
  // loaded first.
  std::string mpi;
  std::string mpi_library;  // the running library's own first line, for the message
};

// The first line of an MPI library's version string, its runs of blanks made one space.
inline std::string library_first_line(const std::string& text) {
  std::string line;
  for (char c : text.substr(0, text.find_first_of("\n,"))) {
    const bool blank = c == ' ' || c == '\t' || c == '\r';
    if (blank && (line.empty() || line.back() == ' ')) continue;
    line += blank ? ' ' : c;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line;
}

// The MPI family a library's version string names ("" when none is recognised).
inline std::string mpi_family(const std::string& library_version) {
  if (library_version.find("Open MPI") != std::string::npos) return "Open MPI";
  for (const char* name : {"MPICH", "Intel(R) MPI", "MVAPICH"})
    if (library_version.find(name) != std::string::npos) return "MPICH";
  return "";
}

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
  if (!built.mpi.empty() && !running.mpi.empty() && built.mpi != running.mpi) {
    if (!problem.empty()) problem += "; ";
    problem += "it was built with " + built.mpi + ", this LAMMPS runs " + running.mpi +
               (running.mpi_library.empty() ? "" : " (" + running.mpi_library + ")");
  }
  if (problem.empty()) return problem;
  return "lorem plugin not loaded: " + problem +
         ". Rebuild it against this LAMMPS and its MPI (its headers, "
         "-DLOREM_LAMMPS_INTEGER_SIZES=" +
         integer_sizes_name(running) +
         ", MPI_HOME of its MPI: tools/build_plugin.sh --lammps PREFIX picks both; README, "
         "section 'LAMMPS builds')";
}

}  // namespace lorem_plugin
