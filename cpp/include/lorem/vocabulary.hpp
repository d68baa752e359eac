// The names, settings and bounds that the C++ runtime and the LAMMPS plugin share with
// Python, stated once for C++: the Python copy is python/lorem_torch/vocabulary.py, and
// tests/test_vocabulary.py checks that the two agree (through lorem_torch._core).
#pragma once

#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace lorem::vocabulary {

// The precisions a model computes in: a contract's "dtype" -> torch dtype.
inline constexpr std::array<std::pair<std::string_view, c10::ScalarType>, 2> kDtypes{
    {{"float32", c10::ScalarType::Float}, {"float64", c10::ScalarType::Double}}};

// The k-space methods of the long range for periodic cells (the contract's
// long_range.method and .methods, pair_style lorem long_range).
inline constexpr std::string_view kEwald = "ewald";
inline constexpr std::string_view kPme = "pme";
inline constexpr std::string_view kAuto = "auto";
inline constexpr std::array<std::string_view, 3> kLongRangeMethods{kEwald, kPme, kAuto};
// The contract's method of a model without long range; its non-periodic method.
inline constexpr std::string_view kNoLongRange = "none";
inline constexpr std::string_view kDirectSum = "direct";

// Accuracy targets of the k-space sums lie in (0, kMaxAccuracy] (relative error of the
// potentials and fields). The default target and the minimum distance have no C++ copy:
// the runtime reads both from the export's contract.
inline constexpr double kMaxAccuracy = 1e-2;

// metadata.json of an export: its format marker and version (older and newer ones are
// refused), and the contract's version (newer ones are refused; 2: slab).
inline constexpr std::string_view kExportFormat = "lorem-torch-export";
inline constexpr int64_t kExportFormatVersion = 2;
inline constexpr int64_t kContractVersion = 2;
// The contract's "numerics": fixes carried in an export's archived code (absent from
// exports written before them). exact-scalar-norms: degree-0 norms without a tolerance.
inline constexpr std::string_view kExactScalarNorms = "exact-scalar-norms";

// The torch dtype of a dtype name, or nothing.
inline std::optional<c10::ScalarType> dtype_of(std::string_view name) {
  for (const auto& [known, dtype] : kDtypes)
    if (known == name) return dtype;
  return std::nullopt;
}

inline bool is_long_range_method(std::string_view name) {
  for (const auto known : kLongRangeMethods)
    if (known == name) return true;
  return false;
}

// "ewald|pme|auto" (for messages), with `separator` between the names.
inline std::string long_range_method_list(std::string_view separator = "|") {
  std::string out;
  for (const auto known : kLongRangeMethods) {
    if (!out.empty()) out += separator;
    out += known;
  }
  return out;
}

}  // namespace lorem::vocabulary
