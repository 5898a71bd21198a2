// Loading a Hugging Face tokenizer.json (plus tokenizer_config.json / config.json from a model
// directory) into tokenizer_detail::Model, and decoding ids back to text. Encoding is in
// tokenizer_encode.cpp. Every unsupported component is refused here, by name, with the JSON path
// of the key that holds it.
#include "core/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/hash.h"
#include "core/json.h"
#include "core/tokenizer_model.h"

namespace lora {

namespace tokenizer_detail {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// Pre-tokenizer patterns known never to put a line break and a following character that is not
// white space in one pre-token, nor to end a pre-token differently at the end of a text when a
// single line break sits between two characters that are not white space (GPT-2, Llama 3, Qwen2).
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct ByteLevelTable {
  std::string chars[256];
  std::unordered_map<char32_t, int> bytes;
  ByteLevelTable() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      unicode::append_utf8(&chars[b], cp);
      bytes[cp] = b;
    }
  }
};

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

}  // namespace

const std::string& byte_level_char(uint8_t byte) { return byte_level_table().chars[byte]; }

int byte_level_byte(char32_t cp) {
  const auto& m = byte_level_table().bytes;
  const auto it = m.find(cp);
  return it == m.end() ? -1 : it->second;
}

void TokenMatcher::build(const std::vector<AddedToken>& tokens, bool normalized) {
  contents_.clear();
  indices_.clear();
  by_byte_.assign(256, {});
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].normalized != normalized || tokens[i].content.empty()) continue;
    contents_.push_back(tokens[i].content);
    indices_.push_back(i);
  }
  n_ = contents_.size();
  for (uint32_t k = 0; k < n_; ++k)
    by_byte_[static_cast<unsigned char>(contents_[k][0])].push_back(k);
  for (auto& list : by_byte_) {
    // Longest first; equal lengths keep their order (the first added wins, as in tokenizers).
    std::stable_sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
      return contents_[a].size() > contents_[b].size();
    });
  }
}

bool TokenMatcher::find(std::string_view text, size_t from, size_t* begin, size_t* end,
                        size_t* index) const {
  if (n_ == 0) return false;
  for (size_t p = from; p < text.size(); ++p) {
    const auto& list = by_byte_[static_cast<unsigned char>(text[p])];
    for (uint32_t k : list) {
      const std::string& c = contents_[k];
      if (c.size() <= text.size() - p && std::memcmp(text.data() + p, c.data(), c.size()) == 0) {
        *begin = p;
        *end = p + c.size();
        *index = indices_[k];
        return true;
      }
    }
  }
  return false;
}

void TokenIds::set(std::string_view token, int32_t id) {
  if (2 * (n_ + 1) > slots_.size()) grow();
  const uint64_t h = hash(token);
  size_t slot = h & mask_;
  while (slots_[slot].id >= 0) {
    Slot& s = slots_[slot];
    if (s.hash == h && s.length == token.size() && std::memcmp(text_.data() + s.offset, token.data(), token.size()) == 0) {
      s.id = id;
      return;
    }
    slot = (slot + 1) & mask_;
  }
  LORA_CHECK(text_.size() + token.size() < (size_t{1} << 32), "token texts exceed 4 GiB");
  slots_[slot] = Slot{h, static_cast<uint32_t>(text_.size()), static_cast<uint32_t>(token.size()), id};
  text_.append(token);
  ++n_;
}

void TokenIds::grow() {
  std::vector<Slot> old(std::max<size_t>(64, slots_.size() * 2));
  old.swap(slots_);
  mask_ = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.id < 0) continue;
    size_t slot = s.hash & mask_;
    while (slots_[slot].id >= 0) slot = (slot + 1) & mask_;
    slots_[slot] = s;
  }
}

std::vector<std::pair<std::string_view, int32_t>> TokenIds::entries() const {
  std::vector<std::pair<std::string_view, int32_t>> out;
  out.reserve(n_);
  for (const Slot& s : slots_)
    if (s.id >= 0) out.emplace_back(std::string_view(text_).substr(s.offset, s.length), s.id);
  return out;
}

void MergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2) cap <<= 1;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
}

void MergeMap::insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  LORA_CHECK(2 * (size_ + 1) < slots_.size(), "MergeMap::reserve was not called with enough room");
  const uint64_t key = pack(left, right);
  size_t slot = hash(key) & mask_;
  while (slots_[slot].key != kEmpty && slots_[slot].key != key) slot = (slot + 1) & mask_;
  if (slots_[slot].key == kEmpty) ++size_;
  slots_[slot] = Slot{key, rank, merged};
}

}  // namespace tokenizer_detail

namespace {

using namespace tokenizer_detail;
namespace fs = std::filesystem;

std::string read_text_file(const std::string& path, const char* what) {
  std::error_code ec;
  LORA_INPUT_CHECK(fs::exists(path, ec), path, ": ", what, " does not exist");
  LORA_INPUT_CHECK(fs::is_regular_file(path, ec), path, ": ", what, " is not a regular file");
  std::ifstream in(path, std::ios::binary);
  LORA_INPUT_CHECK(in, path, ": ", what, " cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::Value parse_json_file(std::string_view text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::ParseError& e) {
    throw InputError(detail::concat(source, ": not valid JSON: ", e.what()));
  }
}

// Reads typed fields of a JSON object, naming the file and the JSON path in every message.
class Fields {
 public:
  Fields(const json::Value& object, std::string path, const std::string& source)
      : object_(object), path_(std::move(path)), source_(source) {
    if (!object.is_object()) fail("", detail::concat("expected an object, got ", type_name(object.type())));
  }

  [[noreturn]] void fail(std::string_view key, const std::string& what) const {
    throw InputError(detail::concat(source_, ": ", key_path(key), ": ", what));
  }
  std::string key_path(std::string_view key) const {
    if (key.empty()) return path_.empty() ? std::string("(top level)") : path_;
    return path_.empty() ? std::string(key) : detail::concat(path_, ".", key);
  }
  const json::Value* find(std::string_view key) const { return object_.find(key); }
  bool has(std::string_view key) const {
    const json::Value* v = find(key);
    return v != nullptr && !v->is_null();
  }
  const json::Value& required(std::string_view key) const {
    const json::Value* v = find(key);
    if (v == nullptr) fail(key, "required key is missing");
    return *v;
  }
  std::string string(std::string_view key) const {
    const json::Value& v = required(key);
    if (!v.is_string()) fail(key, detail::concat("expected a string, got ", type_name(v.type())));
    return v.as_string();
  }
  std::string string_or(std::string_view key, const std::string& fallback) const {
    return has(key) ? string(key) : fallback;
  }
  bool boolean_or(std::string_view key, bool fallback) const {
    if (!has(key)) return fallback;
    const json::Value& v = *find(key);
    if (!v.is_bool()) fail(key, detail::concat("expected true or false, got ", type_name(v.type())));
    return v.as_bool();
  }
  int64_t integer(std::string_view key) const {
    const json::Value& v = required(key);
    if (!v.is_number() || !v.is_integer()) fail(key, detail::concat("expected an integer, got ", type_name(v.type())));
    return v.as_int64();
  }
  int64_t integer_or(std::string_view key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  const std::string& path() const { return path_; }
  const std::string& source() const { return source_; }

 private:
  const json::Value& object_;
  std::string path_;
  const std::string& source_;
};

std::string child(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : detail::concat(path, ".", key);
}

char32_t single_char(const Fields& f, std::string_view key, const std::string& s) {
  size_t i = 0;
  if (s.empty() || unicode::invalid_utf8_offset(s) != std::string_view::npos) f.fail(key, "expected one character");
  const char32_t cp = unicode::next_code_point(s, &i);
  if (i != s.size()) f.fail(key, detail::concat("expected one character, got '", s, "'"));
  return cp;
}

// A Split / Replace pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::shared_ptr<unicode::Regex> regex;
};

Pattern read_pattern(const Fields& f, std::string_view key) {
  const json::Value& v = f.required(key);
  Fields p(v, child(f.path(), key), f.source());
  Pattern out;
  if (p.has("String")) {
    out.literal = p.string("String");
    if (out.literal.empty()) p.fail("String", "an empty pattern is not supported");
  } else if (p.has("Regex")) {
    out.regex = std::make_shared<unicode::Regex>(p.string("Regex"), f.source() + ": " + p.key_path("Regex"));
  } else {
    f.fail(key, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  return out;
}

PrependScheme read_prepend_scheme(const Fields& f) {
  if (f.has("prepend_scheme")) {
    const std::string s = f.string("prepend_scheme");
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    f.fail("prepend_scheme", detail::concat("expected always, first or never, got '", s, "'"));
  }
  // Files written before prepend_scheme existed say add_prefix_space.
  return f.boolean_or("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

void read_normalizer(const json::Value& v, const std::string& path, const std::string& source,
                     std::vector<NormalizerStep>* out) {
  if (v.is_null()) return;
  Fields f(v, path, source);
  const std::string type = f.string("type");
  NormalizerStep s{};
  if (type == "Sequence") {
    const json::Value& list = f.required("normalizers");
    if (!list.is_array()) f.fail("normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_normalizer(list.as_array()[i], detail::concat(child(path, "normalizers"), "[", i, "]"), source, out);
    return;
  }
  if (type == "NFC") s.kind = NormalizerKind::kNfc;
  else if (type == "NFD") s.kind = NormalizerKind::kNfd;
  else if (type == "NFKC") s.kind = NormalizerKind::kNfkc;
  else if (type == "NFKD") s.kind = NormalizerKind::kNfkd;
  else if (type == "Lowercase") s.kind = NormalizerKind::kLowercase;
  else if (type == "StripAccents") s.kind = NormalizerKind::kStripAccents;
  else if (type == "ByteLevel") s.kind = NormalizerKind::kByteLevel;
  else if (type == "Prepend") {
    s.kind = NormalizerKind::kPrepend;
    s.text = f.string("prepend");
  } else if (type == "Replace") {
    s.kind = NormalizerKind::kReplace;
    Pattern p = read_pattern(f, "pattern");
    s.text = p.literal;
    s.regex = p.regex;
    s.content = f.string("content");
  } else if (type == "Strip") {
    s.kind = NormalizerKind::kStrip;
    s.strip_left = f.boolean_or("strip_left", true);
    s.strip_right = f.boolean_or("strip_right", true);
  } else {
    f.fail("type", detail::concat("unsupported normalizer '", type,
                                  "' (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, "
                                  "Replace, Strip, StripAccents, ByteLevel)"));
  }
  out->push_back(std::move(s));
}

SplitBehavior read_behavior(const Fields& f) {
  const std::string b = f.string("behavior");
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  f.fail("behavior", detail::concat("unknown split behavior '", b,
                                    "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)"));
}

void read_pre_tokenizer(const json::Value& v, const std::string& path, const std::string& source,
                        std::vector<PreTokenizerStep>* out) {
  if (v.is_null()) return;
  Fields f(v, path, source);
  const std::string type = f.string("type");
  PreTokenizerStep s{};
  if (type == "Sequence") {
    const json::Value& list = f.required("pretokenizers");
    if (!list.is_array()) f.fail("pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_pre_tokenizer(list.as_array()[i], detail::concat(child(path, "pretokenizers"), "[", i, "]"), source, out);
    return;
  }
  if (type == "ByteLevel") {
    s.kind = PreTokenizerKind::kByteLevel;
    s.add_prefix_space = f.boolean_or("add_prefix_space", true);
    if (f.boolean_or("use_regex", true))
      s.regex = std::make_shared<unicode::Regex>(kGpt2Pattern, source + ": " + path);
  } else if (type == "Split") {
    s.kind = PreTokenizerKind::kSplit;
    Pattern p = read_pattern(f, "pattern");
    s.literal = p.literal;
    s.regex = p.regex;
    s.behavior = read_behavior(f);
    s.invert = f.boolean_or("invert", false);
  } else if (type == "Metaspace") {
    s.kind = PreTokenizerKind::kMetaspace;
    s.replacement = f.string("replacement");
    single_char(f, "replacement", s.replacement);
    s.prepend_scheme = read_prepend_scheme(f);
    s.split = f.boolean_or("split", true);
  } else if (type == "Digits") {
    s.kind = PreTokenizerKind::kDigits;
    s.individual_digits = f.boolean_or("individual_digits", false);
  } else {
    f.fail("type", detail::concat("unsupported pre-tokenizer '", type,
                                  "' (supported: Sequence, ByteLevel, Split, Metaspace, Digits)"));
  }
  out->push_back(std::move(s));
}

void read_decoder(const json::Value& v, const std::string& path, const std::string& source,
                  std::vector<DecoderStep>* out) {
  Fields f(v, path, source);
  const std::string type = f.string("type");
  DecoderStep s{};
  if (type == "Sequence") {
    const json::Value& list = f.required("decoders");
    if (!list.is_array()) f.fail("decoders", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      read_decoder(list.as_array()[i], detail::concat(child(path, "decoders"), "[", i, "]"), source, out);
    return;
  }
  if (type == "ByteLevel") s.kind = DecoderKind::kByteLevel;
  else if (type == "ByteFallback") s.kind = DecoderKind::kByteFallback;
  else if (type == "Fuse") s.kind = DecoderKind::kFuse;
  else if (type == "Metaspace") {
    s.kind = DecoderKind::kMetaspace;
    s.replacement = f.string("replacement");
    single_char(f, "replacement", s.replacement);
    s.prepend_scheme = read_prepend_scheme(f);
  } else if (type == "Replace") {
    s.kind = DecoderKind::kReplace;
    Pattern p = read_pattern(f, "pattern");
    s.pattern = p.literal;
    s.regex = p.regex;
    s.content = f.string("content");
  } else if (type == "Strip") {
    s.kind = DecoderKind::kStrip;
    s.strip_char = single_char(f, "content", f.string("content"));
    const int64_t start = f.integer("start"), stop = f.integer("stop");
    if (start < 0 || stop < 0) f.fail("start", "expected non-negative counts");
    s.strip_start = static_cast<size_t>(start);
    s.strip_stop = static_cast<size_t>(stop);
  } else {
    f.fail("type", detail::concat("unsupported decoder '", type,
                                  "' (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, "
                                  "Fuse, Strip)"));
  }
  out->push_back(std::move(s));
}

// The special token a TemplateProcessing post-processor puts before the sequence, or -1.
int32_t template_bos(const json::Value& v, const std::string& source) {
  if (!v.is_object()) return -1;
  const json::Value* type = v.find("type");
  if (type == nullptr || !type->is_string()) return -1;
  if (type->as_string() == "Sequence") {
    const json::Value* list = v.find("processors");
    if (list == nullptr || !list->is_array()) return -1;
    for (const json::Value& p : list->as_array()) {
      const int32_t id = template_bos(p, source);
      if (id >= 0) return id;
    }
    return -1;
  }
  if (type->as_string() != "TemplateProcessing") return -1;
  const json::Value* single = v.find("single");
  const json::Value* specials = v.find("special_tokens");
  if (single == nullptr || !single->is_array() || single->size() == 0 || specials == nullptr) return -1;
  const json::Value* first = single->as_array()[0].find("SpecialToken");
  if (first == nullptr) return -1;
  const json::Value* name = first->find("id");
  if (name == nullptr || !name->is_string()) return -1;
  const json::Value* entry = specials->find(name->as_string());
  if (entry == nullptr) return -1;
  const json::Value* ids = entry->find("ids");
  if (ids == nullptr || !ids->is_array() || ids->size() != 1 || !ids->as_array()[0].is_integer()) return -1;
  return static_cast<int32_t>(ids->as_array()[0].as_int64());
}

void read_model(const json::Value& v, const std::string& source, Model* m) {
  Fields f(v, "model", source);
  const std::string type = f.string_or("type", "BPE");
  if (type != "BPE") {
    f.fail("type", detail::concat("unsupported model '", type, "' (only BPE tokenizers are supported)"));
  }
  if (f.has("dropout")) {
    const json::Value& d = *f.find("dropout");
    if (!d.is_number()) f.fail("dropout", "expected a number or null");
    if (d.as_double() != 0.0)
      f.fail("dropout", detail::concat("BPE dropout ", d.as_double(),
                                       " is not supported (it makes tokenisation random)"));
  }
  m->fuse_unk = f.boolean_or("fuse_unk", false);
  m->byte_fallback = f.boolean_or("byte_fallback", false);
  m->ignore_merges = f.boolean_or("ignore_merges", false);
  m->continuing_subword_prefix = f.string_or("continuing_subword_prefix", "");
  m->end_of_word_suffix = f.string_or("end_of_word_suffix", "");

  const json::Value& vocab = f.required("vocab");
  if (!vocab.is_object()) f.fail("vocab", "expected an object of token -> id");
  for (const auto& [token, id] : vocab.as_object()) {
    if (!id.is_integer() || id.as_int64() < 0 || id.as_int64() >= (int64_t{1} << 30)) {
      f.fail("vocab", detail::concat("token ", json::dump(json::Value(token)), ": expected an id >= 0, got ",
                                     json::dump(id)));
    }
    m->vocab.set(token, static_cast<int32_t>(id.as_int64()));
  }
  if (f.has("unk_token")) {
    const std::string unk = f.string("unk_token");
    m->unk_id = m->vocab.find(unk);
    if (m->unk_id < 0) f.fail("unk_token", detail::concat("'", unk, "' is not in the vocabulary"));
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m->byte_token_id[b] = m->vocab.find(std::string_view(name));
  }

  int32_t max_vocab_id = -1;
  for (const auto& [token, id] : m->vocab.entries()) max_vocab_id = std::max(max_vocab_id, id);
  m->in_merge.assign(static_cast<size_t>(max_vocab_id + 1), 0);

  const json::Value& merges = f.required("merges");
  if (!merges.is_array()) f.fail("merges", "expected an array");
  m->right_first_bits.assign(0x110000 / 64, 0);
  m->left_last_bits.assign(0x110000 / 64, 0);
  auto set_bit = [](std::vector<uint64_t>& bits, char32_t cp) { bits[cp >> 6] |= uint64_t{1} << (cp & 63); };
  m->merges.reserve(merges.size());
  const std::string& prefix = m->continuing_subword_prefix;
  int32_t rank = 0;
  for (const json::Value& entry : merges.as_array()) {
    std::string a, b;
    if (entry.is_string()) {
      const std::string& s = entry.as_string();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        f.fail("merges", detail::concat("merge ", rank, " (", json::dump(entry),
                                        "): expected two tokens separated by one space"));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry.as_array()[0].is_string() &&
               entry.as_array()[1].is_string()) {
      a = entry.as_array()[0].as_string();
      b = entry.as_array()[1].as_string();
    } else {
      f.fail("merges", detail::concat("merge ", rank, ": expected \"a b\" or [\"a\", \"b\"], got ",
                                      json::dump(entry)));
    }
    const int32_t ia = m->vocab.find(a), ib = m->vocab.find(b);
    if (ia < 0 || ib < 0) {
      f.fail("merges", detail::concat("merge ", rank, " (", json::dump(entry), "): '",
                                      ia < 0 ? a : b, "' is not in the vocabulary"));
    }
    std::string merged = a;
    if (!prefix.empty() && b.compare(0, prefix.size(), prefix) == 0) merged += b.substr(prefix.size());
    else merged += b;
    const int32_t im = m->vocab.find(merged);
    if (im < 0) {
      f.fail("merges", detail::concat("merge ", rank, " (", json::dump(entry), "): the merged token '",
                                      merged, "' is not in the vocabulary"));
    }
    m->merges.insert(ia, ib, rank, im);
    m->in_merge[ia] = m->in_merge[ib] = 1;
    if (unicode::invalid_utf8_offset(a) == std::string::npos && unicode::invalid_utf8_offset(b) == std::string::npos) {
      size_t i = 0;
      set_bit(m->right_first_bits, unicode::next_code_point(b, &i));
      size_t last = a.size() - 1;
      while (last > 0 && (static_cast<unsigned char>(a[last]) & 0xC0) == 0x80) --last;
      set_bit(m->left_last_bits, unicode::next_code_point(a, &last));
    }
    ++rank;
  }
}

void read_added_tokens(const json::Value& v, const std::string& source, Model* m) {
  if (v.is_null()) return;
  if (!v.is_array()) throw InputError(detail::concat(source, ": added_tokens: expected an array"));
  std::vector<AddedToken> specials, others;
  for (size_t i = 0; i < v.size(); ++i) {
    Fields f(v.as_array()[i], detail::concat("added_tokens[", i, "]"), source);
    AddedToken t;
    const int64_t id = f.integer("id");
    if (id < 0 || id >= (int64_t{1} << 30)) f.fail("id", detail::concat("expected an id >= 0, got ", id));
    t.id = static_cast<int32_t>(id);
    t.content = f.string("content");
    if (t.content.empty()) f.fail("content", "an added token cannot be empty");
    t.special = f.boolean_or("special", false);
    t.lstrip = f.boolean_or("lstrip", false);
    t.rstrip = f.boolean_or("rstrip", false);
    t.single_word = f.boolean_or("single_word", false);
    t.normalized = f.boolean_or("normalized", !t.special);
    m->added_ids.set(t.content, t.id);
    (t.special ? specials : others).push_back(std::move(t));
  }
  m->added = std::move(specials);
  m->added.insert(m->added.end(), others.begin(), others.end());
}

// BOS/EOS of a model directory: token names from tokenizer_config.json, ids from config.json when
// the former does not name them; add_bos_token from tokenizer_config.json.
void read_bos_eos(const std::string& dir, Model* m, bool* add_bos_given) {
  const fs::path config_path = fs::path(dir) / "tokenizer_config.json";
  const fs::path model_config_path = fs::path(dir) / "config.json";
  auto token_of = [&](const json::Value& obj, std::string_view key, const std::string& source) -> int32_t {
    const json::Value* v = obj.find(key);
    if (v == nullptr || v->is_null()) return -1;
    std::string name;
    if (v->is_string()) {
      name = v->as_string();
    } else if (v->is_object() && v->find("content") && v->find("content")->is_string()) {
      name = v->find("content")->as_string();
    } else {
      throw InputError(detail::concat(source, ": ", key, ": expected a token string or {\"content\": ...}"));
    }
    if (const int32_t id = m->added_ids.find(name); id >= 0) return id;
    if (const int32_t id = m->vocab.find(name); id >= 0) return id;
    throw InputError(detail::concat(source, ": ", key, ": token '", name, "' is not in the tokenizer"));
  };
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) {
    const std::string source = config_path.string();
    const std::string text = read_text_file(source, "tokenizer config");
    m->fingerprint = hash_bytes(text.data(), text.size(), m->fingerprint);
    const json::Value cfg = parse_json_file(text, source);
    Fields f(cfg, "", source);
    m->bos_id = token_of(cfg, "bos_token", source);
    m->eos_id = token_of(cfg, "eos_token", source);
    if (f.has("add_bos_token")) {
      m->add_bos = f.boolean_or("add_bos_token", false);
      *add_bos_given = true;
    }
  }
  if (fs::is_regular_file(model_config_path, ec) && (m->bos_id < 0 || m->eos_id < 0)) {
    const std::string source = model_config_path.string();
    const std::string text = read_text_file(source, "model config");
    m->fingerprint = hash_bytes(text.data(), text.size(), m->fingerprint);
    const json::Value cfg = parse_json_file(text, source);
    Fields f(cfg, "", source);
    auto id_of = [&](std::string_view key) -> int32_t {
      const json::Value* v = cfg.find(key);
      if (v == nullptr || v->is_null()) return -1;
      if (v->is_array() && v->size() > 0) v = &v->as_array()[0];  // Llama 3.1 lists several EOS
      if (!v->is_integer() || v->as_int64() < 0) f.fail(key, "expected a token id");
      return static_cast<int32_t>(v->as_int64());
    };
    if (m->bos_id < 0) m->bos_id = id_of("bos_token_id");
    if (m->eos_id < 0) m->eos_id = id_of("eos_token_id");
  }
}

// See Tokenizer::newline_is_boundary. A line break between two characters that are not white space
// ends a pre-token for the GPT-2, Llama 3 and Qwen2 patterns; without such a split it must be a
// BPE symbol that no merge touches.
bool compute_newline_boundary(const Tokenizer& tokenizer) {
  const Model& m = tokenizer.model();
  for (const NormalizerStep& s : m.normalizer) {
    if (s.kind == NormalizerKind::kStrip) return false;
    if (s.kind == NormalizerKind::kReplace &&
        (s.regex || s.text.find('\n') != std::string::npos)) return false;
  }
  bool splits_lines = false;
  for (const PreTokenizerStep& s : m.pre_tokenizer) {
    if (s.kind == PreTokenizerKind::kByteLevel && s.regex) splits_lines = true;
    if (s.kind == PreTokenizerKind::kSplit) {
      if (s.regex) {
        const std::string& p = s.regex->pattern();
        const bool known = p == kGpt2Pattern || p == kLlama3Pattern || p == kQwen2Pattern;
        if (!known || s.invert || s.behavior != SplitBehavior::kIsolated) return false;
        splits_lines = true;
      } else if (s.literal.find('\n') != std::string::npos) {
        return false;
      }
    }
  }
  if (!splits_lines) {
    if (!m.continuing_subword_prefix.empty() || !m.end_of_word_suffix.empty()) return false;
    const std::vector<int32_t> ids = tokenizer.encode("\n", TextPosition::kContinuation);
    if (ids.empty()) return false;
    for (int32_t id : ids)
      if (id == m.unk_id || (static_cast<size_t>(id) < m.in_merge.size() && m.in_merge[id])) return false;
  }
  for (const AddedToken& a : m.added)
    if (a.lstrip || a.content.find('\n') != std::string::npos) return false;
  return true;
}

}  // namespace

Tokenizer Tokenizer::build(std::string_view json_text, const std::string& source,
                           const std::string& model_dir) {
  auto m = std::make_shared<Model>();
  m->source = source;
  m->fingerprint = hash_bytes(json_text.data(), json_text.size(), 0x746f6b656e697a65ull);
  const json::Value root = parse_json_file(json_text, source);
  Fields top(root, "", source);
  read_model(top.required("model"), source, m.get());
  if (const json::Value* v = top.find("added_tokens")) read_added_tokens(*v, source, m.get());
  if (const json::Value* v = top.find("normalizer")) read_normalizer(*v, "normalizer", source, &m->normalizer);
  if (const json::Value* v = top.find("pre_tokenizer"))
    read_pre_tokenizer(*v, "pre_tokenizer", source, &m->pre_tokenizer);
  if (const json::Value* v = top.find("decoder"); v != nullptr && !v->is_null()) {
    m->has_decoder = true;
    read_decoder(*v, "decoder", source, &m->decoder);
  }

  // Ids: the vocabulary and the added tokens (an added token may reuse a vocabulary id).
  int32_t max_id = -1;
  const auto vocab_entries = m->vocab.entries();
  for (const auto& [token, id] : vocab_entries) max_id = std::max(max_id, id);
  for (const AddedToken& t : m->added) max_id = std::max(max_id, t.id);
  LORA_INPUT_CHECK(max_id >= 0, source, ": model.vocab: the vocabulary is empty");
  const size_t n = static_cast<size_t>(max_id) + 1;
  m->id_token.assign(n, std::string());
  m->id_valid.assign(n, 0);
  m->id_special.assign(n, 0);
  m->in_merge.resize(n, 0);  // filled by read_model up to the largest vocabulary id
  for (const auto& [token, id] : vocab_entries) {
    m->id_token[id] = token;
    m->id_valid[id] = 1;
  }
  for (const AddedToken& t : m->added) {
    m->id_token[t.id] = t.content;
    m->id_valid[t.id] = 1;
    m->id_special[t.id] = t.special ? 1 : 0;
  }

  // Normalized added tokens are matched by their normalized text.
  for (AddedToken& t : m->added)
    if (t.normalized && !m->normalizer.empty()) t.content = apply_normalizer(*m, t.content, false);
  m->raw_matcher.build(m->added, false);
  m->normalized_matcher.build(m->added, true);

  // ByteLevel as the last pre-tokenizer step is applied by the model stage.
  if (!m->pre_tokenizer.empty() && m->pre_tokenizer.back().kind == PreTokenizerKind::kByteLevel) {
    m->byte_level_at_model = true;
  }
  for (int b = 0; b < 256; ++b) {
    m->byte_level_id[b] = m->vocab.find(byte_level_char(static_cast<uint8_t>(b)));
  }

  // Cut points of BPE words (see Model::split_words).
  if (!m->ignore_merges && m->continuing_subword_prefix.empty() && m->end_of_word_suffix.empty() &&
      !m->byte_level_at_model) {
    m->split_before_bits.assign(0x10000 / 64, 0);
    m->split_after_bits.assign(0x10000 / 64, 0);
    for (const auto& [token, id] : vocab_entries) {
      size_t i = 0;
      if (token.empty() || unicode::invalid_utf8_offset(token) != std::string_view::npos) continue;
      const char32_t cp = unicode::next_code_point(token, &i);
      if (i != token.size() || cp >= 0x10000) continue;  // single characters only
      const uint64_t bit = uint64_t{1} << (cp & 63);
      if (!(m->right_first_bits[cp >> 6] & bit)) m->split_before_bits[cp >> 6] |= bit;
      if (!(m->left_last_bits[cp >> 6] & bit)) m->split_after_bits[cp >> 6] |= bit;
    }
    m->split_words = true;
  }
  m->right_first_bits = {};
  m->left_last_bits = {};

  bool add_bos_given = false;
  if (!model_dir.empty()) read_bos_eos(model_dir, m.get(), &add_bos_given);
  if (!add_bos_given) {
    const json::Value* post = top.find("post_processor");
    const int32_t bos = post ? template_bos(*post, source) : -1;
    if (bos >= 0 && static_cast<size_t>(bos) < n) {
      m->add_bos = true;
      if (m->bos_id < 0) m->bos_id = bos;
    }
  }
  LORA_INPUT_CHECK(m->bos_id < static_cast<int32_t>(n) && m->eos_id < static_cast<int32_t>(n), source,
                   ": BOS/EOS id outside the vocabulary of ", n, " tokens");
  LORA_INPUT_CHECK(!m->add_bos || m->bos_id >= 0, source,
                   ": add_bos_token is true but no BOS token is named (tokenizer_config.json bos_token)");

  Tokenizer t;
  t.model_ = m;
  m->newline_is_boundary = compute_newline_boundary(t);
  return t;
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  return build(json_text, source, "");
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::error_code ec;
  LORA_INPUT_CHECK(fs::exists(path, ec), path, ": tokenizer does not exist (expected a tokenizer.json or a model directory)");
  if (fs::is_directory(path, ec)) {
    const std::string file = (fs::path(path) / "tokenizer.json").string();
    LORA_INPUT_CHECK(fs::exists(file, ec), path, ": model directory has no tokenizer.json");
    return build(read_text_file(file, "tokenizer"), file, path);
  }
  return build(read_text_file(path, "tokenizer"), path, "");
}

int Tokenizer::vocab_size() const { return static_cast<int>(model_->id_token.size()); }

int32_t Tokenizer::token_id(std::string_view token) const {
  const int32_t id = model_->added_ids.find(token);
  return id >= 0 ? id : model_->vocab.find(token);
}

const std::string& Tokenizer::token(int32_t id) const {
  LORA_INPUT_CHECK(id >= 0 && static_cast<size_t>(id) < model_->id_token.size() && model_->id_valid[id],
                   "token id ", id, " is not in the vocabulary of ", model_->source, " (",
                   model_->id_token.size(), " ids)");
  return model_->id_token[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < model_->id_special.size() && model_->id_special[id];
}

int32_t Tokenizer::bos_id() const { return model_->bos_id; }
int32_t Tokenizer::eos_id() const { return model_->eos_id; }
bool Tokenizer::add_bos() const { return model_->add_bos; }
const std::string& Tokenizer::source() const { return model_->source; }
uint64_t Tokenizer::fingerprint() const { return model_->fingerprint; }
bool Tokenizer::newline_is_boundary() const { return model_->newline_is_boundary; }

std::vector<int32_t> Tokenizer::encode(std::string_view text, TextPosition position) const {
  std::vector<int32_t> ids;
  Encoder encoder(*this);
  encoder.encode(text, &ids, position);
  return ids;
}

// ---- decoding ----

namespace {

// Bytes that are not valid UTF-8 become U+FFFD, as Rust's String::from_utf8_lossy does (one per
// maximal invalid subpart).
std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t bad = unicode::invalid_utf8_offset(bytes.substr(pos));
    if (bad == std::string_view::npos) {
      out.append(bytes.substr(pos));
      break;
    }
    out.append(bytes.substr(pos, bad));
    pos += bad;
    // Length of the maximal prefix of a valid sequence starting here (at least one byte).
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const unsigned char c = p[pos];
    size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    size_t len = 1;
    for (size_t k = 0; k < need && pos + len < bytes.size(); ++k) {
      const unsigned char d = p[pos + len];
      if (d < (k == 0 ? lo : 0x80) || d > (k == 0 ? hi : 0xBF)) break;
      ++len;
    }
    out.append("\xEF\xBF\xBD");
    pos += len;
  }
  return out;
}

bool byte_token_value(std::string_view t, uint8_t* value) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return false;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = v * 16 + d;
  }
  *value = static_cast<uint8_t>(v);
  return true;
}

void run_decoder(const DecoderStep& step, std::vector<std::string>* tokens) {
  switch (step.kind) {
    case DecoderKind::kByteLevel: {
      std::string bytes;
      for (const std::string& t : *tokens) {
        // A token whose every character is a byte-level character gives those bytes; any other
        // token (an added token with a space, say) gives its own text.
        std::string mapped;
        bool all = true;
        size_t i = 0;
        while (i < t.size()) {
          const int b = byte_level_byte(unicode::next_code_point(t, &i));
          if (b < 0) {
            all = false;
            break;
          }
          mapped.push_back(static_cast<char>(b));
        }
        bytes += all ? mapped : t;
      }
      *tokens = {utf8_lossy(bytes)};
      break;
    }
    case DecoderKind::kMetaspace: {
      char32_t repl;
      {
        size_t i = 0;
        repl = unicode::next_code_point(step.replacement, &i);
      }
      for (size_t k = 0; k < tokens->size(); ++k) {
        std::string& t = (*tokens)[k];
        std::string out;
        size_t i = 0;
        while (i < t.size()) {
          const size_t start = i;
          const char32_t cp = unicode::next_code_point(t, &i);
          if (cp == repl) {
            if (!(k == 0 && step.prepend_scheme != PrependScheme::kNever)) out.push_back(' ');
          } else {
            out.append(t, start, i - start);
          }
        }
        t = std::move(out);
      }
      break;
    }
    case DecoderKind::kReplace:
      for (std::string& t : *tokens) {
        if (step.regex) replace_regex(&t, *step.regex, step.content);
        else replace_all(&t, step.pattern, step.content);
      }
      break;
    case DecoderKind::kByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        if (unicode::invalid_utf8_offset(pending) == std::string_view::npos) {
          out.push_back(pending);
        } else {
          for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
      };
      for (std::string& t : *tokens) {
        uint8_t b;
        if (byte_token_value(t, &b)) {
          pending.push_back(static_cast<char>(b));
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      *tokens = std::move(out);
      break;
    }
    case DecoderKind::kFuse: {
      std::string all;
      for (const std::string& t : *tokens) all += t;
      *tokens = {std::move(all)};
      break;
    }
    case DecoderKind::kStrip:
      for (std::string& t : *tokens) {
        std::vector<std::pair<size_t, char32_t>> chars;  // byte offset, code point
        size_t i = 0;
        while (i < t.size()) {
          const size_t at = i;
          chars.emplace_back(at, unicode::next_code_point(t, &i));
        }
        size_t start_cut = 0;
        for (size_t k = 0; k < step.strip_start && k < chars.size(); ++k) {
          if (chars[k].second != step.strip_char) break;
          start_cut = k + 1;
        }
        size_t stop_cut = chars.size();
        for (size_t k = 0; k < step.strip_stop && k < chars.size(); ++k) {
          const size_t index = chars.size() - k - 1;
          if (chars[index].second != step.strip_char) break;
          stop_cut = index;
        }
        if (stop_cut <= start_cut) {
          t.clear();
        } else {
          const size_t b = start_cut < chars.size() ? chars[start_cut].first : t.size();
          const size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
          t = t.substr(b, e - b);
        }
      }
      break;
  }
}

std::string decode_ids(const Model& m, std::span<const int32_t> ids, bool skip_special) {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    LORA_INPUT_CHECK(id >= 0 && static_cast<size_t>(id) < m.id_token.size() && m.id_valid[id],
                     "token id ", id, " is not in the vocabulary of ", m.source, " (",
                     m.id_token.size(), " ids)");
    if (skip_special && m.id_special[id]) continue;
    tokens.push_back(m.id_token[id]);
  }
  if (!m.has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
    return out;
  }
  for (const DecoderStep& step : m.decoder) run_decoder(step, &tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  return decode_ids(*model_, ids, false);
}

std::string Tokenizer::decode_skipping_special(std::span<const int32_t> ids) const {
  return decode_ids(*model_, ids, true);
}

}  // namespace lora
