// Hugging Face model directories (core/model/hf_model.h) without the reference libraries: a
// directory written here (config.json + safetensors, sharded through an index, F16/BF16) loads back
// bit for bit, and every kind of bad directory is an InputError naming the file and the tensor or
// key: missing or malformed config.json, unknown model_type, a variant we do not implement, a
// missing shard, an index naming a file that is not there, a missing tensor, a wrong shape or dtype,
// an unexpected tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/json.h"
#include "core/model/hf_model.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/common/input_error.h"
#include "tests/common/temp_dir.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

ModelSpec llama_sizes() {
  ModelSpec s;
  s.vocab_size = 40;
  s.max_seq_len = 32;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.d_model = 16;
  s.d_ff = 24;
  return family_spec("llama", s);
}

std::vector<float> random_params(const BaseLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.n_params());
  for (size_t i = 0; i < p.size(); ++i) p[i] = normal01(seed, 3, i);
  return p;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

template <typename Fn>
void expect_input_error(Fn&& fn, const std::vector<std::string>& parts) {
  const std::string what = testing::input_error_of(fn);
  for (const std::string& part : parts)
    EXPECT_NE(what.find(part), std::string::npos) << "missing '" << part << "' in: " << what;
}

// Writes `dir` as transformers would: config.json and the layout's tensors, split over
// `n_shards` files with an index when n_shards > 1, stored as `dtype` (F32, or F16/BF16 values
// that are exactly representable: the float32 values are rounded first).
void write_model_dir(const std::string& dir, const BaseLayout& layout, std::vector<float>& params,
                     int n_shards = 1, const std::string& dtype = "F32") {
  fs::create_directories(dir);
  write_text(dir + "/config.json", json::dump(hf_config_for(layout.spec())));
  if (dtype == "BF16") {
    for (float& v : params) {
      uint32_t u;
      std::memcpy(&u, &v, 4);
      u &= 0xFFFF0000u;
      std::memcpy(&v, &u, 4);
    }
  }
  std::vector<std::vector<uint16_t>> halves;
  const auto& tensors = layout.tensors();
  json::Value weight_map = json::Value::object();
  for (int s = 0; s < n_shards; ++s) {
    const std::string name = n_shards == 1 ? "model.safetensors"
                                           : "model-0000" + std::to_string(s + 1) + "-of-0000" +
                                                 std::to_string(n_shards) + ".safetensors";
    // Raw safetensors: header + data, so any dtype can be written.
    json::Value header = json::Value::object();
    std::string data;
    for (size_t i = s; i < tensors.size(); i += n_shards) {
      const TensorInfo& t = tensors[i];
      const float* p = params.data() + t.offset;
      std::string bytes;
      if (dtype == "F32") {
        bytes.assign(reinterpret_cast<const char*>(p), t.numel * 4);
      } else {
        for (size_t k = 0; k < t.numel; ++k) {
          uint32_t u;
          std::memcpy(&u, &p[k], 4);
          const uint16_t h = static_cast<uint16_t>(u >> 16);  // BF16 (exact after the rounding above)
          bytes.append(reinterpret_cast<const char*>(&h), 2);
        }
      }
      json::Value entry = json::Value::object();
      entry.set("dtype", dtype);
      json::Value shape = json::Value::array();
      for (int64_t d : t.shape) shape.push_back(d);
      entry.set("shape", shape);
      json::Value offsets = json::Value::array();
      offsets.push_back(static_cast<int64_t>(data.size()));
      offsets.push_back(static_cast<int64_t>(data.size() + bytes.size()));
      entry.set("data_offsets", offsets);
      header.set(t.name, entry);
      data += bytes;
      weight_map.set(t.name, name);
    }
    std::string text = json::dump(header);
    while (text.size() % 8) text += ' ';
    std::ofstream out(dir + "/" + name, std::ios::binary);
    const uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << text << data;
  }
  if (n_shards > 1) {
    json::Value index = json::Value::object();
    index.set("metadata", json::Value::object());
    index.set("weight_map", weight_map);
    write_text(dir + "/model.safetensors.index.json", json::dump(index));
  }
}

std::vector<float> load(const std::string& dir) {
  const HfModelDir d = read_hf_model_dir(dir);
  const BaseLayout layout(d.spec);
  std::vector<float> out(layout.n_params(), std::nanf(""));
  load_base_weights(d.weight_files, layout, out.data());
  return out;
}

TEST(HfModelDir, ShardedBf16DirectoryLoadsBitForBit) {
  TempDir tmp;
  const BaseLayout layout(llama_sizes());
  std::vector<float> params = random_params(layout, 1);
  write_model_dir(tmp / "m", layout, params, 3, "BF16");
  const HfModelDir d = read_hf_model_dir(tmp / "m");
  EXPECT_EQ(d.weight_files.size(), 3u);
  EXPECT_EQ(describe_spec(d.spec), describe_spec(llama_sizes()));
  EXPECT_EQ(load(tmp / "m"), params);
}

TEST(HfModelDir, EveryFamilyRoundTripsThroughItsConfigJson) {
  for (const char* arch : {"gpt2", "llama", "qwen2", "mistral"}) {
    TempDir tmp;
    ModelSpec sizes = llama_sizes();
    if (std::string(arch) == "gpt2") sizes.n_kv_head = 0, sizes.d_ff = 0;
    ModelSpec spec = family_spec(arch, sizes);
    if (spec.arch == "llama") spec.rope_scaling.llama3 = true, spec.tied_embeddings = true;
    const BaseLayout layout(spec);
    std::vector<float> params = random_params(layout, 2);
    save_hf_model_dir(tmp / "m", layout, params.data(), hf_config_for(spec));
    EXPECT_EQ(describe_spec(read_hf_model_dir(tmp / "m").spec), describe_spec(spec)) << arch;
    EXPECT_EQ(spec_to_json(read_hf_model_dir(tmp / "m").spec), spec_to_json(spec)) << arch;
    EXPECT_EQ(load(tmp / "m"), params) << arch;
    EXPECT_FALSE(fs::exists(tmp / "m.tmp")) << arch;
  }
}

class BadDir : public ::testing::Test {
 protected:
  void SetUp() override {
    params_ = random_params(layout_, 3);
    write_model_dir(dir(), layout_, params_, 2);
  }
  std::string dir() const { return tmp_ / "m"; }
  void expect_load_error(const std::vector<std::string>& parts) {
    expect_input_error([&] { load(dir()); }, parts);
  }
  json::Value config() const {
    std::ifstream in(dir() + "/config.json");
    return json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
  }
  void set_config(const std::string& key, const json::Value& v) {
    json::Value c = config();
    c.set(key, v);
    write_text(dir() + "/config.json", json::dump(c));
  }

  TempDir tmp_;
  BaseLayout layout_{llama_sizes()};
  std::vector<float> params_;
};

TEST_F(BadDir, NotADirectory) {
  expect_input_error([&] { read_hf_model_dir(tmp_ / "nope"); },
                              {"model.path", "nope", "is not a directory"});
}

TEST_F(BadDir, MissingConfigJson) {
  fs::remove(dir() + "/config.json");
  expect_load_error({dir() + "/config.json", "missing"});
}

TEST_F(BadDir, MalformedConfigJson) {
  write_text(dir() + "/config.json", "{\"model_type\": \"llama\",");
  expect_load_error({dir() + "/config.json", "invalid JSON"});
  write_text(dir() + "/config.json", "[1, 2]");
  expect_load_error({dir() + "/config.json", "expected a JSON object"});
}

TEST_F(BadDir, UnknownOrMissingModelType) {
  set_config("model_type", "bert");
  expect_load_error({"config.json", "\"model_type\": \"bert\" is not supported",
                     "gpt2, llama, qwen2, mistral"});
  json::Value c = config();
  c.as_object().erase(std::remove_if(c.as_object().begin(), c.as_object().end(),
                                     [](const json::Member& m) { return m.first == "model_type"; }),
                      c.as_object().end());
  write_text(dir() + "/config.json", json::dump(c));
  expect_load_error({"config.json", "\"model_type\""});
}

TEST_F(BadDir, KeysOfTheWrongTypeOrRange) {
  set_config("hidden_size", "32");
  expect_load_error({"config.json", "\"hidden_size\": expected a positive integer, got \"32\""});
  set_config("hidden_size", 16);
  set_config("num_key_value_heads", 3);
  expect_load_error({"config.json", "n_kv_head: 3 does not divide model.n_head = 4"});
}

TEST_F(BadDir, VariantsWeDoNotImplementAreRefusedByName) {
  set_config("hidden_act", "gelu");
  expect_load_error({"config.json", "\"hidden_act\": \"gelu\" is not supported"});
  set_config("hidden_act", "silu");
  json::Value rs = json::Value::object();
  rs.set("rope_type", "yarn");
  rs.set("factor", 4.0);
  set_config("rope_scaling", rs);
  expect_load_error({"config.json", "rope_type \"yarn\" is not supported"});
}

TEST_F(BadDir, IndexNamingAMissingShard) {
  fs::remove(dir() + "/model-00002-of-00002.safetensors");
  expect_load_error({"model.safetensors.index.json", "model-00002-of-00002.safetensors",
                     "does not exist"});
}

TEST_F(BadDir, NoWeights) {
  fs::remove(dir() + "/model.safetensors.index.json");
  expect_load_error({dir(), "no model.safetensors or model.safetensors.index.json"});
}

TEST_F(BadDir, MissingTensorNamesIt) {
  // Rewrite without one tensor: a layout with one layer fewer misses layer 1 entirely.
  ModelSpec one = llama_sizes();
  one.n_layer = 1;
  const BaseLayout one_layer(one);
  std::vector<float> p = random_params(one_layer, 4);
  fs::remove_all(dir());
  write_model_dir(dir(), one_layer, p, 1);
  set_config("num_hidden_layers", 2);
  expect_load_error({"missing tensor 'model.layers.1.input_layernorm.weight'", "expected shape [16]"});
}

TEST_F(BadDir, WrongShapeOrDtypeNamesFileAndTensor) {
  ModelSpec wider = llama_sizes();
  wider.d_ff = 32;
  const BaseLayout wide(wider);
  std::vector<float> p = random_params(wide, 5);
  fs::remove_all(dir());
  write_model_dir(dir(), wide, p, 1);
  set_config("intermediate_size", 24);
  expect_load_error({"model.safetensors", "tensor 'model.layers.0.mlp.gate_proj.weight'",
                     "expected shape [24, 16], got [32, 16]"});
  // An I32 tensor where a float one belongs.
  fs::remove_all(dir());
  write_model_dir(dir(), layout_, params_, 1);
  const std::string file = dir() + "/model.safetensors";
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string from = "{\"dtype\":\"F32\",\"shape\":[16]";
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, from.size(), "{\"dtype\":\"I32\",\"shape\":[16]");
  std::ofstream(file, std::ios::binary) << bytes;
  expect_load_error({file, "dtype I32 is not supported (expected F32, F16 or BF16)"});
}

TEST_F(BadDir, UnexpectedTensorIsNamed) {
  std::vector<SafetensorsWriteTensor> tensors;
  for (const TensorInfo& t : layout_.tensors())
    tensors.push_back({t.name, t.shape, params_.data() + t.offset});
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}, params_.data()});  // ignored
  tensors.push_back({"model.layers.0.self_attn.q_norm.weight", {4}, params_.data()});       // not ours
  fs::remove(dir() + "/model.safetensors.index.json");
  for (const auto& e : fs::directory_iterator(dir()))
    if (e.path().extension() == ".safetensors") fs::remove(e.path());
  write_safetensors(dir() + "/model.safetensors", tensors);
  expect_load_error({"model.safetensors", "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'"});
}

}  // namespace
}  // namespace lora
