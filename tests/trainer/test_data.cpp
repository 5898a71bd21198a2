// Token streams and sequence choice: text and llm.c shard loading (the shard bytes checked by hand,
// versions 1 and 2), every malformed shard (written to a temp dir by the test), the seeded sequence
// start (determinism, range, independence from world size) and the one-token shift between inputs
// and targets. Tokenized text (the ids of the whole file on any number of threads, the cache) and
// instruction JSONL (chatml and llama3 rendering and masks against transformers'
// apply_chat_template token by token, the none template, packing, padding, truncation, every bad
// line) with tokenizers trained by Hugging Face tokenizers (tests/common/reference_tokenizers.h).
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
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/tokenizer.h"
#include "tests/common/reference_tokenizers.h"
#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/trainer.h"

#include <yaml-cpp/yaml.h>

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
  const std::vector<uint32_t> want = {'H', 'e', 'l', 'l', 'o', ',', ' ', 'w', 0xc3, 0xb6,
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
  std::vector<uint32_t> want(t0.begin(), t0.end());
  want.insert(want.end(), t1.begin(), t1.end());
  EXPECT_EQ(s.tokens(), want);
  // A hand-built shard reads the same as one from write_token_shard.
  const std::string hand = dir.write_bytes("hand.bin", shard_bytes(20240520, 1, 100, t0));
  EXPECT_EQ(lora::TokenStream({hand}, lora::DataFormat::kTokens, 50257, 16).tokens(),
            std::vector<uint32_t>(t0.begin(), t0.end()));
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
      {"version.bin", shard_bytes(20240520, 3, 64, good), tokens,
       "unsupported token shard version 3 (expected 1: uint16 tokens, or 2: uint32 tokens)"},
      {"v2_truncated.bin", shard_bytes(20240520, 2, 64, good), tokens,
       "header says 64 tokens (256 bytes) but the file holds 128 bytes after the header (truncated)"},
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

// ---- version 2 shards ------------------------------------------------------------------------

TEST(TokenShards, Version2HoldsIdsAbove65535) {
  TempDir dir;
  const std::vector<uint32_t> t = {0, 65535, 65536, 151642, 7, 100000};
  lora::write_token_shard_v2(dir.file("v2.bin"), t);
  const std::vector<unsigned char> b = read_bytes(dir.file("v2.bin"));
  ASSERT_EQ(b.size(), 1024u + 4 * t.size());
  EXPECT_EQ(le_i32(b, 0), 20240520);
  EXPECT_EQ(le_i32(b, 4), 2);
  EXPECT_EQ(le_i32(b, 8), 6);
  EXPECT_EQ(le_i32(b, 1024 + 3 * 4), 151642);  // little-endian uint32
  lora::TokenStream s({dir.file("v2.bin")}, lora::DataFormat::kTokens, 151643, 4);
  EXPECT_EQ(s.tokens(), t);
  // Version 1 and 2 shards concatenate.
  lora::write_token_shard(dir.file("v1.bin"), {1, 2, 3});
  lora::TokenStream both({dir.file("v1.bin"), dir.file("v2.bin")}, lora::DataFormat::kTokens, 151643, 4);
  EXPECT_EQ(both.size(), 9u);
  EXPECT_EQ(both.tokens()[6], 151642u);
  // An id at or above the vocabulary is refused with its position and byte offset.
  const std::string msg = input_error_of(
      [&] { lora::TokenStream({dir.file("v2.bin")}, lora::DataFormat::kTokens, 100000, 4); });
  EXPECT_EQ(msg, dir.file("v2.bin") + ": token id 151642 at position 3 (byte offset 1036) is >= model.vocab_size 100000");
}

TEST(TokenShards, WriterStreamsTheSameFileAsWriteTokenShardV2) {
  TempDir dir;
  std::vector<uint32_t> all;
  {
    lora::TokenShardWriter w(dir.file("streamed.bin"));
    for (int part = 0; part < 3; ++part) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 1000 + part; ++i) ids.push_back(part * 70000 + i);
      w.append(ids);
      all.insert(all.end(), ids.begin(), ids.end());
    }
    EXPECT_FALSE(fs::exists(dir.file("streamed.bin"))) << "visible before finish()";
    w.finish();
  }
  lora::write_token_shard_v2(dir.file("whole.bin"), all);
  EXPECT_EQ(read_bytes(dir.file("streamed.bin")), read_bytes(dir.file("whole.bin")));
  // An unfinished writer leaves nothing behind.
  { lora::TokenShardWriter w(dir.file("abandoned.bin")); w.append(std::vector<int32_t>{1, 2}); }
  EXPECT_FALSE(fs::exists(dir.file("abandoned.bin")));
  size_t n_files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) n_files += e.is_regular_file();
  EXPECT_EQ(n_files, 2u);
}

// ---- tokenized text --------------------------------------------------------------------------

std::vector<uint32_t> read_v2(const std::string& path) {
  return lora::TokenStream({path}, lora::DataFormat::kTokens, 1 << 30, 1).tokens();
}

// About `mb` MB of Debian text (manual pages in several languages, docs), made by
// bench/debian_corpus.py.
std::string debian_text(const TempDir& dir, double mb) {
  const std::string out = dir.file("corpus.txt");
  const std::string cmd = lora::testing::shell_quote(LORA_PYTHON) + " " +
                          lora::testing::shell_quote(std::string(LORA_SOURCE_DIR) + "/bench/debian_corpus.py") +
                          " " + lora::testing::shell_quote(out) + " --mb " + std::to_string(mb) + " >/dev/null";
  if (std::system(cmd.c_str()) != 0) return "";
  return out;
}

TEST(TokenizedText, AnyThreadCountGivesTheIdsOfTheWholeFile) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string corpus = debian_text(dir, 4.5);  // more than one 4 MB window on one thread
  ASSERT_FALSE(corpus.empty());
  const std::string text = lora::testing::read_file_text(corpus);
  ASSERT_GT(text.size(), 4'400'000u);
  for (const char* style : {"gpt2", "llama3", "sp"}) {
    SCOPED_TRACE(style);
    const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir(style));
    ASSERT_TRUE(tok.newline_is_boundary());
    std::vector<uint32_t> want;
    if (tok.add_bos()) want.push_back(static_cast<uint32_t>(tok.bos_id()));
    for (int32_t id : tok.encode(text)) want.push_back(static_cast<uint32_t>(id));
    want.push_back(static_cast<uint32_t>(tok.eos_id()));
    for (int threads : {1, 3}) {
      const std::string out = dir.file(std::string(style) + std::to_string(threads) + ".bin");
      const lora::CorpusStats st = lora::tokenize_text_to_shard(tok, {corpus}, out, threads);
      EXPECT_EQ(st.n_bytes, text.size());
      EXPECT_EQ(st.n_tokens, want.size());
      EXPECT_TRUE(read_v2(out) == want) << threads << " threads";
    }
  }
}

std::string write_config(const TempDir& dir, const std::string& data_yaml, const std::string& extra = "") {
  const std::string path = dir.file("config.yaml");
  lora::testing::write_file_text(path, "run: {output_dir: " + dir.file("run") + "}\n"
                                       "model: {vocab_size: 8192, max_seq_len: 64}\n"
                                       "data: {" + data_yaml + "}\n" + extra);
  return path;
}

TEST(TokenizedText, CachedNextToTheDataAndReusedByALaterRun) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string data = dir.write_text("poems.txt", "Roses are red,\nviolets are blue.\nSugar is sweet\nand so are you.\n");
  const lora::Config cfg = lora::load_config(write_config(dir, "train: poems.txt, seq_len: 8, tokenizer: " + ref->dir("llama3")));
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("llama3"));
  const std::string cache = lora::token_cache_path(data, tok);
  EXPECT_EQ(fs::path(cache).parent_path(), dir.path() / ".lora-tokens");
  EXPECT_FALSE(fs::exists(cache));
  const lora::TokenStream first = lora::load_token_stream(cfg, cfg.data.train, nullptr);
  ASSERT_TRUE(fs::exists(cache));
  ASSERT_EQ(first.summary().size(), 1u);
  EXPECT_NE(first.summary()[0].find("tokenized in"), std::string::npos) << first.summary()[0];
  std::vector<uint32_t> want = {static_cast<uint32_t>(tok.bos_id())};
  for (int32_t id : tok.encode(lora::testing::read_file_text(data))) want.push_back(static_cast<uint32_t>(id));
  want.push_back(static_cast<uint32_t>(tok.eos_id()));
  EXPECT_EQ(first.tokens(), want);

  // A later run reads the cache (made visible here by changing the cached ids: the cache is used as is).
  std::vector<uint32_t> marked = want;
  marked[1] = 7;
  lora::write_token_shard_v2(cache, marked);
  const lora::TokenStream second = lora::load_token_stream(cfg, cfg.data.train, nullptr);
  EXPECT_NE(second.summary()[0].find("tokens from the cache"), std::string::npos) << second.summary()[0];
  EXPECT_EQ(second.tokens(), marked);

  // Other text or another tokenizer: another cache key.
  dir.write_text("poems.txt", "Roses are red.\n");
  EXPECT_NE(lora::token_cache_path(data, tok), cache);
  EXPECT_NE(lora::token_cache_path(data, lora::Tokenizer::load(ref->dir("gpt2"))), lora::token_cache_path(data, tok));

  // A model vocabulary smaller than the tokenizer's is refused.
  const std::string msg = input_error_of([&] {
    lora::load_config(write_config(dir, "train: poems.txt, tokenizer: " + ref->dir("llama3"),
                                   "model: {vocab_size: 300}\n"));
  });
  EXPECT_NE(msg.find("duplicate key"), std::string::npos) << msg;  // (the helper writes model: once more)
  lora::Config small = cfg;
  small.model.spec.vocab_size = 1000;
  EXPECT_EQ(input_error_of([&] { lora::load_token_stream(small, small.data.train, nullptr); }),
            dir.file("config.yaml") + ": model.vocab_size 1000 is smaller than the vocabulary of " + ref->dir("llama3") +
                "/tokenizer.json (4000 ids)");
}

TEST(TokenizedText, InvalidUtf8NamesTheFileAndByte) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  std::string text(3000, 'a');
  text[2500] = '\n';
  text += "ok\xc3(bad\n";
  const std::string data = dir.write_text("bad.txt", text);
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("gpt2"));
  EXPECT_EQ(input_error_of([&] { lora::tokenize_text_to_shard(tok, {data}, dir.file("o.bin"), 2); }),
            data + ": byte 3002: text is not valid UTF-8 (tokenized text must be UTF-8)");
  EXPECT_FALSE(fs::exists(dir.file("o.bin")));
}

// ---- instruction JSONL -----------------------------------------------------------------------

struct Example {
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;
};

std::vector<Example> encode_jsonl(const std::string& jsonl_path, lora::ChatTemplate tmpl, const lora::Tokenizer& tok,
                                  bool mask_prompt = true) {
  std::vector<Example> out;
  std::ifstream in(jsonl_path);
  std::string line;
  lora::Encoder enc(tok);
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    Example e;
    lora::tokenize_example(lora::render_example(line, "x.jsonl:" + std::to_string(n), tmpl, tok), tok, &enc,
                           mask_prompt, &e.ids, &e.trained);
    out.push_back(std::move(e));
  }
  return out;
}

std::string jsonl_line(const lora::json::Value& v) { return lora::json::dump(v) + "\n"; }

lora::json::Value msg(const char* role, const std::string& content) {
  lora::json::Value m = lora::json::Value::object();
  m.set("role", role);
  m.set("content", content);
  return m;
}

lora::json::Value conversation(std::vector<lora::json::Value> messages) {
  lora::json::Value v = lora::json::Value::object();
  v.set("messages", lora::json::Value(lora::json::Array(std::move(messages))));
  return v;
}

lora::json::Value prompt_completion(const std::string& p, const std::string& c) {
  lora::json::Value v = lora::json::Value::object();
  v.set("prompt", p);
  v.set("completion", c);
  return v;
}

// Examples covering a default and an explicit system message, several turns, white space around
// contents (llama3 trims it), a content starting with a line break (a pre-token across the
// chatml header), Unicode and code.
std::string chat_examples(const TempDir& dir) {
  std::string s;
  s += jsonl_line(prompt_completion("What does ls do?", "ls lists directory contents."));
  s += jsonl_line(conversation({msg("system", "You are terse."), msg("user", "Name a prime."), msg("assistant", "7")}));
  s += jsonl_line(conversation({msg("user", "  Привет! Как дела?  "), msg("assistant", "\n\nХорошо, спасибо. 😀\n"),
                                msg("user", "日本語で?"), msg("assistant", "  元気です。 ")}));
  s += jsonl_line(conversation({msg("user", "Write C."), msg("assistant", "int main() {\n    return 0;\n}\n")}));
  s += jsonl_line(conversation({msg("user", "Say nothing."), msg("assistant", "\nok")}));
  return dir.write_text("chat.jsonl", s);
}

TEST(Jsonl, ChatTemplatesMatchTransformersTokenByToken) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string jsonl = chat_examples(dir);
  const struct {
    const char* style;
    const char* name;
    lora::ChatTemplate tmpl;
  } cases[] = {{"qwen2", "chatml", lora::ChatTemplate::kChatml}, {"llama3", "llama3", lora::ChatTemplate::kLlama3}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string out = dir.file(std::string(c.name) + ".json");
    const std::string cmd = lora::testing::shell_quote(LORA_REF_PYTHON) + " " +
                            lora::testing::shell_quote(std::string(LORA_SOURCE_DIR) + "/tests/trainer/chat_reference.py") +
                            " " + lora::testing::shell_quote(ref->dir(c.style)) + " " + c.name + " " +
                            lora::testing::shell_quote(jsonl) + " " + lora::testing::shell_quote(out);
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const lora::json::Value want = lora::json::parse(lora::testing::read_file_text(out));
    const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir(c.style));
    const std::vector<Example> got = encode_jsonl(jsonl, c.tmpl, tok);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      SCOPED_TRACE("example " + std::to_string(i) + ": " + want.as_array()[i].find("text")->as_string());
      const auto& ids = want.as_array()[i].find("ids")->as_array();
      const auto& mask = want.as_array()[i].find("mask")->as_array();
      // Both tokenizers name the template's end-of-turn token as EOS: no EOS is appended.
      ASSERT_EQ(got[i].ids.size(), ids.size());
      for (size_t k = 0; k < ids.size(); ++k) {
        EXPECT_EQ(got[i].ids[k], ids[k].as_int64()) << "token " << k;
        EXPECT_EQ(got[i].trained[k], mask[k].as_int64()) << "token " << k << " '" << tok.token(got[i].ids[k]) << "'";
      }
      EXPECT_GT(std::count(got[i].trained.begin(), got[i].trained.end(), 1), 1);
    }
  }
}

// What `lora generate --chat` sends the model: the first user message of each example alone, in the
// template, followed by the start of the assistant's turn — the text and ids transformers'
// apply_chat_template(add_generation_prompt=True) gives; the reply stops at EOS or end of turn.
TEST(Jsonl, ChatPromptsMatchTransformersGenerationPrompt) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string jsonl = chat_examples(dir);
  const struct {
    const char* style;
    const char* name;
    lora::ChatTemplate tmpl;
    const char* end_of_turn;
  } cases[] = {{"qwen2", "chatml", lora::ChatTemplate::kChatml, "<|im_end|>"},
               {"llama3", "llama3", lora::ChatTemplate::kLlama3, "<|eot_id|>"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string out = dir.file(std::string(c.name) + ".generation.json");
    const std::string cmd = lora::testing::shell_quote(LORA_REF_PYTHON) + " " +
                            lora::testing::shell_quote(std::string(LORA_SOURCE_DIR) + "/tests/trainer/chat_reference.py") +
                            " " + lora::testing::shell_quote(ref->dir(c.style)) + " " + c.name + " " +
                            lora::testing::shell_quote(jsonl) + " " + lora::testing::shell_quote(out) +
                            " --generation-prompt";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const lora::json::Value want = lora::json::parse(lora::testing::read_file_text(out));
    const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir(c.style));
    std::ifstream in(jsonl);
    std::string line;
    size_t i = 0;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      ASSERT_LT(i, want.size());
      const lora::json::Value ex = lora::json::parse(line);
      std::string user;
      if (const lora::json::Value* p = ex.find("prompt")) {
        user = p->as_string();
      } else {
        for (const lora::json::Value& m : ex.find("messages")->as_array())
          if (m.find("role")->as_string() == "user") {
            user = m.find("content")->as_string();
            break;
          }
      }
      const lora::ChatPrompt p = lora::render_chat_prompt(user, c.tmpl, tok);
      const lora::json::Value& w = want.as_array()[i++];
      EXPECT_EQ(p.text, w.find("text")->as_string());
      EXPECT_FALSE(p.add_bos);  // both templates write what BOS they need into the text
      const std::vector<int32_t> ids = tok.encode(p.text);
      const auto& want_ids = w.find("ids")->as_array();
      ASSERT_EQ(ids.size(), want_ids.size());
      for (size_t k = 0; k < ids.size(); ++k) EXPECT_EQ(ids[k], want_ids[k].as_int64()) << "token " << k;
      const int32_t eot = tok.token_id(c.end_of_turn);
      EXPECT_NE(std::find(p.stop_ids.begin(), p.stop_ids.end(), eot), p.stop_ids.end());
    }
    EXPECT_EQ(i, want.size());
  }
}

TEST(Jsonl, NoneTemplateMasksThePromptAndEndsWithEos) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string jsonl = dir.write_text("pc.jsonl", jsonl_line(prompt_completion("Question: what is 2+2?\nAnswer:", " 4, of course.")) +
                                                           jsonl_line(conversation({msg("user", "Hi. "), msg("assistant", "Hello."),
                                                                                    msg("user", " Bye. "), msg("assistant", "Bye!")})));
  for (const char* style : {"sp", "gpt2"}) {
    SCOPED_TRACE(style);
    const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir(style));
    const std::vector<Example> got = encode_jsonl(jsonl, lora::ChatTemplate::kNone, tok);
    ASSERT_EQ(got.size(), 2u);
    // [BOS when the tokenizer adds one] prompt completion EOS, as separately encoded pieces here
    // (these boundaries fall between pre-tokens).
    std::vector<int32_t> want;
    std::vector<uint8_t> trained;
    if (tok.add_bos()) {
      want.push_back(tok.bos_id());
      trained.push_back(0);
    }
    for (const auto& [text, train] : std::vector<std::pair<std::string, bool>>{
             {"Question: what is 2+2?\nAnswer:", false}, {" 4, of course.", true}}) {
      const auto ids = tok.encode(text, want.size() > (tok.add_bos() ? 1u : 0u) ? lora::TextPosition::kContinuation
                                                                               : lora::TextPosition::kStart);
      want.insert(want.end(), ids.begin(), ids.end());
      trained.insert(trained.end(), ids.size(), train ? 1 : 0);
    }
    want.push_back(tok.eos_id());
    trained.push_back(1);
    EXPECT_EQ(got[0].ids, want);
    EXPECT_EQ(got[0].trained, trained);
    // The whole text's ids, whatever the masks.
    std::vector<int32_t> whole = tok.encode("Question: what is 2+2?\nAnswer: 4, of course.");
    EXPECT_TRUE(std::equal(whole.begin(), whole.end(), got[0].ids.begin() + (tok.add_bos() ? 1 : 0)));
    // Messages: the assistant contents are trained, the others not, EOS last.
    std::string trained_text;
    std::vector<int32_t> trained_ids;
    for (size_t k = 0; k < got[1].ids.size(); ++k)
      if (got[1].trained[k] && got[1].ids[k] != tok.eos_id()) trained_ids.push_back(got[1].ids[k]);
    EXPECT_EQ(tok.decode(trained_ids).find("Hello."), tok.decode(trained_ids).find("Hello."));
    EXPECT_NE(tok.decode(trained_ids).find("Hello."), std::string::npos) << tok.decode(trained_ids);
    EXPECT_NE(tok.decode(trained_ids).find("Bye!"), std::string::npos);
    EXPECT_EQ(tok.decode(trained_ids).find("Hi"), std::string::npos);
    EXPECT_EQ(got[1].ids.back(), tok.eos_id());
    EXPECT_EQ(got[1].trained.back(), 1);
    // mask_prompt false: every token but BOS is trained.
    const std::vector<Example> all = encode_jsonl(jsonl, lora::ChatTemplate::kNone, tok, false);
    EXPECT_EQ(all[0].ids, got[0].ids);
    EXPECT_EQ(std::count(all[0].trained.begin(), all[0].trained.end(), 0), tok.add_bos() ? 1 : 0);
  }
}

TEST(Jsonl, APreTokenAcrossTheBoundaryGoesToTheCompletion) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  // A prompt ending in a space and a completion starting with a word: " the" is one pre-token and
  // one token ("Ġthe") across the boundary. The ids are those of the whole text; the tokens from
  // the first one that differs from the prompt's own ids on are trained.
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("llama3"));
  TempDir dir;
  const std::string jsonl = dir.write_text("x.jsonl", jsonl_line(prompt_completion("The answer is ", "the same")));
  const std::vector<Example> got = encode_jsonl(jsonl, lora::ChatTemplate::kNone, tok);
  const std::vector<int32_t> whole = tok.encode("The answer is the same"), prompt = tok.encode("The answer is ");
  std::vector<int32_t> text_ids(got[0].ids.begin() + 1, got[0].ids.end() - 1);  // without BOS, EOS
  EXPECT_EQ(text_ids, whole);
  size_t common = 0;
  while (common < prompt.size() && prompt[common] == whole[common]) ++common;
  ASSERT_LT(common, prompt.size()) << "the example does not cross a pre-token";
  for (size_t k = 0; k < whole.size(); ++k) EXPECT_EQ(got[0].trained[k + 1], k >= common ? 1 : 0) << k;
}

lora::Config jsonl_config(const TempDir& dir, const std::string& tokenizer, const std::string& tmpl, bool pack,
                          int seq_len, const std::string& file = "chat.jsonl") {
  return lora::load_config(write_config(dir, "train: " + file + ", format: jsonl, seq_len: " + std::to_string(seq_len) +
                                                 ", tokenizer: " + tokenizer + ", template: " + tmpl +
                                                 ", pack: " + (pack ? "true" : "false")));
}

TEST(Jsonl, PackedTargetsAreIgnoredOutsideTheAnswers) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  chat_examples(dir);
  const lora::Config cfg = jsonl_config(dir, ref->dir("qwen2"), "chatml", true, 16);
  const lora::TokenStream s = lora::load_token_stream(cfg, cfg.data.train, nullptr);
  ASSERT_FALSE(s.one_example_per_sequence());
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("qwen2"));
  const std::vector<Example> ex = encode_jsonl(dir.file("chat.jsonl"), lora::ChatTemplate::kChatml, tok);
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> trained;
  for (const Example& e : ex) {
    tokens.insert(tokens.end(), e.ids.begin(), e.ids.end());
    trained.insert(trained.end(), e.trained.begin(), e.trained.end());
  }
  EXPECT_EQ(s.tokens(), tokens);
  EXPECT_EQ(s.trainable(), trained);
  std::vector<int32_t> in(16), tg(16);
  size_t n_ignored = 0, n_kept = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    s.fill_sequence(5, 3, i, 16, in.data(), tg.data());
    const size_t start = lora::sequence_start(5, 3, i, s.size(), 16);
    for (int j = 0; j < 16; ++j) {
      ASSERT_EQ(in[j], static_cast<int32_t>(tokens[start + j]));
      if (trained[start + j + 1]) {
        ASSERT_EQ(tg[j], static_cast<int32_t>(tokens[start + j + 1]));
        ++n_kept;
      } else {
        ASSERT_EQ(tg[j], lora::kIgnoreTarget);
        ++n_ignored;
      }
    }
  }
  EXPECT_GT(n_kept, 100u);
  EXPECT_GT(n_ignored, 100u);
  ASSERT_EQ(s.summary().size(), 1u);
  EXPECT_NE(s.summary()[0].find("5 examples (chatml, packed)"), std::string::npos) << s.summary()[0];
}

// `lora eval` on instruction data: every trained target once (prompt tokens and pads are not
// counted); packed data in consecutive windows, unpacked data one example per window.
TEST(Jsonl, EvalWindowsCountEveryTrainedTargetOnce) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  chat_examples(dir);
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("qwen2"));
  const std::vector<Example> ex = encode_jsonl(dir.file("chat.jsonl"), lora::ChatTemplate::kChatml, tok);
  lora::comm::LocalCommunicator comm;
  for (bool pack : {true, false}) {
    const int T = pack ? 16 : 40;  // unpacked examples keep their first T + 1 tokens
    const lora::Config cfg = jsonl_config(dir, ref->dir("qwen2"), "chatml", pack, T);
    const lora::TokenStream s = lora::load_token_stream(cfg, cfg.data.train, nullptr);
    long want_tokens = 0, want_windows = 0;
    if (pack) {
      long n = 0;
      for (const Example& e : ex) n += static_cast<long>(e.ids.size());
      bool first = true;
      for (const Example& e : ex)
        for (size_t k = 0; k < e.ids.size(); ++k, first = false)
          if (!first) want_tokens += e.trained[k];
      want_windows = (n - 1 + T - 1) / T;
    } else {
      for (const Example& e : ex)
        for (size_t k = 1; k < std::min<size_t>(e.ids.size(), T + 1); ++k) want_tokens += e.trained[k];
      want_windows = static_cast<long>(ex.size());
    }
    auto model = lora::build_model(cfg);
    const lora::WindowEval r = lora::evaluate_windows(*model, s, T, 3, 0, comm);
    EXPECT_EQ(r.tokens, want_tokens) << (pack ? "packed" : "one example per sequence");
    EXPECT_EQ(r.windows, want_windows) << (pack ? "packed" : "one example per sequence");
    EXPECT_TRUE(std::isfinite(r.loss));
  }
}

TEST(Jsonl, OneExamplePerSequencePadsAndTruncates) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  chat_examples(dir);
  const int T = 40;
  const lora::Config cfg = jsonl_config(dir, ref->dir("llama3"), "llama3", false, T);
  const lora::TokenStream s = lora::load_token_stream(cfg, cfg.data.train, nullptr);
  ASSERT_TRUE(s.one_example_per_sequence());
  ASSERT_EQ(s.n_examples(), 5u);
  const lora::Tokenizer tok = lora::Tokenizer::load(ref->dir("llama3"));
  const std::vector<Example> ex = encode_jsonl(dir.file("chat.jsonl"), lora::ChatTemplate::kLlama3, tok);
  size_t n_long = 0;
  for (const Example& e : ex) n_long += e.ids.size() > T + 1;
  ASSERT_GT(n_long, 0u);
  ASSERT_LT(n_long, 5u);
  EXPECT_NE(s.summary()[0].find(std::to_string(n_long) + " longer than seq_len + 1 = 41 (truncated)"), std::string::npos)
      << s.summary()[0];
  std::vector<int32_t> in(T), tg(T);
  std::set<size_t> seen;
  for (uint64_t i = 0; i < 100; ++i) {
    s.fill_sequence(11, 2, i, T, in.data(), tg.data());
    const size_t k = lora::hash_u64(11, 2, i) % 5;  // the example for (seed, step, index)
    seen.insert(k);
    const Example& e = ex[k];
    const size_t n = std::min<size_t>(e.ids.size(), T + 1);
    for (int j = 0; j < T; ++j) {
      if (static_cast<size_t>(j) + 1 < n) {
        ASSERT_EQ(in[j], e.ids[j]);
        ASSERT_EQ(tg[j], e.trained[j + 1] ? e.ids[j + 1] : lora::kIgnoreTarget);
      } else {
        ASSERT_EQ(tg[j], lora::kIgnoreTarget) << "pads are ignored";
        ASSERT_EQ(in[j], tok.eos_id());
      }
    }
  }
  EXPECT_EQ(seen.size(), 5u);
}

TEST(Jsonl, BadLinesNameTheFileAndLine) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  const std::string good = jsonl_line(prompt_completion("a", "b"));
  const struct {
    std::string line;
    std::string message;
  } cases[] = {
      {"{\"prompt\": \"a\", ", ": not a JSON object: byte 16: "},
      {"[1, 2]", ": expected a JSON object, got array"},
      {"{\"text\": \"a\"}", ": expected {\"prompt\", \"completion\"} or {\"messages\": [...]}"},
      {"{\"prompt\": \"a\"}", ": the example has no \"completion\""},
      {"{\"prompt\": \"a\", \"completion\": 5}", ": the example \"completion\" must be a string, got number"},
      {"{\"messages\": []}", ": \"messages\" must be a non-empty list of {\"role\", \"content\"}"},
      {"{\"messages\": [\"hi\"]}", ": message 0 must be an object {\"role\", \"content\"}, got string"},
      {"{\"messages\": [{\"role\": \"user\"}]}", ": message 0 has no \"content\""},
      {"{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", ": message 0 has role \"bot\" (expected system, user or assistant)"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"prompt\": \"y\"}",
       ": an example has either \"messages\" or \"prompt\"/\"completion\", not both"},
      {"{\"prompt\": \"a\xff\", \"completion\": \"b\"}", ": byte 13 of the line is not valid UTF-8"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path = dir.write_text("bad.jsonl", good + "\n" + c.line + "\n" + good);
    const lora::Config cfg = jsonl_config(dir, ref->dir("gpt2"), "none", true, 4, "bad.jsonl");
    const std::string msg = input_error_of([&] { lora::load_token_stream(cfg, cfg.data.train, nullptr); });
    EXPECT_EQ(msg.substr(0, (path + ":3" + c.message).size()), path + ":3" + c.message) << msg;
  }
  // Templates need their tokens.
  dir.write_text("ok.jsonl", good);
  const lora::Config chatml = jsonl_config(dir, ref->dir("llama3"), "chatml", true, 4, "ok.jsonl");
  EXPECT_EQ(input_error_of([&] { lora::load_token_stream(chatml, chatml.data.train, nullptr); }),
            ref->dir("llama3") + "/tokenizer.json: data.template chatml needs the token <|im_end|>, which this "
                                 "tokenizer does not have");
  // jsonl needs a tokenizer.
  const std::string msg = input_error_of(
      [&] { lora::load_config(write_config(dir, "train: ok.jsonl, format: jsonl")); });
  EXPECT_NE(msg.find("data.tokenizer: required with data.format jsonl"), std::string::npos) << msg;
}

TEST(Jsonl, EmptyAfterFilteringIsAnError) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  TempDir dir;
  // chatml with Qwen2's EOS (<|im_end|>): an example without an assistant turn trains nothing.
  const std::string path = dir.write_text("q.jsonl", jsonl_line(conversation({msg("user", "Hello?")})) + "\n   \n" +
                                                         jsonl_line(conversation({msg("system", "s"), msg("user", "u")})));
  const lora::Config cfg = jsonl_config(dir, ref->dir("qwen2"), "chatml", true, 4, "q.jsonl");
  EXPECT_EQ(input_error_of([&] { lora::load_token_stream(cfg, cfg.data.train, nullptr); }),
            path + ": no example left to train on (2 examples had no target tokens outside the prompt)");
}

// ---- the whatis instruction dataset (scripts/make_whatis_dataset.py) ------------------------

TEST(WhatisDataset, BuildsJsonlFromTheManualPagesThatTrainsWithEveryTemplate) {
  if (std::system("command -v apropos >/dev/null 2>&1") != 0) GTEST_SKIP() << "apropos not installed (package man-db)";
  TempDir dir;
  const std::string script = std::string(LORA_SOURCE_DIR) + "/scripts/make_whatis_dataset.py";
  auto build = [&](const std::string& out, const std::string& style) {
    const std::string cmd = lora::testing::shell_quote(LORA_PYTHON) + " " + lora::testing::shell_quote(script) + " " +
                            lora::testing::shell_quote(out) + " --style " + style + " >/dev/null";
    return std::system(cmd.c_str());
  };
  ASSERT_EQ(build(dir.file("a"), "messages"), 0);
  ASSERT_EQ(build(dir.file("b"), "messages"), 0);
  ASSERT_EQ(build(dir.file("p"), "prompt"), 0);
  const std::string train = lora::testing::read_file_text(dir.file("a/train.jsonl"));
  const std::string val = lora::testing::read_file_text(dir.file("a/val.jsonl"));
  EXPECT_EQ(train, lora::testing::read_file_text(dir.file("b/train.jsonl"))) << "not deterministic";
  // Every line is an example with a question and the command's description as the answer.
  size_t n_train = 0, n_val = 0;
  std::string ls_answer;
  for (const auto& [text, n] : {std::pair{&train, &n_train}, std::pair{&val, &n_val}}) {
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
      const lora::json::Value v = lora::json::parse(line);
      const auto& m = v.find("messages")->as_array();
      ASSERT_EQ(m.size(), 2u) << line;
      EXPECT_EQ(m[0].find("role")->as_string(), "user");
      EXPECT_EQ(m[1].find("role")->as_string(), "assistant");
      if (m[1].find("content")->as_string().rfind("`ls` (section 1): ", 0) == 0) ls_answer = m[1].find("content")->as_string();
      ++*n;
    }
  }
  EXPECT_GT(n_train, 300u);
  EXPECT_GT(n_val, n_train / 20);
  EXPECT_LT(n_val, n_train / 5);
  // The answer for ls is what `whatis ls` says.
  FILE* p = ::popen("LC_ALL=C.UTF-8 whatis -s 1 ls 2>/dev/null", "r");
  char buf[512] = {0};
  const size_t got = p ? std::fread(buf, 1, sizeof buf - 1, p) : 0;
  if (p) ::pclose(p);
  std::string whatis(buf, got);
  const size_t dash = whatis.find(" - ");
  ASSERT_NE(dash, std::string::npos) << whatis;
  std::string desc = whatis.substr(dash + 3);
  while (!desc.empty() && (desc.back() == '\n' || desc.back() == '.')) desc.pop_back();
  EXPECT_EQ(ls_answer, "`ls` (section 1): " + desc + ".");

  // It loads as training data with the chat templates and, in prompt form, with none.
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  for (const auto& [tokenizer, tmpl, file] : {std::tuple{"qwen2", "chatml", "a/val.jsonl"},
                                              std::tuple{"llama3", "llama3", "a/val.jsonl"},
                                              std::tuple{"sp", "none", "p/val.jsonl"}}) {
    SCOPED_TRACE(tmpl);
    const lora::Config cfg = jsonl_config(dir, ref->dir(tokenizer), tmpl, true, 32, dir.file(file));
    const lora::TokenStream s = lora::load_token_stream(cfg, cfg.data.train, nullptr);
    EXPECT_NE(s.summary()[0].find(": " + std::to_string(n_val) + " examples ("), std::string::npos) << s.summary()[0];
    EXPECT_NE(s.summary()[0].find("; 0 filtered"), std::string::npos) << s.summary()[0];
  }
}

// ---- resuming with data keys -----------------------------------------------------------------

TEST(DataOnResume, TemplateMaskPackAndTokenizerAreFrozenAndOldCheckpointsStillResume) {
  TempDir dir;
  dir.write_text("t.txt", "some text for the config");
  const lora::Config cfg = lora::load_config(write_config(dir, "train: t.txt"));
  // A checkpoint written before the data keys existed: their defaults are no change.
  YAML::Node old = YAML::Load(cfg.resolved_yaml);
  for (const char* k : {"tokenizer", "template", "mask_prompt", "pack"}) old["data"].remove(k);
  YAML::Emitter e;
  e << old;
  EXPECT_TRUE(lora::resume_config_changes(e.c_str(), cfg, "old.h5").empty());
  // A changed template (or mask, packing, tokenizer) changes the data a step sees: refused.
  const lora::Config chat = lora::load_config(write_config(dir, "train: t.txt, template: chatml"));
  EXPECT_EQ(input_error_of([&] { lora::resume_config_changes(cfg.resolved_yaml, chat, "c.h5"); }),
            "c.h5: cannot resume with data.template = chatml: the checkpoint was trained with data.template = none");
  const lora::Config unpacked = lora::load_config(write_config(dir, "train: t.txt, pack: false"));
  EXPECT_NE(input_error_of([&] { lora::resume_config_changes(cfg.resolved_yaml, unpacked, "c.h5"); }).find("data.pack"),
            std::string::npos);
}

}  // namespace
