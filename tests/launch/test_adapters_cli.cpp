// `lora export`, `lora merge`, `lora eval` and `lora.init_from` end to end through the binary, on
// a tiny byte-level GPT-2 (no Python; PEFT and transformers themselves are in
// tests/reference/test_peft_interop.cpp):
//   - eval with a checkpoint and with its PEFT export print the same loss; without --adapter it
//     is the base alone and says so; --json is one object with every token of data.val counted;
//   - a merged directory, loaded as a plain base, evaluates like base + adapter;
//   - lora.init_from starts from an adapter (its per-module ranks kept), a contradicting config is
//     exit 2, and --resume still takes precedence, bit for bit;
//   - bad command lines are exit 2 naming what is missing.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/json.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"
#include "trainer/peft.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::ScratchDir;
using testing::write_file;

std::string lora_cmd(const std::string& args) { return testing::lora_bin() + " " + args; }

// No lora keys: the settings of an adapter given to eval, merge or init_from are taken as they are.
std::string config(const std::string& dir, const std::string& out, const std::string& extra = "") {
  return "run: {name: a, output_dir: " + out + ", seed: 11}\n"
         "model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}\n"
         "data: {train: " + dir + "/train.txt, val: " + dir + "/val.txt, format: text, seq_len: 32}\n"
         "train: {micro_batch: 4, steps: 4, lr: 0.01, schedule: constant, eval_batches: 2, log_every: 1}\n"
         "device: {threads: 1}\n" + extra;
}

json::Value eval_json(const std::string& args) {
  const auto r = run_command(lora_cmd("eval " + args + " --json") + " 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  try {
    return json::parse(r.output);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not one JSON object: " << r.output;
    return json::Value::object();
  }
}

class AdaptersCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<ScratchDir>(::testing::UnitTest::GetInstance()->current_test_info()->name());
    write_file(*dir_ / "train.txt", testing::small_corpus(300));
    val_ = testing::small_corpus(40);
    write_file(*dir_ / "val.txt", val_);
    write_file(*dir_ / "a.yaml", config(dir_->str(), *dir_ / "out",
                                        "lora: {rank: 4, alpha: 8, targets: [all-linear], init: {b: gaussian}}\n"));
    write_file(*dir_ / "plain.yaml", config(dir_->str(), *dir_ / "plain"));
  }
  std::string trained() {
    const auto r = run_command(lora_cmd("train " + (*dir_ / "a.yaml")));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return *dir_ / "out/checkpoints/ckpt-4.h5";
  }
  std::unique_ptr<ScratchDir> dir_;
  std::string val_;
};

TEST_F(AdaptersCli, HelpListsTheNewCommands) {
  const auto r = run_command(lora_cmd("--help"));
  for (const char* c : {"export CKPT.h5 --peft OUT_DIR", "merge CONFIG.yaml --adapter", "--json"})
    EXPECT_NE(r.output.find(c), std::string::npos) << c << "\n" << r.output;
  for (const char* c : {"export", "merge"}) {
    const auto h = run_command(lora_cmd(std::string(c) + " --help"));
    EXPECT_EQ(h.exit_code, 0);
    EXPECT_NE(h.output.find(std::string("usage: lora ") + c), std::string::npos) << h.output;
  }
}

TEST_F(AdaptersCli, ExportEvalAndMerge) {
  const std::string ckpt = trained();
  const std::string peft = *dir_ / "peft";
  auto r = run_command(lora_cmd("export " + ckpt + " --peft " + peft));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("exported 8 adapters"), std::string::npos) << r.output;
  ASSERT_TRUE(fs::exists(peft + "/adapter_config.json") && fs::exists(peft + "/adapter_model.safetensors"));

  // The plain config states no LoRA settings: they come from the adapter.
  const json::Value from_ckpt = eval_json(*dir_ / "plain.yaml" + " --adapter " + ckpt);
  const json::Value from_peft = eval_json(*dir_ / "plain.yaml" + " --adapter " + peft);
  const json::Value base = eval_json(*dir_ / "plain.yaml");
  ASSERT_TRUE(from_ckpt.find("loss") && from_peft.find("loss") && base.find("loss"));
  EXPECT_EQ(from_ckpt.find("loss")->as_double(), from_peft.find("loss")->as_double());
  EXPECT_NE(base.find("loss")->as_double(), from_ckpt.find("loss")->as_double());
  EXPECT_TRUE(base.find("adapter")->is_null());
  // Every byte of val.txt but the first is a target, in windows of 32.
  const long n = static_cast<long>(val_.size());
  EXPECT_EQ(from_ckpt.find("tokens")->as_int64(), n - 1);
  EXPECT_EQ(from_ckpt.find("windows")->as_int64(), (n - 1 + 31) / 32);
  EXPECT_NEAR(from_ckpt.find("perplexity")->as_double(), std::exp(from_ckpt.find("loss")->as_double()), 1e-9);
  const json::Value two = eval_json(*dir_ / "plain.yaml" + " --adapter " + ckpt + " --max-windows 2");
  EXPECT_EQ(two.find("windows")->as_int64(), 2);
  EXPECT_EQ(two.find("tokens")->as_int64(), 64);

  // Two ranks split the windows and agree with one.
  const auto mp = run_command(testing::mpirun(2) + " " + lora_cmd("eval " + (*dir_ / "plain.yaml") +
                                                                  " --adapter " + peft + " --json") +
                              " 2>/dev/null");
  ASSERT_EQ(mp.exit_code, 0) << mp.output;
  const json::Value two_ranks = json::parse(mp.output);
  EXPECT_EQ(two_ranks.find("tokens")->as_int64(), n - 1);
  EXPECT_NEAR(two_ranks.find("loss")->as_double(), from_peft.find("loss")->as_double(),
              1e-6 * from_peft.find("loss")->as_double());
  // generate takes a PEFT directory too, and continues exactly as with the checkpoint.
  const auto g1 = run_command(lora_cmd("generate " + (*dir_ / "plain.yaml") + " --adapter " + peft +
                                       " --prompt 'the cat' --tokens 16"));
  const auto g2 = run_command(lora_cmd("generate " + (*dir_ / "plain.yaml") + " --adapter " + ckpt +
                                       " --prompt 'the cat' --tokens 16"));
  ASSERT_EQ(g1.exit_code, 0) << g1.output;
  EXPECT_EQ(g1.output, g2.output);

  // The text form: 6 decimals, the token count, and what was evaluated.
  r = run_command(lora_cmd("eval " + (*dir_ / "plain.yaml")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("the base model alone (no --adapter)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(std::to_string(n - 1) + " tokens"), std::string::npos) << r.output;
  char loss6[32];
  std::snprintf(loss6, sizeof loss6, "val loss %.6f", base.find("loss")->as_double());
  EXPECT_NE(r.output.find(loss6), std::string::npos) << r.output;
  // The config's lora.init (B gaussian in a.yaml) does not leak into a base-only eval.
  EXPECT_EQ(eval_json(*dir_ / "a.yaml").find("loss")->as_double(), base.find("loss")->as_double());

  // Merged: a model directory that, as a base, evaluates like base + adapter.
  const std::string merged = *dir_ / "merged";
  r = run_command(lora_cmd("merge " + (*dir_ / "plain.yaml") + " --adapter " + peft + " --out " + merged));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(merged + "/config.json") && fs::exists(merged + "/model.safetensors"));
  write_file(*dir_ / "merged.yaml", "run: {name: m, output_dir: " + (*dir_ / "m") + "}\n"
             "model: {path: " + merged + "}\n"
             "data: {train: " + (*dir_ / "train.txt") + ", val: " + (*dir_ / "val.txt") +
             ", format: text, seq_len: 32}\ntrain: {micro_batch: 4}\ndevice: {threads: 1}\n");
  const json::Value m = eval_json(*dir_ / "merged.yaml");
  ASSERT_TRUE(m.find("loss"));
  EXPECT_NEAR(m.find("loss")->as_double(), from_peft.find("loss")->as_double(),
              1e-5 * from_peft.find("loss")->as_double());
  // A base given as one model.weights file merges into a directory of the file's dtypes, with a
  // config.json written for it.
  {
    ModelSpec sizes;
    sizes.vocab_size = 256;
    sizes.n_layer = 2;
    sizes.n_head = 2;
    sizes.d_model = 32;
    sizes.max_seq_len = 32;
    TransformerModel base(family_spec("gpt2", sizes), TrainMode::kFull, std::nullopt);
    base.init_base_random(11);  // the seed plain.yaml's random base comes from
    std::vector<SafetensorsWriteTensor> ts;
    for (const TensorInfo& t : base.base_layout().tensors())
      ts.push_back({t.name, t.shape, base.base_params() + t.offset, "BF16"});
    write_safetensors(*dir_ / "base.safetensors", ts);
    const std::string w = " --set model.weights=" + (*dir_ / "base.safetensors");
    r = run_command(lora_cmd("merge " + (*dir_ / "plain.yaml") + w + " --adapter " + peft + " --out " + (*dir_ / "merged-w")));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(*dir_ / "merged-w/config.json"));
    const SafetensorsFile f(*dir_ / "merged-w/model.safetensors");
    EXPECT_EQ(f.find("h.0.attn.c_attn.weight")->dtype, "BF16");
    const json::Value with_adapter = eval_json(*dir_ / "plain.yaml" + w + " --adapter " + peft);
    const json::Value merged_w = eval_json(*dir_ / "plain.yaml" + " --set model.weights=" +
                                           (*dir_ / "merged-w/model.safetensors"));
    // The merged weights are rounded to bfloat16 like the base's.
    EXPECT_NEAR(merged_w.find("loss")->as_double(), with_adapter.find("loss")->as_double(),
                1e-2 * with_adapter.find("loss")->as_double());
    EXPECT_NE(merged_w.find("loss")->as_double(), eval_json(*dir_ / "plain.yaml" + w).find("loss")->as_double());
  }
  // Merging again replaces the directory; a directory that is not a model is never replaced.
  EXPECT_EQ(run_command(lora_cmd("merge " + (*dir_ / "plain.yaml") + " --adapter " + ckpt + " --out " + merged)).exit_code, 0);
  fs::create_directories(*dir_ / "mine");
  write_file(*dir_ / "mine/notes.txt", "x");
  r = run_command(lora_cmd("merge " + (*dir_ / "plain.yaml") + " --adapter " + ckpt + " --out " + (*dir_ / "mine")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("not a model directory"), std::string::npos) << r.output;
}

TEST_F(AdaptersCli, BadCommandLinesAreExitTwo) {
  const std::string ckpt = trained();
  struct Case {
    std::string args;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"export " + ckpt, "--peft OUT_DIR is required"},
      {"export " + (*dir_ / "none.h5") + " --peft " + (*dir_ / "p"), "none.h5"},
      {"export --peft " + (*dir_ / "p"), "needs a checkpoint file"},
      {"merge " + (*dir_ / "plain.yaml") + " --out " + (*dir_ / "m"), "--adapter"},
      {"merge " + (*dir_ / "plain.yaml") + " --adapter " + ckpt, "--out MODEL_DIR is required"},
      {"eval " + (*dir_ / "plain.yaml") + " --adapter " + (*dir_ / "nothing"), "nothing"},
      {"eval " + (*dir_ / "plain.yaml") + " --adapter " + ckpt + " --set lora.rank=8",
       "lora.rank: the config gives 8"},
      {"eval " + (*dir_ / "plain.yaml") + " --max-windows 0", "--max-windows"},
      {"eval " + (*dir_ / "plain.yaml") + " --adapter " + dir_->str(), "adapter_config.json"},
  };
  for (const Case& c : cases) {
    const auto r = run_command(lora_cmd(c.args));
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST_F(AdaptersCli, InitFromStartsFromAnAdapterAndResumeTakesPrecedence) {
  // Someone's adapter with per-module ranks (rank_pattern), as a PEFT directory.
  ModelSpec sizes;
  sizes.vocab_size = 256;
  sizes.n_layer = 2;
  sizes.n_head = 2;
  sizes.d_model = 32;
  sizes.max_seq_len = 32;
  CheckpointState s;
  s.spec = family_spec("gpt2", sizes);
  s.mode = TrainMode::kLora;
  s.lora.rank = 4;
  s.lora.alpha = 8.0f;
  s.lora.targets = {LoraTarget::kAttnQkv, LoraTarget::kMlpFc};
  s.lora.module_settings["h.1.mlp.c_fc"] = {2, 3.0f};
  s.config_yaml = "model: {arch: gpt2}\n";
  const size_t n = checkpoint_param_count(s);
  for (size_t i = 0; i < n; ++i) s.params.push_back(0.05f * normal01(3, 0, i));
  s.adam_m.assign(n, 0.0f);
  s.adam_v.assign(n, 0.0f);
  write_checkpoint(*dir_ / "theirs.h5", s);
  const std::string peft = *dir_ / "theirs";
  export_peft(*dir_ / "theirs.h5", peft);

  // A tiny learning rate: after one step the adapters are still theirs.
  const std::string still = *dir_ / "still";
  auto r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + " --set lora.init_from=" + peft +
                                " --set train.steps=1 --set train.lr=1e-12 --set run.output_dir=" + still));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("adapters start from " + peft + " (PEFT adapter)"), std::string::npos) << r.output;
  const CheckpointState got = read_checkpoint(still + "/checkpoints/ckpt-1.h5");
  EXPECT_EQ(got.lora.targets, s.lora.targets);
  EXPECT_EQ(got.lora.module_settings, s.lora.module_settings);
  ASSERT_EQ(got.params.size(), s.params.size());
  double diff = 0;
  for (size_t i = 0; i < n; ++i) diff = std::max(diff, std::fabs(double(got.params[i]) - s.params[i]));
  EXPECT_LT(diff, 1e-9);
  // The run's config records where it started from and the adapter's settings.
  const std::string yaml = testing::read_text(still + "/config.yaml");
  EXPECT_NE(yaml.find("init_from: \"" + peft + "\""), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("targets: [attn.qkv, mlp.fc]"), std::string::npos) << yaml;

  // Training from it moves it; stopping at step 2 and resuming to 4 gives the uninterrupted run's
  // adapters bit for bit (the checkpoint wins over init_from).
  const std::string common = " --set lora.init_from=" + peft + " --set checkpoint.every=2";
  r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + common + " --set run.output_dir=" + (*dir_ / "full")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + common + " --set train.steps=2 --set run.output_dir=" + (*dir_ / "split")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + common + " --resume auto --set run.output_dir=" + (*dir_ / "split")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("adapters start from"), std::string::npos) << r.output;
  const CheckpointState a = read_checkpoint(*dir_ / "full/checkpoints/ckpt-4.h5");
  const CheckpointState b = read_checkpoint(*dir_ / "split/checkpoints/ckpt-4.h5");
  EXPECT_EQ(a.params, b.params);
  EXPECT_NE(a.params, s.params);

  // A config contradicting the adapter names both values.
  r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + " --set lora.init_from=" + peft +
                           " --set lora.rank=8 --set run.output_dir=" + (*dir_ / "bad")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("lora.rank: the config gives 8, but lora.init_from " + peft + " has 4"),
            std::string::npos) << r.output;
  r = run_command(lora_cmd("train " + (*dir_ / "plain.yaml") + " --set lora.init_from=" + (*dir_ / "nope")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("lora.init_from"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace lora
