// Registers pair_style lorem with LAMMPS (plugin load / LAMMPS_PLUGIN_PATH).
#include "lammps.h"
#include "lammpsplugin_api.h"
#include "pair_lorem.h"

using namespace LAMMPS_NS;

static Pair* create_pair_lorem(LAMMPS* lmp) { return new PairLorem(lmp); }

extern "C" void lammpsplugin_init(void* lmp, void* handle, void* regfunc) {
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc)regfunc;
  // the running LAMMPS' own version string: no version mismatch to warn about
  plugin.version = ((LAMMPS*)lmp)->version;
  plugin.style = "pair";
  plugin.name = "lorem";
  plugin.info = "LOREM machine-learning potential with learned long range (lorem-torch)";
  plugin.author = "lorem-torch developers";
  plugin.creator.v1 = (lammpsplugin_factory1*)&create_pair_lorem;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
