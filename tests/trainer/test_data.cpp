// Token streams and sequence choice: text and llm.c shard loading (the shard bytes checked by hand),
// every malformed shard (written to a temp dir by the test), the seeded sequence start (determinism,
// range, independence from world size) and the one-token shift between inputs and targets.
#include <gtest/gtest.h>

#include "tests/common/input_error.h"
#include "tests/common/temp_dir.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainer/data.h"

namespace fs = std::filesystem;

namespace {

class TempDir : public lora::testing::TempDir {
 public:
  TempDir() : lora::testing::TempDir("lora_test_data") {}
  std::string file(const std::string& name) const { return (path() / name).string(); }
  std::string write_bytes(const std::string& name, const std::vector<unsigned char>& bytes) const {
    const std::string p = file(name);
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return p;
  }
  std::string write_text(const std::string& name, const std::string& text) const {
    return write_bytes(name, std::vector<unsigned char>(text.begin(), text.end()));
  }
};

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

int32_t le_i32(const std::vector<unsigned char>& b, size_t off) {
  return static_cast<int32_t>(static_cast<uint32_t>(b[off]) | (static_cast<uint32_t>(b[off + 1]) << 8) |
                              (static_cast<uint32_t>(b[off + 2]) << 16) |
                              (static_cast<uint32_t>(b[off + 3]) << 24));
}

void put_i32(std::vector<unsigned char>* b, size_t off, int32_t v) {
  for (int i = 0; i < 4; ++i) (*b)[off + i] = static_cast<unsigned char>(static_cast<uint32_t>(v) >> (8 * i));
}

// A shard's bytes built by hand (not by write_token_shard), so header fields can be broken.
std::vector<unsigned char> shard_bytes(int32_t magic, int32_t version, int32_t count,
                                       const std::vector<uint16_t>& tokens) {
  std::vector<unsigned char> b(1024 + 2 * tokens.size(), 0);
  put_i32(&b, 0, magic);
  put_i32(&b, 4, version);
  put_i32(&b, 8, count);
  for (size_t i = 0; i < tokens.size(); ++i) {
    b[1024 + 2 * i] = static_cast<unsigned char>(tokens[i] & 0xff);
    b[1024 + 2 * i + 1] = static_cast<unsigned char>(tokens[i] >> 8);
  }
  return b;
}

std::vector<uint16_t> ramp(size_t n, int mod) {
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint16_t>((i * 7919 + 13) % mod);
  return t;
}

using lora::testing::input_error_of;

// ---- loading ---------------------------------------------------------------------------------

TEST(TokenStream, TextBytesAreTheTokensAndFilesConcatenateInOrder) {
  TempDir dir;
  const std::string a = dir.write_text("a.txt", "Hello, w\xc3\xb6rld\n");
  const std::string b = dir.write_bytes("b.bin", {0, 255, 128, 10});
  lora::TokenStream s({a, b}, lora::DataFormat::kText, 256, 4);
  const std::vector<uint16_t> want = {'H', 'e', 'l', 'l', 'o', ',', ' ', 'w', 0xc3, 0xb6,
                                      'r', 'l', 'd', '\n', 0, 255, 128, 10};
  EXPECT_EQ(s.tokens(), want);
  EXPECT_EQ(s.size(), want.size());
  lora::TokenStream reversed({b, a}, lora::DataFormat::kText, 256, 4);
  EXPECT_EQ(reversed.tokens()[0], 0);
  EXPECT_EQ(reversed.tokens()[4], 'H');
}

TEST(TokenStream, WriteTokenShardWritesTheLlmcLayout) {
  TempDir dir;
  const std::vector<uint16_t> tokens = {0, 1, 50256, 65535, 300, 258};
  const std::string path = dir.file("s.bin");
  lora::write_token_shard(path, tokens);
  const std::vector<unsigned char> b = read_bytes(path);
  ASSERT_EQ(b.size(), 1024u + 2 * tokens.size());
  EXPECT_EQ(le_i32(b, 0), 20240520);
  EXPECT_EQ(le_i32(b, 4), 1);
  EXPECT_EQ(le_i32(b, 8), static_cast<int32_t>(tokens.size()));
  for (size_t off = 12; off < 1024; ++off) EXPECT_EQ(b[off], 0) << off;
  // 50256 = 0xC450 little-endian: 0x50, 0xC4.
  EXPECT_EQ(b[1024 + 4], 0x50);
  EXPECT_EQ(b[1024 + 5], 0xC4);
  EXPECT_EQ(b[1024 + 6], 0xFF);
  EXPECT_EQ(b[1024 + 7], 0xFF);
}

TEST(TokenStream, ShardsLoadAndConcatenate) {
  TempDir dir;
  const std::vector<uint16_t> t0 = ramp(100, 50257), t1 = ramp(37, 1000);
  lora::write_token_shard(dir.file("s0.bin"), t0);
  lora::write_token_shard(dir.file("s1.bin"), t1);
  lora::TokenStream s({dir.file("s0.bin"), dir.file("s1.bin")}, lora::DataFormat::kTokens, 50257, 16);
  std::vector<uint16_t> want = t0;
  want.insert(want.end(), t1.begin(), t1.end());
  EXPECT_EQ(s.tokens(), want);
  // A hand-built shard reads the same as one from write_token_shard.
  const std::string hand = dir.write_bytes("hand.bin", shard_bytes(20240520, 1, 100, t0));
  EXPECT_EQ(lora::TokenStream({hand}, lora::DataFormat::kTokens, 50257, 16).tokens(), t0);
}

TEST(TokenStream, ExactlySeqLenPlusOneTokensIsEnough) {
  TempDir dir;
  lora::write_token_shard(dir.file("s.bin"), ramp(9, 100));
  EXPECT_EQ(lora::TokenStream({dir.file("s.bin")}, lora::DataFormat::kTokens, 100, 8).size(), 9u);
  const std::string msg = input_error_of(
      [&] { lora::TokenStream({dir.file("s.bin")}, lora::DataFormat::kTokens, 100, 9); });
  EXPECT_NE(msg.find(dir.file("s.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds 9 tokens, fewer than data.seq_len + 1 = 10"), std::string::npos) << msg;
}

struct BadData {
  std::string name;
  std::vector<unsigned char> bytes;  // written to the temp dir unless `missing`
  lora::DataFormat format;
  std::string fragment;
  bool missing = false;
};

TEST(TokenStream, MalformedFilesAreInputErrorsNamingTheFile) {
  TempDir dir;
  const auto tokens = lora::DataFormat::kTokens;
  const auto text = lora::DataFormat::kText;
  const std::vector<uint16_t> good = ramp(64, 200);
  std::vector<uint16_t> bad_id = good;
  bad_id[37] = 200;  // vocab_size is 200 below
  std::vector<unsigned char> truncated = shard_bytes(20240520, 1, 64, good);
  truncated.resize(truncated.size() - 3);
  std::vector<unsigned char> trailing = shard_bytes(20240520, 1, 64, good);
  trailing.push_back(0);
  trailing.push_back(0);
  const std::vector<BadData> cases = {
      {"missing.bin", {}, tokens, "data file does not exist", true},
      {"empty.bin", {}, tokens, "data file is empty"},
      {"empty.txt", {}, text, "data file is empty"},
      {"short.bin", std::vector<unsigned char>(1000, 1), tokens,
       "token shard is 1000 bytes, shorter than its 1024-byte header"},
      {"magic.bin", shard_bytes(20240521, 1, 64, good), tokens,
       "bad token shard magic 20240521 (expected 20240520"},
      {"version.bin", shard_bytes(20240520, 2, 64, good), tokens,
       "unsupported token shard version 2 (expected 1"},
      {"negative.bin", shard_bytes(20240520, 1, -5, good), tokens, "negative token count -5"},
      {"truncated.bin", truncated, tokens,
       "header says 64 tokens (128 bytes) but the file holds 125 bytes after the header (truncated)"},
      {"count_too_big.bin", shard_bytes(20240520, 1, 65, good), tokens,
       "header says 65 tokens (130 bytes) but the file holds 128 bytes after the header (truncated)"},
      {"trailing.bin", trailing, tokens, "holds 130 bytes after the header (trailing data)"},
      {"zero.bin", shard_bytes(20240520, 1, 0, {}), tokens, "token shard holds no tokens"},
      {"bad_id.bin", shard_bytes(20240520, 1, 64, bad_id), tokens,
       "token id 200 at position 37 (byte offset 1098) is >= model.vocab_size 200"},
      {"big_byte.txt", {'a', 'b', 250, 'c'}, text, "byte 250 at position 2 is >= model.vocab_size 200"},
  };
  for (const BadData& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = c.missing ? dir.file(c.name) : dir.write_bytes(c.name, c.bytes);
    const std::string msg =
        input_error_of([&] { lora::TokenStream({path}, c.format, 200, 4); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(c.fragment), std::string::npos) << msg << "\nmissing: " << c.fragment;
  }
  // A directory is not a data file.
  const std::string msg = input_error_of(
      [&] { lora::TokenStream({fs::temp_directory_path().string()}, text, 256, 4); });
  EXPECT_NE(msg.find("data file is not a regular file"), std::string::npos) << msg;
  // A bad file after a good one is still named.
  lora::write_token_shard(dir.file("good.bin"), good);
  const std::string second = input_error_of([&] {
    lora::TokenStream({dir.file("good.bin"), dir.file("magic.bin")}, tokens, 200, 4);
  });
  EXPECT_EQ(second.rfind(dir.file("magic.bin") + ": bad token shard magic", 0), 0u) << second;
}

TEST(TokenStream, ShortStreamNamesEveryFile) {
  TempDir dir;
  const std::string a = dir.write_text("a.txt", "abc");
  const std::string b = dir.write_text("b.txt", "de");
  const std::string msg =
      input_error_of([&] { lora::TokenStream({a, b}, lora::DataFormat::kText, 256, 5); });
  EXPECT_EQ(msg.rfind(a + ", " + b + ": data holds 5 tokens, fewer than data.seq_len + 1 = 6", 0), 0u)
      << msg;
}

// ---- sequence choice ------------------------------------------------------------------------

TEST(SequenceStart, IsDeterministicAndInRange) {
  const size_t n_tokens = 1000;
  const int seq_len = 64;
  std::set<size_t> seen;
  for (uint64_t step = 0; step < 50; ++step) {
    for (uint64_t i = 0; i < 40; ++i) {
      const size_t s = lora::sequence_start(42, step, i, n_tokens, seq_len);
      EXPECT_EQ(s, lora::sequence_start(42, step, i, n_tokens, seq_len));
      ASSERT_LT(s + seq_len, n_tokens);  // the last input's target exists
      seen.insert(s);
    }
  }
  // 2000 draws over 936 possible starts: a uniform choice hits most of them.
  EXPECT_GT(seen.size(), 800u);
}

TEST(SequenceStart, CoversEveryStartAndDependsOnSeedStepAndIndex) {
  // n_tokens - seq_len = 10 possible starts: all are reached, none beyond.
  std::set<size_t> seen;
  for (uint64_t i = 0; i < 500; ++i) seen.insert(lora::sequence_start(7, 3, i, 18, 8));
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(*seen.rbegin(), 9u);
  // The only start of a stream of seq_len + 1 tokens is 0.
  for (uint64_t i = 0; i < 20; ++i) EXPECT_EQ(lora::sequence_start(7, i, i, 9, 8), 0u);
  // Changing any of seed, step, index changes the choice for most draws.
  int same_seed = 0, same_step = 0, same_index = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    const size_t s = lora::sequence_start(1, 5, i, 1 << 20, 128);
    same_seed += s == lora::sequence_start(2, 5, i, 1 << 20, 128);
    same_step += s == lora::sequence_start(1, 6, i, 1 << 20, 128);
    same_index += s == lora::sequence_start(1, 5, i + 1000, 1 << 20, 128);
  }
  EXPECT_LT(same_seed, 3);
  EXPECT_LT(same_step, 3);
  EXPECT_LT(same_index, 3);
}

TEST(SequenceStart, RanksOfAnyWorldSizeTogetherDrawTheSameGlobalBatch) {
  const uint64_t seed = 1234;
  const long global_batch = 24;  // divisible by 1, 2, 3, 4, 6, 8
  const size_t n_tokens = 100000;
  const int seq_len = 32;
  for (uint64_t step : {0ull, 1ull, 77ull}) {
    std::map<long, size_t> reference;  // global index -> start, at world size 1
    for (long i = 0; i < global_batch; ++i) {
      reference[i] = lora::sequence_start(seed, step, static_cast<uint64_t>(i), n_tokens, seq_len);
    }
    for (int world : {2, 3, 4, 6, 8}) {
      std::map<long, size_t> gathered;
      for (int rank = 0; rank < world; ++rank) {
        // Rank k of N takes global indices k, k + N, ...
        for (long i = rank; i < global_batch; i += world) {
          EXPECT_TRUE(gathered.emplace(i, lora::sequence_start(seed, step, static_cast<uint64_t>(i),
                                                                n_tokens, seq_len))
                          .second);
        }
      }
      EXPECT_EQ(gathered, reference) << "world size " << world << ", step " << step;
    }
  }
}

TEST(SequenceStart, RejectsAStreamWithNoFullSequence) {
  EXPECT_THROW(lora::sequence_start(1, 0, 0, 8, 8), lora::Error);
  EXPECT_THROW(lora::sequence_start(1, 0, 0, 3, 8), lora::Error);
}

TEST(TokenStream, CopySequenceShiftsTargetsByOne) {
  TempDir dir;
  const std::vector<uint16_t> t = ramp(300, 50257);
  lora::write_token_shard(dir.file("s.bin"), t);
  lora::TokenStream s({dir.file("s.bin")}, lora::DataFormat::kTokens, 50257, 16);
  const int seq_len = 16;
  std::vector<int32_t> in(seq_len), tg(seq_len);
  for (uint64_t i = 0; i < 20; ++i) {
    const size_t start = lora::sequence_start(9, 1, i, s.size(), seq_len);
    s.copy_sequence(start, seq_len, in.data(), tg.data());
    for (int j = 0; j < seq_len; ++j) {
      ASSERT_EQ(in[j], t[start + j]);
      ASSERT_EQ(tg[j], t[start + j + 1]);
      if (j + 1 < seq_len) {
        ASSERT_EQ(tg[j], in[j + 1]);
      }
    }
  }
  // The last full sequence ends one before the end; one further has no target for its last input.
  const size_t last = s.size() - seq_len - 1;
  s.copy_sequence(last, seq_len, in.data(), tg.data());
  EXPECT_EQ(tg[seq_len - 1], t.back());
  EXPECT_THROW(s.copy_sequence(last + 1, seq_len, in.data(), tg.data()), lora::Error);
}

}  // namespace
