// Token streams from text files (one token per byte, or tokenized and cached), llm.c token shards
// and instruction JSONL, and the seeded choice of training sequences.
//
// Shard layout (all little-endian): int32 header[256] with header[0] = 20240520 (magic),
// header[1] = version (1: uint16 tokens, 2: uint32 tokens), header[2] = n_tokens; then n_tokens
// token ids. The file size must be exactly 1024 + (2 or 4) * n_tokens bytes. Files are
// concatenated in the order given.
//
// A stream sequence starting at `start` has inputs tokens[start, start + seq_len) and targets
// tokens[start + 1, start + seq_len + 1): start ranges over [0, n_tokens - seq_len), so the last
// input's target always exists.
#include "trainer/data.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/hash.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/unicode.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

constexpr int32_t kShardMagic = 20240520;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

int32_t read_i32_le(const unsigned char* p) {
  const uint32_t v = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                     (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  return static_cast<int32_t>(v);
}

void write_i32_le(int32_t v, unsigned char* p) {
  const uint32_t u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(u >> (8 * i));
}

// The whole file, or InputError naming it when it is missing, not a file, unreadable or empty.
std::vector<unsigned char> read_data_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  LORA_INPUT_CHECK(!ec && fs::exists(st), path, ": data file does not exist");
  LORA_INPUT_CHECK(fs::is_regular_file(st), path, ": data file is not a regular file");
  std::ifstream in(path, std::ios::binary);
  LORA_INPUT_CHECK(in, path, ": data file cannot be read");
  const uintmax_t n_bytes = fs::file_size(path, ec);
  LORA_INPUT_CHECK(!ec, path, ": cannot read the size of the data file: ", ec.message());
  LORA_INPUT_CHECK(n_bytes > 0, path, ": data file is empty");
  std::vector<unsigned char> bytes(n_bytes);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(n_bytes));
  LORA_INPUT_CHECK(in.gcount() == static_cast<std::streamsize>(n_bytes), path,
                   ": data file cannot be read (got ", in.gcount(), " of ", n_bytes, " bytes)");
  return bytes;
}

void append_text(const std::string& path, const std::vector<unsigned char>& bytes, int vocab_size,
                 std::vector<uint32_t>* tokens) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    LORA_INPUT_CHECK(bytes[i] < vocab_size, path, ": byte ", static_cast<int>(bytes[i]),
                     " at position ", i, " is >= model.vocab_size ", vocab_size,
                     " (format text needs vocab_size >= 256)");
  }
  tokens->insert(tokens->end(), bytes.begin(), bytes.end());
}

void append_shard(const std::string& path, const std::vector<unsigned char>& bytes, int vocab_size,
                  std::vector<uint32_t>* tokens) {
  LORA_INPUT_CHECK(bytes.size() >= kShardHeaderBytes, path, ": token shard is ", bytes.size(),
                   " bytes, shorter than its ", kShardHeaderBytes,
                   "-byte header (expected an llm.c token shard)");
  const int32_t magic = read_i32_le(bytes.data());
  const int32_t version = read_i32_le(bytes.data() + 4);
  const int32_t count = read_i32_le(bytes.data() + 8);
  LORA_INPUT_CHECK(magic == kShardMagic, path, ": bad token shard magic ", magic, " (expected ",
                   kShardMagic, ": an llm.c token shard; use format text for raw text)");
  LORA_INPUT_CHECK(version == 1 || version == 2, path, ": unsupported token shard version ", version,
                   " (expected 1: uint16 tokens, or 2: uint32 tokens)");
  LORA_INPUT_CHECK(count >= 0, path, ": token shard header gives a negative token count ", count);
  const uint64_t width = version == 1 ? 2 : 4;
  const uint64_t payload_bytes = bytes.size() - kShardHeaderBytes;
  const uint64_t expected_bytes = width * static_cast<uint64_t>(count);
  LORA_INPUT_CHECK(payload_bytes == expected_bytes, path, ": token shard header says ", count,
                   " tokens (", expected_bytes, " bytes) but the file holds ", payload_bytes,
                   " bytes after the header (", payload_bytes < expected_bytes ? "truncated" : "trailing data",
                   ")");
  LORA_INPUT_CHECK(count > 0, path, ": token shard holds no tokens");
  const size_t base = tokens->size();
  tokens->resize(base + static_cast<size_t>(count));
  uint32_t* out = tokens->data() + base;
  const unsigned char* in = bytes.data() + kShardHeaderBytes;
  for (int32_t i = 0; i < count; ++i) {
    if (width == 2) {
      out[i] = static_cast<uint32_t>(in[2 * i]) | (static_cast<uint32_t>(in[2 * i + 1]) << 8);
    } else {
      out[i] = static_cast<uint32_t>(read_i32_le(in + 4 * static_cast<size_t>(i)));
    }
  }
  for (int32_t i = 0; i < count; ++i) {
    LORA_INPUT_CHECK(out[i] < static_cast<uint32_t>(vocab_size), path, ": token id ", out[i], " at position ", i,
                     " (byte offset ", kShardHeaderBytes + width * static_cast<size_t>(i),
                     ") is >= model.vocab_size ", vocab_size);
  }
}

std::string joined(const std::vector<std::string>& paths) {
  std::string names;
  for (size_t i = 0; i < paths.size(); ++i) names += (i ? ", " : "") + paths[i];
  return names;
}

void check_stream_length(const std::vector<std::string>& paths, size_t n_tokens, int seq_len) {
  if (n_tokens < static_cast<size_t>(seq_len) + 1) {
    throw InputError(detail::concat(joined(paths), ": data holds ", n_tokens,
                                    " tokens, fewer than data.seq_len + 1 = ", seq_len + 1,
                                    " (one sequence and its next-token targets)"));
  }
}

}  // namespace

TokenStream::TokenStream(const std::vector<std::string>& paths, DataFormat format, int vocab_size,
                         int seq_len) {
  LORA_INPUT_CHECK(!paths.empty(), "data: expected at least one data file");
  LORA_INPUT_CHECK(vocab_size > 0, "model.vocab_size: expected a positive integer, got ", vocab_size);
  LORA_INPUT_CHECK(seq_len > 0, "data.seq_len: expected a positive integer, got ", seq_len);
  LORA_INPUT_CHECK(format != DataFormat::kJsonl, "data.format jsonl needs a tokenizer (load_token_stream)");
  for (const std::string& path : paths) {
    const std::vector<unsigned char> bytes = read_data_file(path);
    if (format == DataFormat::kText) {
      append_text(path, bytes, vocab_size, &tokens_);
    } else {
      append_shard(path, bytes, vocab_size, &tokens_);
    }
  }
  check_stream_length(paths, tokens_.size(), seq_len);
}

void TokenStream::copy_sequence(size_t start, int seq_len, int32_t* inputs, int32_t* targets) const {
  LORA_CHECK(seq_len > 0, "seq_len must be positive, got ", seq_len);
  LORA_CHECK(start + static_cast<size_t>(seq_len) < tokens_.size(), "sequence [", start, ", ",
             start + seq_len, "] runs past the end of a stream of ", tokens_.size(), " tokens");
  const uint32_t* src = tokens_.data() + start;
  for (int j = 0; j < seq_len; ++j) {
    inputs[j] = static_cast<int32_t>(src[j]);
    targets[j] = static_cast<int32_t>(src[j + 1]);
  }
  if (!trainable_.empty()) {
    const uint8_t* keep = trainable_.data() + start + 1;
    for (int j = 0; j < seq_len; ++j)
      if (!keep[j]) targets[j] = kIgnoreTarget;
  }
}

void TokenStream::fill_sequence(uint64_t seed, uint64_t step, uint64_t index, int seq_len,
                                int32_t* inputs, int32_t* targets) const {
  if (example_offsets_.empty()) {
    copy_sequence(sequence_start(seed, step, index, tokens_.size(), seq_len), seq_len, inputs, targets);
    return;
  }
  copy_example(static_cast<size_t>(hash_u64(seed, step, index) % n_examples()), seq_len, inputs,
               targets);
}

void TokenStream::copy_example(size_t k, int seq_len, int32_t* inputs, int32_t* targets) const {
  LORA_CHECK(k < n_examples(), "example ", k, " of ", n_examples());
  const size_t begin = example_offsets_[k], end = example_offsets_[k + 1];
  const size_t n = end - begin;  // at most seq_len + 1 (truncated when loaded)
  for (int j = 0; j < seq_len; ++j) {
    const size_t t = static_cast<size_t>(j);
    if (t + 1 < n) {
      inputs[j] = static_cast<int32_t>(tokens_[begin + t]);
      const bool keep = trainable_.empty() || trainable_[begin + t + 1];
      targets[j] = keep ? static_cast<int32_t>(tokens_[begin + t + 1]) : kIgnoreTarget;
    } else {
      inputs[j] = static_cast<int32_t>(pad_id_);
      targets[j] = kIgnoreTarget;
    }
  }
}

size_t sequence_start(uint64_t seed, uint64_t step, uint64_t global_index, size_t n_tokens,
                      int seq_len) {
  LORA_CHECK(seq_len > 0 && n_tokens > static_cast<size_t>(seq_len), "a stream of ", n_tokens,
             " tokens holds no sequence of ", seq_len, " tokens plus targets");
  const uint64_t n_starts = n_tokens - static_cast<size_t>(seq_len);
  return static_cast<size_t>(hash_u64(seed, step, global_index) % n_starts);
}

// ---- shards ----

namespace {

void write_file_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error(detail::concat(path, ": cannot open for writing"));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) throw Error(detail::concat(path, ": write failed"));
}

std::vector<unsigned char> shard_header(int32_t version, size_t n_tokens) {
  LORA_CHECK(n_tokens <= static_cast<size_t>(INT32_MAX), "a token shard holds at most ", INT32_MAX,
             " tokens, got ", n_tokens);
  std::vector<unsigned char> bytes(kShardHeaderBytes, 0);
  write_i32_le(kShardMagic, bytes.data());
  write_i32_le(version, bytes.data() + 4);
  write_i32_le(static_cast<int32_t>(n_tokens), bytes.data() + 8);
  return bytes;
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::vector<unsigned char> bytes = shard_header(1, tokens.size());
  bytes.resize(kShardHeaderBytes + 2 * tokens.size());
  unsigned char* out = bytes.data() + kShardHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    out[2 * i] = static_cast<unsigned char>(tokens[i] & 0xff);
    out[2 * i + 1] = static_cast<unsigned char>(tokens[i] >> 8);
  }
  write_file_bytes(path, bytes);
}

void write_token_shard_v2(const std::string& path, std::span<const uint32_t> tokens) {
  std::vector<unsigned char> bytes = shard_header(2, tokens.size());
  bytes.resize(kShardHeaderBytes + 4 * tokens.size());
  unsigned char* out = bytes.data() + kShardHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) write_i32_le(static_cast<int32_t>(tokens[i]), out + 4 * i);
  write_file_bytes(path, bytes);
}

TokenShardWriter::TokenShardWriter(const std::string& path)
    : path_(path), tmp_path_(path + ".tmp." + std::to_string(::getpid())) {
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (file_ == nullptr) throw Error(detail::concat(tmp_path_, ": cannot open for writing: ", std::strerror(errno)));
  const std::vector<unsigned char> header = shard_header(2, 0);
  if (std::fwrite(header.data(), 1, header.size(), file_) != header.size())
    throw Error(detail::concat(tmp_path_, ": write failed"));
}

TokenShardWriter::~TokenShardWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void TokenShardWriter::append(std::span<const int32_t> ids) {
  buf_.resize(4 * ids.size());
  for (size_t i = 0; i < ids.size(); ++i) write_i32_le(ids[i], buf_.data() + 4 * i);
  if (std::fwrite(buf_.data(), 1, buf_.size(), file_) != buf_.size())
    throw Error(detail::concat(tmp_path_, ": write failed: ", std::strerror(errno)));
  n_tokens_ += ids.size();
}

void TokenShardWriter::finish() {
  const std::vector<unsigned char> header = shard_header(2, n_tokens_);
  if (std::fseek(file_, 0, SEEK_SET) != 0 || std::fwrite(header.data(), 1, header.size(), file_) != header.size() ||
      std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) {
    throw Error(detail::concat(tmp_path_, ": write failed: ", std::strerror(errno)));
  }
  std::fclose(file_);
  file_ = nullptr;
  std::error_code ec;
  fs::rename(tmp_path_, path_, ec);
  if (ec) {
    std::remove(tmp_path_.c_str());
    throw Error(detail::concat(path_, ": cannot rename the finished shard into place: ", ec.message()));
  }
}

// ---- tokenizing text corpora ----

namespace {

// The code point that ends just before byte `end` of s (valid UTF-8).
char32_t code_point_before(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  size_t i = start;
  return unicode::next_code_point(s, &i);
}

// A line start where the text may be cut (see Tokenizer::newline_is_boundary): after a single
// line break with characters that are not white space on both sides.
bool is_cut_point(std::string_view s, size_t p) {
  if (p < 2 || p >= s.size() || s[p - 1] != '\n') return false;
  size_t i = p;
  const unsigned char lead = static_cast<unsigned char>(s[p]);
  if (p + unicode::utf8_length(lead) > s.size()) return false;
  if (unicode::is_white_space(unicode::next_code_point(s, &i))) return false;
  return !unicode::is_white_space(code_point_before(s, p - 1));
}

// The first cut point at or after `from` in s, or npos.
size_t next_cut(std::string_view s, size_t from) {
  size_t p = from;
  while (true) {
    const size_t nl = s.find('\n', p == 0 ? 0 : p - 1);
    if (nl == std::string_view::npos) return std::string_view::npos;
    if (is_cut_point(s, nl + 1)) return nl + 1;
    p = nl + 2;
  }
}

void check_utf8(std::string_view text, const std::string& path, uint64_t file_offset) {
  const size_t bad = unicode::invalid_utf8_offset(text);
  if (bad != std::string_view::npos) {
    throw InputError(detail::concat(path, ": byte ", file_offset + bad,
                                    ": text is not valid UTF-8 (tokenized text must be UTF-8)"));
  }
}

}  // namespace

CorpusStats tokenize_text_to_shard(const Tokenizer& tokenizer, const std::vector<std::string>& paths,
                                   const std::string& out_path, int threads) {
  CorpusStats stats;
  const int n_threads = threads > 0 ? threads : omp_get_max_threads();
  stats.n_threads = n_threads;
  constexpr size_t kChunkBytes = size_t{1} << 20;
  const size_t window_bytes = static_cast<size_t>(n_threads) * 4 * kChunkBytes;
  std::vector<Encoder> encoders;
  for (int t = 0; t < n_threads; ++t) encoders.emplace_back(tokenizer);
  TokenShardWriter writer(out_path);

  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    LORA_INPUT_CHECK(in, path, ": data file cannot be read");
    std::vector<int32_t> edge;
    if (tokenizer.add_bos()) {
      edge.push_back(tokenizer.bos_id());
      writer.append(edge);
    }
    const bool cut = tokenizer.newline_is_boundary();
    std::string buf;             // text not yet encoded; starts at file offset buf_offset
    uint64_t buf_offset = 0;
    bool at_start = true;        // the next chunk starts the file
    bool eof = false;
    while (!eof || !buf.empty()) {
      // Fill the window (the whole file when the tokenizer cannot be cut at line starts).
      while (!eof && (!cut || buf.size() < window_bytes)) {
        const size_t have = buf.size();
        const size_t want = cut ? window_bytes - have : size_t{64} << 20;
        buf.resize(have + want);
        in.read(buf.data() + have, static_cast<std::streamsize>(want));
        const size_t got = static_cast<size_t>(in.gcount());
        buf.resize(have + got);
        stats.n_bytes += got;
        if (got < want) eof = true;
      }
      if (in.bad()) throw Error(detail::concat(path, ": read failed"));
      // Chunks of about kChunkBytes cut at cut points; the text after the last one waits for more
      // unless the file has ended.
      std::vector<std::pair<size_t, size_t>> chunks;
      size_t begin = 0;
      while (begin < buf.size()) {
        size_t end = cut ? next_cut(buf, begin + kChunkBytes) : std::string_view::npos;
        if (end == std::string_view::npos) {
          if (!eof) break;
          end = buf.size();
        }
        chunks.emplace_back(begin, end);
        begin = end;
      }
      if (chunks.empty()) {
        if (eof) break;
        // No cut point in the whole window: read more before encoding.
        const size_t have = buf.size();
        buf.resize(have + window_bytes);
        in.read(buf.data() + have, static_cast<std::streamsize>(window_bytes));
        const size_t got = static_cast<size_t>(in.gcount());
        buf.resize(have + got);
        stats.n_bytes += got;
        if (got < window_bytes) eof = true;
        continue;
      }
      std::vector<std::vector<int32_t>> ids(chunks.size());
      std::vector<std::string> errors(chunks.size());
      const std::string_view text(buf);
      const bool first_is_start = at_start;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
      for (size_t c = 0; c < chunks.size(); ++c) {
        const std::string_view piece = text.substr(chunks[c].first, chunks[c].second - chunks[c].first);
        try {
          check_utf8(piece, path, buf_offset + chunks[c].first);
          ids[c].reserve(piece.size() / 3);
          encoders[omp_get_thread_num()].encode(
              piece, &ids[c], c == 0 && first_is_start ? TextPosition::kStart : TextPosition::kContinuation);
        } catch (const std::exception& e) {
          errors[c] = e.what();
        }
      }
      for (const std::string& e : errors)  // the first error in the file
        if (!e.empty()) throw InputError(e);
      for (const auto& v : ids) {
        writer.append(v);
        stats.n_tokens += v.size();
      }
      at_start = false;
      const size_t consumed = chunks.back().second;
      buf.erase(0, consumed);
      buf_offset += consumed;
    }
    if (tokenizer.eos_id() >= 0) {
      edge.assign(1, tokenizer.eos_id());
      writer.append(edge);
    }
  }
  stats.n_tokens = writer.n_tokens();
  writer.finish();
  return stats;
}

std::string token_cache_path(const std::string& text_path, const Tokenizer& tokenizer) {
  std::ifstream in(text_path, std::ios::binary);
  LORA_INPUT_CHECK(in, text_path, ": data file cannot be read");
  uint64_t key = tokenizer.fingerprint();
  std::vector<char> block(size_t{1} << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const size_t got = static_cast<size_t>(in.gcount());
    if (got > 0) key = hash_bytes(block.data(), got, key);
  }
  key = hash_u64(key, 2 /* cache format: version 2 shard, BOS/EOS per file */);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(key));
  const fs::path p(text_path);
  return (p.parent_path() / ".lora-tokens" / (p.filename().string() + "-" + hex + ".tokens")).string();
}

// ---- instruction data ----

namespace {

// Python's str.isspace (what Jinja's trim strips): White_Space and U+001C..U+001F.
bool is_python_space(char32_t cp) { return unicode::is_white_space(cp) || (cp >= 0x1C && cp <= 0x1F); }

std::string trim(std::string_view s) {
  size_t b = 0, i = 0;
  while (i < s.size()) {
    const size_t at = i;
    if (!is_python_space(unicode::next_code_point(s, &i))) {
      b = at;
      break;
    }
    b = i;
  }
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t k = start;
    if (!is_python_space(unicode::next_code_point(s, &k))) break;
    e = start;
  }
  return std::string(s.substr(b, e - b));
}

struct Message {
  std::string role, content;
};

const std::string& text_field(const json::Value& obj, std::string_view key, const std::string& where,
                              std::string_view what) {
  const json::Value* v = obj.find(key);
  if (v == nullptr) throw InputError(detail::concat(where, ": ", what, " has no \"", key, "\""));
  if (!v->is_string()) {
    throw InputError(detail::concat(where, ": ", what, " \"", key, "\" must be a string, got ",
                                    json::type_name(v->type())));
  }
  return v->as_string();
}

std::vector<Message> parse_messages(std::string_view line, const std::string& where) {
  json::Value v;
  try {
    v = json::parse(line);
  } catch (const json::ParseError& e) {
    throw InputError(detail::concat(where, ": not a JSON object: ", e.what()));
  }
  if (!v.is_object()) throw InputError(detail::concat(where, ": expected a JSON object, got ", json::type_name(v.type())));
  const json::Value* messages = v.find("messages");
  const bool has_prompt = v.find("prompt") != nullptr || v.find("completion") != nullptr;
  if (messages != nullptr && has_prompt) {
    throw InputError(detail::concat(where, ": an example has either \"messages\" or \"prompt\"/\"completion\", not both"));
  }
  std::vector<Message> out;
  if (messages != nullptr) {
    if (!messages->is_array() || messages->size() == 0) {
      throw InputError(detail::concat(where, ": \"messages\" must be a non-empty list of {\"role\", \"content\"}"));
    }
    for (size_t i = 0; i < messages->size(); ++i) {
      const json::Value& m = messages->as_array()[i];
      const std::string what = detail::concat("message ", i);
      if (!m.is_object()) {
        throw InputError(detail::concat(where, ": ", what, " must be an object {\"role\", \"content\"}, got ",
                                        json::type_name(m.type())));
      }
      Message msg{text_field(m, "role", where, what), text_field(m, "content", where, what)};
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
        throw InputError(detail::concat(where, ": ", what, " has role \"", msg.role,
                                        "\" (expected system, user or assistant)"));
      }
      out.push_back(std::move(msg));
    }
    return out;
  }
  if (!has_prompt) {
    throw InputError(detail::concat(where, ": expected {\"prompt\", \"completion\"} or {\"messages\": [...]}"));
  }
  out.push_back({"user", text_field(v, "prompt", where, "the example")});
  out.push_back({"assistant", text_field(v, "completion", where, "the example")});
  return out;
}

int32_t require_token(const Tokenizer& tokenizer, const char* token, const char* template_name) {
  const int32_t id = tokenizer.token_id(token);
  LORA_INPUT_CHECK(id >= 0, tokenizer.source(), ": data.template ", template_name, " needs the token ", token,
                   ", which this tokenizer does not have");
  return id;
}

}  // namespace

RenderedExample render_example(std::string_view line, const std::string& where, ChatTemplate chat_template,
                               const Tokenizer& tokenizer) {
  const std::vector<Message> messages = parse_messages(line, where);
  RenderedExample ex;
  auto add = [&](std::string text, bool trained) {
    if (!text.empty()) ex.segments.push_back({std::move(text), trained});
  };
  switch (chat_template) {
    case ChatTemplate::kNone:
      // The texts as they are; BOS when the tokenizer adds one, EOS after the example.
      for (const Message& m : messages) add(m.content, m.role == "assistant");
      ex.add_bos = tokenizer.add_bos();
      ex.add_eos = true;
      break;
    case ChatTemplate::kChatml: {
      // Qwen2-Instruct's template: a default system message when the first is not one, then
      // "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message.
      const int32_t im_end = require_token(tokenizer, "<|im_end|>", "chatml");
      require_token(tokenizer, "<|im_start|>", "chatml");
      if (messages[0].role != "system") add("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", false);
      for (const Message& m : messages) {
        if (m.role == "assistant") {
          add("<|im_start|>assistant\n", false);
          add(m.content + "<|im_end|>", true);
          add("\n", false);
        } else {
          add("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n", false);
        }
      }
      ex.add_eos = tokenizer.eos_id() != im_end;
      break;
    }
    case ChatTemplate::kLlama3: {
      // Llama-3-Instruct's template: BOS, then per message
      // "<|start_header_id|>ROLE<|end_header_id|>\n\n" + trimmed content + "<|eot_id|>".
      const int32_t eot = require_token(tokenizer, "<|eot_id|>", "llama3");
      require_token(tokenizer, "<|start_header_id|>", "llama3");
      require_token(tokenizer, "<|end_header_id|>", "llama3");
      LORA_INPUT_CHECK(tokenizer.bos_id() >= 0, tokenizer.source(),
                       ": data.template llama3 starts with the BOS token, and this tokenizer names none "
                       "(tokenizer_config.json bos_token)");
      std::string text = tokenizer.token(tokenizer.bos_id());
      for (const Message& m : messages) {
        text += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n";
        if (m.role == "assistant") {
          add(std::move(text), false);
          text.clear();
          add(trim(m.content) + "<|eot_id|>", true);
        } else {
          text += trim(m.content) + "<|eot_id|>";
        }
      }
      add(std::move(text), false);
      ex.add_eos = tokenizer.eos_id() != eot;
      break;
    }
  }
  if (ex.add_eos && tokenizer.eos_id() < 0) {
    throw InputError(detail::concat(tokenizer.source(), ": jsonl examples end with EOS, and this tokenizer names "
                                    "none (tokenizer_config.json eos_token or config.json eos_token_id)"));
  }
  return ex;
}

ChatPrompt render_chat_prompt(const std::string& user_text, ChatTemplate chat_template,
                              const Tokenizer& tokenizer) {
  ChatPrompt p;
  if (tokenizer.eos_id() >= 0) p.stop_ids.push_back(tokenizer.eos_id());
  switch (chat_template) {
    case ChatTemplate::kNone:
      p.text = user_text;
      p.add_bos = tokenizer.add_bos();
      break;
    case ChatTemplate::kChatml:
      p.stop_ids.push_back(require_token(tokenizer, "<|im_end|>", "chatml"));
      require_token(tokenizer, "<|im_start|>", "chatml");
      p.text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" +
               user_text + "<|im_end|>\n<|im_start|>assistant\n";
      break;
    case ChatTemplate::kLlama3:
      p.stop_ids.push_back(require_token(tokenizer, "<|eot_id|>", "llama3"));
      require_token(tokenizer, "<|start_header_id|>", "llama3");
      require_token(tokenizer, "<|end_header_id|>", "llama3");
      LORA_INPUT_CHECK(tokenizer.bos_id() >= 0, tokenizer.source(),
                       ": data.template llama3 starts with the BOS token, and this tokenizer names none "
                       "(tokenizer_config.json bos_token)");
      p.text = tokenizer.token(tokenizer.bos_id()) + "<|start_header_id|>user<|end_header_id|>\n\n" +
               trim(user_text) + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
  }
  return p;
}

void tokenize_example(const RenderedExample& example, const Tokenizer& tokenizer, Encoder* encoder,
                      bool mask_prompt, std::vector<int32_t>* ids, std::vector<uint8_t>* trained) {
  ids->clear();
  trained->clear();
  if (example.add_bos) {
    ids->push_back(tokenizer.bos_id());
    trained->push_back(0);
  }
  std::string text;
  for (const RenderedSegment& s : example.segments) text += s.text;
  const size_t first = ids->size();
  encoder->encode(text, ids);
  const size_t n_text = ids->size() - first;
  trained->resize(ids->size(), mask_prompt ? 0 : 1);
  if (mask_prompt && !example.segments.empty()) {
    // Token ranges of the segments. Encoding each segment on its own (continuing the text before
    // it) gives them directly when the concatenation equals the whole; otherwise a merge crossed a
    // segment boundary, and the boundary's token index is where the whole and the encoding of the
    // text up to the boundary part ways (a token across a boundary goes with the segment after).
    std::vector<int32_t> parts;
    std::vector<size_t> ends;  // token count at the end of each segment
    for (size_t k = 0; k < example.segments.size(); ++k) {
      encoder->encode(example.segments[k].text, &parts, k == 0 ? TextPosition::kStart : TextPosition::kContinuation);
      ends.push_back(parts.size());
    }
    const bool aligned = parts.size() == n_text && std::equal(parts.begin(), parts.end(), ids->begin() + first);
    if (!aligned) {
      size_t offset = 0;
      std::vector<int32_t> prefix;
      for (size_t k = 0; k < example.segments.size(); ++k) {
        offset += example.segments[k].text.size();
        prefix.clear();
        encoder->encode(std::string_view(text).substr(0, offset), &prefix);
        size_t common = 0;
        while (common < prefix.size() && common < n_text && prefix[common] == (*ids)[first + common]) ++common;
        ends[k] = common;
      }
      ends.back() = n_text;
    }
    size_t begin = 0;
    for (size_t k = 0; k < example.segments.size(); ++k) {
      const size_t end = std::max(begin, std::min(ends[k], n_text));
      if (example.segments[k].trained) std::fill(trained->begin() + first + begin, trained->begin() + first + end, 1);
      begin = end;
    }
  }
  if (example.add_eos) {
    ids->push_back(tokenizer.eos_id());
    trained->push_back(1);
  }
}

// ---- loading ----

namespace {

using Clock = std::chrono::steady_clock;

bool readable_shard(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  unsigned char header[12];
  if (!in.read(reinterpret_cast<char*>(header), sizeof header)) return false;
  const uint64_t size = fs::file_size(path, ec);
  return !ec && read_i32_le(header) == kShardMagic && read_i32_le(header + 4) == 2 &&
         read_i32_le(header + 8) >= 0 && size == kShardHeaderBytes + 4 * static_cast<uint64_t>(read_i32_le(header + 8));
}

bool writable_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  return !ec && ::access(dir.c_str(), W_OK) == 0;
}

// Tokenized text files, through their caches.
void load_tokenized_text(const Config& cfg, const std::vector<std::string>& paths, const Tokenizer& tokenizer,
                         comm::Communicator* comm, std::vector<uint32_t>* tokens,
                         std::vector<std::string>* summary) {
  const bool lead = comm == nullptr || comm->rank() == 0;
  std::vector<std::string> caches;
  for (const std::string& path : paths) {
    // Next to the data when that directory is writable, else under the run's output directory.
    const std::string near = token_cache_path(path, tokenizer);
    const std::string far = (fs::path(cfg.run.output_dir) / "token-cache" / fs::path(near).filename()).string();
    std::string cache = readable_shard(near) ? near : readable_shard(far) ? far : "";
    if (lead && cache.empty()) {
      cache = writable_dir(fs::path(near).parent_path()) ? near : far;
      LORA_INPUT_CHECK(cache == near || writable_dir(fs::path(far).parent_path()), path,
                       ": cannot write its token cache (", near, " or ", far, ")");
      const auto t0 = Clock::now();
      const CorpusStats s = tokenize_text_to_shard(tokenizer, {path}, cache, cfg.device.threads);
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      char line[512];
      std::snprintf(line, sizeof line, "data: %s: %llu tokens, tokenized in %.1f s (%.1f MB/s on %d threads), cached at %s",
                    path.c_str(), static_cast<unsigned long long>(s.n_tokens), secs,
                    static_cast<double>(s.n_bytes) / 1e6 / std::max(secs, 1e-9), s.n_threads, cache.c_str());
      summary->push_back(line);
    } else if (lead) {
      summary->push_back(detail::concat("data: ", path, ": tokens from the cache ", cache));
    }
    caches.push_back(cache);
  }
  if (comm != nullptr && comm->size() > 1) {
    // The other ranks wait for rank 0's tokenization, however long it takes (a failure on rank 0
    // ends the job).
    const auto timeout = comm->timeout();
    comm->set_timeout(std::chrono::hours(24 * 7));
    comm->barrier();
    comm->set_timeout(timeout);
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    std::string cache = caches[i];
    if (!lead) {
      const std::string near = token_cache_path(paths[i], tokenizer);
      const std::string far = (fs::path(cfg.run.output_dir) / "token-cache" / fs::path(near).filename()).string();
      cache = readable_shard(near) ? near : far;
    }
    append_shard(cache, read_data_file(cache), cfg.model.spec.vocab_size, tokens);
  }
}

void load_jsonl(const Config& cfg, const std::vector<std::string>& paths, const Tokenizer& tokenizer,
                std::vector<uint32_t>* tokens, std::vector<uint8_t>* trainable,
                std::vector<uint64_t>* offsets, std::vector<std::string>* summary) {
  const int T = cfg.data.seq_len;
  Encoder encoder(tokenizer);
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;
  size_t n_examples = 0, n_filtered = 0, n_long = 0, n_trained = 0;
  if (!cfg.data.pack) offsets->push_back(0);
  for (const std::string& path : paths) {
    const std::vector<unsigned char> bytes = read_data_file(path);
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.find_first_not_of(" \t") == std::string_view::npos) continue;  // blank line
      const std::string where = detail::concat(path, ":", line_no);
      const size_t bad = unicode::invalid_utf8_offset(line);
      LORA_INPUT_CHECK(bad == std::string_view::npos, where, ": byte ", bad, " of the line is not valid UTF-8");
      const RenderedExample ex = render_example(line, where, cfg.data.chat_template, tokenizer);
      tokenize_example(ex, tokenizer, &encoder, cfg.data.mask_prompt, &ids, &trained);
      for (int32_t id : ids) {
        LORA_INPUT_CHECK(id < cfg.model.spec.vocab_size, where, ": token id ", id, " is >= model.vocab_size ",
                         cfg.model.spec.vocab_size);
      }
      size_t n = ids.size();
      if (n > static_cast<size_t>(T) + 1) {
        ++n_long;
        if (!cfg.data.pack) n = static_cast<size_t>(T) + 1;  // one example per sequence: truncate
      }
      // Position 0 is never a target.
      const size_t targets =
          n < 2 ? 0 : static_cast<size_t>(std::count(trained.begin() + 1, trained.begin() + static_cast<std::ptrdiff_t>(n), 1));
      if (targets == 0) {
        ++n_filtered;
        continue;
      }
      ++n_examples;
      n_trained += targets;
      tokens->insert(tokens->end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n));
      trainable->insert(trainable->end(), trained.begin(), trained.begin() + static_cast<std::ptrdiff_t>(n));
      if (!cfg.data.pack) offsets->push_back(tokens->size());
    }
  }
  if (n_examples == 0) {
    throw InputError(detail::concat(joined(paths), ": no example left to train on (", n_filtered,
                                    " examples had no target tokens", cfg.data.mask_prompt ? " outside the prompt" : "",
                                    ")"));
  }
  if (cfg.data.pack) {
    check_stream_length(paths, tokens->size(), T);
    offsets->clear();
  }
  char line[512];
  std::snprintf(line, sizeof line,
                "data: %s: %zu examples (%s, %s), %zu tokens, %zu trained; %zu filtered (nothing to train on); "
                "%zu longer than seq_len + 1 = %d%s",
                joined(paths).c_str(), n_examples, std::string(chat_template_name(cfg.data.chat_template)).c_str(),
                cfg.data.pack ? "packed" : "one per sequence", tokens->size(), n_trained, n_filtered, n_long, T + 1,
                cfg.data.pack ? " (windows cut them)" : " (truncated)");
  summary->push_back(line);
}

}  // namespace

TokenStream load_token_stream(const Config& cfg, const std::vector<std::string>& paths,
                              comm::Communicator* comm) {
  const std::string tokenizer_path = tokenizer_source(cfg);
  const bool tokenized = cfg.data.format == DataFormat::kJsonl ||
                         (cfg.data.format == DataFormat::kText && !tokenizer_path.empty());
  if (!tokenized) return TokenStream(paths, cfg.data.format, cfg.model.spec.vocab_size, cfg.data.seq_len);
  LORA_INPUT_CHECK(!paths.empty(), "data: expected at least one data file");
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  LORA_INPUT_CHECK(tokenizer.vocab_size() <= cfg.model.spec.vocab_size, cfg.source_path,
                   ": model.vocab_size ", cfg.model.spec.vocab_size, " is smaller than the vocabulary of ",
                   tokenizer.source(), " (", tokenizer.vocab_size(), " ids)");
  TokenStream s;
  if (cfg.data.format == DataFormat::kText) {
    load_tokenized_text(cfg, paths, tokenizer, comm, &s.tokens_, &s.summary_);
    check_stream_length(paths, s.tokens_.size(), cfg.data.seq_len);
  } else {
    load_jsonl(cfg, paths, tokenizer, &s.tokens_, &s.trainable_, &s.example_offsets_, &s.summary_);
    s.pad_id_ = static_cast<uint32_t>(std::max(tokenizer.eos_id(), 0));
  }
  return s;
}

}  // namespace lora
