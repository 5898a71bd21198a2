// A small JSON reader and writer (RFC 8259): enough for safetensors headers and metrics.jsonl.
//
// json::Value holds null, a boolean, a number, a string, an array or an object. Numbers written
// without a fraction or exponent that fit in int64 are kept as exact integers (safetensors byte
// offsets); all others are doubles. Objects keep their keys in insertion order, so a written
// line has its fields in the order they were set; a key appears at most once.
//
// json::parse   text -> Value; strict: one value, optional surrounding whitespace, valid UTF-8,
//               no duplicate keys, no trailing commas, arrays and objects nested at most 128
//               deep (bounded recursion: about 150 KiB of stack at the deepest). A malformed
//               text throws json::ParseError (a lora::InputError) carrying the byte offset.
// json::dump    Value -> compact one-line text (no spaces), parseable by any JSON reader.
//               Doubles are written in the shortest form that reads back exactly, with ".0"
//               added to integral values (2.0 -> "2.0") so they read back as doubles.
//               Non-finite doubles (NaN, inf) have no JSON form and are written as null.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "core/error.h"

namespace lora::json {

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

// "null", "bool", "number", "string", "array", "object": for messages.
const char* type_name(Type type);

class Value;
using Array = std::vector<Value>;
using Member = std::pair<std::string, Value>;
using Object = std::vector<Member>;

class Value {
 public:
  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : data_(b) {}
  Value(double d) : data_(d) {}
  template <std::integral T>
  requires(!std::same_as<T, bool>) Value(T i) : data_(to_int64(i)) {}
  Value(const char* s) : data_(std::string(s)) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(std::string_view s) : data_(std::string(s)) {}
  Value(Array a) : data_(std::move(a)) {}
  Value(Object o) : data_(std::move(o)) {}

  static Value array() { return Value(Array{}); }
  static Value object() { return Value(Object{}); }

  Type type() const;
  bool is_null() const { return type() == Type::kNull; }
  bool is_bool() const { return type() == Type::kBool; }
  bool is_number() const { return type() == Type::kNumber; }
  // A number kept as an exact int64 (written without fraction or exponent, or built from one).
  bool is_integer() const { return std::holds_alternative<int64_t>(data_); }
  bool is_string() const { return type() == Type::kString; }
  bool is_array() const { return type() == Type::kArray; }
  bool is_object() const { return type() == Type::kObject; }

  // Typed access; the wrong type throws lora::InputError ("expected a string, got a number").
  // Callers at an input boundary check type() first and report their own key or file.
  bool as_bool() const;
  double as_double() const;  // any number
  int64_t as_int64() const;  // an integer, or a double with an exact int64 value
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  // Arrays: append. Objects: lookup (nullptr when absent) and set (replaces an existing key).
  void push_back(Value v);
  const Value* find(std::string_view key) const;
  Value& set(std::string_view key, Value v);
  size_t size() const;  // elements of an array or members of an object; 0 otherwise

  // Structural equality; numbers compare by value (int 2 equals double 2.0).
  friend bool operator==(const Value& a, const Value& b);

 private:
  template <typename T>
  static int64_t to_int64(T i) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t)) {
      LORA_CHECK(i <= static_cast<T>(INT64_MAX), "integer ", i, " does not fit in a JSON int64");
    }
    return static_cast<int64_t>(i);
  }

  std::variant<std::nullptr_t, bool, int64_t, double, std::string, Array, Object> data_ = nullptr;
};

// A malformed JSON text. offset() is the byte offset in the parsed text where reading failed;
// what() reads "byte 17: expected ':' after an object key".
class ParseError : public InputError {
 public:
  ParseError(size_t offset, const std::string& reason);
  size_t offset() const { return offset_; }
  const std::string& reason() const { return reason_; }

 private:
  size_t offset_;
  std::string reason_;
};

Value parse(std::string_view text);
std::string dump(const Value& value);

// Appends `s` as a quoted JSON string (escaping '"', '\\' and control characters) to `out`.
void append_quoted(std::string& out, std::string_view s);

}  // namespace lora::json
