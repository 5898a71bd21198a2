// PEFT adapters: the directories Hugging Face PEFT saves (read and written), and adapters read from
// either source, a PEFT directory or one of our lora-mode checkpoints (DESIGN.md 4 "PEFT interop").
//
// A PEFT LoRA directory, as PeftModel.save_pretrained writes it and PeftModel.from_pretrained and
// vLLM's --lora-modules read it:
//   adapter_config.json        peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha, use_rslora,
//                              target_modules (a list of module-name suffixes, or one regular
//                              expression the whole module name must match), rank_pattern and
//                              alpha_pattern (name pattern -> rank / alpha of the modules it
//                              matches), fan_in_fan_out (true for GPT-2's Conv1D), lora_dropout,
//                              bias, base_model_name_or_path, and PEFT's other fields
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, d_in]
//                              base_model.model.<module>.lora_B.weight [d_out, r]
// <module> is the module's name in the transformers model: GPT-2's carry a "transformer." prefix
// (transformer.h.3.attn.c_attn), the Llama family's do not (model.layers.3.self_attn.q_proj).
// Our adapters are A = lora_A.weight^T [d_in, r] and B = lora_B.weight^T [r, d_out] under the
// module name without that prefix (lora_layout.h): export and import are a rename and a
// transpose, exact in float32. Each module computes y += s * (x A) B with s = alpha / r
// (rsLoRA: alpha / sqrt(r)), r and alpha being the module's own under rank_pattern/alpha_pattern.
//
// PEFT matches its patterns as Python's re does: target_modules given as a string with
// re.fullmatch on the module name, as a list by name or ".suffix"; a rank_pattern or alpha_pattern
// key k with re.match(".*\.k$"). PEFT up to 0.13 looks both the rank and the alpha up under the
// first key matching among rank_pattern's then alpha_pattern's keys, later versions each under the
// first matching key of its own pattern: a module for which the two rules give different values is
// refused as ambiguous. Here the patterns run through std::regex (ECMAScript), which agrees with
// Python for the patterns such files use; one std::regex cannot parse (a Python-only construct
// such as (?P<name>...)) is refused naming the key.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/model/lora_layout.h"
#include "core/model/spec.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace lora {

// An adapter read for a model: its LoRA settings and its parameters.
struct Adapter {
  std::string path;
  bool peft = false;             // a PEFT directory; otherwise one of our checkpoints
  LoraSpec lora;                 // rank, alpha, rsLoRA, targets, per-module ranks and alphas
  std::vector<float> params;     // the adapter buffer, in LoraLayout(spec, lora) order
  std::string base_model;        // PEFT: base_model_name_or_path ("" when not recorded)
  std::shared_ptr<const CheckpointState> checkpoint;  // checkpoints: the whole state
};

// Whether `path` names a directory (a PEFT adapter directory is the only directory an adapter
// path may name; anything else is read as a checkpoint file).
bool is_adapter_dir(const std::string& path);

// Reads a PEFT LoRA directory for a model of `spec`. Throws lora::InputError naming the file and
// the field or tensor: a missing adapter_config.json or adapter_model.safetensors (a pickled
// adapter_model.bin is not read), another peft_type or task_type, a variant that computes
// something else (use_dora, lora_bias, bias other than "none", modules_to_save,
// layers_to_transform, layer_replication, megatron_config, loftq_config, an init_lora_weights that
// changes the base weights: pissa, olora, loftq, corda), a module we cannot adapt (lm_head,
// embeddings), a target on only some layers, a field we do not know set to a value other than
// null/false/empty, a tensor that is missing, unexpected (DoRA magnitudes, biases, modules to
// save), of the wrong shape or dtype (F32, F16, BF16 are read), or not finite.
Adapter read_peft_adapter(const std::string& dir, const ModelSpec& spec);

// A lora-mode checkpoint's adapters for a model of `spec` (same arch and shape, else
// lora::InputError naming both). A full-mode checkpoint is refused: it holds a whole model.
Adapter adapter_from_checkpoint(std::shared_ptr<const CheckpointState> ckpt, const std::string& path,
                                const ModelSpec& spec);

// Reads `path`: a PEFT directory or a lora-mode checkpoint. `what` names where the path came from
// in messages ("--adapter", "lora.init_from").
Adapter read_adapter(const std::string& path, const ModelSpec& spec, const std::string& what);

// cfg with the adapter's LoRA settings (rank, alpha, rsLoRA, targets, per-module ranks and alphas;
// dropout and init stay the config's). A config that gives one of lora.rank, lora.alpha,
// lora.rslora, lora.targets explicitly with another value is a lora::InputError naming both
// values; so is train.mode full. resolved_yaml is rewritten to match.
Config config_for_adapter(const Config& cfg, const Adapter& adapter, const std::string& what);

// Writes adapters of a model of `spec` as a PEFT directory `out_dir`, atomically (`out_dir`.tmp,
// then renamed; an existing PEFT directory or empty directory there is replaced, anything else is
// refused). `base_model` goes into base_model_name_or_path (null when empty).
void write_peft_adapter(const std::string& out_dir, const ModelSpec& spec, const LoraSpec& lora,
                        const float* params, const std::string& base_model);

// `lora export`: reads the checkpoint and writes its adapters as a PEFT directory. Refused
// (lora::InputError) where PEFT cannot express what the checkpoint computes: a full-mode
// checkpoint (no adapters; its run directory is already a model directory) and adapters holding
// NaN or infinity. base_model_name_or_path is the run's model.path, or the directory of its
// model.weights file when that directory holds a config.json. Returns a one-line summary.
std::string export_peft(const std::string& checkpoint_path, const std::string& out_dir);

// The PEFT name of one of our modules: "transformer.h.0.attn.c_attn" for GPT-2's "h.0.attn.c_attn".
std::string peft_module_name(const std::string& module, const ModelSpec& spec);

}  // namespace lora
