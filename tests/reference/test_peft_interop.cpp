// Adapters between this project and Hugging Face PEFT, checked with PEFT and transformers
// themselves (tests/reference/hf_reference.py), on models transformers made: GPT-2 and a Llama with
// grouped-query attention (float32), and the same Llama saved in bfloat16 in shards.
//   - `lora train` a few steps (all-linear, rsLoRA off and on), `lora export`, then
//     PeftModel.from_pretrained on the export: logits within 1e-5 (of the largest logit) of the
//     model `lora eval --adapter` builds, and `lora eval --json`'s loss within 1e-5 relative of
//     PEFT's loss over the same windows of data.val;
//   - adapters PEFT itself created and saved (B not zero; targets as a list and as a regular
//     expression; rank_pattern and alpha_pattern with rsLoRA; bf16 and f16 tensors) import and
//     give PEFT's loss and logits; our re-export of each is PEFT's file again (tensor for tensor,
//     bit for bit for float32 ones) and PEFT computes the same loss from it;
//   - `lora merge` writes directories transformers loads with the logits of base + adapter:
//     within 1e-4 for float32 bases; for the bfloat16 base (its merged weights rounded to
//     bfloat16, as the base's were) within 2e-2, with the base's shards, dtypes and config.json.
// The reference environment is .venv (scripts/setup_python.sh); without it these tests skip,
// saying so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <tuple>

#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/common/temp_dir.h"
#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/peft.h"
#include "trainer/trainer.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

constexpr int kB = 2, kT = 16, kVocab = 97, kSeqLen = 16;

std::string python() { return LORA_REF_PYTHON; }

std::string reference_unavailable() {
  if (!fs::exists(python())) return python() + " does not exist (run scripts/setup_python.sh)";
  const std::string cmd = python() + " -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return python() + " cannot import torch/transformers/peft";
  return "";
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Runs hf_reference.py with "COMMAND FILE" pairs; its warnings are dropped, its errors shown.
int run_reference(const std::string& command, const std::string& json_path,
                  const std::string& command2 = "", const std::string& json_path2 = "") {
  const std::string cmd = "set -o pipefail; " + python() + " " + LORA_SOURCE_DIR +
                          "/tests/reference/hf_reference.py " + command + " " + json_path + " " +
                          command2 + " " + json_path2 + " 2>&1 | { grep -v -i warn || true; }";
  return std::system(("bash -c '" + cmd + "'").c_str()) == 0 ? 0 : 1;
}

struct Output {
  int exit_code;
  std::string text;
};

Output run_lora(const std::string& args) {
  Output o{-1, ""};
  FILE* p = ::popen((std::string(LORA_BINARY) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return o;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) o.text.append(buf, n);
  const int status = ::pclose(p);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

double max_abs(const float* p, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(p[i])));
  return m;
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// The models transformers makes for these tests.
const char* kGpt2 = R"({"vocab_size": 97, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64})";
const char* kLlama =
    R"({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false})";

// Adapters PEFT itself makes: name, model, LoraConfig arguments, dtype.
struct PeftMade {
  const char* name;
  const char* model;
  const char* lora;
  const char* dtype;
};
const std::vector<PeftMade>& peft_made() {
  static const std::vector<PeftMade> v = {
      {"llama_list", "llama", R"J({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})J", "float32"},
      {"llama_regex_patterns", "llama",
       R"J({"r": 4, "lora_alpha": 8, "use_rslora": true,
           "target_modules": "model\\.layers\\.\\d+\\.(self_attn\\.(k|o)_proj|mlp\\.(gate|down)_proj)",
           "rank_pattern": {"k_proj": 2, "layers.1.mlp.down_proj": 3}, "alpha_pattern": {"o_proj": 3}})J",
       "float32"},
      {"llama_all_bf16", "llama", R"J({"r": 4, "lora_alpha": 16, "target_modules": "all-linear"})J", "bfloat16"},
      {"llama_f16", "llama", R"J({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "k_proj", "up_proj"]})J", "float16"},
      {"gpt2_list", "gpt2", R"J({"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]})J", "float32"},
      {"gpt2_regex_patterns", "gpt2",
       R"J({"r": 4, "lora_alpha": 8, "target_modules": ".*\\.(c_attn|c_fc|c_proj)",
           "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"h.1.attn.c_proj": 4}})J", "float32"},
      {"llama_bf16base", "llama_bf16", R"J({"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
           "rank_pattern": {"q_proj": 2}})J", "float32"},
  };
  return v;
}

class PeftInterop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = new std::string(reference_unavailable());
    if (!skip_reason_->empty()) return;
    dir_ = new TempDir("lora_peft_interop");
    const std::string d = dir_->str();
    write_text(*dir_ / "cases.json",
               std::string("[{\"family\": \"gpt2\", \"dir\": \"") + d + "/gpt2\", \"seed\": 1, \"config\": " + kGpt2 +
                   "}, {\"family\": \"llama\", \"dir\": \"" + d + "/llama\", \"seed\": 2, \"config\": " + kLlama +
                   "}, {\"family\": \"llama\", \"dir\": \"" + d + "/llama_bf16\", \"seed\": 3, \"config\": " + kLlama +
                   ", \"torch_dtype\": \"bfloat16\", \"max_shard_size\": \"20KB\"}]");
    std::ostringstream jobs;
    jobs << "[";
    for (size_t i = 0; i < peft_made().size(); ++i) {
      const PeftMade& p = peft_made()[i];
      jobs << (i ? "," : "") << "{\"model\": \"" << d << "/" << p.model << "\", \"out\": \"" << d << "/"
           << p.name << "\", \"seed\": " << 10 + i << ", \"std\": 0.1, \"dtype\": \"" << p.dtype
           << "\", \"lora\": " << p.lora << "}";
    }
    jobs << "]";
    write_text(*dir_ / "peft_make.json", jobs.str());
    made_ = run_reference("make", *dir_ / "cases.json", "peft_make", *dir_ / "peft_make.json") == 0;

    std::vector<uint16_t> train, val;
    for (int i = 0; i < 600; ++i) train.push_back(static_cast<uint16_t>(hash_u64(21, i) % kVocab));
    for (int i = 0; i < 203; ++i) val.push_back(static_cast<uint16_t>(hash_u64(22, i) % kVocab));
    write_token_shard(*dir_ / "train.bin", train);
    write_token_shard(*dir_ / "val.bin", val);
    tokens_ = new std::vector<int32_t>();
    for (int i = 0; i < kB * kT; ++i) tokens_->push_back(static_cast<int32_t>(hash_u64(23, i) % kVocab));
    const std::vector<float> tok(tokens_->begin(), tokens_->end()), stream(val.begin(), val.end());
    write_safetensors(*dir_ / "inputs.safetensors",
                      {{"tokens", {kB, kT}, tok.data()}, {"stream", {int64_t(stream.size())}, stream.data()}});
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!skip_reason_->empty()) GTEST_SKIP() << "reference environment unavailable: " << *skip_reason_;
    ASSERT_TRUE(made_) << "hf_reference.py make / peft_make failed";
  }

  // A config for `model` (a directory name under dir_); `lora` is its lora section or "".
  static std::string config(const std::string& name, const std::string& model, const std::string& lora) {
    const std::string path = *dir_ / (name + ".yaml");
    write_text(path, "run: {name: " + name + ", output_dir: " + (*dir_ / ("run-" + name)) + ", seed: 5}\n" +
                         "model: {path: " + (*dir_ / model) + "}\n" + lora +
                         "data: {train: " + (*dir_ / "train.bin") + ", val: " + (*dir_ / "val.bin") +
                         ", format: tokens, seq_len: " + std::to_string(kSeqLen) + "}\n" +
                         "train: {steps: 5, micro_batch: 2, lr: 0.01, log_every: 1}\ndevice: {threads: 1}\n");
    return path;
  }

  // Trains `model` 5 steps (all-linear, rank 4, alpha 8) and exports the last checkpoint; returns
  // the config and the PEFT directory.
  static std::pair<std::string, std::string> trained_export(const std::string& name,
                                                            const std::string& model, bool rslora) {
    const std::string cfg = config(name, model,
                                   std::string("lora: {rank: 4, alpha: 8, targets: [all-linear], rslora: ") +
                                       (rslora ? "true" : "false") + "}\n");
    const std::string peft = *dir_ / ("export-" + name);
    if (fs::exists(peft)) return {cfg, peft};
    const Output t = run_lora("train " + cfg);
    EXPECT_EQ(t.exit_code, 0) << t.text;
    const Output e = run_lora("export " + (*dir_ / ("run-" + name + "/checkpoints/ckpt-5.h5")) + " --peft " + peft);
    EXPECT_EQ(e.exit_code, 0) << e.text;
    return {cfg, peft};
  }

  // The logits of `lora eval --adapter`'s model on the test batch.
  static std::vector<float> our_logits(const std::string& config_path, const std::string& adapter) {
    const Config cfg = load_config(config_path);
    const Adapter a = read_adapter(adapter, cfg.model.spec, "--adapter");
    auto model = build_model_with_adapter(cfg, a, "--adapter");
    model->forward(tokens_->data(), nullptr, kB, kT);
    return std::vector<float>(model->logits(), model->logits() + size_t(kB) * kT * kVocab);
  }

  static double eval_loss(const std::string& config_path, const std::string& adapter) {
    const Output o = run_lora("eval " + config_path + (adapter.empty() ? "" : " --adapter " + adapter) +
                              " --json");
    EXPECT_EQ(o.exit_code, 0) << o.text;
    try {
      const json::Value v = json::parse(o.text);
      EXPECT_EQ(v.find("tokens")->as_int64(), 202);
      EXPECT_EQ(v.find("windows")->as_int64(), 13);  // 12 of 16 and one of 10
      return v.find("loss")->as_double();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "eval --json printed " << o.text;
      return 0;
    }
  }

  static std::string eval_job(const std::string& model, const std::string& adapter, const std::string& out) {
    return "{\"model\": \"" + model + "\", \"adapter\": " + (adapter.empty() ? "null" : "\"" + adapter + "\"") +
           ", \"inputs\": \"" + (*dir_ / "inputs.safetensors") + "\", \"output\": \"" + out +
           "\", \"seq_len\": " + std::to_string(kSeqLen) + ", \"float64\": true}";
  }

  static TempDir* dir_;
  static std::string* skip_reason_;
  static bool made_;
  static std::vector<int32_t>* tokens_;
};

TempDir* PeftInterop::dir_ = nullptr;
std::string* PeftInterop::skip_reason_ = nullptr;
bool PeftInterop::made_ = false;
std::vector<int32_t>* PeftInterop::tokens_ = nullptr;

// Logits within `tol` of the largest reference logit; returns the relative difference.
double expect_logits_close(const std::string& what, const std::vector<float>& ours,
                           const SafetensorsFile& ref, double tol) {
  const std::vector<float> want = ref.read_f32("logits");
  EXPECT_EQ(want.size(), ours.size()) << what;
  if (want.size() != ours.size()) return 1;
  const double scale = std::max(1.0, max_abs(want.data(), want.size()));
  const double rel = max_abs_diff(ours.data(), want.data(), want.size()) / scale;
  EXPECT_LE(rel, tol) << what << ": logits differ by " << rel << " of the largest";
  return rel;
}

TEST_F(PeftInterop, TrainedAdaptersExportToPeft) {
  struct Case {
    std::string name, model;
    bool rslora;
    std::string cfg, peft;
    std::vector<float> logits;
    double loss = 0;
  };
  std::vector<Case> cases;
  for (const char* model : {"gpt2", "llama"})
    for (bool rslora : {false, true})
      cases.push_back({std::string(model) + (rslora ? "_rslora" : ""), model, rslora, "", "", {}, 0});
  std::ostringstream jobs;
  jobs << "[";
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    std::tie(c.cfg, c.peft) = trained_export(c.name, c.model, c.rslora);
    ASSERT_TRUE(fs::exists(c.peft + "/adapter_config.json")) << c.name;
    const std::string ckpt = *dir_ / ("run-" + c.name + "/checkpoints/ckpt-5.h5");
    c.logits = our_logits(c.cfg, c.peft);
    EXPECT_EQ(c.logits, our_logits(c.cfg, ckpt)) << c.name << ": the export and the checkpoint differ";
    c.loss = eval_loss(c.cfg, c.peft);
    jobs << (i ? "," : "") << eval_job(*dir_ / c.model, c.peft, *dir_ / (c.name + ".peft.out"))
         << "," << eval_job(*dir_ / c.model, "", *dir_ / (c.name + ".base.out"));
  }
  jobs << "]";
  write_text(*dir_ / "trained_jobs.json", jobs.str());
  ASSERT_EQ(run_reference("peft_eval", *dir_ / "trained_jobs.json"), 0);
  for (const Case& c : cases) {
    const SafetensorsFile ref(*dir_ / (c.name + ".peft.out"));
    const double rel = expect_logits_close(c.name, c.logits, ref, 1e-5);
    const double want = ref.read_f32("window_loss")[0];
    const double base = SafetensorsFile(*dir_ / (c.name + ".base.out")).read_f32("window_loss")[0];
    EXPECT_NEAR(c.loss, want, 1e-5 * want) << c.name;
    EXPECT_GT(std::fabs(want - base), 1e-3) << c.name << ": the adapter barely changes the loss";
    std::cout << c.name << ": PeftModel.from_pretrained on the export: logits max diff " << rel
              << " of the largest; eval loss " << c.loss << " vs PEFT " << want << " (base " << base
              << ")" << std::endl;
  }
}

TEST_F(PeftInterop, AdaptersPeftMadeImport) {
  std::ostringstream jobs;
  jobs << "[";
  std::vector<std::vector<float>> logits;
  std::vector<double> losses;
  for (size_t i = 0; i < peft_made().size(); ++i) {
    const PeftMade& p = peft_made()[i];
    const std::string dir = *dir_ / p.name;
    const std::string cfg = config(std::string("import-") + p.name, p.model, "");
    logits.push_back(our_logits(cfg, dir));
    losses.push_back(eval_loss(cfg, dir));
    // Our re-export of PEFT's adapter: the same tensors, and PEFT must compute the same from it.
    const Config c = load_config(cfg);
    const Adapter a = read_peft_adapter(dir, c.model.spec);
    const std::string again = *dir_ / (std::string(p.name) + "-again");
    write_peft_adapter(again, c.model.spec, a.lora, a.params.data(), a.base_model);
    const SafetensorsFile theirs(dir + "/adapter_model.safetensors"), ours(again + "/adapter_model.safetensors");
    EXPECT_EQ(theirs.tensors().size(), ours.tensors().size()) << p.name;
    for (const SafetensorsTensor& t : theirs.tensors()) {
      const SafetensorsTensor* o = ours.find(t.name);
      ASSERT_TRUE(o) << p.name << ": re-export lacks " << t.name;
      EXPECT_EQ(o->shape, t.shape) << t.name;
      EXPECT_EQ(ours.read_f32(t.name), theirs.read_f32(t.name)) << p.name << " " << t.name;
    }
    jobs << (i ? "," : "") << eval_job(*dir_ / p.model, dir, *dir_ / (std::string(p.name) + ".out")) << ","
         << eval_job(*dir_ / p.model, again, *dir_ / (std::string(p.name) + ".again.out"));
  }
  jobs << "," << eval_job(*dir_ / "llama", "", *dir_ / "llama.base.out") << ","
       << eval_job(*dir_ / "gpt2", "", *dir_ / "gpt2.base.out") << "]";
  write_text(*dir_ / "made_jobs.json", jobs.str());
  ASSERT_EQ(run_reference("peft_eval", *dir_ / "made_jobs.json"), 0);
  for (size_t i = 0; i < peft_made().size(); ++i) {
    const PeftMade& p = peft_made()[i];
    const SafetensorsFile ref(*dir_ / (std::string(p.name) + ".out"));
    const double rel = expect_logits_close(p.name, logits[i], ref, 1e-5);
    const double want = ref.read_f32("window_loss")[0];
    EXPECT_NEAR(losses[i], want, 1e-5 * want) << p.name;
    const double again = SafetensorsFile(*dir_ / (std::string(p.name) + ".again.out")).read_f32("window_loss")[0];
    EXPECT_NEAR(again, want, 1e-6 * want) << p.name << ": PEFT computes otherwise from our re-export";
    if (std::string(p.model) != "llama_bf16") {
      const double base = SafetensorsFile(*dir_ / (std::string(p.model) + ".base.out")).read_f32("window_loss")[0];
      EXPECT_GT(std::fabs(want - base), 1e-3) << p.name << ": the adapter barely changes the loss";
    }
    std::cout << p.name << " (made by PEFT, " << p.dtype << "): logits max diff " << rel
              << " of the largest; eval loss " << losses[i] << " vs PEFT " << want << std::endl;
  }
  // The rank pattern arrived: per-module ranks where PEFT's rules say.
  const Config c = load_config(*dir_ / "import-llama_regex_patterns.yaml");
  const Adapter a = read_peft_adapter(*dir_ / "llama_regex_patterns", c.model.spec);
  EXPECT_EQ(a.lora.targets, (std::vector<LoraTarget>{LoraTarget::kK, LoraTarget::kAttnProj,
                                                     LoraTarget::kGate, LoraTarget::kMlpProj}));
  EXPECT_EQ(a.lora.rank_of("model.layers.0.self_attn.k_proj"), 2);
  EXPECT_EQ(a.lora.rank_of("model.layers.1.mlp.down_proj"), 3);
  EXPECT_EQ(a.lora.rank_of("model.layers.0.mlp.down_proj"), 4);
  EXPECT_EQ(a.lora.alpha_of("model.layers.1.self_attn.o_proj"), 3.0f);
  EXPECT_TRUE(a.lora.rslora);
}

TEST_F(PeftInterop, MergedDirectoriesLoadInTransformers) {
  struct Case {
    const char* name;
    const char* model;
    const char* adapter;
    double tol;
  };
  const std::vector<Case> cases = {
      {"gpt2", "gpt2", "gpt2_regex_patterns", 1e-4},
      {"llama", "llama", "llama_regex_patterns", 1e-4},
      {"llama_trained_export", "llama", "export-llama_rslora", 1e-4},
      {"llama_bf16_sharded", "llama_bf16", "llama_bf16base", 2e-2},
  };
  std::ostringstream jobs;
  jobs << "[";
  trained_export("llama_rslora", "llama", true);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string adapter = *dir_ / c.adapter;
    ASSERT_TRUE(fs::exists(adapter + "/adapter_config.json")) << adapter;
    const std::string cfg = config(std::string("merge-") + c.name, c.model, "");
    const std::string out = *dir_ / (std::string("merged-") + c.name);
    const Output m = run_lora("merge " + cfg + " --adapter " + adapter + " --out " + out);
    ASSERT_EQ(m.exit_code, 0) << m.text;
    EXPECT_EQ(read_text(out + "/config.json"), read_text(*dir_ / c.model + "/config.json")) << c.name;
    // The base's files, shards and dtypes.
    std::vector<std::string> base_files, out_files;
    for (const auto& e : fs::directory_iterator(*dir_ / c.model)) base_files.push_back(e.path().filename());
    for (const auto& e : fs::directory_iterator(out)) out_files.push_back(e.path().filename());
    std::sort(base_files.begin(), base_files.end());
    std::sort(out_files.begin(), out_files.end());
    EXPECT_EQ(out_files, base_files) << c.name;
    for (const std::string& f : base_files) {
      if (!f.ends_with(".safetensors")) continue;
      const SafetensorsFile a(*dir_ / c.model + "/" + f), b(out + "/" + f);
      ASSERT_EQ(a.tensors().size(), b.tensors().size()) << f;
      for (const SafetensorsTensor& t : a.tensors()) {
        const SafetensorsTensor* u = b.find(t.name);
        ASSERT_TRUE(u) << f << " " << t.name;
        EXPECT_EQ(u->dtype, t.dtype) << t.name;
        EXPECT_EQ(u->shape, t.shape) << t.name;
      }
    }
    if (std::string(c.model) == "llama_bf16") {
      EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
      EXPECT_GT(base_files.size(), 4u) << "the bf16 base should be sharded";
    }
    jobs << (i ? "," : "") << eval_job(out, "", *dir_ / (std::string(c.name) + ".merged.out")) << ","
         << eval_job(*dir_ / c.model, adapter, *dir_ / (std::string(c.name) + ".adapted.out"));
  }
  jobs << "]";
  write_text(*dir_ / "merge_jobs.json", jobs.str());
  ASSERT_EQ(run_reference("peft_eval", *dir_ / "merge_jobs.json"), 0);
  for (const Case& c : cases) {
    const SafetensorsFile merged(*dir_ / (std::string(c.name) + ".merged.out"));
    const SafetensorsFile adapted(*dir_ / (std::string(c.name) + ".adapted.out"));
    const double rel = expect_logits_close(c.name, merged.read_f32("logits"), adapted, c.tol);
    std::cout << c.name << ": merged directory in transformers vs base + adapter in PEFT: logits max diff "
              << rel << " of the largest; loss " << merged.read_f32("window_loss")[0] << " vs "
              << adapted.read_f32("window_loss")[0] << std::endl;
  }
}

}  // namespace
}  // namespace lora
