// `lora tokenize` end to end against Hugging Face tokenizers (ids line by line from a file and from
// standard input, decoding back to the text, every bad input with exit 2 and its message), and
// tokenized text training under mpirun: rank 0 tokenizes once into the cache next to the data, every
// rank trains on it, a second run reads the cache; generate tokenizes its prompt and decodes;
// instruction JSONL training with masked targets, packed and one example per sequence, giving the
// same losses on 2 ranks as on 1 with the same global batch.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/reference_tokenizers.h"
#include "tests/launch/harness.h"

namespace fs = std::filesystem;

namespace lora {
namespace {

using testing::count;
using testing::mpirun;
using testing::run_command;
using testing::shell_quote;
using testing::write_file;

std::string lora_cmd(const std::string& args) { return testing::lora_bin() + " " + args; }

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) lines.push_back(line);
  return lines;
}

const char* kLines =
    "Hello world! It's a test, don't worry.\n"
    "Ça va? Straße, Łódź — naïve café.\n"
    "Привет, мир!\n"
    "\n"
    "日本語のテキスト、中文文本。😀👍🏽\n"
    "    int main() { return 0; }\t\t\n"
    "<|im_start|>user 1234567 <|im_end|>\n";

TEST(TokenizeCli, IdsMatchTokenizersLineByLine) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  testing::ScratchDir dir("tokenize");
  const std::string input = dir / "in.txt";
  write_file(input, kLines);
  const std::vector<std::string> lines = split_lines(kLines);
  for (const char* style : {"gpt2", "llama3", "qwen2", "sp"}) {
    SCOPED_TRACE(style);
    const auto expected = ref->encode(style, lines);
    const auto r = run_command(lora_cmd("tokenize --tokenizer " + shell_quote(ref->dir(style)) + " " + input));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<std::string> got = split_lines(r.output);
    ASSERT_EQ(got.size(), lines.size()) << r.output;
    for (size_t i = 0; i < lines.size(); ++i) {
      std::string want;
      for (size_t k = 0; k < expected.ids[i].size(); ++k) want += (k ? " " : "") + std::to_string(expected.ids[i][k]);
      EXPECT_EQ(got[i], want) << "line " << i + 1;
    }
    // Standard input gives the same; --decode gives the text back (byte-level tokenizers are
    // lossless; SentencePiece's decoder drops the space it adds after special tokens).
    const auto stdin_run = run_command("cat " + input + " | " + lora_cmd("tokenize --tokenizer " + shell_quote(ref->json(style))));
    EXPECT_EQ(stdin_run.output, r.output);
    write_file(dir / "ids.txt", r.output);
    const auto back = run_command(lora_cmd("tokenize --decode --tokenizer " + shell_quote(ref->dir(style)) + " " + (dir / "ids.txt")));
    ASSERT_EQ(back.exit_code, 0) << back.output;
    if (std::string(style) != "sp") {
      EXPECT_EQ(back.output, kLines);
    } else {
      EXPECT_EQ(split_lines(back.output).size(), lines.size());
    }
  }
}

TEST(TokenizeCli, BadInputIsExitTwoWithAMessage) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  testing::ScratchDir dir("tokenize_bad");
  const std::string tok = shell_quote(ref->dir("gpt2"));
  write_file(dir / "bad.txt", "fine\nnot \xff fine\n");
  write_file(dir / "ids.txt", "1 2 3\n4 x 5\n");
  write_file(dir / "big.txt", "1 2 3\n\n999999\n");
  write_file(dir / "wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  const struct {
    std::string args;
    std::string message;
  } cases[] = {
      {"tokenize", "`lora tokenize` needs --tokenizer TOKENIZER.json|MODEL_DIR"},
      {"tokenize --tokenizer", "--tokenizer: expected a value"},
      {"tokenize --tokenizer " + (dir / "none.json"), "none.json: tokenizer does not exist"},
      {"tokenize --tokenizer " + (dir / "wordpiece.json"),
       "wordpiece.json: model.type: unsupported model 'WordPiece' (only BPE tokenizers are supported)"},
      {"tokenize --tokenizer " + tok + " " + (dir / "missing.txt"), "missing.txt: input file does not exist"},
      {"tokenize --tokenizer " + tok + " " + (dir / "bad.txt"), "bad.txt:2: byte 4 of the line is not valid UTF-8"},
      {"tokenize --decode --tokenizer " + tok + " " + (dir / "ids.txt"),
       "ids.txt:2: expected token ids separated by spaces, got 'x'"},
      {"tokenize --decode --tokenizer " + tok + " " + (dir / "big.txt"), "big.txt:3: token id 999999 is not in the vocabulary"},
      {"tokenize --tokenizer " + tok + " a.txt b.txt", "unexpected argument 'b.txt' (one input file expected)"},
      {"tokenize --tokenizer " + tok + " --bogus", "unknown option '--bogus'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const auto r = run_command(lora_cmd(c.args) + " </dev/null");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << r.output;
  }
  const auto help = run_command(lora_cmd("tokenize --help"));
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("usage: lora tokenize --tokenizer TOKENIZER.json|MODEL_DIR [--decode] [FILE]"),
            std::string::npos);
  EXPECT_NE(run_command(lora_cmd("--help")).output.find("tokenize --tokenizer"), std::string::npos);
}

TEST(TokenizedTextTraining, RankZeroTokenizesOnceAndEveryRankReadsTheCache) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  testing::ScratchDir dir("tokenized_training");
  write_file(dir / "train.txt", testing::small_corpus(400));
  write_file(dir / "val.txt", testing::small_corpus(60));
  std::ostringstream cfg;
  cfg << "run: {name: tok, output_dir: " << (dir / "out") << ", seed: 3}\n"
      << "model: {vocab_size: 3072, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}\n"
      << "data: {train: " << (dir / "train.txt") << ", val: " << (dir / "val.txt")
      << ", seq_len: 16, tokenizer: " << ref->dir("gpt2") << "}\n"
      << "train: {micro_batch: 2, steps: 3, lr: 0.01, log_every: 1, eval_batches: 1}\n"
      << "device: {threads: 1}\n";
  write_file(dir / "c.yaml", cfg.str());
  auto r = run_command(mpirun(2) + " " + testing::lora_bin() + " train " + (dir / "c.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, "tokenized in"), 2u) << r.output;  // train and val, once each
  EXPECT_EQ(count(r.output, "tokens from the cache"), 0u) << r.output;
  size_t n_cached = 0;
  for (const auto& e : fs::directory_iterator(dir.path() / ".lora-tokens")) n_cached += e.path().extension() == ".tokens";
  EXPECT_EQ(n_cached, 2u);
  r = run_command(mpirun(2) + " " + testing::lora_bin() + " train " + (dir / "c.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, "tokens from the cache"), 2u) << r.output;
  EXPECT_EQ(count(r.output, "tokenized in"), 0u) << r.output;

  // generate tokenizes the prompt and decodes what follows it.
  r = run_command(lora_cmd("generate " + (dir / "c.yaml") + " --prompt 'the cat sees' --tokens 4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("the cat sees", 0), 0u) << r.output;
}

TEST(JsonlTraining, TwoRanksEqualOneRankWithMaskedTargets) {
  LORA_REQUIRE_REFERENCE_TOKENIZERS(ref);
  testing::ScratchDir dir("jsonl_training");
  // Examples of uneven lengths, so sequences hold very different numbers of trained targets.
  std::ostringstream jsonl;
  const char* words[] = {"alpha", "beta", "gamma", "delta", "echo", "foxtrot", "golf", "hotel"};
  for (int i = 0; i < 60; ++i) {
    std::string answer;
    for (int k = 0; k <= (i * 7) % 23; ++k) answer += std::string(k ? " " : "") + words[(i + k) % 8];
    jsonl << R"({"messages": [{"role": "user", "content": "Spell item )" << i << R"(."}, {"role": "assistant", "content": ")"
          << answer << "\"}]}\n";
  }
  write_file(dir / "train.jsonl", jsonl.str());
  for (const char* pack : {"true", "false"}) {
    SCOPED_TRACE(std::string("pack ") + pack);
    auto run = [&](int ranks, int micro_batch, const std::string& out) {
      std::ostringstream cfg;
      cfg << "run: {name: j, output_dir: " << (dir / out) << ", seed: 5}\n"
          << "model: {vocab_size: 3072, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 48}\n"
          << "data: {train: " << (dir / "train.jsonl") << ", format: jsonl, seq_len: 48, template: chatml, pack: "
          << pack << ", tokenizer: " << ref->dir("gpt2") << "}\n"
          << "train: {micro_batch: " << micro_batch << ", steps: 4, lr: 0.01, log_every: 1}\n"
          << "device: {threads: 1}\n";
      write_file(dir / (out + ".yaml"), cfg.str());
      const std::string launcher = ranks > 1 ? mpirun(ranks) + " " : "";
      const auto r = run_command(launcher + testing::lora_bin() + " train " + (dir / (out + ".yaml")));
      EXPECT_EQ(r.exit_code, 0) << r.output;
      return testing::read_losses(dir / out + "/metrics.jsonl");
    };
    const auto one = run(1, 4, std::string("one_") + pack), two = run(2, 2, std::string("two_") + pack);
    ASSERT_EQ(one.size(), 4u);
    ASSERT_EQ(two.size(), 4u);
    for (const auto& [step, loss] : one) {
      EXPECT_TRUE(std::isfinite(loss));
      EXPECT_NEAR(two.at(step), loss, 1e-5 * std::max(1.0, std::abs(loss))) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace lora
