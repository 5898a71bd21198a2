// The loaded form of a tokenizer.json, shared by the loader (tokenizer.cpp), the encoder
// (tokenizer_encode.cpp) and the decoder. Internal to core/: users see core/tokenizer.h.
//
// Every component of the file becomes a plain step struct; the encoder runs them in the order
// Hugging Face tokenizers does: added tokens that are not normalized are split off the raw text,
// each remaining piece is normalized, normalized added tokens are split off, the pre-tokenizer
// steps cut the rest into pre-tokens, and BPE turns each pre-token into ids.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/unicode.h"

namespace lora::tokenizer_detail {

// Token text -> id: open addressing over a flat slot array, the texts in one arena. Built once
// while loading, then only read (lookups of pre-tokens and characters are on the encoding path).
class TokenIds {
 public:
  // Sets the id of `token` (replacing an earlier one).
  void set(std::string_view token, int32_t id);
  // The id of `token`, or -1.
  int32_t find(std::string_view token) const {
    if (n_ == 0) return -1;
    const uint64_t h = hash(token);
    for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      const Slot& s = slots_[slot];
      if (s.id < 0) return -1;
      if (s.hash == h && s.length == token.size() &&
          std::memcmp(text_.data() + s.offset, token.data(), token.size()) == 0)
        return s.id;
    }
  }
  size_t size() const { return n_; }
  // Every (token, id), in no particular order.
  std::vector<std::pair<std::string_view, int32_t>> entries() const;

  static uint64_t hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      h = (h ^ w) * 0xff51afd7ed558ccdull;
      h ^= h >> 32;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = (h ^ tail) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0, length = 0;
    int32_t id = -1;  // -1: empty
  };
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t n_ = 0;
  std::string text_;
};

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
  TokenIds vocab;                     // the model's vocabulary
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

  // Where BPE can cut a word without changing its ids. No merge joins a symbol to a following
  // symbol that starts with a character no merge's right side starts with ("▁" in SentencePiece
  // vocabularies), nor a symbol that ends with a character no merge's left side ends with to the
  // next. Only characters that are vocabulary tokens themselves count (not byte fallbacks, not the
  // unknown token), and only without ignore_merges, a subword prefix or suffix, or the byte-level
  // mapping at the model (then pre-tokens are short anyway).
  bool split_words = false;
  std::vector<uint64_t> split_before_bits, split_after_bits;  // over code points < 0x10000
  bool splits_before(char32_t cp) const {
    return cp < 0x10000 && (split_before_bits[cp >> 6] >> (cp & 63) & 1);
  }
  bool splits_after(char32_t cp) const {
    return cp < 0x10000 && (split_after_bits[cp >> 6] >> (cp & 63) & 1);
  }
  std::vector<uint64_t> right_first_bits, left_last_bits;  // while loading: over all code points

  // Added tokens: special ones first, then the others, in file order (tokenizers' match order).
  std::vector<AddedToken> added;
  TokenMatcher raw_matcher;         // tokens with normalized false, matched on the raw text
  TokenMatcher normalized_matcher;  // tokens with normalized true, matched after normalization
  TokenIds added_ids;               // content -> id

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
