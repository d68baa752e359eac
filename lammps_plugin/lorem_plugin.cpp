// Registers pair_style lorem with LAMMPS (plugin load / LAMMPS_PLUGIN_PATH), after
// checking that the running LAMMPS is the one the plugin was compiled for.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "build_check.h"
#include "lammps.h"
#include "lammpsplugin_api.h"
#include "library.h"
#include "lmptype.h"
#include "pair_lorem.h"

using namespace LAMMPS_NS;

#ifndef LOREM_LAMMPS_BUILD_VERSION
#error "LOREM_LAMMPS_BUILD_VERSION (YYYYMMDD of the LAMMPS headers) is set by CMake"
#endif

static Pair* create_pair_lorem(LAMMPS* lmp) { return new PairLorem(lmp); }

extern "C" void lammpsplugin_init(void* lmp, void* handle, void* regfunc) {
  // Only LAMMPS' C library interface is used until the check has passed: its calls are
  // the same in every LAMMPS version, unlike the layout of the LAMMPS class.
  lorem_plugin::LammpsBuild built;
  built.version = LOREM_LAMMPS_BUILD_VERSION;
  built.bigint_bytes = sizeof(bigint);
  built.tagint_bytes = sizeof(tagint);
  built.imageint_bytes = sizeof(imageint);
#if defined(OMPI_MAJOR_VERSION)
  built.mpi = "Open MPI";
#elif defined(MPICH_VERSION)
  built.mpi = "MPICH";
#endif
  lorem_plugin::LammpsBuild running;
  {
    // MPI_Get_library_version may be called before MPI_Init (MPI 3.0). It is the running
    // MPI's, whose MPI_MAX_LIBRARY_VERSION_STRING may exceed that of the mpi.h compiled
    // here (MPICH 8192, Open MPI 256): a buffer for the largest, the length clamped.
    static char library[65536];
    int length = 0;
    MPI_Get_library_version(library, &length);
    length = std::clamp(length, 0, static_cast<int>(sizeof(library)) - 1);
    const std::string text(library, static_cast<size_t>(length));
    running.mpi = lorem_plugin::mpi_family(text);
    running.mpi_library = lorem_plugin::library_first_line(text);
  }
  running.version = lammps_version(lmp);
  running.bigint_bytes = lammps_extract_setting(lmp, "bigint");
  running.tagint_bytes = lammps_extract_setting(lmp, "tagint");
  running.imageint_bytes = lammps_extract_setting(lmp, "imageint");
  const std::string mismatch = lorem_plugin::build_mismatch(built, running);
  if (!mismatch.empty()) {
    // not registered: `pair_style lorem` then stops as an unknown style, after this line.
    // The rank from LAMMPS, not MPI: a plugin of another MPI must not pass its handles
    if (lammps_extract_setting(lmp, "world_rank") == 0)
      std::fprintf(stderr, "ERROR: %s\n", mismatch.c_str());
    return;
  }

  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc)regfunc;
  // the versions agree (checked above): LAMMPS' own string, so it has nothing to warn about
  plugin.version = ((LAMMPS*)lmp)->version;
  plugin.style = "pair";
  plugin.name = "lorem";
  plugin.info = "LOREM machine-learning potential with learned long range (lorem-torch)";
  plugin.author = "lorem-torch developers";
  plugin.creator.v1 = (lammpsplugin_factory1*)&create_pair_lorem;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
