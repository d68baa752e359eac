#include "lorem/contract.hpp"

#include <algorithm>

#include "lorem/json.hpp"
#include "lorem/model.hpp"

namespace lorem {

Contract Contract::from_metadata(const std::string& metadata_json, const std::string& name) {
  const std::string prefix = "'" + name + "': ";
  try {
    const auto metadata = json::Value::parse(metadata_json);
    const std::string marker(vocabulary::kExportFormat);
    if (!metadata.contains("format") || metadata.at("format").as_string("format") != marker) {
      throw Error("not a lorem-torch export (no '" + marker + "' format marker)");
    }
    const int64_t version = metadata.at("format_version").as_int("format_version");
    if (version > kExportFormatVersion) {
      throw Error("export format version " + std::to_string(version) +
                  ", newer than this runtime reads (" + std::to_string(kExportFormatVersion) +
                  "): rebuild the plugin from a newer lorem-torch");
    }
    if (version < kExportFormatVersion) {
      throw Error("export format version " + std::to_string(version) +
                  ", older than this runtime reads (" + std::to_string(kExportFormatVersion) +
                  "): export the checkpoint again with lorem-export");
    }
    const auto& c = metadata.at("contract");
    const int64_t contract_version = c.at("version").as_int("contract.version");
    if (contract_version > kContractVersion) {
      throw Error("contract version " + std::to_string(contract_version) +
                  ", newer than this runtime reads: rebuild the plugin from a newer lorem-torch");
    }
    const auto& units = c.at("units");
    if (units.at("energy").as_string("units.energy") != "eV" ||
        units.at("length").as_string("units.length") != "Angstrom") {
      throw Error("the model's units are not eV and Angstrom");
    }
    Contract contract;
    const auto& species = c.at("species");
    for (const auto& z : species.at("atomic_numbers").as_array("species.atomic_numbers"))
      contract.atomic_numbers.push_back(z.as_int("an atomic number"));
    for (const auto& s : species.at("symbols").as_array("species.symbols"))
      contract.symbols.push_back(s.as_string("an element symbol"));
    if (contract.symbols.size() != contract.atomic_numbers.size())
      throw Error("species symbols and atomic numbers differ in length");
    const auto& dtype = c.at("dtype").as_string("dtype");
    const auto known_dtype = vocabulary::dtype_of(dtype);
    if (!known_dtype) {
      std::string names;
      for (const auto& [name, type] : vocabulary::kDtypes)
        names += (names.empty() ? "" : " or ") + std::string(name);
      throw Error("model dtype '" + dtype + "' is not supported (" + names + ")");
    }
    contract.dtype = *known_dtype;
    contract.cutoff = c.at("cutoff").as_number("cutoff");
    contract.min_distance = c.at("min_distance").as_number("min_distance");
    contract.interaction_range = c.at("interaction_range").as_number("interaction_range");
    contract.num_message_passing = c.at("num_message_passing").as_int("num_message_passing");
    const auto& exchange = c.at("feature_exchange");
    contract.feature_width = exchange.at("width").as_int("feature_exchange.width");
    if (exchange.at("layers").as_int("feature_exchange.layers") != contract.num_message_passing)
      throw Error("feature_exchange.layers differs from num_message_passing");
    contract.num_charges = c.at("num_charges").as_int("num_charges");
    const auto& long_range = c.at("long_range");
    contract.long_range_method = long_range.at("method").as_string("long_range.method");
    contract.non_periodic = long_range.at("non_periodic").as_string("long_range.non_periodic");
    for (const auto& m : long_range.at("methods").as_array("long_range.methods"))
      contract.long_range_methods.push_back(m.as_string("a long-range method"));
    if (contract.long_range_method != vocabulary::kNoLongRange)
      contract.accuracy = long_range.at("accuracy").as_number("long_range.accuracy");
    // version 2: slab and slab_factor (older contracts grant no slab)
    if (long_range.contains("slab") && long_range.at("slab").as_bool("long_range.slab")) {
      contract.slab_factor = long_range.at("slab_factor").as_number("long_range.slab_factor");
      if (!(contract.slab_factor > 1.0)) throw Error("long_range.slab_factor must be above 1");
    }
    for (const auto& m : c.at("methods").as_array("methods"))
      contract.methods.push_back(m.as_string("a method name"));
    for (const auto& [key, value] : c.at("capabilities").as_object("capabilities"))
      contract.capabilities[key] = value.as_bool("capabilities." + key);
    for (const auto& [key, value] : c.at("limitations").as_object("limitations"))
      contract.limitations[key] = value.as_string("limitations." + key);
    if (c.contains("numerics"))
      for (const auto& fix : c.at("numerics").as_array("numerics"))
        contract.numerics.push_back(fix.as_string("a numerics entry"));
    const auto has_fix = [&](std::string_view fix) {
      return std::find(contract.numerics.begin(), contract.numerics.end(), fix) !=
             contract.numerics.end();
    };
    if (contract.dtype == torch::kFloat32 && !has_fix(vocabulary::kExactScalarNorms))
      contract.advisories.push_back(
          name +
          " is a float32 export written before the fix of scalar feature norms (lorem-torch "
          "CHANGELOG): its forces can be off by up to ~0.07 eV/A on a few atoms per thousand; "
          "export the checkpoint again with lorem-export");
    if (contract.cutoff <= 0.0) throw Error("the cutoff must be positive");
    if (contract.grants("slab") && contract.slab_factor <= 0.0)
      throw Error("the contract grants slab but long_range has no slab_factor");
    return contract;
  } catch (const Error& error) {
    throw Error(prefix + error.what());
  }
}

bool Contract::grants(const std::string& capability) const {
  const auto found = capabilities.find(capability);
  return found != capabilities.end() && found->second;
}

void Contract::require(const std::string& capability, const std::string& where) const {
  if (grants(capability)) return;
  const auto reason = limitations.find(capability);
  const std::string why = reason != limitations.end()
                              ? reason->second
                              : "the model's contract does not grant '" + capability + "'";
  throw Error(where + ": " + why);
}

bool Contract::lists_method(const std::string& method) const {
  return std::find(methods.begin(), methods.end(), method) != methods.end();
}

int64_t Contract::atomic_number(const std::string& symbol) const {
  for (size_t k = 0; k < symbols.size(); ++k)
    if (symbols[k] == symbol) return atomic_numbers[k];
  return -1;
}

std::string Contract::species_list() const {
  std::string out;
  for (const auto& s : symbols) out += (out.empty() ? "" : " ") + s;
  return out;
}

}  // namespace lorem
