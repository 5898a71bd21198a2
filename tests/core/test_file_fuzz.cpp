// Random corruption of the files core/ reads (tests/common/file_fuzz.h): safetensors files (header
// parse and read_f32 of every float tensor), PEFT adapter directories (adapter_config.json through
// the JSON parser, adapter_model.safetensors through SafetensorsFile) and a JSON document with every
// kind of value. No case may crash, hang, allocate without bound or throw anything but an InputError
// naming the damaged file. LORA_FUZZ_CASES sets the cases per kind (default 300).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/crc64.h"
#include "core/error.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/common/file_fuzz.h"
#include "tests/common/temp_dir.h"

namespace lora {
namespace {

using testing::FuzzFile;
using testing::FuzzTally;

constexpr long kDefaultCases = 300;

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

std::vector<float> values(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = normal01(seed, 0, i);
  return v;
}

// Everything a reader takes from a safetensors file: the table, the metadata and, for every float
// tensor, a CRC of the float32 values read.
std::string safetensors_fingerprint(const std::string& path) {
  SafetensorsFile f(path);
  std::string out;
  for (const auto& [k, v] : f.metadata()) out += "meta " + k + "=" + v + "\n";
  for (const SafetensorsTensor& t : f.tensors()) {
    out += t.name + " " + t.dtype + " [";
    for (int64_t d : t.shape) out += std::to_string(d) + ",";
    out += "] " + std::to_string(t.begin) + ".." + std::to_string(t.end);
    if (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16") {
      std::vector<float> v(t.numel());
      f.read_f32(t, v.data());
      out += " crc " + std::to_string(crc64(v.data(), v.size() * sizeof(float)));
    }
    out += "\n";
  }
  return out;
}

// JSON text read from a file, its parse errors reported with the file's name as a caller does.
// Any other exception escapes unchanged, and the fuzz counts it as a failure.
json::Value parse_json_file(const std::string& path) {
  const std::string text = testing::read_file_bytes(path);
  try {
    return json::parse(text);
  } catch (const json::ParseError& e) {
    throw InputError(path + ": invalid JSON: " + e.what());
  }
}

void expect_no_failures(const FuzzTally& t) {
  EXPECT_EQ(t.n_crash, 0);
  EXPECT_EQ(t.n_hang, 0);
  EXPECT_EQ(t.n_other_error, 0);
  EXPECT_EQ(t.n_refused_unnamed, 0);
}

TEST(FileFuzz, SafetensorsWithEveryFloatDtype) {
  lora::testing::TempDir dir("lora_fuzz_st");
  // A hand-built file: F32, F16, BF16 and an I64 tensor (not readable as float: skipped), metadata.
  const std::vector<float> a = values(12, 1);
  std::string data(reinterpret_cast<const char*>(a.data()), 48);
  for (int i = 0; i < 5; ++i) data += u64_le(0x3C00 + 0x0111 * i).substr(0, 2);  // F16
  for (int i = 0; i < 6; ++i) data += u64_le(0x3F80 - 0x0203 * i).substr(0, 2);  // BF16
  data += u64_le(7) + u64_le(static_cast<uint64_t>(-3));                           // I64
  std::string header =
      R"({"__metadata__":{"format":"pt","note":"fuzz"},)"
      R"("w.f32":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},)"
      R"("w.f16":{"dtype":"F16","shape":[5],"data_offsets":[48,58]},)"
      R"("w.bf16":{"dtype":"BF16","shape":[2,3],"data_offsets":[58,70]},)"
      R"("steps":{"dtype":"I64","shape":[2],"data_offsets":[70,86]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string path = dir / "mixed.safetensors";
  const FuzzTally t = testing::fuzz_files("safetensors (F32/F16/BF16/I64)",
                                          {{path, u64_le(header.size()) + header + data}},
                                          testing::fuzz_cases(kDefaultCases),
                                          [&] { return safetensors_fingerprint(path); });
  expect_no_failures(t);
  EXPECT_GT(t.n_refused, 0);
}

TEST(FileFuzz, SafetensorsWrittenByUs) {
  lora::testing::TempDir dir("lora_fuzz_st");
  // Model-like: many small tensors, so the header is a good part of the file.
  std::vector<std::vector<float>> buffers;
  std::vector<SafetensorsWriteTensor> tensors;
  for (int layer = 0; layer < 3; ++layer) {
    for (const char* name : {"self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"}) {
      buffers.push_back(values(8 * 6, static_cast<uint64_t>(layer * 10 + buffers.size())));
      tensors.push_back({"model.layers." + std::to_string(layer) + "." + name + ".weight", {8, 6},
                         buffers.back().data()});
    }
  }
  buffers.push_back(values(16 * 8, 99));
  tensors.push_back({"model.embed_tokens.weight", {16, 8}, buffers.back().data()});
  const std::string path = dir / "model.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}});
  const FuzzTally t = testing::fuzz_files("safetensors written by write_safetensors",
                                          {{path, testing::read_file_bytes(path)}},
                                          testing::fuzz_cases(kDefaultCases),
                                          [&] { return safetensors_fingerprint(path); });
  expect_no_failures(t);
  // Its CRC covers every byte: every case is refused.
  EXPECT_EQ(t.n_refused, t.n_cases);
}

TEST(FileFuzz, PeftAdapterDirectory) {
  lora::testing::TempDir dir("lora_fuzz_peft");
  // The two files PEFT's save_pretrained writes, for rank 4 on c_attn of a 2-layer GPT-2.
  const std::string config_text = R"({
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "gpt2",
  "bias": "none",
  "fan_in_fan_out": true,
  "inference_mode": true,
  "init_lora_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "lora_alpha": 8,
  "lora_dropout": 0.05,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 4,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "c_attn"
  ],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
})";
  std::vector<std::vector<float>> buffers;
  std::vector<SafetensorsWriteTensor> tensors;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string m = "base_model.model.transformer.h." + std::to_string(layer) + ".attn.c_attn";
    buffers.push_back(values(4 * 16, static_cast<uint64_t>(2 * layer)));
    tensors.push_back({m + ".lora_A.weight", {4, 16}, buffers.back().data()});
    buffers.push_back(values(48 * 4, static_cast<uint64_t>(2 * layer + 1)));
    tensors.push_back({m + ".lora_B.weight", {48, 4}, buffers.back().data()});
  }
  const std::string config = dir / "adapter_config.json";
  const std::string model = dir / "adapter_model.safetensors";
  write_safetensors(model, tensors);
  const FuzzTally t = testing::fuzz_files(
      "PEFT directory (adapter_config.json, adapter_model.safetensors)",
      {{config, config_text}, {model, testing::read_file_bytes(model)}},
      testing::fuzz_cases(kDefaultCases), [&] {
        const json::Value v = parse_json_file(config);
        LORA_INPUT_CHECK(v.is_object(), config, ": expected a JSON object");
        const json::Value* r = v.find("r");
        LORA_INPUT_CHECK(r && r->is_integer() && r->as_int64() > 0, config, ": \"r\" must be a positive integer");
        const json::Value* alpha = v.find("lora_alpha");
        LORA_INPUT_CHECK(alpha && alpha->is_number(), config, ": \"lora_alpha\" must be a number");
        const json::Value* targets = v.find("target_modules");
        LORA_INPUT_CHECK(targets && (targets->is_array() || targets->is_string()), config,
                         ": \"target_modules\" must be a list or a string");
        return json::dump(v) + "\n" + safetensors_fingerprint(model);
      });
  expect_no_failures(t);
  EXPECT_GT(t.n_refused, 0);
}

TEST(FileFuzz, JsonDocumentWithEveryKindOfValue) {
  lora::testing::TempDir dir("lora_fuzz_json");
  const std::string text = R"({"model": {"type": "BPE", "dropout": null, "fuse_unk": false,
 "vocab": {"!": 0, "\"": 1, "\u0120the": 2, "caf\u00e9": 3, "\ud83d\ude00": 4, "tab\there": 5},
 "merges": [["\u0120", "t"], ["h", "e"], ["\u0120t", "he"]]},
 "numbers": [0, -0, 1, -17, 9007199254740993, -9223372036854775808, 18446744073709551616,
             0.5, -1.25e-3, 6.02214076E+23, 1e308, 4.9e-324, 123456789.987654321],
 "nested": [[[[{"a": [[], {}, [{}]]}]]]], "unicode": "Grüße, 世界 — ok", "flags": [true, false]}
)";
  const std::string path = dir / "tokenizer.json";
  const FuzzTally t = testing::fuzz_files("JSON document", {{path, text}},
                                          testing::fuzz_cases(kDefaultCases),
                                          [&] { return json::dump(parse_json_file(path)); });
  expect_no_failures(t);
  EXPECT_GT(t.n_refused, 0);
}

}  // namespace
}  // namespace lora
