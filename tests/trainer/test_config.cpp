// Config parsing and validation: the bad-config corpus (tests/data/bad_configs, one file per kind
// of mistake, each with the message fragments and line it must produce), every field of a good
// config, defaults, `--set` overrides, Hugging Face target aliases, relative path resolution and
// the resolved-YAML round trip.
#include <gtest/gtest.h>

#include "tests/common/input_error.h"
#include "tests/common/temp_dir.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/json.h"
#include "core/model/hf_model.h"
#include "trainer/config.h"

namespace fs = std::filesystem;

namespace {

const fs::path kBadConfigs = fs::path(LORA_TEST_DATA) / "bad_configs";

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir : public lora::testing::TempDir {
 public:
  TempDir() : lora::testing::TempDir("lora_test_config") {}
  // Writes `text` to path()/rel (creating folders) and returns the full path.
  std::string write(const std::string& rel, const std::string& text) const {
    const fs::path p = path() / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
};

using lora::testing::input_error_of;

std::string normal(const fs::path& p) { return fs::absolute(p).lexically_normal().string(); }

// ---- the bad-config corpus ----------------------------------------------------------------

struct BadCase {
  const char* file;  // tests/data/bad_configs/<file>.yaml
  int line;          // > 0: the message starts with "<path>:<line>: "; 0: with "<path>: "
  std::vector<std::string> fragments;
};

const std::vector<BadCase> kBadCases = {
    {"empty", 1, {"the config is empty", "data.train is required"}},
    {"comments_only", 1, {"the config is empty"}},
    {"syntax_error", 3, {"invalid YAML"}},
    {"top_level_list", 1, {"config: expected a mapping of keys, got a list"}},
    {"unknown_section", 3, {"unknown key 'trian'", "(expected one of: run, model, lora, data, train, checkpoint, device, comm)"}},
    {"unknown_key", 5, {"unknown key 'train.stepz'", "(expected one of: mode, micro_batch, grad_accum, steps, lr, warmup_steps, schedule, min_lr, weight_decay, grad_clip, eval_every, eval_batches, log_every)"}},
    {"unknown_key_nested", 6, {"unknown key 'lora.init.c'", "(expected one of: a, b)"}},
    {"unknown_key_under_value", 5, {"train.steps: expected an integer, got a mapping"}},
    {"duplicate_key", 6, {"duplicate key 'train.steps'", "first given at line 4"}},
    {"section_not_map", 3, {"train: expected a mapping of keys, got '5'"}},
    {"steps_string", 4, {"train.steps: expected an integer, got 'abc'"}},
    {"steps_float", 4, {"train.steps: expected an integer, got '1.5'"}},
    {"steps_quoted", 4, {"train.steps: expected an integer, got the quoted string '100'"}},
    {"steps_null", 4, {"train.steps: expected an integer, got nothing (null)"}},
    {"rank_list", 4, {"lora.rank: expected an integer, got a list"}},
    {"lr_string", 4, {"train.lr: expected a number, got 'fast'"}},
    {"lr_infinite", 4, {"train.lr: expected a number, got '.inf'"}},
    {"rslora_string", 4, {"lora.rslora: expected true or false, got 'maybe'"}},
    {"name_list", 4, {"run.name: expected a string, got a list"}},
    {"name_empty", 4, {"run.name: expected a non-empty name"}},
    {"targets_map", 4, {"lora.targets: expected a list of target names, got a mapping"}},
    {"init_scalar", 4, {"lora.init: expected a mapping of keys, got 'gaussian'"}},
    {"seed_negative", 4, {"run.seed: expected a non-negative integer", "got '-1'"}},
    {"int_overflow", 4, {"train.micro_batch: expected an integer <= 2147483647, got 99999999999"}},
    {"train_list_of_maps", 4, {"data.train: expected a path or a list of paths, got an entry that is a mapping"}},
    {"rank_zero", 4, {"lora.rank: expected an integer >= 1, got 0"}},
    {"rank_negative", 4, {"lora.rank: expected an integer >= 1, got -4"}},
    {"rank_too_big", 7, {"lora.rank: expected at most 64 = min(d_in, d_out) of target attn.proj [64, 64] at model.d_model = 64, got 65"}},
    {"rank_too_big_mlp_proj", 7, {"lora.rank: expected at most 32 = min(d_in, d_out) of target mlp.proj [128, 32]", "got 40"}},
    {"rank_too_big_default_rank", 4, {"lora.rank: expected at most 4 = min(d_in, d_out)", "got 8"}},
    {"alpha_zero", 4, {"lora.alpha: expected a number > 0, got 0"}},
    {"dropout_one", 4, {"lora.dropout: expected a number in [0, 1), got 1"}},
    {"dropout_negative", 4, {"lora.dropout: expected a number in [0, 1), got -0.1"}},
    {"seq_len_zero", 3, {"data.seq_len: expected an integer >= 1, got 0"}},
    {"seq_len_too_long", 3, {"data.seq_len: expected at most model.max_seq_len = 128, got 256"}},
    {"seq_len_default_too_long", 4, {"data.seq_len: expected at most model.max_seq_len = 32, got 64"}},
    {"n_head_not_divisor", 5, {"model.n_head: expected a divisor of model.d_model = 256, got 5"}},
    {"vocab_zero", 4, {"model.vocab_size: expected an integer >= 1, got 0"}},
    {"vocab_text_small", 5, {"model.vocab_size: expected at least 256 with data.format text", "got 100"}},
    {"n_layer_zero", 4, {"model.n_layer: expected an integer >= 1, got 0"}},
    {"n_head_zero", 4, {"model.n_head: expected an integer >= 1, got 0"}},
    {"d_model_zero", 4, {"model.d_model: expected an integer >= 1, got 0"}},
    {"max_seq_len_zero", 4, {"model.max_seq_len: expected an integer >= 1, got 0"}},
    {"micro_batch_zero", 4, {"train.micro_batch: expected an integer >= 1, got 0"}},
    {"grad_accum_zero", 4, {"train.grad_accum: expected an integer >= 1, got 0"}},
    {"steps_zero", 4, {"train.steps: expected an integer >= 1, got 0"}},
    {"lr_zero", 4, {"train.lr: expected a number > 0, got 0"}},
    {"lr_negative", 4, {"train.lr: expected a number > 0, got -0.001"}},
    {"warmup_negative", 4, {"train.warmup_steps: expected an integer >= 0, got -1"}},
    {"warmup_gt_steps", 5, {"train.warmup_steps: expected at most train.steps = 10, got 20"}},
    {"min_lr_negative", 4, {"train.min_lr: expected a number in [0, train.lr = 0.001], got -0.1"}},
    {"min_lr_gt_lr", 5, {"train.min_lr: expected a number in [0, train.lr = 0.001], got 0.01"}},
    {"weight_decay_negative", 4, {"train.weight_decay: expected a number >= 0, got -0.01"}},
    {"grad_clip_negative", 4, {"train.grad_clip: expected a number >= 0 (0 disables clipping), got -1"}},
    {"eval_every_negative", 4, {"train.eval_every: expected an integer >= 0, got -5"}},
    {"eval_batches_zero", 4, {"train.eval_batches: expected an integer >= 1, got 0"}},
    {"log_every_zero", 4, {"train.log_every: expected an integer >= 1, got 0"}},
    {"checkpoint_every_negative", 4, {"checkpoint.every: expected an integer >= 0, got -1"}},
    {"keep_zero", 4, {"checkpoint.keep: expected an integer >= 1, got 0"}},
    {"threads_negative", 4, {"device.threads: expected an integer >= 0, got -2"}},
    {"bucket_mb_zero", 4, {"comm.bucket_mb: expected a number > 0, got 0"}},
    {"timeout_zero", 4, {"comm.timeout_s: expected a number > 0, got 0"}},
    {"overlap_string", 4, {"comm.overlap: expected true or false, got 'sometimes'"}},
    {"arch_bert", 4, {"model.arch: expected one of gpt2, llama, qwen2, mistral, got 'bert'"}},
    {"dtype_fp16", 4, {"model.dtype: expected one of fp32, bf16, got 'fp16'"}},
    {"format_csv", 3, {"data.format: expected one of text, tokens, jsonl, got 'csv'"}},
    {"jsonl_without_tokenizer", 3, {"data.tokenizer: required with data.format jsonl (a tokenizer.json or a model directory)"}},
    {"template_alpaca", 3, {"data.template: expected one of none, chatml, llama3, got 'alpaca'"}},
    {"tokenizer_missing", 3, {"data.tokenizer: file 'no_such_tokenizer.json' does not exist"}},
    {"tokenizer_dir_without_json", 3, {"data.tokenizer: directory '", "' has no tokenizer.json"}},
    {"pack_string", 3, {"data.pack: expected true or false, got 'sometimes'"}},
    {"mask_prompt_number", 3, {"data.mask_prompt: expected true or false, got '1.5'"}},
    {"mode_qlora", 4, {"train.mode: expected one of lora, full, got 'qlora'"}},
    {"schedule_linear", 4, {"train.schedule: expected one of cosine, constant, got 'linear'"}},
    {"device_backend_tpu", 4, {"device.backend: expected one of auto, cpu, cuda, got 'tpu'"}},
    {"comm_backend_gloo", 4, {"comm.backend: expected one of auto, local, mpi, nccl, got 'gloo'"}},
    {"init_a_uniform", 4, {"lora.init.a: expected one of gaussian, kaiming, zeros, got 'uniform'"}},
    {"init_b_kaiming", 6, {"lora.init.b: expected one of zeros, gaussian, got 'kaiming'"}},
    {"target_unknown", 6, {"lora.targets: unknown target 'attn.qq' for a gpt2 model", "expected one of: attn.qkv|c_attn|attn.c_attn|qkv, attn.proj|attn.c_proj|c_proj|o_proj, mlp.fc|c_fc|mlp.c_fc|fc, mlp.proj|mlp.c_proj, or all-linear"}},
    {"targets_empty", 4, {"lora.targets: expected at least one target"}},
    {"target_duplicate", 7, {"lora.targets: 'mlp.fc' is listed twice"}},
    {"target_duplicate_alias", 4, {"lora.targets: 'attn.qkv' is listed twice ('c_attn' and 'attn.qkv' both name attn.qkv)"}},
    {"train_missing", 0, {"data.train: required (a path or a list of paths), not given"}},
    {"train_empty_list", 2, {"data.train: required (a path or a list of paths), got an empty value"}},
    {"train_missing_file", 2, {"data.train: file 'no_such_file.txt' does not exist", "bad_configs/no_such_file.txt"}},
    {"val_missing_file", 5, {"data.val: file 'missing_val.bin' does not exist"}},
    {"train_directory", 2, {"data.train: '", "bad_configs' is not a regular file"}},
    {"weights_missing", 4, {"model.weights: file 'missing.safetensors' does not exist"}},
};

TEST(ConfigBadCorpus, EveryCaseFailsWithItsMessageAndLine) {
  for (const BadCase& c : kBadCases) {
    const std::string path = (kBadConfigs / (std::string(c.file) + ".yaml")).string();
    SCOPED_TRACE(path);
    const std::string msg = input_error_of([&] { lora::load_config(path); });
    const std::string prefix = c.line > 0 ? path + ":" + std::to_string(c.line) + ": " : path + ": ";
    EXPECT_EQ(msg.rfind(prefix, 0), 0u) << "message: " << msg << "\nexpected prefix: " << prefix;
    for (const std::string& f : c.fragments) {
      EXPECT_NE(msg.find(f), std::string::npos) << "message: " << msg << "\nmissing: " << f;
    }
  }
}

TEST(ConfigBadCorpus, TableCoversEveryFileInTheCorpus) {
  std::set<std::string> in_table;
  for (const BadCase& c : kBadCases) EXPECT_TRUE(in_table.insert(c.file).second) << c.file;
  std::set<std::string> on_disk;
  for (const auto& entry : fs::directory_iterator(kBadConfigs)) {
    if (entry.path().extension() == ".yaml") on_disk.insert(entry.path().stem().string());
  }
  EXPECT_EQ(in_table, on_disk);
}

TEST(ConfigBadCorpus, EachCaseIsOneMistakeAwayFromAGoodConfig) {
  // The shared base of the corpus (data.train: train.txt next to the files) must itself be valid,
  // so each case fails for its own reason only.
  const lora::Config c = lora::parse_config("data:\n  train: train.txt\n",
                                            (kBadConfigs / "base.yaml").string());
  ASSERT_EQ(c.data.train.size(), 1u);
  EXPECT_EQ(c.data.train[0], normal(kBadConfigs / "train.txt"));
  // And the rank-too-big case loads once training is full (the lora section need not fit then).
  const lora::Config full =
      lora::load_config((kBadConfigs / "rank_too_big.yaml").string(), {"train.mode=full"});
  EXPECT_EQ(full.train.mode, lora::TrainMode::kFull);
  EXPECT_EQ(full.lora.rank, 65);
}

TEST(Config, MissingConfigFileIsAnInputError) {
  const std::string path = (kBadConfigs / "does_not_exist.yaml").string();
  const std::string msg = input_error_of([&] { lora::load_config(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(Config, ParseConfigNamesTheSourceInMessages) {
  const std::string msg =
      input_error_of([] { lora::parse_config("train:\n  stepz: 1\n", "inline.yaml"); });
  EXPECT_EQ(msg.rfind("inline.yaml:2: unknown key 'train.stepz'", 0), 0u) << msg;
}

// ---- good configs ---------------------------------------------------------------------------

TEST(Config, DefaultsFillEveryKeyNotGiven) {
  TempDir dir;
  dir.write("train.txt", "some text");
  const lora::Config c = lora::load_config(dir.write("c.yaml", "data:\n  train: train.txt\n"));
  const lora::Config d;
  EXPECT_EQ(c.run.name, d.run.name);
  EXPECT_EQ(c.run.output_dir, d.run.output_dir);
  EXPECT_EQ(c.run.seed, d.run.seed);
  EXPECT_EQ(c.model.arch(), "gpt2");
  EXPECT_EQ(c.model.weights, "");
  EXPECT_EQ(c.model.spec.vocab_size, d.model.spec.vocab_size);
  EXPECT_EQ(c.model.spec.n_layer, d.model.spec.n_layer);
  EXPECT_EQ(c.model.spec.n_head, d.model.spec.n_head);
  EXPECT_EQ(c.model.spec.d_model, d.model.spec.d_model);
  EXPECT_EQ(c.model.spec.max_seq_len, d.model.spec.max_seq_len);
  EXPECT_EQ(c.model.dtype, "fp32");
  EXPECT_EQ(c.lora.rank, d.lora.rank);
  EXPECT_EQ(c.lora.alpha, d.lora.alpha);
  EXPECT_EQ(c.lora.dropout, d.lora.dropout);
  EXPECT_EQ(c.lora.rslora, false);
  EXPECT_EQ(c.lora.targets, d.lora.targets);
  EXPECT_EQ(c.lora.init_a, lora::LoraInitA::kGaussian);
  EXPECT_EQ(c.lora.init_b, lora::LoraInitB::kZeros);
  EXPECT_TRUE(c.data.val.empty());
  EXPECT_EQ(c.data.format, lora::DataFormat::kText);
  EXPECT_EQ(c.data.seq_len, d.data.seq_len);
  EXPECT_EQ(c.train.mode, lora::TrainMode::kLora);
  EXPECT_EQ(c.train.micro_batch, d.train.micro_batch);
  EXPECT_EQ(c.train.grad_accum, d.train.grad_accum);
  EXPECT_EQ(c.train.steps, d.train.steps);
  EXPECT_EQ(c.train.lr, d.train.lr);
  EXPECT_EQ(c.train.warmup_steps, d.train.warmup_steps);
  EXPECT_EQ(c.train.schedule, lora::LrSchedule::kCosine);
  EXPECT_EQ(c.train.min_lr, d.train.min_lr);
  EXPECT_EQ(c.train.weight_decay, d.train.weight_decay);
  EXPECT_EQ(c.train.grad_clip, d.train.grad_clip);
  EXPECT_EQ(c.train.eval_every, d.train.eval_every);
  EXPECT_EQ(c.train.eval_batches, d.train.eval_batches);
  EXPECT_EQ(c.train.log_every, d.train.log_every);
  EXPECT_EQ(c.checkpoint.dir, "");
  EXPECT_EQ(c.checkpoint.every, d.checkpoint.every);
  EXPECT_EQ(c.checkpoint.keep, d.checkpoint.keep);
  EXPECT_EQ(c.checkpoint_dir(), d.run.output_dir + "/checkpoints");
  EXPECT_EQ(c.device.backend, lora::DeviceBackend::kAuto);
  EXPECT_EQ(c.device.threads, 0);
  EXPECT_EQ(c.comm.backend, lora::CommBackend::kAuto);
  EXPECT_EQ(c.comm.bucket_mb, d.comm.bucket_mb);
  EXPECT_EQ(c.comm.overlap, true);
  EXPECT_EQ(c.comm.timeout_s, d.comm.timeout_s);
  EXPECT_EQ(c.source_path, dir.path() / "c.yaml");
}

// A config that sets every key to a value other than its default.
const char* kEveryField = R"(# every key, none at its default
run:
  name: sweep-r16
  output_dir: out/sweep r16
  seed: 18446744073709551615
model:
  arch: gpt2
  weights: base/model.safetensors
  vocab_size: 50257
  n_layer: 6
  n_head: 6
  d_model: 384
  max_seq_len: 512
  dtype: bf16
lora:
  rank: 16
  alpha: 32.5
  dropout: 0.05
  rslora: true
  targets: [mlp.proj, attn.qkv, mlp.fc]
  init:
    a: kaiming
    b: gaussian
data:
  train: [shard_0.bin, shard_1.bin]
  val: val.bin
  format: tokens
  seq_len: 256
train:
  mode: full
  micro_batch: 3
  grad_accum: 5
  steps: 1234
  lr: 3e-4
  warmup_steps: 100
  schedule: constant
  min_lr: 1.5e-5
  weight_decay: 0.1
  grad_clip: 0
  eval_every: 50
  eval_batches: 7
  log_every: 2
checkpoint:
  dir: /scratch/ckpts
  every: 200
  keep: 5
device:
  backend: cuda
  threads: 12
comm:
  backend: nccl
  bucket_mb: 25.5
  overlap: false
  timeout_s: 60
)";

void write_every_field_files(const TempDir& dir) {
  dir.write("cfg/shard_0.bin", "x");
  dir.write("cfg/shard_1.bin", "x");
  dir.write("cfg/val.bin", "x");
  dir.write("cfg/base/model.safetensors", "x");
}

TEST(Config, EveryFieldIsParsed) {
  TempDir dir;
  write_every_field_files(dir);
  const lora::Config c = lora::load_config(dir.write("cfg/every.yaml", kEveryField));
  const fs::path cfg = dir.path() / "cfg";
  EXPECT_EQ(c.run.name, "sweep-r16");
  EXPECT_EQ(c.run.output_dir, "out/sweep r16");  // stays relative to the working directory
  EXPECT_EQ(c.run.seed, 18446744073709551615ull);
  EXPECT_EQ(c.model.arch(), "gpt2");
  EXPECT_EQ(c.model.weights, normal(cfg / "base/model.safetensors"));
  EXPECT_EQ(c.model.spec.vocab_size, 50257);
  EXPECT_EQ(c.model.spec.n_layer, 6);
  EXPECT_EQ(c.model.spec.n_head, 6);
  EXPECT_EQ(c.model.spec.d_model, 384);
  EXPECT_EQ(c.model.spec.max_seq_len, 512);
  EXPECT_EQ(c.model.dtype, "bf16");
  EXPECT_EQ(c.lora.rank, 16);
  EXPECT_EQ(c.lora.alpha, 32.5f);
  EXPECT_EQ(c.lora.dropout, 0.05f);
  EXPECT_TRUE(c.lora.rslora);
  EXPECT_EQ(c.lora.targets, (std::vector<lora::LoraTarget>{lora::LoraTarget::kMlpProj,
                                                            lora::LoraTarget::kAttnQkv,
                                                            lora::LoraTarget::kMlpFc}));
  EXPECT_EQ(c.lora.init_a, lora::LoraInitA::kKaiming);
  EXPECT_EQ(c.lora.init_b, lora::LoraInitB::kGaussian);
  EXPECT_EQ(c.data.train, (std::vector<std::string>{normal(cfg / "shard_0.bin"),
                                                     normal(cfg / "shard_1.bin")}));
  EXPECT_EQ(c.data.val, (std::vector<std::string>{normal(cfg / "val.bin")}));
  EXPECT_EQ(c.data.format, lora::DataFormat::kTokens);
  EXPECT_EQ(c.data.seq_len, 256);
  EXPECT_EQ(c.train.mode, lora::TrainMode::kFull);
  EXPECT_EQ(c.train.micro_batch, 3);
  EXPECT_EQ(c.train.grad_accum, 5);
  EXPECT_EQ(c.train.steps, 1234);
  EXPECT_EQ(c.train.lr, 3e-4f);
  EXPECT_EQ(c.train.warmup_steps, 100);
  EXPECT_EQ(c.train.schedule, lora::LrSchedule::kConstant);
  EXPECT_EQ(c.train.min_lr, 1.5e-5f);
  EXPECT_EQ(c.train.weight_decay, 0.1f);
  EXPECT_EQ(c.train.grad_clip, 0.0f);
  EXPECT_EQ(c.train.eval_every, 50);
  EXPECT_EQ(c.train.eval_batches, 7);
  EXPECT_EQ(c.train.log_every, 2);
  EXPECT_EQ(c.checkpoint.dir, "/scratch/ckpts");
  EXPECT_EQ(c.checkpoint_dir(), "/scratch/ckpts");
  EXPECT_EQ(c.checkpoint.every, 200);
  EXPECT_EQ(c.checkpoint.keep, 5);
  EXPECT_EQ(c.device.backend, lora::DeviceBackend::kCuda);
  EXPECT_EQ(c.device.threads, 12);
  EXPECT_EQ(c.comm.backend, lora::CommBackend::kNccl);
  EXPECT_EQ(c.comm.bucket_mb, 25.5);
  EXPECT_FALSE(c.comm.overlap);
  EXPECT_EQ(c.comm.timeout_s, 60.0);
  EXPECT_EQ(c.global_batch(4), 3 * 5 * 4);
}

TEST(Config, NullSectionsAndNullValMeanDefaults) {
  TempDir dir;
  dir.write("t.txt", "abc");
  const lora::Config c = lora::load_config(
      dir.write("c.yaml", "run:\nlora:\ndata:\n  train: t.txt\n  val:\nmodel:\n  weights: ~\n"));
  EXPECT_EQ(c.run.name, "run");
  EXPECT_TRUE(c.data.val.empty());
  EXPECT_EQ(c.model.weights, "");
}

TEST(Config, HuggingFaceTargetAliases) {
  TempDir dir;
  dir.write("t.txt", "abc");
  using T = lora::LoraTarget;
  struct Alias {
    std::string yaml;
    std::vector<T> want;
  };
  const std::vector<Alias> cases = {
      {"[c_attn, c_proj, c_fc, mlp.c_proj]", {T::kAttnQkv, T::kAttnProj, T::kMlpFc, T::kMlpProj}},
      {"[attn.c_attn, attn.c_proj, mlp.c_fc]", {T::kAttnQkv, T::kAttnProj, T::kMlpFc}},
      {"[qkv, o_proj, fc]", {T::kAttnQkv, T::kAttnProj, T::kMlpFc}},
      {"c_fc", {T::kMlpFc}},  // a single name is a one-entry list
  };
  for (const Alias& a : cases) {
    SCOPED_TRACE(a.yaml);
    const lora::Config c = lora::load_config(
        dir.write("c.yaml", "data: {train: t.txt}\nlora:\n  targets: " + a.yaml + "\n"));
    EXPECT_EQ(c.lora.targets, a.want);
  }
}

// The Llama family's Hugging Face module names, all-linear, and names of the other family refused.
TEST(Config, LlamaFamilyTargets) {
  TempDir dir;
  dir.write("t.txt", "abc");
  using T = lora::LoraTarget;
  const std::string head = "data: {train: t.txt}\nmodel: {arch: llama, n_head: 4, n_kv_head: 2}\n";
  auto targets = [&](const std::string& yaml) {
    return lora::load_config(dir.write("c.yaml", head + "lora:\n  targets: " + yaml + "\n")).lora.targets;
  };
  EXPECT_EQ(targets("[q_proj, self_attn.v_proj, down_proj]"), (std::vector<T>{T::kQ, T::kV, T::kMlpProj}));
  EXPECT_EQ(targets("all-linear"), (std::vector<T>{T::kQ, T::kK, T::kV, T::kAttnProj, T::kGate,
                                                   T::kUp, T::kMlpProj}));
  // The default for the Llama family: q_proj and v_proj.
  EXPECT_EQ(lora::load_config(dir.write("d.yaml", head)).lora.targets, (std::vector<T>{T::kQ, T::kV}));
  const std::string msg = input_error_of([&] { targets("[q_proj, c_attn]"); });
  EXPECT_NE(msg.find("c.yaml:4: lora.targets: unknown target 'c_attn' for a llama model (expected "
                     "one of: q_proj|self_attn.q_proj"),
            std::string::npos)
      << msg;
  EXPECT_NE(input_error_of([&] { targets("[all-linear, q_proj]"); })
                .find("'q_proj' is listed twice ('all-linear' and 'q_proj' both name q_proj)"),
            std::string::npos);
  EXPECT_NE(input_error_of([&] { targets("[q_proj, all-linear]"); })
                .find("'all-linear' includes 'q_proj', which is listed too"),
            std::string::npos);
}

// model.path: the spec comes from the directory's config.json; shape keys given in the YAML must
// agree with it (the message names both values and the file).
TEST(Config, ModelPathGivesTheSpecAndShapeKeysMustAgree) {
  TempDir dir;
  dir.write("t.txt", "abc");
  lora::ModelSpec sizes;
  sizes.vocab_size = 300;
  sizes.max_seq_len = 64;
  sizes.n_layer = 2;
  sizes.n_head = 4;
  sizes.n_kv_head = 2;
  sizes.d_model = 32;
  sizes.d_ff = 48;
  const lora::ModelSpec spec = lora::family_spec("qwen2", sizes);
  const lora::BaseLayout layout(spec);
  std::vector<float> params(layout.n_params(), 0.5f);
  lora::save_hf_model_dir((dir.path() / "hf").string(), layout, params.data(), lora::hf_config_for(spec));
  const std::string config_json = normal(dir.path() / "hf/config.json");

  const lora::Config c = lora::load_config(dir.write("c.yaml", "data: {train: t.txt}\nmodel: {path: hf}\n"));
  EXPECT_EQ(c.model.path, normal(dir.path() / "hf"));
  EXPECT_EQ(c.model.arch(), "qwen2");
  EXPECT_EQ(c.model.spec.kv_heads(), 2);
  EXPECT_EQ(c.model.spec.ff(), 48);
  EXPECT_TRUE(c.model.spec.qkv_bias);
  // Keys that agree are fine; the resolved YAML round-trips.
  const lora::Config agree = lora::load_config(dir.write(
      "a.yaml", "data: {train: t.txt}\nmodel: {path: hf, arch: qwen2, n_layer: 2, d_model: 32, d_ff: 48}\n"));
  EXPECT_EQ(lora::spec_to_json(agree.model.spec), lora::spec_to_json(spec));
  const lora::Config again = lora::parse_config(agree.resolved_yaml, (dir.path() / "r.yaml").string());
  EXPECT_EQ(lora::spec_to_json(again.model.spec), lora::spec_to_json(spec));

  auto error_of = [&](const std::string& model_yaml) {
    return input_error_of([&] {
      lora::load_config(dir.write("b.yaml", "data: {train: t.txt}\nmodel:\n  path: hf\n" + model_yaml));
    });
  };
  std::string msg = error_of("  n_layer: 3\n");
  EXPECT_NE(msg.find("b.yaml:4: model.n_layer: expected 2 as " + config_json +
                     " says (num_hidden_layers), or no model.n_layer, got 3"),
            std::string::npos)
      << msg;
  msg = error_of("  n_kv_head: 4\n");
  EXPECT_NE(msg.find("model.n_kv_head: expected 2 as"), std::string::npos) << msg;
  msg = error_of("  arch: llama\n");
  EXPECT_NE(msg.find("model.arch: expected 'qwen2' as " + config_json), std::string::npos) << msg;
  msg = error_of("  weights: x.safetensors\n");
  EXPECT_NE(msg.find("model.weights: expected null when model.path is given"), std::string::npos) << msg;
  msg = input_error_of([&] {
    lora::load_config(dir.write("m.yaml", "data: {train: t.txt}\nmodel: {path: no_such_dir}\n"));
  });
  EXPECT_NE(msg.find("model.path: directory 'no_such_dir' does not exist"), std::string::npos) << msg;
  // A directory without config.json names the file.
  fs::create_directories(dir.path() / "empty");
  msg = input_error_of([&] {
    lora::load_config(dir.write("e.yaml", "data: {train: t.txt}\nmodel: {path: empty}\n"));
  });
  EXPECT_NE(msg.find(normal(dir.path() / "empty/config.json") + ": missing"), std::string::npos) << msg;
}

// Every config shipped in configs/ parses, with its data files and model directory replaced by
// stand-ins (their real targets are downloads or outputs of another run).
TEST(Config, ShippedConfigsParse) {
  TempDir dir;
  const std::string text = dir.write("t.txt", std::string(4096, 'a'));
  const std::string shard = (dir.path() / "t.bin").string();
  {
    std::ofstream f(shard, std::ios::binary);
    int32_t header[256] = {20240520, 1, 4096};
    f.write(reinterpret_cast<const char*>(header), sizeof header);
    const std::vector<uint16_t> tokens(4096, 7);
    f.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  }
  lora::ModelSpec sizes;
  sizes.vocab_size = 49152;
  sizes.max_seq_len = 2048;
  sizes.n_layer = 2;
  sizes.n_head = 9;
  sizes.n_kv_head = 3;
  sizes.d_model = 576;
  sizes.d_ff = 1536;
  lora::ModelSpec smol = lora::family_spec("llama", sizes);
  smol.tied_embeddings = true;
  const std::string hf_dir = (dir.path() / "hf").string();
  fs::create_directories(hf_dir);
  std::ofstream(hf_dir + "/config.json") << lora::json::dump(lora::hf_config_for(smol));
  std::ofstream(hf_dir + "/model.safetensors") << "stand-in: the config does not open the weights";
  std::ofstream(hf_dir + "/tokenizer.json") << "{}";  // the config checks that it exists only
  int n = 0;
  for (const auto& e : fs::directory_iterator(fs::path(LORA_SOURCE_DIR) / "configs")) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".yaml" || name.starts_with("sweep")) continue;
    SCOPED_TRACE(name);
    const YAML::Node y = YAML::LoadFile(e.path().string());
    const bool tokens = y["data"] && y["data"]["format"] && y["data"]["format"].as<std::string>() == "tokens";
    std::vector<std::string> sets = {"data.train=" + (tokens ? shard : text),
                                     "data.val=" + (tokens ? shard : text)};
    if (y["model"] && y["model"]["path"]) sets.push_back("model.path=" + hf_dir);
    if (y["model"] && y["model"]["weights"]) sets.push_back("model.weights=null");
    if (y["data"] && y["data"]["tokenizer"]) sets.push_back("data.tokenizer=" + hf_dir);
    if (y["data"] && y["data"]["format"] && y["data"]["format"].as<std::string>() == "jsonl") {
      sets[0] = "data.train=" + text;  // any file: the config checks that the data files exist
      sets[1] = "data.val=" + text;
    }
    EXPECT_NO_THROW(lora::load_config(e.path().string(), sets));
    ++n;
  }
  EXPECT_GE(n, 4);
}

TEST(Config, RankMustFitOnlyInLoraMode) {
  TempDir dir;
  dir.write("t.txt", "abc");
  const std::string text =
      "data: {train: t.txt}\nmodel: {d_model: 64, n_head: 4}\nlora: {rank: 1000}\n";
  const std::string path = dir.write("c.yaml", text);
  const std::string msg = input_error_of([&] { lora::load_config(path); });
  EXPECT_NE(msg.find("lora.rank: expected at most 64"), std::string::npos) << msg;
  const lora::Config full = lora::load_config(path, {"train.mode=full"});
  EXPECT_EQ(full.lora.rank, 1000);
  // Exactly min(d_in, d_out) is allowed.
  EXPECT_EQ(lora::load_config(path, {"lora.rank=64"}).lora.rank, 64);
}

TEST(Config, RelativeDataAndWeightsResolveAgainstTheConfigDirectory) {
  TempDir dir;
  dir.write("data/train.txt", "abc");
  dir.write("configs/val.txt", "abc");
  dir.write("configs/w/base.safetensors", "x");
  const std::string abs_train = dir.write("elsewhere/abs.txt", "abc");
  const lora::Config c = lora::load_config(dir.write(
      "configs/run.yaml",
      "run: {output_dir: out/run}\n"
      "model: {weights: w/base.safetensors}\n"
      "data:\n  train: [../data/train.txt, " + abs_train + "]\n  val: ./val.txt\n"
      "checkpoint: {dir: ckpts}\n"));
  EXPECT_EQ(c.data.train,
            (std::vector<std::string>{normal(dir.path() / "data/train.txt"), normal(abs_train)}));
  EXPECT_EQ(c.data.val, (std::vector<std::string>{normal(dir.path() / "configs/val.txt")}));
  EXPECT_EQ(c.model.weights, normal(dir.path() / "configs/w/base.safetensors"));
  EXPECT_EQ(c.run.output_dir, "out/run");
  EXPECT_EQ(c.checkpoint.dir, "ckpts");
  EXPECT_EQ(c.checkpoint_dir(), "ckpts");
  // The same relative path is missing from the config directory: the message shows where it looked.
  const std::string msg = input_error_of([&] {
    lora::load_config(dir.write("configs/bad.yaml", "data:\n  train: data/train.txt\n"));
  });
  EXPECT_NE(msg.find(normal(dir.path() / "configs/data/train.txt")), std::string::npos) << msg;
}

// Changes the working directory for the scope.
class ScopedCwd {
 public:
  explicit ScopedCwd(const fs::path& p) : old_(fs::current_path()) { fs::current_path(p); }
  ~ScopedCwd() { fs::current_path(old_); }

 private:
  fs::path old_;
};

TEST(ConfigOverrides, ValuesParsedAsYamlReplaceFileValues) {
  TempDir dir;
  dir.write("cfg/t.txt", "abc");
  const std::string path = dir.write(
      "cfg/c.yaml", "data: {train: t.txt}\ntrain: {steps: 10, lr: 0.1}\nlora: {init: {b: zeros}}\n");
  const lora::Config c = lora::load_config(
      path, {"train.steps=5", "train.steps=7", "lora.targets=[c_fc,mlp.c_proj]",
             "lora.init={a: zeros, b: gaussian}", "comm.overlap=false", "train.lr=2e-3",
             "run.name=my run", "model.weights=", "checkpoint.every=3", "data.format=text"});
  EXPECT_EQ(c.train.steps, 7);  // the last override wins
  EXPECT_EQ(c.train.lr, 2e-3f);
  EXPECT_EQ(c.lora.targets,
            (std::vector<lora::LoraTarget>{lora::LoraTarget::kMlpFc, lora::LoraTarget::kMlpProj}));
  EXPECT_EQ(c.lora.init_a, lora::LoraInitA::kZeros);
  EXPECT_EQ(c.lora.init_b, lora::LoraInitB::kGaussian);
  EXPECT_FALSE(c.comm.overlap);
  EXPECT_EQ(c.run.name, "my run");
  EXPECT_EQ(c.model.weights, "");
  EXPECT_EQ(c.checkpoint.every, 3);
  // A section override sets only the keys it names.
  const lora::Config d = lora::load_config(path, {"train={micro_batch: 2}"});
  EXPECT_EQ(d.train.micro_batch, 2);
  EXPECT_EQ(d.train.steps, 10);
}

TEST(ConfigOverrides, RelativePathsFromOverridesResolveAgainstTheWorkingDirectory) {
  TempDir dir;
  dir.write("cfg/t.txt", "abc");
  dir.write("cwd/mine.txt", "abc");
  const std::string path = dir.write("cfg/c.yaml", "data: {train: t.txt}\n");
  ScopedCwd cwd(dir.path() / "cwd");
  const lora::Config c = lora::load_config(path, {"data.val=mine.txt"});
  EXPECT_EQ(c.data.val, (std::vector<std::string>{normal(dir.path() / "cwd/mine.txt")}));
  EXPECT_EQ(c.data.train, (std::vector<std::string>{normal(dir.path() / "cfg/t.txt")}));
}

TEST(ConfigOverrides, BadOverridesNameTheOverride) {
  TempDir dir;
  dir.write("t.txt", "abc");
  const std::string path = dir.write("c.yaml", "data: {train: t.txt}\n");
  struct Bad {
    std::string set;
    std::string want;  // the whole message starts with "--set <set>: " followed by this
  };
  const std::vector<Bad> cases = {
      {"train.stepz=5", "unknown key 'train.stepz' (expected one of: mode, micro_batch"},
      {"trian.steps=5", "unknown key 'trian.steps' (expected one of: run, model, lora"},
      {"train.steps.x=1", "unknown key 'train.steps.x' (expected one of: mode, micro_batch"},
      {"lora.init.c=zeros", "unknown key 'lora.init.c' (expected one of: a, b)"},
      {"train.steps", "expected key.path=value"},
      {"=5", "expected key.path=value"},
      {"train..steps=5", "expected key.path=value"},
      {"train.steps=abc", "train.steps: expected an integer, got 'abc'"},
      {"train.steps=[1, 2]", "train.steps: expected an integer, got a list"},
      {"lora.rank=0", "lora.rank: expected an integer >= 1, got 0"},
      {"lora.dropout=1.0", "lora.dropout: expected a number in [0, 1), got 1"},
      {"lora.targets=[attn.qkv, nope]", "lora.targets: unknown target 'nope'"},
      {"lora.targets=[a", "the value is not valid YAML"},
      {"train=5", "train is a section: expected a mapping like {mode: ...}, got '5'"},
      {"train={stepz: 1}", "unknown key 'train.stepz'"},
      {"model.max_seq_len=16", "data.seq_len: expected at most model.max_seq_len = 16, got 64"},
      {"data.train=no_such_file.bin", "data.train: file 'no_such_file.bin' does not exist"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.set);
    const std::string msg = input_error_of([&] { lora::load_config(path, {b.set}); });
    const std::string want = "--set " + b.set + ": " + b.want;
    EXPECT_EQ(msg.rfind(want, 0), 0u) << "message: " << msg << "\nexpected start: " << want;
  }
}

// ---- resolved YAML --------------------------------------------------------------------------

void expect_same_config(const lora::Config& a, const lora::Config& b) {
  EXPECT_EQ(a.run.name, b.run.name);
  EXPECT_EQ(a.run.output_dir, b.run.output_dir);
  EXPECT_EQ(a.run.seed, b.run.seed);
  EXPECT_EQ(spec_to_json(a.model.spec), spec_to_json(b.model.spec));
  EXPECT_EQ(a.model.path, b.model.path);
  EXPECT_EQ(a.model.weights, b.model.weights);
  EXPECT_EQ(a.model.spec.vocab_size, b.model.spec.vocab_size);
  EXPECT_EQ(a.model.spec.n_layer, b.model.spec.n_layer);
  EXPECT_EQ(a.model.spec.n_head, b.model.spec.n_head);
  EXPECT_EQ(a.model.spec.d_model, b.model.spec.d_model);
  EXPECT_EQ(a.model.spec.max_seq_len, b.model.spec.max_seq_len);
  EXPECT_EQ(a.model.dtype, b.model.dtype);
  EXPECT_EQ(a.lora.rank, b.lora.rank);
  EXPECT_EQ(a.lora.alpha, b.lora.alpha);
  EXPECT_EQ(a.lora.dropout, b.lora.dropout);
  EXPECT_EQ(a.lora.rslora, b.lora.rslora);
  EXPECT_EQ(a.lora.targets, b.lora.targets);
  EXPECT_EQ(a.lora.init_a, b.lora.init_a);
  EXPECT_EQ(a.lora.init_b, b.lora.init_b);
  EXPECT_EQ(a.data.train, b.data.train);
  EXPECT_EQ(a.data.val, b.data.val);
  EXPECT_EQ(a.data.format, b.data.format);
  EXPECT_EQ(a.data.seq_len, b.data.seq_len);
  EXPECT_EQ(a.train.mode, b.train.mode);
  EXPECT_EQ(a.train.micro_batch, b.train.micro_batch);
  EXPECT_EQ(a.train.grad_accum, b.train.grad_accum);
  EXPECT_EQ(a.train.steps, b.train.steps);
  EXPECT_EQ(a.train.lr, b.train.lr);
  EXPECT_EQ(a.train.warmup_steps, b.train.warmup_steps);
  EXPECT_EQ(a.train.schedule, b.train.schedule);
  EXPECT_EQ(a.train.min_lr, b.train.min_lr);
  EXPECT_EQ(a.train.weight_decay, b.train.weight_decay);
  EXPECT_EQ(a.train.grad_clip, b.train.grad_clip);
  EXPECT_EQ(a.train.eval_every, b.train.eval_every);
  EXPECT_EQ(a.train.eval_batches, b.train.eval_batches);
  EXPECT_EQ(a.train.log_every, b.train.log_every);
  EXPECT_EQ(a.checkpoint.dir, b.checkpoint.dir);
  EXPECT_EQ(a.checkpoint.every, b.checkpoint.every);
  EXPECT_EQ(a.checkpoint.keep, b.checkpoint.keep);
  EXPECT_EQ(a.device.backend, b.device.backend);
  EXPECT_EQ(a.device.threads, b.device.threads);
  EXPECT_EQ(a.comm.backend, b.comm.backend);
  EXPECT_EQ(a.comm.bucket_mb, b.comm.bucket_mb);
  EXPECT_EQ(a.comm.overlap, b.comm.overlap);
  EXPECT_EQ(a.comm.timeout_s, b.comm.timeout_s);
  EXPECT_EQ(a.resolved_yaml, b.resolved_yaml);
}

TEST(ConfigResolvedYaml, RoundTripGivesAnEqualConfig) {
  TempDir dir;
  write_every_field_files(dir);
  dir.write("cfg/t.txt", "abc");
  const std::vector<lora::Config> originals = {
      lora::load_config(dir.write("cfg/every.yaml", kEveryField),
                        {"run.name='a \"quoted\" name: #1'", "train.lr=0.1", "lora.dropout=0.3"}),
      lora::load_config(dir.write("cfg/min.yaml", "data: {train: t.txt}\n")),
      lora::load_config(dir.write("cfg/odd.yaml", "data: {train: t.txt}\nrun: {name: 'null', "
                                                  "output_dir: '123'}\ntrain: {lr: 1e-7, min_lr: 3.3e-8}\n")),
  };
  for (const lora::Config& original : originals) {
    SCOPED_TRACE(original.resolved_yaml);
    // Another source name: the resolved paths are absolute, so they do not move.
    const lora::Config again =
        lora::parse_config(original.resolved_yaml, (dir.path() / "other/config.yaml").string());
    expect_same_config(original, again);
    EXPECT_EQ(again.source_path, (dir.path() / "other/config.yaml").string());
  }
  EXPECT_EQ(originals[0].run.name, "a \"quoted\" name: #1");
  EXPECT_EQ(originals[2].run.name, "null");
  EXPECT_EQ(originals[2].run.output_dir, "123");
}

TEST(ConfigResolvedYaml, HoldsEveryKeyWithItsFinalValue) {
  TempDir dir;
  dir.write("t.txt", "abc");
  const lora::Config c = lora::load_config(dir.write("c.yaml", "data: {train: t.txt}\n"),
                                           {"lora.rank=4"});
  const YAML::Node root = YAML::Load(c.resolved_yaml);
  const std::vector<std::pair<std::string, std::vector<std::string>>> schema = {
      {"run", {"name", "output_dir", "seed"}},
      {"model", {"arch", "weights", "vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "dtype"}},
      {"lora", {"rank", "alpha", "dropout", "rslora", "targets", "init", "init_from"}},
      {"data", {"train", "val", "format", "seq_len", "tokenizer", "template", "mask_prompt", "pack"}},
      {"train", {"mode", "micro_batch", "grad_accum", "steps", "lr", "warmup_steps", "schedule",
                 "min_lr", "weight_decay", "grad_clip", "eval_every", "eval_batches", "log_every"}},
      {"checkpoint", {"dir", "every", "keep"}},
      {"device", {"backend", "threads"}},
      {"comm", {"backend", "bucket_mb", "overlap", "timeout_s"}},
  };
  ASSERT_TRUE(root.IsMap());
  EXPECT_EQ(root.size(), schema.size());
  for (const auto& [section, keys] : schema) {
    SCOPED_TRACE(section);
    ASSERT_TRUE(root[section].IsMap());
    EXPECT_EQ(root[section].size(), keys.size());
    for (const std::string& k : keys) EXPECT_TRUE(root[section][k].IsDefined()) << k;
  }
  EXPECT_EQ(root["lora"]["rank"].as<int>(), 4);
  EXPECT_EQ(root["lora"]["init"]["a"].as<std::string>(), "gaussian");
  EXPECT_EQ(root["lora"]["targets"].size(), 2u);
  EXPECT_EQ(root["data"]["train"][0].as<std::string>(), normal(dir.path() / "t.txt"));
  EXPECT_EQ(root["train"]["lr"].as<std::string>(), "0.001");  // shortest exact text
  EXPECT_TRUE(root["model"]["weights"].IsNull());
}

TEST(Config, EnumNames) {
  EXPECT_EQ(lora::data_format_name(lora::DataFormat::kText), "text");
  EXPECT_EQ(lora::data_format_name(lora::DataFormat::kTokens), "tokens");
  EXPECT_EQ(lora::lr_schedule_name(lora::LrSchedule::kCosine), "cosine");
  EXPECT_EQ(lora::lr_schedule_name(lora::LrSchedule::kConstant), "constant");
  EXPECT_EQ(lora::train_mode_name(lora::TrainMode::kLora), "lora");
  EXPECT_EQ(lora::train_mode_name(lora::TrainMode::kFull), "full");
}

}  // namespace
