// The loaded form of a tokenizer.json, shared by the loader (tokenizer.cpp), the encoder
// (tokenizer_encode.cpp) and the decoder. Internal to core/: users see core/tokenizer.h.
//
// Every component of the file becomes a plain step struct; the encoder runs them in the order
// Hugging Face tokenizers does: added tokens that are not normalized are split off the raw text,
// each remaining piece is normalized, normalized added tokens are split off, the pre-tokenizer
// steps cut the rest into pre-tokens, and BPE turns each pre-token into ids.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/unicode.h"

namespace lora::tokenizer_detail {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct AddedToken {
  int32_t id = -1;
  std::string content;  // for normalized tokens: the normalized content they are matched by
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Leftmost-longest matching of a set of strings (the added tokens), like tokenizers' Aho-Corasick
// automaton with MatchKind::LeftmostLongest.
class TokenMatcher {
 public:
  void build(const std::vector<AddedToken>& tokens, bool normalized);
  bool empty() const { return n_ == 0; }
  // The leftmost-longest match starting at or after `from`: true and the index into the tokens
  // given to build(), with [*begin, *end).
  bool find(std::string_view text, size_t from, size_t* begin, size_t* end, size_t* index) const;

 private:
  size_t n_ = 0;
  std::vector<std::string> contents_;
  std::vector<size_t> indices_;                 // into the build() vector
  std::vector<std::vector<uint32_t>> by_byte_;  // first byte -> entries, longest first
};

enum class NormalizerKind {
  kNfc, kNfd, kNfkc, kNfkd, kLowercase, kPrepend, kReplace, kStrip, kStripAccents, kByteLevel
};
struct NormalizerStep {
  NormalizerKind kind;
  std::string text;                      // Prepend: the prefix; Replace: a literal pattern
  std::string content;                   // Replace: the replacement
  std::shared_ptr<unicode::Regex> regex; // Replace with a Regex pattern
  bool strip_left = false, strip_right = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };
enum class PreTokenizerKind { kByteLevel, kSplit, kMetaspace, kDigits };
struct PreTokenizerStep {
  PreTokenizerKind kind;
  bool add_prefix_space = false;          // ByteLevel
  std::shared_ptr<unicode::Regex> regex;  // ByteLevel with use_regex, Split with a Regex
  std::string literal;                    // Split with a String pattern
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::string replacement;                // Metaspace, UTF-8
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;                      // Metaspace
  bool individual_digits = false;         // Digits
};

enum class DecoderKind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
struct DecoderStep {
  DecoderKind kind;
  std::string pattern, content;   // Replace (literal pattern)
  std::shared_ptr<unicode::Regex> regex;  // Replace with a Regex pattern
  std::string replacement;        // Metaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  char32_t strip_char = ' ';      // Strip
  size_t strip_start = 0, strip_stop = 0;
};

// (left id, right id) -> (rank, merged id): open addressing, linear probing.
class MergeMap {
 public:
  void reserve(size_t n);
  // Inserts or replaces (a later duplicate of a merge wins, as in tokenizers' HashMap).
  void insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
  // false when (left, right) is not a merge.
  bool find(int32_t left, int32_t right, int32_t* rank, int32_t* merged) const {
    const uint64_t key = pack(left, right);
    size_t slot = hash(key) & mask_;
    while (true) {
      const Slot& s = slots_[slot];
      if (s.key == key) {
        *rank = s.rank;
        *merged = s.merged;
        return true;
      }
      if (s.key == kEmpty) return false;
      slot = (slot + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
  std::vector<Slot> slots_ = std::vector<Slot>(1);
  size_t mask_ = 0;
  size_t size_ = 0;
};

struct Model {
  std::string source;
  uint64_t fingerprint = 0;

  // BPE
  StringIdMap vocab;                  // the model's vocabulary
  std::vector<std::string> id_token;  // id -> token text (vocabulary and added tokens)
  std::vector<uint8_t> id_special;    // 1 for added tokens marked special
  std::vector<uint8_t> id_valid;      // 1 for ids that name a token
  std::vector<uint8_t> in_merge;      // 1 for ids that appear on either side of a merge
  MergeMap merges;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  int32_t byte_token_id[256];  // ids of <0x00>..<0xFF>, -1 when absent

  // Added tokens: special ones first, then the others, in file order (tokenizers' match order).
  std::vector<AddedToken> added;
  TokenMatcher raw_matcher;         // tokens with normalized false, matched on the raw text
  TokenMatcher normalized_matcher;  // tokens with normalized true, matched after normalization
  StringIdMap added_ids;            // content -> id

  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  bool has_decoder = false;
  std::vector<DecoderStep> decoder;

  // ByteLevel as the last pre-tokenizer step is applied by the model stage: the pre-token cache
  // is keyed by the raw bytes and each byte's initial symbol comes from byte_level_id.
  bool byte_level_at_model = false;
  int32_t byte_level_id[256];  // id of the byte-level character of each byte, -1 when absent

  int32_t bos_id = -1;
  int32_t eos_id = -1;
  bool add_bos = false;
  bool newline_is_boundary = false;
};

// The normalizer steps applied to one piece of text (skip_prepend: leave out Prepend, for a
// piece that continues an earlier text).
std::string apply_normalizer(const Model& model, std::string_view text, bool skip_prepend);
// Every occurrence of `from` (a literal, or a regular expression) replaced by `to`.
void replace_all(std::string* s, std::string_view from, std::string_view to);
void replace_regex(std::string* s, const unicode::Regex& regex, std::string_view to);

// GPT-2's byte-to-character table: the UTF-8 text of the printable character standing for each
// byte, and the inverse (code point -> byte, -1 for other characters).
const std::string& byte_level_char(uint8_t byte);
int byte_level_byte(char32_t cp);

// The pre-tokenizer pattern of GPT-2 (ByteLevel with use_regex).
extern const char* const kGpt2Pattern;

}  // namespace lora::tokenizer_detail
