// Training data: a token stream and the seeded choice of sequences (DESIGN.md section 4).
//
// format text:   the file's bytes are the tokens (byte-level tokenizer, vocab 256).
// format tokens: llm.c token shards: a header of 256 int32 (magic 20240520, version 1, token count),
//                then `count` uint16 tokens. Several files are concatenated in the given order.
//
// Sequence selection: the sequence for (step, global index i) starts at
//   hash(seed, step, i) mod (n_tokens - seq_len)
// and holds seq_len input tokens and the seq_len next tokens as targets. It depends only on
// (seed, step, i), never on the world size or rank: rank k of N takes global indices k, k + N, ...
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace lora {

class TokenStream {
 public:
  TokenStream() = default;
  // Throws lora::InputError naming the file on a missing, unreadable, empty or malformed file,
  // and when a token id is >= vocab_size or the stream is shorter than seq_len + 1.
  TokenStream(const std::vector<std::string>& paths, DataFormat format, int vocab_size,
              int seq_len);

  size_t size() const { return tokens_.size(); }
  const std::vector<uint16_t>& tokens() const { return tokens_; }

  // Writes seq_len inputs and seq_len targets of the sequence starting at `start`.
  void copy_sequence(size_t start, int seq_len, int32_t* inputs, int32_t* targets) const;

 private:
  std::vector<uint16_t> tokens_;
};

// Start offset of the sequence for (step, global index) in a stream of n_tokens tokens.
size_t sequence_start(uint64_t seed, uint64_t step, uint64_t global_index, size_t n_tokens,
                      int seq_len);

// Writes a token shard in the llm.c format (used by tests and tools).
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);

}  // namespace lora
