// Encoding: text -> token ids, step by step as Hugging Face tokenizers does it (see
// tokenizer_model.h), streaming each piece through the pre-tokenizer steps into BPE without
// building lists of strings.
//
// Speed: each step cuts its piece into views (its own scratch buffer when it rewrites the text);
// the model stage looks the pre-token up in a cache of ids before running BPE; BPE runs the merge
// loop of tokenizers (a binary heap of candidate merges ordered by rank, then position) over a
// flat array of symbols, with merges in an open-addressing hash table.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/tokenizer.h"
#include "core/tokenizer_model.h"

namespace lora {

namespace tokenizer_detail {

void replace_all(std::string* s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  size_t hit = s->find(from);
  if (hit == std::string::npos) return;
  std::string out;
  out.reserve(s->size());
  size_t pos = 0;
  while (hit != std::string::npos) {
    out.append(*s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
    hit = s->find(from, pos);
  }
  out.append(*s, pos, std::string::npos);
  *s = std::move(out);
}

void replace_regex(std::string* s, const unicode::Regex& regex, std::string_view to) {
  unicode::RegexMatcher matcher(regex);
  std::string out;
  size_t pos = 0, kept = 0, b, e;
  while (pos <= s->size() && matcher.find(*s, pos, &b, &e)) {
    out.append(*s, kept, b - kept);
    out.append(to);
    kept = e;
    if (e == b) {  // an empty match: step over one character
      if (b >= s->size()) break;
      pos = b + unicode::utf8_length(static_cast<unsigned char>((*s)[b]));
    } else {
      pos = e;
    }
  }
  out.append(*s, kept, std::string::npos);
  *s = std::move(out);
}

std::string apply_normalizer(const Model& model, std::string_view text, bool skip_prepend) {
  std::string s(text);
  for (const NormalizerStep& step : model.normalizer) {
    switch (step.kind) {
      case NormalizerKind::kNfc: s = unicode::normalize(s, unicode::NormalForm::kNfc); break;
      case NormalizerKind::kNfd: s = unicode::normalize(s, unicode::NormalForm::kNfd); break;
      case NormalizerKind::kNfkc: s = unicode::normalize(s, unicode::NormalForm::kNfkc); break;
      case NormalizerKind::kNfkd: s = unicode::normalize(s, unicode::NormalForm::kNfkd); break;
      case NormalizerKind::kLowercase: s = unicode::to_lower(s); break;
      case NormalizerKind::kStripAccents: s = unicode::strip_nonspacing_marks(s); break;
      case NormalizerKind::kPrepend:
        if (!skip_prepend && !s.empty()) s.insert(0, step.text);
        break;
      case NormalizerKind::kReplace:
        if (step.regex) replace_regex(&s, *step.regex, step.content);
        else replace_all(&s, step.text, step.content);
        break;
      case NormalizerKind::kStrip: {
        size_t b = 0, e = s.size();
        if (step.strip_left) {
          size_t i = 0;
          while (i < s.size()) {
            const size_t at = i;
            if (!unicode::is_white_space(unicode::next_code_point(s, &i))) {
              i = at;
              break;
            }
          }
          b = i;
        }
        if (step.strip_right) {
          // Walk back over white space characters.
          while (e > b) {
            size_t start = e - 1;
            while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
            size_t i = start;
            if (!unicode::is_white_space(unicode::next_code_point(s, &i))) break;
            e = start;
          }
        }
        s = s.substr(b, e - b);
        break;
      }
      case NormalizerKind::kByteLevel: {
        std::string out;
        out.reserve(s.size() * 2);
        for (char c : s) out += byte_level_char(static_cast<uint8_t>(c));
        s = std::move(out);
        break;
      }
    }
  }
  return s;
}

namespace {

struct Span {
  size_t begin, end;
  bool is_match;
};

// tokenizers' SplitDelimiterBehavior over a list of spans covering a piece.
void apply_behavior(const std::vector<Span>& in, SplitBehavior behavior, std::vector<Span>* out) {
  out->clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : in)
        if (!s.is_match) out->push_back(s);
      break;
    case SplitBehavior::kIsolated:
      *out = in;
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : in) {
        if (s.is_match && !previous_match) {
          if (!out->empty()) out->back().end = s.end;
          else out->push_back({s.begin, s.end, true});
        } else {
          out->push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = in.size(); k-- > 0;) {
        const Span& s = in[k];
        if (s.is_match && !previous_match) {
          if (!out->empty()) out->back().begin = s.begin;
          else out->push_back({s.begin, s.end, true});
        } else {
          out->push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      std::reverse(out->begin(), out->end());
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : in) {
        if (s.is_match == previous_match) {
          if (!out->empty()) out->back().end = s.end;
          else out->push_back({s.begin, s.end, false});
        } else {
          out->push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
  }
}

bool is_numeric(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  // Rust's char::is_numeric: general categories Nd, Nl and No.
  return unicode::is_numeric_category(cp);
}

}  // namespace

// Pre-token -> ids, for one thread: open addressing over a flat slot array (grown by doubling up
// to kMaxSlots); keys and ids live in two arenas. When full it starts over empty (the next pieces
// refill it).
class PieceCache {
 public:
  PieceCache() { slots_.assign(kMinSlots, Slot{}); }

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

  // The ids of `key` (nullptr when absent) and their count.
  const int32_t* find(std::string_view key, uint64_t h, uint32_t* n) const {
    const size_t mask = slots_.size() - 1;
    for (size_t slot = h & mask;; slot = (slot + 1) & mask) {
      const Slot& s = slots_[slot];
      if (s.n_key == 0) return nullptr;
      if (s.hash == h && s.n_key == key.size() && std::memcmp(keys_.data() + s.key, key.data(), key.size()) == 0) {
        *n = s.n_ids;
        return ids_.data() + s.ids;
      }
    }
  }

  void insert(std::string_view key, uint64_t h, const int32_t* ids, size_t n) {
    if (size_ + 1 > slots_.size() / 2) {
      if (slots_.size() < kMaxSlots) {
        grow();
      } else {
        slots_.assign(kMinSlots, Slot{});
        keys_.clear();
        ids_.clear();
        size_ = 0;
      }
    }
    const size_t mask = slots_.size() - 1;
    size_t slot = h & mask;
    while (slots_[slot].n_key != 0) slot = (slot + 1) & mask;
    slots_[slot] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()),
                        static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(n)};
    keys_.append(key);
    ids_.insert(ids_.end(), ids, ids + n);
    ++size_;
  }

 private:
  static constexpr size_t kMinSlots = size_t{1} << 12;
  static constexpr size_t kMaxSlots = size_t{1} << 19;  // at most half full: 262,144 pre-tokens
  struct Slot {
    uint64_t hash = 0;
    uint32_t key = 0, n_key = 0;  // n_key 0: empty (empty pieces are never cached)
    uint32_t ids = 0, n_ids = 0;
  };
  void grow() {
    std::vector<Slot> old(slots_.size() * 2, Slot{});
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.n_key == 0) continue;
      size_t slot = s.hash & mask;
      while (slots_[slot].n_key != 0) slot = (slot + 1) & mask;
      slots_[slot] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t size_ = 0;
};

// Per-thread encoding state.
struct EncoderState {
  struct Step {
    std::string buf_a, buf_b;
    std::vector<Span> matches, pieces;
    std::unique_ptr<unicode::RegexMatcher> matcher;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged;
  };
  static constexpr size_t kMaxCachedBytes = 256;

  explicit EncoderState(const Model& m) : model(m), steps(m.pre_tokenizer.size()) {
    for (size_t k = 0; k < steps.size(); ++k) {
      if (m.pre_tokenizer[k].regex)
        steps[k].matcher = std::make_unique<unicode::RegexMatcher>(*m.pre_tokenizer[k].regex);
    }
  }

  void encode(std::string_view text, std::vector<int32_t>* ids, bool continuation);

  void split_added(std::string_view text, const TokenMatcher& matcher, bool origin);
  void process_segment(std::string_view segment, bool origin);
  void after_normalizer(std::string_view text, bool origin);
  void pre_tokenize(size_t k, std::string_view piece, bool origin);
  void emit_byte_level(size_t k, std::string_view piece, bool origin);
  void model_piece(std::string_view piece);
  void bpe(std::string_view word, std::string_view raw);
  void merge_all();

  const Model& model;
  std::vector<Step> steps;
  std::string normalized;
  std::string mapped;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  PieceCache cache;
  std::vector<int32_t>* out = nullptr;
  bool continuation = false;
  int depth = 0;  // split_added runs on raw text (0) then on normalized pieces (1)
};

namespace {

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  size_t i = start;
  return unicode::is_word_char(unicode::next_code_point(s, &i));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return unicode::is_word_char(unicode::next_code_point(s, &i));
}

// Start of the run of white space that ends `s`.
size_t leading_edge_of_trailing_space(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t start = e - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t i = start;
    if (!unicode::is_white_space(unicode::next_code_point(s, &i))) break;
    e = start;
  }
  return e;
}

// Length of the run of white space that starts `s`.
size_t leading_space(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t at = i;
    if (!unicode::is_white_space(unicode::next_code_point(s, &i))) return at;
  }
  return i;
}

}  // namespace

// Added tokens in `text`, with their single_word, lstrip and rstrip rules (tokenizers'
// AddedVocabulary::find_matches); the text between them goes on to the next stage.
void EncoderState::split_added(std::string_view text, const TokenMatcher& matcher, bool origin) {
  const bool raw = depth == 0;
  auto piece = [&](size_t b, size_t e) {
    if (b >= e) return;
    if (raw) process_segment(text.substr(b, e - b), origin && b == 0);
    else pre_tokenize(0, text.substr(b, e - b), origin && b == 0);
  };
  size_t start_offset = 0, from = 0, mb, me, index;
  while (from < text.size() && matcher.find(text, from, &mb, &me, &index)) {
    from = me;
    const AddedToken& t = model.added[index];
    size_t start = mb, stop = me;
    if (t.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(leading_edge_of_trailing_space(text.substr(0, start)), start_offset);
    if (t.rstrip) stop += leading_space(text.substr(stop));
    if (start_offset < start) piece(start_offset, start);
    out->push_back(t.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) piece(start_offset, text.size());
}

void EncoderState::process_segment(std::string_view segment, bool origin) {
  std::string_view text = segment;
  if (!model.normalizer.empty()) {
    normalized = apply_normalizer(model, segment, continuation && origin);
    text = normalized;
  }
  after_normalizer(text, origin);
}

void EncoderState::after_normalizer(std::string_view text, bool origin) {
  if (model.normalized_matcher.empty()) {
    pre_tokenize(0, text, origin);
    return;
  }
  depth = 1;
  split_added(text, model.normalized_matcher, origin);
  depth = 0;
}

void EncoderState::emit_byte_level(size_t k, std::string_view piece, bool origin) {
  if (piece.empty()) return;
  if (k + 1 == steps.size()) {
    if (model.byte_level_at_model) {
      model_piece(piece);
      return;
    }
  }
  std::string& buf = steps[k].buf_b;
  buf.clear();
  for (char c : piece) buf += byte_level_char(static_cast<uint8_t>(c));
  pre_tokenize(k + 1, buf, origin);
}

void EncoderState::pre_tokenize(size_t k, std::string_view piece, bool origin) {
  if (piece.empty()) return;
  if (k == steps.size()) {
    model_piece(piece);
    return;
  }
  const PreTokenizerStep& s = model.pre_tokenizer[k];
  Step& st = steps[k];
  const bool start_effects = !(continuation && origin);
  switch (s.kind) {
    case PreTokenizerKind::kByteLevel: {
      std::string_view p = piece;
      if (s.add_prefix_space && start_effects && piece[0] != ' ') {
        st.buf_a.assign(1, ' ');
        st.buf_a.append(piece);
        p = st.buf_a;
      }
      if (!s.regex) {
        emit_byte_level(k, p, origin);
        return;
      }
      size_t pos = 0, prev = 0, b, e;
      while (pos < p.size() && st.matcher->find(p, pos, &b, &e)) {
        if (b > prev) emit_byte_level(k, p.substr(prev, b - prev), origin && prev == 0);
        if (e > b) emit_byte_level(k, p.substr(b, e - b), origin && b == 0);
        prev = std::max(prev, e);
        pos = e > b ? e : b + unicode::utf8_length(static_cast<unsigned char>(p[b]));
      }
      if (prev < p.size()) emit_byte_level(k, p.substr(prev), origin && prev == 0);
      return;
    }
    case PreTokenizerKind::kSplit: {
      st.matches.clear();
      size_t prev = 0;
      auto add_match = [&](size_t b, size_t e) {
        if (prev != b) st.matches.push_back({prev, b, false});
        st.matches.push_back({b, e, true});
        prev = e;
      };
      if (s.regex) {
        size_t pos = 0, b, e;
        while (pos < piece.size() && st.matcher->find(piece, pos, &b, &e)) {
          add_match(b, e);
          pos = e > b ? e : b + unicode::utf8_length(static_cast<unsigned char>(piece[b]));
        }
      } else {
        size_t hit = piece.find(s.literal);
        while (hit != std::string_view::npos) {
          add_match(hit, hit + s.literal.size());
          hit = piece.find(s.literal, hit + s.literal.size());
        }
      }
      if (prev != piece.size()) st.matches.push_back({prev, piece.size(), false});
      if (s.invert)
        for (Span& m : st.matches) m.is_match = !m.is_match;
      apply_behavior(st.matches, s.behavior, &st.pieces);
      for (size_t i = 0; i < st.pieces.size(); ++i) {
        const Span sp = st.pieces[i];
        if (sp.end > sp.begin) pre_tokenize(k + 1, piece.substr(sp.begin, sp.end - sp.begin), origin && sp.begin == 0);
      }
      return;
    }
    case PreTokenizerKind::kMetaspace: {
      std::string& buf = st.buf_a;
      buf.clear();
      const std::string& repl = s.replacement;
      bool prepend = false;
      const bool starts_with_repl = piece.substr(0, repl.size()) == repl ||
                                    (piece[0] == ' ');  // a leading space becomes the replacement
      if (!starts_with_repl) {
        if (s.prepend_scheme == PrependScheme::kAlways) prepend = start_effects;
        else if (s.prepend_scheme == PrependScheme::kFirst) prepend = origin && !continuation;
      }
      if (prepend) buf = repl;
      for (char c : piece) {
        if (c == ' ') buf += repl;
        else buf.push_back(c);
      }
      if (!s.split) {
        pre_tokenize(k + 1, buf, origin);
        return;
      }
      st.matches.clear();
      size_t prev = 0;
      size_t hit = buf.find(repl);
      while (hit != std::string::npos) {
        if (prev != hit) st.matches.push_back({prev, hit, false});
        st.matches.push_back({hit, hit + repl.size(), true});
        prev = hit + repl.size();
        hit = buf.find(repl, prev);
      }
      if (prev != buf.size()) st.matches.push_back({prev, buf.size(), false});
      apply_behavior(st.matches, SplitBehavior::kMergedWithNext, &st.pieces);
      for (size_t i = 0; i < st.pieces.size(); ++i) {
        const Span sp = st.pieces[i];
        if (sp.end > sp.begin)
          pre_tokenize(k + 1, std::string_view(buf).substr(sp.begin, sp.end - sp.begin), origin && sp.begin == 0);
      }
      return;
    }
    case PreTokenizerKind::kDigits: {
      st.matches.clear();
      size_t prev = 0, i = 0;
      while (i < piece.size()) {
        const size_t at = i;
        if (is_numeric(unicode::next_code_point(piece, &i))) {
          if (prev != at) st.matches.push_back({prev, at, false});
          st.matches.push_back({at, i, true});
          prev = i;
        }
      }
      if (prev != piece.size()) st.matches.push_back({prev, piece.size(), false});
      apply_behavior(st.matches, s.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                     &st.pieces);
      for (size_t j = 0; j < st.pieces.size(); ++j) {
        const Span sp = st.pieces[j];
        if (sp.end > sp.begin) pre_tokenize(k + 1, piece.substr(sp.begin, sp.end - sp.begin), origin && sp.begin == 0);
      }
      return;
    }
  }
}

void EncoderState::model_piece(std::string_view piece) {
  if (piece.empty()) return;
  const bool cacheable = piece.size() <= kMaxCachedBytes;
  const uint64_t h = cacheable ? PieceCache::hash(piece) : 0;
  uint32_t n_cached = 0;
  if (cacheable) {
    if (const int32_t* ids = cache.find(piece, h, &n_cached)) {
      out->insert(out->end(), ids, ids + n_cached);
      return;
    }
  }
  const size_t before = out->size();
  std::string_view word = piece;
  if (model.byte_level_at_model) {
    mapped.clear();
    for (char c : piece) mapped += byte_level_char(static_cast<uint8_t>(c));
    word = mapped;
  }
  bool done = false;
  if (model.ignore_merges) {
    if (const int32_t id = model.vocab.find(word); id >= 0) {
      out->push_back(id);
      done = true;
    }
  }
  if (!done && model.split_words && word.size() > 16) {
    // Cut the word where no merge can join (see Model::split_before) and run BPE on each part,
    // through the cache: long pre-tokens (a whole line without a pre-tokenizer) cost what their
    // words cost.
    size_t start = 0, i = 0;
    auto part = [&](size_t b, size_t e) {
      const std::string_view w = word.substr(b, e - b);
      const bool small = w.size() <= kMaxCachedBytes;
      const uint64_t hp = small ? PieceCache::hash(w) : 0;
      uint32_t n = 0;
      if (small) {
        if (const int32_t* ids = cache.find(w, hp, &n)) {
          out->insert(out->end(), ids, ids + n);
          return;
        }
      }
      const size_t at = out->size();
      bpe(w, w);
      if (small) cache.insert(w, hp, out->data() + at, out->size() - at);
    };
    while (i < word.size()) {
      const size_t at = i;
      const char32_t cp = unicode::next_code_point(word, &i);
      if (at > start && model.splits_before(cp)) {
        part(start, at);
        start = at;
      }
      if (model.splits_after(cp)) {
        part(start, i);
        start = i;
      }
    }
    if (start < word.size()) part(start, word.size());
    done = true;
  }
  if (!done) bpe(word, piece);
  if (cacheable) cache.insert(piece, h, out->data() + before, out->size() - before);
}

// tokenizers' BPE::merge_word: the initial symbols of a word (one per character, or its
// <0xNN> byte tokens, or the unknown token), then merge_all.
void EncoderState::bpe(std::string_view word, std::string_view raw) {
  symbols.clear();
  auto push = [&](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };
  const bool plain = model.continuing_subword_prefix.empty() && model.end_of_word_suffix.empty();
  bool fast = plain && model.byte_level_at_model;
  if (fast) {
    for (char c : raw) {
      if (model.byte_level_id[static_cast<uint8_t>(c)] < 0) {
        fast = false;
        break;
      }
    }
  }
  if (fast) {
    for (char c : raw) push(model.byte_level_id[static_cast<uint8_t>(c)]);
  } else {
    bool pending_unk = false;
    std::string unit;
    size_t i = 0;
    while (i < word.size()) {
      const size_t at = i;
      i += unicode::utf8_length(static_cast<unsigned char>(word[i]));
      std::string_view u = word.substr(at, i - at);
      if (!plain) {
        unit.clear();
        if (at > 0) unit += model.continuing_subword_prefix;
        unit.append(u);
        if (i >= word.size()) unit += model.end_of_word_suffix;
        u = unit;
      }
      if (const int32_t id = model.vocab.find(u); id >= 0) {
        if (pending_unk) {
          push(model.unk_id);
          pending_unk = false;
        }
        push(id);
        continue;
      }
      if (model.byte_fallback) {
        bool all = true;
        for (char c : u)
          if (model.byte_token_id[static_cast<uint8_t>(c)] < 0) all = false;
        if (all) {
          // As tokenizers does, a pending unknown token is not flushed before byte tokens.
          for (char c : u) push(model.byte_token_id[static_cast<uint8_t>(c)]);
          continue;
        }
      }
      if (model.unk_id >= 0) {
        if (pending_unk && !model.fuse_unk) push(model.unk_id);
        pending_unk = true;
      }
    }
    if (pending_unk) push(model.unk_id);
  }
  if (symbols.size() > 1) merge_all();
  for (const Symbol& s : symbols)
    if (s.alive) out->push_back(s.id);
}

// tokenizers' Word::merge_all: repeatedly apply the lowest-ranked merge, leftmost first.
void EncoderState::merge_all() {
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  heap.clear();
  int32_t rank, merged;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (model.merges.find(symbols[i].id, symbols[i + 1].id, &rank, &merged))
      heap.push_back({rank, static_cast<int32_t>(i), merged});
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& cur = symbols[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    if (!model.merges.find(cur.id, right.id, &rank, &merged) || merged != top.merged) continue;
    cur.id = top.merged;
    cur.next = right.next;
    symbols[next_pos].alive = false;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0 && model.merges.find(symbols[cur.prev].id, cur.id, &rank, &merged)) {
      heap.push_back({rank, cur.prev, merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
    if (cur.next >= 0 && model.merges.find(cur.id, symbols[cur.next].id, &rank, &merged)) {
      heap.push_back({rank, top.pos, merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  }
}

void EncoderState::encode(std::string_view text, std::vector<int32_t>* ids, bool cont) {
  const size_t bad = unicode::invalid_utf8_offset(text);
  LORA_INPUT_CHECK(bad == std::string_view::npos, "text is not valid UTF-8 (byte ", bad, ")");
  out = ids;
  continuation = cont;
  depth = 0;
  if (model.raw_matcher.empty()) {
    if (!text.empty()) process_segment(text, true);
  } else {
    split_added(text, model.raw_matcher, true);
  }
  out = nullptr;
}

}  // namespace tokenizer_detail

Encoder::Encoder(const Tokenizer& tokenizer)
    : tokenizer_(tokenizer),
      state_(std::make_unique<tokenizer_detail::EncoderState>(tokenizer.model())) {}
Encoder::~Encoder() = default;
Encoder::Encoder(Encoder&&) noexcept = default;
Encoder& Encoder::operator=(Encoder&&) noexcept = default;

void Encoder::encode(std::string_view text, std::vector<int32_t>* out, TextPosition position) {
  state_->encode(text, out, position == TextPosition::kContinuation);
}

}  // namespace lora
