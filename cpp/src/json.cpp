#include "lorem/json.hpp"

#include <charconv>
#include <cmath>

#include "lorem/model.hpp"

namespace lorem::json {

namespace {

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::Null:
      return "null";
    case Value::Kind::Bool:
      return "a boolean";
    case Value::Kind::Number:
      return "a number";
    case Value::Kind::String:
      return "a string";
    case Value::Kind::Array:
      return "an array";
    case Value::Kind::Object:
      return "an object";
  }
  return "?";
}

void append_utf8(std::string& out, uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

}  // namespace

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Value document() {
    Value value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw Error("malformed JSON at character " + std::to_string(pos_) + ": " + message);
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }

  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  bool literal(const char* word) {
    const std::string w(word);
    if (text_.compare(pos_, w.size(), w) == 0) {
      pos_ += w.size();
      return true;
    }
    return false;
  }

  Value parse_value(int depth) {
    if (depth > 64) fail("nested too deeply");
    Value value;
    const char c = peek();
    if (c == '{') {
      value.kind_ = Value::Kind::Object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return value;
      }
      while (true) {
        if (peek() != '"') fail("expected a string key");
        std::string key = parse_string();
        expect(':');
        value.object_[key] = parse_value(depth + 1);
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return value;
      }
    }
    if (c == '[') {
      value.kind_ = Value::Kind::Array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return value;
      }
      while (true) {
        value.array_.push_back(parse_value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return value;
      }
    }
    if (c == '"') {
      value.kind_ = Value::Kind::String;
      value.string_ = parse_string();
      return value;
    }
    if (literal("true")) {
      value.kind_ = Value::Kind::Bool;
      value.boolean_ = true;
      return value;
    }
    if (literal("false")) {
      value.kind_ = Value::Kind::Bool;
      return value;
    }
    if (literal("null")) return value;
    if (c == '-' || (c >= '0' && c <= '9')) {
      // from_chars: locale-independent, and rejects NaN/Infinity spelled as words
      const char* start = text_.c_str() + pos_;
      double number = 0.0;
      const auto [end, status] = std::from_chars(start, text_.c_str() + text_.size(), number);
      if (status != std::errc() || !std::isfinite(number)) fail("bad number");
      pos_ += static_cast<size_t>(end - start);
      value.kind_ = Value::Kind::Number;
      value.number_ = number;
      return value;
    }
    fail(std::string("unexpected character '") + c + "'");
  }

  uint32_t hex4() {
    if (pos_ + 4 > text_.size()) fail("short \\u escape");
    uint32_t code = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9')
        code |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f')
        code |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F')
        code |= static_cast<uint32_t>(h - 'A' + 10);
      else
        fail("bad \\u escape");
    }
    return code;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t code = hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            if (!literal("\\u")) fail("lone high surrogate");
            const uint32_t low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default:
          fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }

  const std::string& text_;
  size_t pos_ = 0;
};

Value Value::parse(const std::string& text) { return Parser(text).document(); }

namespace {
[[noreturn]] void wrong_kind(const std::string& what, const char* wanted, Value::Kind got) {
  throw Error(what + " must be " + wanted + ", not " + kind_name(got));
}
}  // namespace

bool Value::as_bool(const std::string& what) const {
  if (kind_ != Kind::Bool) wrong_kind(what, "a boolean", kind_);
  return boolean_;
}

double Value::as_number(const std::string& what) const {
  if (kind_ != Kind::Number) wrong_kind(what, "a number", kind_);
  return number_;
}

int64_t Value::as_int(const std::string& what) const {
  const double number = as_number(what);
  if (std::floor(number) != number || std::abs(number) > 9.0e15)
    throw Error(what + " must be an integer");
  return static_cast<int64_t>(number);
}

const std::string& Value::as_string(const std::string& what) const {
  if (kind_ != Kind::String) wrong_kind(what, "a string", kind_);
  return string_;
}

const std::vector<Value>& Value::as_array(const std::string& what) const {
  if (kind_ != Kind::Array) wrong_kind(what, "an array", kind_);
  return array_;
}

const std::map<std::string, Value>& Value::as_object(const std::string& what) const {
  if (kind_ != Kind::Object) wrong_kind(what, "an object", kind_);
  return object_;
}

const Value& Value::at(const std::string& key) const {
  const auto& members = as_object("the container of '" + key + "'");
  const auto found = members.find(key);
  if (found == members.end()) throw Error("'" + key + "' is missing");
  return found->second;
}

bool Value::contains(const std::string& key) const {
  return kind_ == Kind::Object && object_.count(key) > 0;
}

}  // namespace lorem::json
