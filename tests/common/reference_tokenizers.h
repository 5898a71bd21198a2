// Tokenizers trained by Hugging Face `tokenizers` itself (tests/core/tokenizer_reference.py) in
// the reference-test environment (LORA_REF_PYTHON, made by scripts/setup_python.sh):
// <dir>/<style>/tokenizer.json for the styles gpt2, llama3, qwen2, sp, sp_metaspace and mixed.
// Training takes seconds, and every test runs in its own process, so the set is trained once into
// <temp>/lora_ref_tokenizers_<hash of the training script> (built in a private directory and
// renamed into place, so concurrent tests never see half a set) and reused while the script is
// unchanged. Tests skip, saying why, when the environment is missing.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/json.h"
#include "tests/common/temp_dir.h"

namespace lora::testing {

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out.push_back(c);
  }
  return out + "'";
}

inline std::string read_file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void write_file_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

class ReferenceTokenizers {
 public:
  // The shared instance; nullptr (with the reason in *why) when the environment is missing or
  // training failed.
  static const ReferenceTokenizers* get(std::string* why) {
    static std::unique_ptr<ReferenceTokenizers> instance;
    static std::string reason;
    static bool tried = false;
    if (!tried) {
      tried = true;
      auto r = std::make_unique<ReferenceTokenizers>();
      if (r->train(&reason)) instance = std::move(r);
    }
    *why = reason;
    return instance.get();
  }

  std::string dir(const std::string& style) const { return (shared_ / style).string(); }
  std::string json(const std::string& style) const { return dir(style) + "/tokenizer.json"; }
  const TempDir& tmp() const { return tmp_; }

  // tokenizers' ids and decoded text for each text.
  struct Reference {
    std::vector<std::vector<int32_t>> ids;
    std::vector<std::string> decoded;
  };
  Reference encode(const std::string& style, const std::vector<std::string>& texts) const {
    json::Array list;
    for (const std::string& t : texts) list.emplace_back(t);
    const std::string in = tmp_ / ("texts_" + style + ".json");
    const std::string out = tmp_ / ("ids_" + style + ".json");
    write_file_text(in, json::dump(json::Value(std::move(list))));
    const std::string cmd = shell_quote(LORA_REF_PYTHON) + " " + shell_quote(script()) + " encode " +
                            shell_quote(json(style)) + " " + shell_quote(in) + " " + shell_quote(out);
    Reference ref;
    if (std::system(cmd.c_str()) != 0) {
      ADD_FAILURE() << "reference encoding failed: " << cmd;
      return ref;
    }
    const json::Value v = json::parse(read_file_text(out));
    for (const json::Value& item : v.as_array()) {
      std::vector<int32_t> ids;
      for (const json::Value& id : item.find("ids")->as_array()) ids.push_back(static_cast<int32_t>(id.as_int64()));
      ref.ids.push_back(std::move(ids));
      ref.decoded.push_back(item.find("decoded")->as_string());
    }
    return ref;
  }

  static std::string script() { return std::string(LORA_SOURCE_DIR) + "/tests/core/tokenizer_reference.py"; }

  static bool environment_ok(std::string* why) {
    const std::string py = LORA_REF_PYTHON;
    if (!std::filesystem::exists(py)) {
      *why = py + " not found (run scripts/setup_python.sh for the reference-test environment)";
      return false;
    }
    const std::string cmd = shell_quote(py) + " -c 'import tokenizers' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      *why = py + " cannot import tokenizers (run scripts/setup_python.sh)";
      return false;
    }
    return true;
  }

  ReferenceTokenizers() : tmp_("lora_ref_scratch") {}

 private:
  bool train(std::string* why) {
    if (!environment_ok(why)) return false;
    const std::string text = read_file_text(script());
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text + LORA_REF_PYTHON) h = (h ^ c) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    shared_ = std::filesystem::temp_directory_path() / (std::string("lora_ref_tokenizers_") + hex);
    if (std::filesystem::exists(shared_ / "done")) return true;
    const std::filesystem::path mine = tmp_.path() / "set";
    const std::string cmd = shell_quote(LORA_REF_PYTHON) + " " + shell_quote(script()) + " train " +
                            shell_quote(mine.string());
    if (std::system(cmd.c_str()) != 0) {
      *why = "training the reference tokenizers failed: " + cmd;
      return false;
    }
    write_file_text((mine / "done").string(), "");
    std::error_code ec;
    std::filesystem::rename(mine, shared_, ec);  // fails when another test got there first
    if (!std::filesystem::exists(shared_ / "done")) {
      *why = "cannot place the reference tokenizers at " + shared_.string() + ": " + ec.message();
      return false;
    }
    return true;
  }

  TempDir tmp_;
  std::filesystem::path shared_;
};

}  // namespace lora::testing

// In a TEST body: `ref` is the trained set; skips when the reference environment is missing and
// fails when it is there but training failed.
#define LORA_REQUIRE_REFERENCE_TOKENIZERS(ref)                                      \
  std::string ref##_why;                                                            \
  const ::lora::testing::ReferenceTokenizers* ref =                                 \
      ::lora::testing::ReferenceTokenizers::get(&ref##_why);                        \
  if (ref == nullptr) {                                                             \
    if (!::lora::testing::ReferenceTokenizers::environment_ok(&ref##_why))          \
      GTEST_SKIP() << ref##_why;                                                    \
    FAIL() << ref##_why;                                                            \
  }
