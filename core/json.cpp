// JSON reader (recursive descent over a string_view, byte offsets in every error) and writer.
#include "core/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <unordered_set>

namespace lora::json {

const char* type_name(Type type) {
  switch (type) {
    case Type::kNull: return "null";
    case Type::kBool: return "bool";
    case Type::kNumber: return "number";
    case Type::kString: return "string";
    case Type::kArray: return "array";
    case Type::kObject: return "object";
  }
  return "?";
}

// ---- Value ----

Type Value::type() const {
  switch (data_.index()) {
    case 0: return Type::kNull;
    case 1: return Type::kBool;
    case 2:
    case 3: return Type::kNumber;
    case 4: return Type::kString;
    case 5: return Type::kArray;
    default: return Type::kObject;
  }
}

namespace {
[[noreturn]] void wrong_type(Type want, Type got) {
  throw InputError(
      detail::concat("JSON value: expected ", type_name(want), ", got ", type_name(got)));
}
}  // namespace

bool Value::as_bool() const {
  if (!is_bool()) wrong_type(Type::kBool, type());
  return std::get<bool>(data_);
}

double Value::as_double() const {
  if (const auto* i = std::get_if<int64_t>(&data_)) return static_cast<double>(*i);
  if (const auto* d = std::get_if<double>(&data_)) return *d;
  wrong_type(Type::kNumber, type());
}

int64_t Value::as_int64() const {
  if (const auto* i = std::get_if<int64_t>(&data_)) return *i;
  if (const auto* d = std::get_if<double>(&data_)) {
    // [-2^63, 2^63) holds every double that converts to int64 without overflow.
    if (*d >= -9223372036854775808.0 && *d < 9223372036854775808.0 && std::trunc(*d) == *d)
      return static_cast<int64_t>(*d);
    throw InputError(detail::concat("JSON value: expected an integer, got ", dump(*this)));
  }
  wrong_type(Type::kNumber, type());
}

const std::string& Value::as_string() const {
  if (!is_string()) wrong_type(Type::kString, type());
  return std::get<std::string>(data_);
}

const Array& Value::as_array() const {
  if (!is_array()) wrong_type(Type::kArray, type());
  return std::get<Array>(data_);
}

Array& Value::as_array() {
  if (!is_array()) wrong_type(Type::kArray, type());
  return std::get<Array>(data_);
}

const Object& Value::as_object() const {
  if (!is_object()) wrong_type(Type::kObject, type());
  return std::get<Object>(data_);
}

Object& Value::as_object() {
  if (!is_object()) wrong_type(Type::kObject, type());
  return std::get<Object>(data_);
}

void Value::push_back(Value v) { as_array().push_back(std::move(v)); }

const Value* Value::find(std::string_view key) const {
  for (const auto& [k, v] : as_object())
    if (k == key) return &v;
  return nullptr;
}

Value& Value::set(std::string_view key, Value v) {
  Object& members = as_object();
  for (auto& [k, existing] : members) {
    if (k == key) {
      existing = std::move(v);
      return existing;
    }
  }
  members.emplace_back(std::string(key), std::move(v));
  return members.back().second;
}

size_t Value::size() const {
  if (is_array()) return std::get<Array>(data_).size();
  if (is_object()) return std::get<Object>(data_).size();
  return 0;
}

bool operator==(const Value& a, const Value& b) {
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Type::kNull: return true;
    case Type::kBool: return a.as_bool() == b.as_bool();
    case Type::kNumber:
      if (a.is_integer() && b.is_integer()) return a.as_int64() == b.as_int64();
      return a.as_double() == b.as_double();
    case Type::kString: return a.as_string() == b.as_string();
    case Type::kArray: return a.as_array() == b.as_array();
    case Type::kObject: return a.as_object() == b.as_object();
  }
  return false;
}

// ---- reader ----

ParseError::ParseError(size_t offset, const std::string& reason)
    : InputError(detail::concat("byte ", offset, ": ", reason)), offset_(offset), reason_(reason) {}

namespace {

// Arrays and objects nest at most this deep (serde_json's limit, so every safetensors header the
// reference implementation reads is read here). Each level is a few recursive frames of about 1 KiB
// together, so the deepest document needs about 150 KiB of stack (tested on a 256 KiB thread).
constexpr int kMaxDepth = 128;

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Value parse_document() {
    skip_whitespace();
    if (at_end()) fail("expected a JSON value, got end of input");
    Value v = parse_value(0);
    skip_whitespace();
    if (!at_end()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& reason) const { throw ParseError(pos_, reason); }
  [[noreturn]] void fail_at(size_t pos, const std::string& reason) const {
    throw ParseError(pos, reason);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  static std::string describe(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return detail::concat("'", c, "'");
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02X", u);
    return std::string("byte ") + buf;
  }
  std::string describe_here() const { return at_end() ? "end of input" : describe(peek()); }

  void skip_whitespace() {
    while (!at_end()) {
      const char c = peek();
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  void expect(char c, const char* what) {
    if (at_end() || peek() != c)
      fail(detail::concat("expected '", c, "' ", what, ", got ", describe_here()));
    ++pos_;
  }

  // `depth`: the number of arrays and objects the value is inside.
  Value parse_value(int depth) {
    if (at_end()) fail("expected a JSON value, got end of input");
    const char c = peek();
    if ((c == '{' || c == '[') && depth >= kMaxDepth)
      fail(detail::concat("nesting deeper than ", kMaxDepth, " levels"));
    switch (c) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Value(parse_string());
      case 't': parse_literal("true"); return Value(true);
      case 'f': parse_literal("false"); return Value(false);
      case 'n': parse_literal("null"); return Value(nullptr);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail(detail::concat("expected a JSON value, got ", describe(c)));
    }
  }

  void parse_literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word)
      fail(detail::concat("invalid literal (expected '", word, "')"));
    pos_ += word.size();
  }

  Value parse_object(int depth) {
    ++pos_;  // '{'
    Object members;
    std::unordered_set<std::string> keys;
    skip_whitespace();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Value(std::move(members));
    }
    while (true) {
      skip_whitespace();
      if (at_end() || peek() != '"')
        fail(detail::concat("expected a string key in object, got ", describe_here()));
      const size_t key_pos = pos_;
      std::string key = parse_string();
      if (!keys.insert(key).second) {
        std::string shown;
        append_quoted(shown, key);
        fail_at(key_pos, detail::concat("duplicate object key ", shown));
      }
      skip_whitespace();
      expect(':', "after an object key");
      skip_whitespace();
      Value v = parse_value(depth + 1);
      members.emplace_back(std::move(key), std::move(v));
      skip_whitespace();
      if (at_end()) fail("unterminated object: expected ',' or '}', got end of input");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return Value(std::move(members));
      }
      fail(detail::concat("expected ',' or '}' in object, got ", describe(peek())));
    }
  }

  Value parse_array(int depth) {
    ++pos_;  // '['
    Array items;
    skip_whitespace();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return Value(std::move(items));
    }
    while (true) {
      skip_whitespace();
      items.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (at_end()) fail("unterminated array: expected ',' or ']', got end of input");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return Value(std::move(items));
      }
      fail(detail::concat("expected ',' or ']' in array, got ", describe(peek())));
    }
  }

  Value parse_number() {
    const size_t begin = pos_;
    auto digit = [&] { return !at_end() && peek() >= '0' && peek() <= '9'; };
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (!digit()) fail("expected a digit in number");
    if (peek() == '0') {
      ++pos_;
      if (digit()) fail("leading zeros are not allowed in a number");
    } else {
      while (digit()) ++pos_;
    }
    if (!at_end() && peek() == '.') {
      integral = false;
      ++pos_;
      if (!digit()) fail("expected a digit after the decimal point");
      while (digit()) ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (!digit()) fail("expected a digit in the exponent");
      while (digit()) ++pos_;
    }
    const char* first = text_.data() + begin;
    const char* last = text_.data() + pos_;
    if (integral) {
      int64_t i = 0;
      auto [ptr, ec] = std::from_chars(first, last, i);
      if (ec == std::errc() && ptr == last) return Value(i);
      // Out of int64 range: fall through and keep it as a double.
    }
    double d = 0.0;
    auto [ptr, ec] = std::from_chars(first, last, d);
    if (ec == std::errc::result_out_of_range) fail_at(begin, "number out of range for a double");
    if (ec != std::errc() || ptr != last) fail_at(begin, "invalid number");
    return Value(d);
  }

  unsigned parse_hex4() {
    if (text_.size() - pos_ < 4) fail("expected 4 hex digits after \\u");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text_[pos_];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        fail(detail::concat("expected a hex digit in \\u escape, got ", describe(c)));
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Length of the valid UTF-8 sequence starting at pos_ (lead byte >= 0x80), or fails.
  size_t utf8_sequence_length() const {
    const auto* s = reinterpret_cast<const unsigned char*>(text_.data());
    const size_t n = text_.size();
    const unsigned char b0 = s[pos_];
    size_t len;
    uint32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      fail("invalid UTF-8 in string");
    }
    if (n - pos_ < len) fail("truncated UTF-8 sequence in string");
    for (size_t k = 1; k < len; ++k) {
      if ((s[pos_ + k] & 0xC0) != 0x80) fail("invalid UTF-8 in string");
      cp = (cp << 6) | (s[pos_ + k] & 0x3F);
    }
    const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      fail("invalid UTF-8 in string");
    return len;
  }

  std::string parse_string() {
    const size_t open = pos_;
    ++pos_;  // '"'
    std::string out;
    while (true) {
      if (at_end()) fail_at(open, "unterminated string");
      const char c = peek();
      const auto u = static_cast<unsigned char>(c);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        ++pos_;
        if (at_end()) fail_at(open, "unterminated string");
        const char e = peek();
        ++pos_;
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            const size_t esc = pos_ - 2;
            uint32_t cp = parse_hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(esc, "unpaired low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (text_.substr(pos_, 2) != "\\u")
                fail_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
              pos_ += 2;
              const uint32_t lo = parse_hex4();
              if (lo < 0xDC00 || lo > 0xDFFF)
                fail_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, cp);
            break;
          }
          default:
            --pos_;
            fail(detail::concat("invalid escape in string: backslash followed by ", describe(e)));
        }
        continue;
      }
      if (u < 0x20) fail("unescaped control character in string");
      if (u < 0x80) {
        out += c;
        ++pos_;
        continue;
      }
      const size_t len = utf8_sequence_length();
      out.append(text_.substr(pos_, len));
      pos_ += len;
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

void dump_into(std::string& out, const Value& v) {
  switch (v.type()) {
    case Type::kNull: out += "null"; return;
    case Type::kBool: out += v.as_bool() ? "true" : "false"; return;
    case Type::kNumber: {
      char buf[32];
      if (v.is_integer()) {
        auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, v.as_int64());
        out.append(buf, ptr);
        return;
      }
      const double d = v.as_double();
      if (!std::isfinite(d)) {
        out += "null";
        return;
      }
      // Shortest text that reads back to the same double; an integral value gets ".0" so that
      // it reads back as a double (and -0.0 keeps its sign) rather than as the integer 0.
      auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, d);
      const std::string_view text(buf, static_cast<size_t>(ptr - buf));
      out += text;
      if (text.find_first_of(".eE") == std::string_view::npos) out += ".0";
      return;
    }
    case Type::kString: append_quoted(out, v.as_string()); return;
    case Type::kArray: {
      out += '[';
      bool first = true;
      for (const Value& item : v.as_array()) {
        if (!first) out += ',';
        first = false;
        dump_into(out, item);
      }
      out += ']';
      return;
    }
    case Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [k, item] : v.as_object()) {
        if (!first) out += ',';
        first = false;
        append_quoted(out, k);
        out += ':';
        dump_into(out, item);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace

Value parse(std::string_view text) { return Parser(text).parse_document(); }

std::string dump(const Value& value) {
  std::string out;
  dump_into(out, value);
  return out;
}

void append_quoted(std::string& out, std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20 || u == 0x7F) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

}  // namespace lora::json
