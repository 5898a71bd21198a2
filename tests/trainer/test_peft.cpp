// PEFT adapter directories without Python (the comparison with PEFT itself is
// tests/reference/test_peft_interop.cpp): export then import is bit-exact for GPT-2 and a Llama
// with grouped-query attention, rsLoRA off and on, per-module ranks and alphas; the written
// adapter_config.json and tensor names and shapes are PEFT's; BF16/F16 tensors import rounded as
// stored; every malformed or unsupported adapter directory is refused naming the field or tensor;
// a config contradicting the adapter names both values; checkpoints keep per-module ranks; merged
// weights compute what base + adapters compute; eval's windows cover every token once.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "comm/communicator.h"
#include "core/json.h"
#include "core/model/merge.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/common/input_error.h"
#include "tests/common/temp_dir.h"
#include "trainer/checkpoint.h"
#include "trainer/data.h"
#include "trainer/peft.h"
#include "trainer/trainer.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::input_error_of;
using testing::TempDir;

ModelSpec gpt2_spec() {
  ModelSpec s;
  s.vocab_size = 61;
  s.max_seq_len = 32;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 16;
  return family_spec("gpt2", s);
}

ModelSpec llama_spec() {
  ModelSpec s;
  s.vocab_size = 61;
  s.max_seq_len = 32;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.d_model = 16;
  s.d_ff = 24;
  return family_spec("llama", s);
}

void fill(std::vector<float>& v, size_t n, uint64_t seed, float scale = 0.5f) {
  v.resize(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * normal01(seed, 0, i);
}

CheckpointState adapter_state(const ModelSpec& spec, const LoraSpec& lora, uint64_t seed = 1) {
  CheckpointState s;
  s.step = 5;
  s.spec = spec;
  s.mode = TrainMode::kLora;
  s.lora = lora;
  s.base_fingerprint = "0123456789abcdef";
  s.config_yaml = "model: {path: \"/models/base-dir\"}\n";
  const size_t n = checkpoint_param_count(s);
  fill(s.params, n, seed);
  s.adam_m.assign(n, 0.0f);
  s.adam_v.assign(n, 0.0f);
  return s;
}

LoraSpec lora_of(const ModelSpec& spec, std::vector<LoraTarget> targets, bool rslora = false) {
  LoraSpec l;
  l.rank = 4;
  l.alpha = 8.0f;
  l.rslora = rslora;
  l.targets = std::move(targets);
  (void)spec;
  return l;
}

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

json::Value read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

void write_json(const std::string& path, const json::Value& v) {
  std::ofstream(path, std::ios::trunc) << json::dump(v);
}

void erase(json::Value& obj, const std::string& key) {
  json::Object& o = obj.as_object();
  o.erase(std::remove_if(o.begin(), o.end(), [&](const json::Member& m) { return m.first == key; }),
          o.end());
}

std::vector<std::string> strings_of(const json::Value& v) {
  std::vector<std::string> out;
  for (const json::Value& s : v.as_array()) out.push_back(s.as_string());
  return out;
}

TEST(Peft, ExportThenImportIsBitExact) {
  struct Case {
    const char* name;
    ModelSpec spec;
    LoraSpec lora;
  };
  const ModelSpec g = gpt2_spec(), l = llama_spec();
  std::vector<Case> cases = {
      {"gpt2 default targets", g, lora_of(g, {LoraTarget::kAttnQkv, LoraTarget::kAttnProj})},
      {"gpt2 all-linear rslora", g, lora_of(g, family_targets(g), true)},
      {"gpt2 mlp.c_proj alone", g, lora_of(g, {LoraTarget::kMlpProj})},
      {"llama gqa all-linear", l, lora_of(l, family_targets(l))},
      {"llama gqa q,v rslora", l, lora_of(l, {LoraTarget::kQ, LoraTarget::kV}, true)},
  };
  Case per_module{"llama per-module ranks", l, lora_of(l, family_targets(l), true)};
  per_module.lora.module_settings["model.layers.0.self_attn.q_proj"] = {2, 8.0f};
  per_module.lora.module_settings["model.layers.1.mlp.down_proj"] = {3, 5.5f};
  per_module.lora.module_settings["model.layers.1.self_attn.k_proj"] = {4, 2.0f};  // alpha only
  cases.push_back(per_module);
  Case gpt2_module{"gpt2 per-module", g, lora_of(g, family_targets(g))};
  gpt2_module.lora.module_settings["h.1.mlp.c_fc"] = {6, 12.0f};
  cases.push_back(gpt2_module);

  for (const Case& c : cases) {
    TempDir dir("lora_peft");
    const CheckpointState s = adapter_state(c.spec, c.lora);
    write_checkpoint(dir / "ckpt.h5", s);
    export_peft(dir / "ckpt.h5", dir / "out");
    const Adapter a = read_peft_adapter(dir / "out", c.spec);
    EXPECT_TRUE(a.peft);
    EXPECT_EQ(a.lora.rank, c.lora.rank) << c.name;
    EXPECT_EQ(a.lora.alpha, c.lora.alpha) << c.name;
    EXPECT_EQ(a.lora.rslora, c.lora.rslora) << c.name;
    std::vector<LoraTarget> want;
    for (LoraTarget t : family_targets(c.spec))
      if (c.lora.has_target(t)) want.push_back(t);
    EXPECT_EQ(a.lora.targets, want) << c.name;
    EXPECT_EQ(a.lora.module_settings, c.lora.module_settings) << c.name;
    EXPECT_TRUE(bits_equal(a.params, s.params)) << c.name << ": imported parameters differ";
    EXPECT_EQ(a.base_model, "/models/base-dir") << c.name;
    // The checkpoint read as an adapter gives the same.
    const Adapter b = read_adapter(dir / "ckpt.h5", c.spec, "--adapter");
    EXPECT_FALSE(b.peft);
    EXPECT_EQ(b.lora.module_settings, c.lora.module_settings) << c.name;
    EXPECT_TRUE(bits_equal(b.params, s.params)) << c.name;
  }
}

TEST(Peft, CheckpointsKeepPerModuleRanksAndAlphas) {
  TempDir dir("lora_peft");
  LoraSpec l = lora_of(llama_spec(), family_targets(llama_spec()));
  l.module_settings["model.layers.1.self_attn.v_proj"] = {2, 3.0f};
  const CheckpointState s = adapter_state(llama_spec(), l);
  write_checkpoint(dir / "c.h5", s);
  const CheckpointState r = read_checkpoint(dir / "c.h5");
  EXPECT_EQ(r.lora.module_settings, l.module_settings);
  EXPECT_TRUE(bits_equal(r.params, s.params));
  const LoraLayout layout(r.spec, r.lora);
  const LoraModule* v = layout.find("model.layers.1.self_attn.v_proj");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->rank, 2);
  EXPECT_FLOAT_EQ(v->scaling, 1.5f);
  EXPECT_NE(describe_checkpoint(dir / "c.h5").find("model.layers.1.self_attn.v_proj: rank=2"),
            std::string::npos);
}

TEST(Peft, ExportedFilesArePeftsLayout) {
  TempDir dir("lora_peft");
  const ModelSpec g = gpt2_spec();
  LoraSpec lora = lora_of(g, {LoraTarget::kAttnQkv, LoraTarget::kAttnProj});
  lora.alpha = 16.0f;
  lora.dropout = 0.05f;
  write_checkpoint(dir / "g.h5", adapter_state(g, lora));
  export_peft(dir / "g.h5", dir / "g");
  const json::Value c = read_json(dir / "g/adapter_config.json");
  EXPECT_EQ(c.find("peft_type")->as_string(), "LORA");
  EXPECT_EQ(c.find("task_type")->as_string(), "CAUSAL_LM");
  EXPECT_EQ(c.find("r")->as_int64(), 4);
  EXPECT_TRUE(c.find("lora_alpha")->is_integer());
  EXPECT_EQ(c.find("lora_alpha")->as_int64(), 16);
  EXPECT_DOUBLE_EQ(c.find("lora_dropout")->as_double(), 0.05);
  EXPECT_FALSE(c.find("use_rslora")->as_bool());
  EXPECT_TRUE(c.find("fan_in_fan_out")->as_bool());  // GPT-2's Conv1D
  EXPECT_EQ(c.find("bias")->as_string(), "none");
  EXPECT_FALSE(c.find("use_dora")->as_bool());
  EXPECT_EQ(c.find("base_model_name_or_path")->as_string(), "/models/base-dir");
  // "c_proj" alone would also select mlp.c_proj.
  EXPECT_EQ(strings_of(*c.find("target_modules")), (std::vector<std::string>{"attn.c_proj", "c_attn"}));
  const SafetensorsFile f(dir / "g/adapter_model.safetensors");
  EXPECT_EQ(f.tensors().size(), 2u * 2u * 2u);  // 2 layers x 2 modules x (A, B)
  const SafetensorsTensor* a = f.find("base_model.model.transformer.h.1.attn.c_attn.lora_A.weight");
  const SafetensorsTensor* b = f.find("base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 16}));   // [r, d_in]
  EXPECT_EQ(b->shape, (std::vector<int64_t>{48, 4}));  // [d_out, r], d_out = 3 d_model
  EXPECT_EQ(a->dtype, "F32");
  EXPECT_EQ(f.metadata().at("format"), "pt");

  // Both projections: "c_proj" names them together, as PEFT's all-linear does.
  write_checkpoint(dir / "all.h5", adapter_state(g, lora_of(g, family_targets(g))));
  export_peft(dir / "all.h5", dir / "all");
  EXPECT_EQ(strings_of(*read_json(dir / "all/adapter_config.json").find("target_modules")),
            (std::vector<std::string>{"c_attn", "c_fc", "c_proj"}));

  // Llama: nn.Linear, no prefix, per-module ranks as rank_pattern/alpha_pattern.
  const ModelSpec l = llama_spec();
  LoraSpec ll = lora_of(l, {LoraTarget::kQ, LoraTarget::kV});
  ll.module_settings["model.layers.1.self_attn.q_proj"] = {2, 6.0f};
  write_checkpoint(dir / "l.h5", adapter_state(l, ll));
  export_peft(dir / "l.h5", dir / "l");
  const json::Value lc = read_json(dir / "l/adapter_config.json");
  EXPECT_FALSE(lc.find("fan_in_fan_out")->as_bool());
  EXPECT_EQ(strings_of(*lc.find("target_modules")), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(json::dump(*lc.find("rank_pattern")), R"({"layers\\.1\\.self_attn\\.q_proj":2})");
  EXPECT_EQ(json::dump(*lc.find("alpha_pattern")), R"({"layers\\.1\\.self_attn\\.q_proj":6})");
  const SafetensorsFile lf(dir / "l/adapter_model.safetensors");
  ASSERT_TRUE(lf.find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"));
  EXPECT_EQ(lf.find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")->shape,
            (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(lf.find("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")->shape,
            (std::vector<int64_t>{8, 4}));  // d_out = n_kv_head * head_dim = 2 * 4
}

TEST(Peft, ExportRefusesWhatPeftCannotExpress) {
  TempDir dir("lora_peft");
  CheckpointState full;
  full.spec = gpt2_spec();
  full.mode = TrainMode::kFull;
  full.config_yaml = "train: {mode: full}\n";
  const size_t n = checkpoint_param_count(full);
  fill(full.params, n, 3);
  full.adam_m.assign(n, 0.0f);
  full.adam_v.assign(n, 0.0f);
  write_checkpoint(dir / "full.h5", full);
  EXPECT_NE(input_error_of([&] { export_peft(dir / "full.h5", dir / "x"); }).find("full-mode checkpoint"),
            std::string::npos);
  CheckpointState nan = adapter_state(gpt2_spec(), lora_of(gpt2_spec(), {LoraTarget::kAttnQkv}));
  nan.params[7] = std::nanf("");
  write_checkpoint(dir / "nan.h5", nan);
  const std::string msg = input_error_of([&] { export_peft(dir / "nan.h5", dir / "y"); });
  EXPECT_NE(msg.find("h.0.attn.c_attn/A"), std::string::npos) << msg;
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "x") || fs::exists(dir / "y"));
  // An output path holding something else is never replaced.
  write_checkpoint(dir / "ok.h5", adapter_state(gpt2_spec(), lora_of(gpt2_spec(), {LoraTarget::kAttnQkv})));
  fs::create_directories(dir / "precious");
  std::ofstream(dir / "precious/notes.txt") << "keep me";
  EXPECT_NE(input_error_of([&] { export_peft(dir / "ok.h5", dir / "precious"); })
                .find("is not a PEFT adapter directory"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "precious/notes.txt"));
  // An existing adapter directory is replaced, and nothing is left beside it.
  export_peft(dir / "ok.h5", dir / "adapter");
  export_peft(dir / "ok.h5", dir / "adapter/");
  EXPECT_TRUE(fs::exists(dir / "adapter/adapter_config.json"));
  EXPECT_FALSE(fs::exists(dir / "adapter.tmp") || fs::exists(dir / "adapter.old"));
}

// A valid PEFT directory for the Llama spec, then one change per case.
class BadAdapter : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_ = llama_spec();
    LoraSpec l = lora_of(spec_, {LoraTarget::kQ, LoraTarget::kV});
    state_ = adapter_state(spec_, l);
    write_checkpoint(dir_ / "c.h5", state_);
  }
  // A fresh copy of the exported directory.
  std::string fresh(const std::string& name) {
    const std::string d = dir_ / name;
    export_peft(dir_ / "c.h5", d);
    return d;
  }
  std::string config_error(const std::string& name, const std::function<void(json::Value&)>& edit) {
    const std::string d = fresh(name);
    json::Value c = read_json(d + "/adapter_config.json");
    edit(c);
    write_json(d + "/adapter_config.json", c);
    return input_error_of([&] { read_peft_adapter(d, spec_); });
  }
  // Rewrites adapter_model.safetensors with the tensors `edit` leaves.
  std::string tensor_error(const std::string& name,
                           const std::function<void(std::vector<SafetensorsWriteTensor>&)>& edit) {
    const std::string d = fresh(name);
    const SafetensorsFile f(d + "/adapter_model.safetensors");
    std::vector<std::vector<float>> data;
    data.reserve(f.tensors().size() + 4);
    std::vector<SafetensorsWriteTensor> ts;
    for (const SafetensorsTensor& t : f.tensors()) {
      data.push_back(f.read_f32(t.name));
      ts.push_back({t.name, t.shape, data.back().data()});
    }
    edit(ts);
    write_safetensors(d + "/adapter_model.safetensors", ts, {{"format", "pt"}});
    return input_error_of([&] { read_peft_adapter(d, spec_); });
  }
  TempDir dir_{"lora_peft_bad"};
  ModelSpec spec_;
  CheckpointState state_;
};

void expect_has(const std::string& msg, const std::vector<std::string>& parts, const char* what) {
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << what << ": " << msg;
}

TEST_F(BadAdapter, ConfigFieldsAreNamed) {
  struct Case {
    const char* name;
    std::function<void(json::Value&)> edit;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"ia3", [](json::Value& c) { c.set("peft_type", "IA3"); }, {"\"peft_type\"", "IA3", "LORA"}},
      {"no type", [](json::Value& c) { erase(c, "peft_type"); }, {"\"peft_type\"", "missing"}},
      {"seq cls", [](json::Value& c) { c.set("task_type", "SEQ_CLS"); }, {"\"task_type\"", "SEQ_CLS"}},
      {"dora", [](json::Value& c) { c.set("use_dora", true); }, {"\"use_dora\"", "DoRA"}},
      {"lora_bias", [](json::Value& c) { c.set("lora_bias", true); }, {"\"lora_bias\""}},
      {"modules_to_save",
       [](json::Value& c) { c.set("modules_to_save", json::Array{json::Value("lm_head")}); },
       {"\"modules_to_save\"", "lm_head"}},
      {"bias all", [](json::Value& c) { c.set("bias", "all"); }, {"\"bias\"", "\"all\"", "none"}},
      {"layers_to_transform",
       [](json::Value& c) { c.set("layers_to_transform", json::Array{json::Value(0)}); },
       {"\"layers_to_transform\"", "subset of the layers"}},
      {"layer_replication",
       [](json::Value& c) { c.set("layer_replication", json::Array{json::Array{json::Value(0), json::Value(2)}}); },
       {"\"layer_replication\""}},
      {"loftq", [](json::Value& c) {
         json::Value q = json::Value::object();
         q.set("loftq_bits", 4);
         c.set("loftq_config", q);
       }, {"\"loftq_config\"", "LoftQ"}},
      {"pissa", [](json::Value& c) { c.set("init_lora_weights", "pissa"); },
       {"\"init_lora_weights\"", "pissa", "base weights"}},
      {"unknown field", [](json::Value& c) { c.set("use_magic", true); }, {"\"use_magic\"", "does not know"}},
      {"rank not integer", [](json::Value& c) { c.set("r", 2.5); }, {"\"r\"", "positive integer"}},
      {"alpha negative", [](json::Value& c) { c.set("lora_alpha", -1); }, {"\"lora_alpha\"", "> 0"}},
      {"rank_pattern value", [](json::Value& c) {
         json::Value p = json::Value::object();
         p.set("q_proj", "two");
         c.set("rank_pattern", p);
       }, {"\"rank_pattern\"", "q_proj", "positive integer rank"}},
      {"lm_head", [](json::Value& c) { c.set("target_modules", json::Array{json::Value("q_proj"), json::Value("lm_head")}); },
       {"\"target_modules\"", "lm_head"}},
      {"embeddings", [](json::Value& c) { c.set("target_modules", ".*(q_proj|embed_tokens)"); },
       {"\"target_modules\"", "model.embed_tokens"}},
      {"layer subset", [](json::Value& c) { c.set("target_modules", R"(.*layers\.1\.self_attn\.(q|v)_proj)"); },
       {"\"target_modules\"", "q_proj in layers [1] of 2", "subset of the layers"}},
      {"python regex", [](json::Value& c) { c.set("target_modules", "(?P<x>q_proj)"); },
       {"\"target_modules\"", "(?P<x>q_proj)", "regular expression"}},
      {"selects nothing", [](json::Value& c) { c.set("target_modules", json::Array{json::Value("c_attn")}); },
       {"\"target_modules\"", "selects no module"}},
      {"no targets", [](json::Value& c) { c.set("target_modules", json::Value()); }, {"\"target_modules\"", "missing"}},
      {"more targets than tensors",
       [](json::Value& c) { c.set("target_modules", json::Array{json::Value("q_proj"), json::Value("v_proj"), json::Value("k_proj")}); },
       {"missing tensor", "k_proj.lora_A.weight"}},
      {"rank mismatch", [](json::Value& c) { c.set("r", 2); }, {"lora_A.weight", "expected shape [2, 16]", "got [4, 16]"}},
      {"rank above d_out", [](json::Value& c) { c.set("r", 12); }, {"rank", "12"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    expect_has(config_error("cfg" + std::to_string(i), c.edit), c.expect, c.name);
  }
}

TEST_F(BadAdapter, FilesAndTensorsAreNamed) {
  {
    const std::string d = fresh("no-config");
    fs::remove(d + "/adapter_config.json");
    expect_has(input_error_of([&] { read_peft_adapter(d, spec_); }), {"no adapter_config.json"}, "no config");
  }
  {
    const std::string d = fresh("bin");
    fs::remove(d + "/adapter_model.safetensors");
    std::ofstream(d + "/adapter_model.bin") << "pickle";
    expect_has(input_error_of([&] { read_peft_adapter(d, spec_); }),
               {"adapter_model.safetensors: missing", "adapter_model.bin", "safe_serialization"}, "bin");
  }
  {
    const std::string d = fresh("bad-json");
    std::ofstream(d + "/adapter_config.json", std::ios::trunc) << "{\"r\": 4,";
    expect_has(input_error_of([&] { read_peft_adapter(d, spec_); }), {"adapter_config.json", "invalid JSON"},
               "bad json");
  }
  {
    const std::string d = fresh("garbage");
    std::ofstream(d + "/adapter_model.safetensors", std::ios::trunc) << "garbage";
    expect_has(input_error_of([&] { read_peft_adapter(d, spec_); }), {"adapter_model.safetensors"}, "garbage");
  }
  static std::vector<float> extra(16, 1.0f);
  expect_has(tensor_error("dora", [](auto& ts) {
               ts.push_back({"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", {16}, extra.data()});
             }),
             {"unexpected tensor", "lora_magnitude_vector", "DoRA"}, "dora tensor");
  expect_has(tensor_error("bias", [](auto& ts) {
               ts.push_back({"base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", {16}, extra.data()});
             }),
             {"unexpected tensor", "lora_B.bias", "a bias"}, "bias tensor");
  expect_has(tensor_error("missing", [](auto& ts) { ts.pop_back(); }), {"missing tensor", "lora_"}, "missing");
  expect_has(tensor_error("shape", [](auto& ts) { ts[0].shape = {16, 4}; }),
             {"expected shape [4, 16]", "got [16, 4]"}, "transposed");
  static std::vector<float> nan_data;
  expect_has(tensor_error("nan", [](auto& ts) {
               nan_data.assign(ts[1].data, ts[1].data + 64);
               nan_data[5] = std::numeric_limits<float>::infinity();
               ts[1].data = nan_data.data();
             }),
             {"NaN or infinity", "element 5"}, "non-finite");
  // An integer tensor: written by hand (our writer writes floats only).
  {
    const std::string d = fresh("int");
    const SafetensorsFile f(d + "/adapter_model.safetensors");
    std::string header = "{";
    size_t offset = 0;
    for (const SafetensorsTensor& t : f.tensors()) {
      const size_t bytes = t.numel() * 4;
      header += (offset ? "," : "") + std::string("\"") + t.name + "\":{\"dtype\":\"" +
                (t.name == f.tensors()[0].name ? "I32" : "F32") + "\",\"shape\":" +
                shape_string(t.shape) + ",\"data_offsets\":[" + std::to_string(offset) + "," +
                std::to_string(offset + bytes) + "]}";
      offset += bytes;
    }
    header += "}";
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
    bytes += header + std::string(offset, '\0');
    std::ofstream(d + "/adapter_model.safetensors", std::ios::trunc | std::ios::binary) << bytes;
    expect_has(input_error_of([&] { read_peft_adapter(d, spec_); }), {"dtype I32", f.tensors()[0].name},
               "int tensor");
  }
}

TEST_F(BadAdapter, HalfPrecisionTensorsImportAsStored) {
  for (const char* dtype : {"BF16", "F16"}) {
    const std::string d = fresh(dtype);
    const SafetensorsFile f(d + "/adapter_model.safetensors");
    std::vector<std::vector<float>> data;
    data.reserve(f.tensors().size());
    std::vector<SafetensorsWriteTensor> ts;
    for (const SafetensorsTensor& t : f.tensors()) {
      data.push_back(f.read_f32(t.name));
      ts.push_back({t.name, t.shape, data.back().data(), dtype});
    }
    write_safetensors(d + "/adapter_model.safetensors", ts);
    const Adapter a = read_peft_adapter(d, spec_);
    ASSERT_EQ(a.params.size(), state_.params.size());
    const bool bf16 = std::string(dtype) == "BF16";
    double worst = 0;
    size_t not_as_rounded = 0;
    for (size_t i = 0; i < a.params.size(); ++i) {
      const float x = state_.params[i];
      worst = std::max(worst, std::fabs(double(a.params[i]) - double(x)) / std::max(1e-3, std::fabs(double(x))));
      if (bf16) {  // bfloat16 is the top half of a float32: the imported value is exactly that
        const uint32_t bits = static_cast<uint32_t>(float_to_bfloat16_bits(x)) << 16;
        float stored;
        std::memcpy(&stored, &bits, 4);
        not_as_rounded += stored != a.params[i];
      }
    }
    EXPECT_EQ(not_as_rounded, 0u) << dtype;
    EXPECT_LT(worst, std::string(dtype) == "F16" ? 1e-3 : 8e-3) << dtype;
    EXPECT_GT(worst, 0.0) << dtype << ": values were not rounded, so the file was not " << dtype;
  }
}

TEST_F(BadAdapter, PeftMatchingRules) {
  // A regular expression for target_modules (re.fullmatch) and per-module rank/alpha patterns,
  // first matching key wins, rank_pattern's keys before alpha_pattern's.
  LoraSpec l = lora_of(spec_, {LoraTarget::kQ, LoraTarget::kV});
  l.module_settings["model.layers.0.self_attn.q_proj"] = {2, 8.0f};
  l.module_settings["model.layers.1.self_attn.v_proj"] = {4, 3.0f};
  write_checkpoint(dir_ / "m.h5", adapter_state(spec_, l));
  const std::string d = dir_ / "m";
  export_peft(dir_ / "m.h5", d);
  json::Value c = read_json(d + "/adapter_config.json");
  c.set("target_modules", R"(model\.layers\.\d+\.self_attn\.(q|v)_proj)");
  json::Value rank = json::Value::object();
  rank.set(R"(layers\.0\.self_attn\.q_proj)", 2);
  json::Value alpha = json::Value::object();
  alpha.set(R"(1\.self_attn\.v_proj)", 3);
  c.set("rank_pattern", rank);
  c.set("alpha_pattern", alpha);
  write_json(d + "/adapter_config.json", c);
  const Adapter a = read_peft_adapter(d, spec_);
  EXPECT_EQ(a.lora.targets, (std::vector<LoraTarget>{LoraTarget::kQ, LoraTarget::kV}));
  EXPECT_EQ(a.lora.module_settings, l.module_settings);
  // A plain-name list matches by suffix; "self_attn.q_proj" is a suffix too.
  c.set("target_modules", json::Array{json::Value("self_attn.q_proj"), json::Value("v_proj")});
  write_json(d + "/adapter_config.json", c);
  EXPECT_EQ(read_peft_adapter(d, spec_).lora.targets, (std::vector<LoraTarget>{LoraTarget::kQ, LoraTarget::kV}));
  // A module matching a rank_pattern key and another alpha_pattern key: PEFT 0.13 takes its alpha
  // from the rank key (the default here), later versions from the alpha key (40): ambiguous.
  json::Value rank2 = json::Value::object();
  rank2.set("q_proj", 2);
  json::Value alpha2 = json::Value::object();
  alpha2.set(R"(layers\.1\.self_attn\.q_proj)", 40);
  c.set("rank_pattern", rank2);
  c.set("alpha_pattern", alpha2);
  write_json(d + "/adapter_config.json", c);
  std::string msg = input_error_of([&] { read_peft_adapter(d, spec_); });
  expect_has(msg, {"\"alpha_pattern\"", "model.layers.1.self_attn.q_proj", "rank 2 and alpha 8",
                   "rank 2 and alpha 40", "ambiguous"}, "ambiguous patterns");
  // Without the alpha key both rules agree: every q_proj has rank 2, and layer 1's tensors (rank 4)
  // no longer fit.
  c.set("alpha_pattern", json::Value::object());
  write_json(d + "/adapter_config.json", c);
  msg = input_error_of([&] { read_peft_adapter(d, spec_); });
  EXPECT_NE(msg.find("model.layers.1.self_attn.q_proj.lora_A.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected shape [2, 16]"), std::string::npos) << msg;
}

TEST(Peft, ConfigContradictionsNameBothValues) {
  TempDir dir("lora_peft");
  const std::string yaml =
      "model: {arch: llama, vocab_size: 61, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 16, "
      "d_ff: 24, max_seq_len: 32}\n"
      "data: {train: " + (dir / "t.bin") + ", format: tokens, seq_len: 8}\n";
  std::vector<uint16_t> tokens(100, 3);
  write_token_shard(dir / "t.bin", tokens);
  Adapter a;
  a.path = "/adapters/x";
  a.lora = lora_of(llama_spec(), {LoraTarget::kQ, LoraTarget::kK});
  a.lora.rank = 6;
  a.lora.alpha = 3.0f;
  a.lora.rslora = true;
  // A config that does not state them takes the adapter's settings.
  const Config plain = parse_config(yaml, dir / "c.yaml");
  const Config eff = config_for_adapter(plain, a, "--adapter");
  EXPECT_EQ(eff.lora.rank, 6);
  EXPECT_EQ(eff.lora.alpha, 3.0f);
  EXPECT_TRUE(eff.lora.rslora);
  EXPECT_EQ(eff.lora.targets, a.lora.targets);
  EXPECT_NE(eff.resolved_yaml.find("rank: 6"), std::string::npos) << eff.resolved_yaml;
  // Restating them is fine; contradicting them names both values.
  EXPECT_NO_THROW(config_for_adapter(parse_config(yaml, dir / "c.yaml", {"lora.rank=6", "lora.targets=[k_proj,q_proj]"}), a, "--adapter"));
  struct Case {
    const char* set;
    std::vector<std::string> expect;
  };
  for (const Case& c : std::vector<Case>{
           {"lora.rank=8", {"lora.rank", "gives 8", "has 6", "/adapters/x"}},
           {"lora.alpha=16", {"lora.alpha", "gives 16", "has 3"}},
           {"lora.rslora=false", {"lora.rslora", "gives false", "has true"}},
           {"lora.targets=[q_proj,v_proj]", {"lora.targets", "[q_proj,v_proj]", "[q_proj,k_proj]"}},
       }) {
    const Config cfg = parse_config(yaml, dir / "c.yaml", {c.set});
    expect_has(input_error_of([&] { config_for_adapter(cfg, a, "--adapter"); }), c.expect, c.set);
  }
  // lora.init_from: resolved against the config's directory; a missing path names the key and line.
  fs::create_directories(dir / "adapters/x");
  const Config from = parse_config(yaml + "lora: {init_from: adapters/x}\n", dir / "c.yaml");
  EXPECT_EQ(from.lora_init_from, dir / "adapters/x");
  expect_has(input_error_of([&] { parse_config(yaml + "lora: {init_from: adapters/y}\n", dir / "c.yaml"); }),
             {"c.yaml:3", "lora.init_from", "adapters/y", "does not exist"}, "init_from missing");
  const Config full = parse_config(yaml, dir / "c.yaml", {"train.mode=full"});
  expect_has(input_error_of([&] { config_for_adapter(full, a, "--adapter"); }), {"train.mode", "full"}, "full");
  // A checkpoint of another model is refused naming both shapes.
  write_checkpoint(dir / "g.h5", adapter_state(gpt2_spec(), lora_of(gpt2_spec(), {LoraTarget::kAttnQkv})));
  expect_has(input_error_of([&] { read_adapter(dir / "g.h5", llama_spec(), "--adapter"); }),
             {"g.h5", "gpt2", "llama"}, "other model");
  expect_has(input_error_of([&] { read_adapter(dir / "none", llama_spec(), "lora.init_from"); }),
             {"lora.init_from", "does not exist"}, "missing");
}

// Base + adapters and the merged base compute the same logits.
TEST(Peft, MergedWeightsComputeTheAdaptedModel) {
  for (const ModelSpec& spec : {gpt2_spec(), llama_spec()}) {
    LoraSpec l = lora_of(spec, family_targets(spec), spec.is_gpt2());
    l.init_b = LoraInitB::kGaussian;
    l.module_settings[spec.is_gpt2() ? "h.1.attn.c_attn" : "model.layers.1.self_attn.k_proj"] = {2, 5.0f};
    TransformerModel adapted(spec, TrainMode::kLora, l);
    adapted.init_base_random(11);
    adapted.init_lora(12);
    const int B = 2, T = 12;
    std::vector<int32_t> tokens(B * T);
    for (int i = 0; i < B * T; ++i) tokens[i] = static_cast<int32_t>(hash_u64(5, i) % spec.vocab_size);
    adapted.forward(tokens.data(), nullptr, B, T);
    const std::vector<float> want(adapted.logits(), adapted.logits() + size_t(B) * T * spec.vocab_size);

    LoraSpec zero = l;
    zero.init_a = LoraInitA::kZeros;
    zero.init_b = LoraInitB::kZeros;
    TransformerModel base(spec, TrainMode::kLora, zero);
    base.init_base_random(11);
    base.init_lora(0);
    base.forward(tokens.data(), nullptr, B, T);
    double moved = 0;
    for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, std::fabs(double(base.logits()[i]) - want[i]));
    EXPECT_GT(moved, 0.05) << spec.arch << ": the adapters should change the logits";

    merge_lora_into_base(base.base_layout(), base.base_params(), adapted.lora_layout()[0],
                         adapted.lora_params());
    base.forward(tokens.data(), nullptr, B, T);
    double scale = 0, diff = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::fabs(double(want[i])));
      diff = std::max(diff, std::fabs(double(base.logits()[i]) - want[i]));
    }
    EXPECT_LE(diff, 1e-5 * scale) << spec.arch << ": merged logits differ by " << diff;
  }
}

TEST(Peft, EvalWindowsCoverEveryTokenOnce) {
  TempDir dir("lora_peft");
  const ModelSpec spec = llama_spec();
  const int T = 8;
  for (int n : {100, 97, 9}) {  // 99 targets: 12 full windows and one of 3; 96: 12 full; 8: one
    std::vector<uint16_t> tokens;
    for (int i = 0; i < n; ++i) tokens.push_back(static_cast<uint16_t>(hash_u64(9, i) % spec.vocab_size));
    write_token_shard(dir / "v.bin", tokens);
    const TokenStream val({dir / "v.bin"}, DataFormat::kTokens, spec.vocab_size, T);
    LoraSpec l = lora_of(spec, {LoraTarget::kQ});
    TransformerModel model(spec, TrainMode::kLora, l);
    model.init_base_random(3);
    model.init_lora(4);
    comm::LocalCommunicator comm;
    const WindowEval r = evaluate_windows(model, val, T, 5, 0, comm);
    EXPECT_EQ(r.tokens, n - 1);
    EXPECT_EQ(r.windows, (n - 1 + T - 1) / T);
    // The same sum, one window at a time, by hand.
    double sum = 0;
    for (int start = 0; start < n - 1; start += T) {
      const int len = std::min(T, n - 1 - start);
      std::vector<int32_t> x(tokens.begin() + start, tokens.begin() + start + len);
      std::vector<int32_t> y(tokens.begin() + start + 1, tokens.begin() + start + 1 + len);
      sum += double(model.forward(x.data(), y.data(), 1, len)) * len;
    }
    EXPECT_NEAR(r.loss, sum / (n - 1), 1e-6 * std::fabs(r.loss)) << n;
    const WindowEval again = evaluate_windows(model, val, T, 3, 0, comm);
    EXPECT_NEAR(again.loss, r.loss, 1e-6 * r.loss);  // batching does not change the result
    EXPECT_EQ(evaluate_windows(model, val, T, 5, 0, comm).loss, r.loss);  // deterministic
    if (n == 100) {
      const WindowEval two = evaluate_windows(model, val, T, 5, 2, comm);
      EXPECT_EQ(two.windows, 2);
      EXPECT_EQ(two.tokens, 2 * T);
    }
  }
}

}  // namespace
}  // namespace lora
