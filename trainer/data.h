// Training data: token streams, their sources (bytes, token shards, tokenized text, instruction
// JSONL) and the seeded choice of sequences (DESIGN.md section 4).
//
// format text:   without a tokenizer the file's bytes are the tokens (vocab 256). With one
//                (data.tokenizer) each file is tokenized once, on all threads, into a version 2
//                token shard cached next to the data (see token_cache_path); later runs and
//                resumes read the cache. Each file is one document: BOS first when the tokenizer
//                adds one, EOS last when it names one.
// format tokens: llm.c token shards: a header of 256 int32 (magic 20240520, version, token count),
//                then `count` tokens: uint16 in version 1, uint32 in version 2 (vocabularies over
//                65,536). Several files are concatenated in the given order.
// format jsonl:  one example per line, {"prompt", "completion"} or {"messages": [{"role",
//                "content"}, ...]}, rendered with data.template, EOS after each example; with
//                data.mask_prompt only completion / assistant tokens are targets (others are
//                kIgnoreTarget). data.pack: examples concatenated into one stream; otherwise one
//                example per sequence, truncated to seq_len + 1 tokens and padded (pads ignored).
//
// Sequence selection: in a stream, the sequence for (step, global index i) starts at
//   hash(seed, step, i) mod (n_tokens - seq_len)
// and holds seq_len input tokens and the seq_len next tokens as targets; with one example per
// sequence it is example hash(seed, step, i) mod n_examples. Either depends only on
// (seed, step, i), never on the world size or rank: rank k of N takes global indices k, k + N, ...
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/ops/cross_entropy.h"
#include "core/tokenizer.h"
#include "trainer/config.h"

namespace lora {

// A target the loss must skip (a prompt token under mask_prompt, a pad): the loss's own marker.
inline constexpr int32_t kIgnoreTarget = ops::kIgnoreTarget;

class TokenStream {
 public:
  TokenStream() = default;
  // Bytes (format text without a tokenizer) or token shards. Throws lora::InputError naming the
  // file on a missing, unreadable, empty or malformed file, and when a token id is >= vocab_size
  // or the stream is shorter than seq_len + 1.
  TokenStream(const std::vector<std::string>& paths, DataFormat format, int vocab_size, int seq_len);

  size_t size() const { return tokens_.size(); }
  bool empty() const { return tokens_.empty(); }
  const std::vector<uint32_t>& tokens() const { return tokens_; }
  // Per token: 1 when predicting it is trained (empty: every token is).
  const std::vector<uint8_t>& trainable() const { return trainable_; }
  bool one_example_per_sequence() const { return !example_offsets_.empty(); }
  size_t n_examples() const { return example_offsets_.empty() ? 0 : example_offsets_.size() - 1; }

  // The sequence for (seed, step, global index): seq_len inputs and seq_len targets, masked
  // targets as kIgnoreTarget.
  void fill_sequence(uint64_t seed, uint64_t step, uint64_t index, int seq_len, int32_t* inputs,
                     int32_t* targets) const;
  // Writes seq_len inputs and seq_len targets of the stream sequence starting at `start`.
  void copy_sequence(size_t start, int seq_len, int32_t* inputs, int32_t* targets) const;
  // One example per sequence: example k (< n_examples()) as fill_sequence gives it, padded.
  void copy_example(size_t k, int seq_len, int32_t* inputs, int32_t* targets) const;

  // Lines for the start-up summary (what was read, tokenized, cached, truncated, filtered).
  const std::vector<std::string>& summary() const { return summary_; }

 private:
  friend TokenStream load_token_stream(const Config&, const std::vector<std::string>&,
                                       comm::Communicator*);
  std::vector<uint32_t> tokens_;
  std::vector<uint8_t> trainable_;
  std::vector<uint64_t> example_offsets_;  // one example per sequence: example k is
                                           // tokens_[offsets[k], offsets[k + 1])
  uint32_t pad_id_ = 0;
  std::vector<std::string> summary_;
};

// The stream of `paths` (data.train or data.val) as the config describes it: bytes, shards,
// tokenized text (cached; with a communicator, rank 0 tokenizes and writes the cache while the
// other ranks wait at a barrier, then every rank reads it) or JSONL. Throws lora::InputError.
TokenStream load_token_stream(const Config& cfg, const std::vector<std::string>& paths,
                              comm::Communicator* comm);

// Start offset of the sequence for (step, global index) in a stream of n_tokens tokens.
size_t sequence_start(uint64_t seed, uint64_t step, uint64_t global_index, size_t n_tokens,
                      int seq_len);

// ---- token shards ----

// Writes a version 1 shard (uint16 tokens, the llm.c format).
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);
// Writes a version 2 shard (uint32 tokens).
void write_token_shard_v2(const std::string& path, std::span<const uint32_t> tokens);

// Streams tokens into a version 2 shard: written to PATH.tmp, the count filled in and the file
// renamed to PATH by finish() (a crash leaves no partial PATH).
class TokenShardWriter {
 public:
  explicit TokenShardWriter(const std::string& path);
  ~TokenShardWriter();
  void append(std::span<const int32_t> ids);
  uint64_t n_tokens() const { return n_tokens_; }
  void finish();

 private:
  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  uint64_t n_tokens_ = 0;
  std::vector<unsigned char> buf_;
};

// ---- tokenizing text corpora ----

struct CorpusStats {
  uint64_t n_bytes = 0;
  uint64_t n_tokens = 0;
  int n_threads = 1;
};

// Tokenizes text files into one version 2 shard at out_path: per file BOS (when the tokenizer
// adds one), the ids of the file's text, EOS (when it names one). The text is read in windows and
// encoded in parallel (OpenMP, `threads`, 0: all) in chunks cut at line starts where
// Tokenizer::newline_is_boundary() guarantees the ids of the whole file; memory stays bounded by
// the window. A tokenizer without that guarantee encodes each file whole on one thread. Throws
// lora::InputError naming the file and byte offset of text that is not UTF-8.
CorpusStats tokenize_text_to_shard(const Tokenizer& tokenizer, const std::vector<std::string>& paths,
                                   const std::string& out_path, int threads);

// Where the token cache of a text file goes: <dir of file>/.lora-tokens/<name>-<key>.tokens,
// where key hashes the file's bytes and the tokenizer (its files and settings).
std::string token_cache_path(const std::string& text_path, const Tokenizer& tokenizer);

// ---- instruction data ----

// One JSONL example rendered as text segments, each trained or not (mask_prompt), by a template.
struct RenderedSegment {
  std::string text;
  bool trained = false;
};
struct RenderedExample {
  std::vector<RenderedSegment> segments;
  bool add_bos = false;  // the template adds the BOS id before the text
  bool add_eos = false;  // EOS id after the text (trained)
};

// Parses one JSONL line (`where` is FILE:LINE for messages) and renders it. Throws
// lora::InputError("FILE:LINE: ...") on a line that is not a valid example.
RenderedExample render_example(std::string_view line, const std::string& where, ChatTemplate chat_template,
                               const Tokenizer& tokenizer);

// What `lora generate --chat` runs: `user_text` as one user message in the template, rendered as
// training renders it, followed by the start of the assistant's turn (chatml
// "<|im_start|>assistant\n", llama3 "<|start_header_id|>assistant<|end_header_id|>\n\n"; none:
// the text as it is). stop_ids end the reply: EOS and the template's end of turn.
struct ChatPrompt {
  std::string text;
  bool add_bos = false;  // put the BOS id before the text's ids
  std::vector<int32_t> stop_ids;
};
ChatPrompt render_chat_prompt(const std::string& user_text, ChatTemplate chat_template,
                              const Tokenizer& tokenizer);

// The ids of a rendered example and, per id, whether it is trained (mask_prompt) — the ids are
// those of tokenizing the concatenated text as a whole (plus BOS/EOS ids).
void tokenize_example(const RenderedExample& example, const Tokenizer& tokenizer, Encoder* encoder,
                      bool mask_prompt, std::vector<int32_t>* ids, std::vector<uint8_t>* trained);

}  // namespace lora
