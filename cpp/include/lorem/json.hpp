// A small JSON reader for the export's metadata.json (RFC 8259: objects, arrays,
// strings with escapes, numbers, true, false, null). Read-only; throws lorem::Error
// with the position of the first problem.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lorem::json {

class Value {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Value() = default;
  static Value parse(const std::string& text);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }

  // Typed access; each throws lorem::Error naming `what` when the kind differs.
  bool as_bool(const std::string& what) const;
  double as_number(const std::string& what) const;
  int64_t as_int(const std::string& what) const;  // a number with no fractional part
  const std::string& as_string(const std::string& what) const;
  const std::vector<Value>& as_array(const std::string& what) const;
  const std::map<std::string, Value>& as_object(const std::string& what) const;

  // Object member: throws lorem::Error naming the key when absent (or not an object).
  const Value& at(const std::string& key) const;
  bool contains(const std::string& key) const;

 private:
  friend class Parser;
  Kind kind_ = Kind::Null;
  bool boolean_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Value> array_;
  std::map<std::string, Value> object_;
};

}  // namespace lorem::json
