// Hugging Face model directories and weight files: config.json to a ModelSpec, safetensors tensors
// (one file or shards named by model.safetensors.index.json) into our base buffer, and back out as
// a model directory transformers loads.
//
// A model directory holds config.json (model_type gpt2, llama, qwen2 or mistral, with the sizes and
// variant keys of that family's transformers config class) and either model.safetensors or the
// shards that model.safetensors.index.json's "weight_map" names. Tensors are looked up by their
// Hugging Face names (base_layout.h), with a "transformer." prefix accepted for GPT-2; F32, F16 and
// BF16 tensors are converted to float32. Each tensor is read once, in bounded chunks, straight
// into the base buffer, so loading needs the float32 model plus a few MiB.
// Tensors a checkpoint may hold that the model does not take are ignored by name: GPT-2's causal
// mask buffers (h.{i}.attn.bias, h.{i}.attn.masked_bias), rotary inv_freq buffers, and
// lm_head.weight when the head is tied. Any other extra tensor, a missing one, a wrong shape or
// dtype is a lora::InputError naming the file and the tensor.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/model/base_layout.h"
#include "core/model/spec.h"

namespace lora {

struct HfModelDir {
  std::string dir;
  std::string config_path;                // dir/config.json
  json::Value config;                     // its contents
  ModelSpec spec;                         // what it describes
  std::vector<std::string> weight_files;  // model.safetensors, or the shards in index order
};

// Reads and checks config.json and finds the weight files (an index naming a missing shard is an
// error here). Throws lora::InputError naming the file and the key: no such directory, missing
// or malformed config.json, unknown model_type, a key of the wrong type or out of range, a
// variant we do not implement (GPT-2 activation other than gelu_new, rope_scaling other than
// llama3, a hidden_act other than silu, sliding-window attention turned on for Qwen2, ...).
HfModelDir read_hf_model_dir(const std::string& dir);

// Loads every tensor of `layout` from the files (read_hf_model_dir's, or one model.weights file).
void load_base_weights(const std::vector<std::string>& files, const BaseLayout& layout,
                       float* params);

// The GPT-2 spec a lone weights file holds (model.weights without config.json): vocab_size and
// d_model from wte.weight, max_seq_len from wpe.weight, n_layer from the highest h.{i}, d_ff from
// mlp.c_fc.weight. n_head cannot be read from the tensors: it comes from __metadata__ "n_head"
// when present, else stays `n_head` (0: unknown). Throws lora::InputError for a file that is not
// GPT-2 shaped.
ModelSpec infer_gpt2_spec(const std::string& path, int n_head = 0);
// Compares the file's GPT-2 shape with `expected` and throws lora::InputError listing every
// difference: "model.n_layer: config says 4, weights file has 6". n_head only when recorded.
void check_gpt2_weights_shape(const std::string& path, const ModelSpec& expected);

// Writes every layout tensor under its Hugging Face name as F32 with __metadata__ {"format": "pt",
// "arch", and the sizes} plus `metadata`, atomically (a lone weights file model.weights reads).
void save_base_weights(const std::string& path, const BaseLayout& layout, const float* params,
                       const std::map<std::string, std::string>& metadata = {});

// The config.json transformers needs to build `spec` (architectures, model_type and the family's
// keys), with "torch_dtype": "float32". With `source` (the config.json a model was loaded from)
// its other keys (token ids, chat-related fields) are kept and the size keys checked to agree.
json::Value hf_config_for(const ModelSpec& spec, const json::Value* source = nullptr);

// Writes a Hugging Face model directory: config.json and model.safetensors (F32). Atomic: written
// into `dir`.tmp and renamed onto `dir` (an existing `dir` is replaced only once the new one is
// complete).
void save_hf_model_dir(const std::string& dir, const BaseLayout& layout, const float* params,
                       const json::Value& config);

// Writes `params` as a model directory shaped like `source_files` (a model directory's
// model.safetensors or shards, or one model.weights file): every tensor under the name, dtype
// (F32, F16 or BF16) and file it has there; shards keep their file names and get a
// model.safetensors.index.json; tensors the model does not take (ignored buffers, a tied
// lm_head.weight) are written back unchanged. With `copy_from_dir`, its config.json and the other
// small files beside the weights (*.json, *.txt, *.model: tokenizer, generation config) are copied
// unchanged; `config` is written as config.json when none was copied. Atomic like save_hf_model_dir.
void save_hf_model_dir_like(const std::string& dir, const std::vector<std::string>& source_files,
                            const std::string& copy_from_dir, const BaseLayout& layout,
                            const float* params, const json::Value& config);

}  // namespace lora
