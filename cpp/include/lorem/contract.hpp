// The export contract (python/lorem_torch/export/contract.py): what an exported model
// is and can do, read once from the export's metadata.json. Every consumer in C++
// (the runtime, the LAMMPS plugin) asks it, and refuses with its reasons.
#pragma once

#include <torch/script.h>

#include <map>
#include <string>
#include <vector>

#include "lorem/vocabulary.hpp"

namespace lorem {

using vocabulary::kContractVersion;      // metadata.json "contract"."version" (2: slab)
using vocabulary::kExportFormatVersion;  // metadata.json "format_version"

struct Contract {
  std::vector<int64_t> atomic_numbers;  // the species the model knows
  std::vector<std::string> symbols;     // their element symbols, same order
  torch::Dtype dtype = torch::kFloat32;
  double cutoff = 0.0;              // pairs closer than this enter the model (A)
  double min_distance = 0.0;        // pairs closer than this are refused (A)
  double interaction_range = 0.0;   // (T + 1) * cutoff
  int64_t num_message_passing = 0;  // T: layers that need a ghost feature exchange
  int64_t feature_width = 0;        // values per atom in that exchange
  int64_t num_charges = 0;          // long-range charge channels
  std::string long_range_method;    // periodic cells by default: "none", "ewald", "pme", "auto"
  std::vector<std::string> long_range_methods;  // what the export can do ("ewald", "pme", "auto")
  double accuracy = 0.0;                        // of the k-space sums, relative
  std::string non_periodic;                     // "none" or "direct" (open boundaries)
  // 2D slabs (capability "slab"): the k-space cell's height over the box's (docs/design.md
  // section 2.1); 0 when the export runs no slab
  double slab_factor = 0.0;
  std::vector<std::string> methods;
  std::map<std::string, bool> capabilities;
  std::map<std::string, std::string> limitations;
  // Fixes of the model's numbers carried in the export's code (absent before them), and
  // for each one missing where it matters a line saying what the export gets wrong
  // (python/lorem_torch/export/contract.py stale_export_advisories; LAMMPS warns).
  std::vector<std::string> numerics;
  std::vector<std::string> advisories;

  // Parse and check metadata.json (format, version, units, every field); `name` (the
  // file) prefixes every error.
  static Contract from_metadata(const std::string& metadata_json, const std::string& name);

  // Throws lorem::Error("<where>: <the contract's reason>") unless granted.
  void require(const std::string& capability, const std::string& where) const;
  bool grants(const std::string& capability) const;
  bool lists_method(const std::string& method) const;
  // The atomic number of an element symbol among the model's species, or -1.
  int64_t atomic_number(const std::string& symbol) const;
  // "H O" (for messages)
  std::string species_list() const;
};

}  // namespace lorem
