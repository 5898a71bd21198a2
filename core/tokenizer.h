// Hugging Face tokenizers in C++: loads a tokenizer.json (and, from a model directory, the BOS/EOS
// settings of tokenizer_config.json and config.json) and turns text into token ids and back,
// giving the ids Hugging Face `tokenizers` gives for the same file and text.
//
// Supported, as the model families ship them:
//   model          BPE (vocab, merges as "a b" strings or ["a", "b"] pairs, unk_token, fuse_unk,
//                  byte_fallback with <0xNN> tokens, ignore_merges, continuing_subword_prefix,
//                  end_of_word_suffix)
//   normalizer     Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip,
//                  StripAccents, ByteLevel
//   pre_tokenizer  Sequence, ByteLevel (GPT-2 pattern or use_regex false), Split (regex or string
//                  pattern, every delimiter behaviour, invert), Metaspace (prepend_scheme
//                  always/first/never, split), Digits
//   decoder        Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
//   added_tokens   matched before normalisation and BPE and never split, with their special,
//                  lstrip, rstrip, single_word and normalized flags
// Anything else (another model type, BPE dropout, an unknown normalizer, pre-tokenizer or
// decoder) is a lora::InputError naming the file and the component: never a silently different
// tokenisation. Regular expressions are PCRE2 (UTF + Unicode properties, JIT-compiled).
//
// encode() gives the ids of the text alone, like tokenizers' encode(text,
// add_special_tokens=False): BOS/EOS are the caller's to add (bos_id(), add_bos()). The
// post_processor of the file is not applied; it is read only to learn whether BOS is added when
// tokenizer_config.json does not say.
//
// Encoding state (the pre-token cache, regex match data, scratch buffers) lives in an Encoder, one
// per thread; a Tokenizer is immutable after loading and shared freely between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lora {

namespace tokenizer_detail {
struct Model;
struct EncoderState;
}  // namespace tokenizer_detail

// Where a text sits in a longer text. kContinuation: the text continues an earlier one, so the
// start-of-text steps (Prepend normalizer, ByteLevel add_prefix_space, Metaspace prepend) are not
// applied to its first piece. Encoding a text split at a point the tokenizer cannot join across
// (see Tokenizer::newline_is_boundary) as kStart + kContinuation parts gives the ids of the whole.
enum class TextPosition { kStart, kContinuation };

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a model directory holding one (then tokenizer_config.json and
  // config.json are read too when present). Throws lora::InputError naming the file and the key.
  static Tokenizer load(const std::string& path);
  // A tokenizer.json's text; `source` names it in messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  int vocab_size() const;  // the largest id + 1
  // The id of a token (vocabulary or added token), or -1.
  int32_t token_id(std::string_view token) const;
  // The text of a token id as the vocabulary holds it ("Ġthe", "<|im_end|>"); throws on a bad id.
  const std::string& token(int32_t id) const;
  bool is_special(int32_t id) const;  // an added token marked special

  int32_t bos_id() const;  // -1 when unknown
  int32_t eos_id() const;  // -1 when unknown
  bool add_bos() const;    // whether sequences start with BOS (tokenizer_config or post_processor)
  const std::string& source() const;
  // A hash of the files the tokenizer was loaded from (tokenizer.json, and tokenizer_config.json
  // and config.json of a model directory): equal fingerprints tokenize alike.
  uint64_t fingerprint() const;

  // True when the ids of text "A\nB" equal those of "A\n" followed by those of "B" (encoded as a
  // continuation) whenever B starts with a character other than white space: true for the
  // tokenizers this file supports except those whose normalizer or pre-tokenizer could join
  // across such a line start (then corpora are encoded whole, on one thread).
  bool newline_is_boundary() const;

  std::vector<int32_t> encode(std::string_view text,
                              TextPosition position = TextPosition::kStart) const;
  // Token ids back to text (the decoder of the file, or the tokens joined by spaces when it has
  // none). Throws lora::InputError on an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;
  std::string decode_skipping_special(std::span<const int32_t> ids) const;

  const tokenizer_detail::Model& model() const { return *model_; }

 private:
  static Tokenizer build(std::string_view json_text, const std::string& source,
                         const std::string& model_dir);
  std::shared_ptr<const tokenizer_detail::Model> model_;
};

// Encodes with a Tokenizer, keeping a cache of pre-token ids between calls. Not thread-safe: one
// Encoder per thread. Text must be valid UTF-8 (lora::InputError otherwise, with the byte offset).
class Encoder {
 public:
  explicit Encoder(const Tokenizer& tokenizer);
  ~Encoder();
  Encoder(Encoder&&) noexcept;
  Encoder& operator=(Encoder&&) noexcept;

  // Appends the ids of `text` to `out`.
  void encode(std::string_view text, std::vector<int32_t>* out,
              TextPosition position = TextPosition::kStart);

 private:
  Tokenizer tokenizer_;
  std::unique_ptr<tokenizer_detail::EncoderState> state_;
};

}  // namespace lora
