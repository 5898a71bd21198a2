// Unicode text helpers for the tokenizer: UTF-8 decoding and validation, the character classes
// Hugging Face tokenizers uses outside its regular expressions (White_Space, word characters),
// normalization forms and case mapping (utf8proc), and a PCRE2 regular expression with
// JIT-compiled matching.
//
// Regex patterns are compiled with UTF and Unicode properties (\p{L}, \p{N}, \s over all of
// Unicode), as the Oniguruma engine behind tokenizers reads them. The one difference found by
// comparing every code point (PCRE2's \s also matches U+180E) is removed by rewriting the pattern.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace lora::unicode {

// Byte offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF are invalid), or std::string_view::npos when all of `s` is valid.
size_t invalid_utf8_offset(std::string_view s);

// Decodes the code point at s[i] (valid UTF-8 assumed) and advances i past it.
char32_t next_code_point(std::string_view s, size_t* i);
// Length in bytes of the UTF-8 sequence whose first byte is `lead` (1 for a stray byte).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
void append_utf8(std::string* out, char32_t cp);

bool is_white_space(char32_t cp);  // the Unicode White_Space property (Rust's char::is_whitespace)
// A word character as Rust's regex \w reads it: letters, marks, decimal and letter numbers,
// connector punctuation (the underscore), and the joiners U+200C/U+200D.
bool is_word_char(char32_t cp);
bool is_nonspacing_mark(char32_t cp);   // general category Mn
bool is_numeric_category(char32_t cp);  // general categories Nd, Nl, No (Rust's char::is_numeric)

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string normalize(std::string_view s, NormalForm form);
// Lowercase, each character by its full lowercase mapping (U+0130 becomes "i\u0307").
std::string to_lower(std::string_view s);
// Removes the nonspacing marks (after NFD this strips accents).
std::string strip_nonspacing_marks(std::string_view s);

class RegexMatcher;

// A compiled pattern. Immutable, shared between threads; matching state is in RegexMatcher.
class Regex {
 public:
  // Throws lora::InputError("<what>: invalid regular expression ...") on a bad pattern.
  Regex(std::string_view pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }

 private:
  friend class RegexMatcher;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// Per-thread matching state for one Regex.
class RegexMatcher {
 public:
  explicit RegexMatcher(const Regex& regex);
  ~RegexMatcher();
  RegexMatcher(const RegexMatcher&) = delete;
  RegexMatcher& operator=(const RegexMatcher&) = delete;

  // The leftmost match in subject starting at or after byte `start` (a code point boundary):
  // true and [*begin, *end) when found. The subject must be valid UTF-8.
  bool find(std::string_view subject, size_t start, size_t* begin, size_t* end);

 private:
  const Regex* regex_;
  void* match_data_ = nullptr;     // pcre2_match_data_8*
  void* match_context_ = nullptr;  // pcre2_match_context_8*
  void* jit_stack_ = nullptr;      // pcre2_jit_stack_8*
};

}  // namespace lora::unicode
