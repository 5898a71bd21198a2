// Token streams from text files (one token per byte) or llm.c token shards, and the seeded choice
// of training sequences.
//
// Shard layout (all little-endian): int32 header[256] with header[0] = 20240520 (magic),
// header[1] = 1 (version), header[2] = n_tokens; then n_tokens uint16 token ids. The file size must
// be exactly 1024 + 2 * n_tokens bytes. Files are concatenated in the order given.
//
// A sequence starting at `start` has inputs tokens[start, start + seq_len) and targets
// tokens[start + 1, start + seq_len + 1): start ranges over [0, n_tokens - seq_len), so the last
// input's target always exists.
#include "trainer/data.h"

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"

namespace lora {

namespace {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
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
  namespace fs = std::filesystem;
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
                 std::vector<uint16_t>* tokens) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    LORA_INPUT_CHECK(bytes[i] < vocab_size, path, ": byte ", static_cast<int>(bytes[i]),
                     " at position ", i, " is >= model.vocab_size ", vocab_size,
                     " (format text needs vocab_size >= 256)");
  }
  tokens->insert(tokens->end(), bytes.begin(), bytes.end());
}

void append_shard(const std::string& path, const std::vector<unsigned char>& bytes, int vocab_size,
                  std::vector<uint16_t>* tokens) {
  LORA_INPUT_CHECK(bytes.size() >= kShardHeaderBytes, path, ": token shard is ", bytes.size(),
                   " bytes, shorter than its ", kShardHeaderBytes,
                   "-byte header (expected an llm.c token shard)");
  const int32_t magic = read_i32_le(bytes.data());
  const int32_t version = read_i32_le(bytes.data() + 4);
  const int32_t count = read_i32_le(bytes.data() + 8);
  LORA_INPUT_CHECK(magic == kShardMagic, path, ": bad token shard magic ", magic, " (expected ",
                   kShardMagic, ": an llm.c token shard; use format text for raw text)");
  LORA_INPUT_CHECK(version == kShardVersion, path, ": unsupported token shard version ", version,
                   " (expected ", kShardVersion, ": uint16 tokens)");
  LORA_INPUT_CHECK(count >= 0, path, ": token shard header gives a negative token count ", count);
  const uint64_t payload_bytes = bytes.size() - kShardHeaderBytes;
  const uint64_t expected_bytes = 2 * static_cast<uint64_t>(count);
  LORA_INPUT_CHECK(payload_bytes == expected_bytes, path, ": token shard header says ", count,
                   " tokens (", expected_bytes, " bytes) but the file holds ", payload_bytes,
                   " bytes after the header (", payload_bytes < expected_bytes ? "truncated" : "trailing data",
                   ")");
  LORA_INPUT_CHECK(count > 0, path, ": token shard holds no tokens");
  const size_t base = tokens->size();
  tokens->resize(base + static_cast<size_t>(count));
  uint16_t* out = tokens->data() + base;
  const unsigned char* in = bytes.data() + kShardHeaderBytes;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, in, static_cast<size_t>(count) * sizeof(uint16_t));
  } else {
    for (int32_t i = 0; i < count; ++i) {
      out[i] = static_cast<uint16_t>(in[2 * i] | (in[2 * i + 1] << 8));
    }
  }
  for (int32_t i = 0; i < count; ++i) {
    LORA_INPUT_CHECK(out[i] < vocab_size, path, ": token id ", out[i], " at position ", i,
                     " (byte offset ", kShardHeaderBytes + 2 * static_cast<size_t>(i),
                     ") is >= model.vocab_size ", vocab_size);
  }
}

}  // namespace

TokenStream::TokenStream(const std::vector<std::string>& paths, DataFormat format, int vocab_size,
                         int seq_len) {
  LORA_INPUT_CHECK(!paths.empty(), "data: expected at least one data file");
  LORA_INPUT_CHECK(vocab_size > 0, "model.vocab_size: expected a positive integer, got ", vocab_size);
  LORA_INPUT_CHECK(seq_len > 0, "data.seq_len: expected a positive integer, got ", seq_len);
  for (const std::string& path : paths) {
    const std::vector<unsigned char> bytes = read_data_file(path);
    if (format == DataFormat::kText) {
      append_text(path, bytes, vocab_size, &tokens_);
    } else {
      append_shard(path, bytes, vocab_size, &tokens_);
    }
  }
  if (tokens_.size() < static_cast<size_t>(seq_len) + 1) {
    std::string names;
    for (size_t i = 0; i < paths.size(); ++i) names += (i ? ", " : "") + paths[i];
    throw InputError(detail::concat(names, ": data holds ", tokens_.size(),
                                    " tokens, fewer than data.seq_len + 1 = ", seq_len + 1,
                                    " (one sequence and its next-token targets)"));
  }
}

void TokenStream::copy_sequence(size_t start, int seq_len, int32_t* inputs, int32_t* targets) const {
  LORA_CHECK(seq_len > 0, "seq_len must be positive, got ", seq_len);
  LORA_CHECK(start + static_cast<size_t>(seq_len) < tokens_.size(), "sequence [", start, ", ",
             start + seq_len, "] runs past the end of a stream of ", tokens_.size(), " tokens");
  const uint16_t* src = tokens_.data() + start;
  for (int j = 0; j < seq_len; ++j) {
    inputs[j] = src[j];
    targets[j] = src[j + 1];
  }
}

size_t sequence_start(uint64_t seed, uint64_t step, uint64_t global_index, size_t n_tokens,
                      int seq_len) {
  LORA_CHECK(seq_len > 0 && n_tokens > static_cast<size_t>(seq_len), "a stream of ", n_tokens,
             " tokens holds no sequence of ", seq_len, " tokens plus targets");
  const uint64_t n_starts = n_tokens - static_cast<size_t>(seq_len);
  return static_cast<size_t>(hash_u64(seed, step, global_index) % n_starts);
}

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  LORA_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX), "a token shard holds at most ",
             INT32_MAX, " tokens, got ", tokens.size());
  std::vector<unsigned char> bytes(kShardHeaderBytes + 2 * tokens.size(), 0);
  write_i32_le(kShardMagic, bytes.data());
  write_i32_le(kShardVersion, bytes.data() + 4);
  write_i32_le(static_cast<int32_t>(tokens.size()), bytes.data() + 8);
  unsigned char* out = bytes.data() + kShardHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    out[2 * i] = static_cast<unsigned char>(tokens[i] & 0xff);
    out[2 * i + 1] = static_cast<unsigned char>(tokens[i] >> 8);
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error(detail::concat(path, ": cannot open for writing"));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) throw Error(detail::concat(path, ": write failed"));
}

}  // namespace lora
