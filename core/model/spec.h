// The architecture spec of a decoder-only transformer, and the training mode.
//
// One model, its variants as data (DESIGN.md section 4 "Model family"): every family member is a
// ModelSpec, and the model code branches on the spec where the variants differ.
//   norm        LayerNorm (weight, bias) | RMSNorm (weight), with eps
//   positions   learned (wpe) | RoPE (theta, HF rotate-half pairs, optional llama3 scaling)
//   mlp         GELU(tanh) on c_fc | SwiGLU: silu(gate_proj x) * up_proj x
//   attention   n_head query heads of head_dim, n_kv_head key/value heads (GQA when fewer)
//   biases      per linear: GPT-2 all, Qwen2 q/k/v only, Llama/Mistral none
//   lm_head     tied to the token embedding, or its own [vocab, d_model] weight
//   conv1d      GPT-2 stores its linears as Conv1D [in, out]; the Llama family as nn.Linear
//               [out, in] (weights stay in the orientation the checkpoint uses)
// family_spec() gives each family's defaults; sizes come from the config or config.json.
#pragma once

#include <string>
#include <string_view>

namespace lora {

enum class NormKind { kLayerNorm, kRmsNorm };
enum class PositionKind { kLearned, kRope };
enum class MlpKind { kGeluTanh, kSwiGlu };

// Llama-3.1 style RoPE frequency scaling (config.json "rope_scaling" with rope_type "llama3").
struct RopeScaling {
  bool llama3 = false;
  float factor = 8.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelSpec {
  std::string arch = "gpt2";  // gpt2 | llama | qwen2 | mistral
  int vocab_size = 256;
  int max_seq_len = 128;
  int n_layer = 4;
  int n_head = 4;
  int n_kv_head = 0;  // 0: n_head (no grouping)
  int d_model = 256;
  int head_dim = 0;   // 0: d_model / n_head
  int d_ff = 0;       // 0: 4 * d_model (GPT-2's MLP width)

  NormKind norm = NormKind::kLayerNorm;
  float norm_eps = 1e-5f;
  PositionKind positions = PositionKind::kLearned;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  int sliding_window = 0;  // Mistral/Qwen2 sliding-window attention size; 0: none (full causal)
  MlpKind mlp = MlpKind::kGeluTanh;
  bool qkv_bias = true;
  bool o_bias = true;
  bool mlp_bias = true;
  bool tied_embeddings = true;
  bool conv1d = true;

  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int head_size() const { return head_dim > 0 ? head_dim : d_model / n_head; }
  int ff() const { return d_ff > 0 ? d_ff : 4 * d_model; }
  int q_dim() const { return n_head * head_size(); }
  int kv_dim() const { return kv_heads() * head_size(); }
  int qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  // Width of the MLP's input projection output: [gate | up] for SwiGLU.
  int mlp_in_dim() const { return mlp == MlpKind::kSwiGlu ? 2 * ff() : ff(); }
  bool is_gpt2() const { return arch == "gpt2"; }
};

// lora: only the adapters train (base frozen, no base gradients allocated).
// full: every base parameter trains (the baseline, and the way to pretrain a small base).
enum class TrainMode { kLora, kFull };

// The architecture names we build ("gpt2", "llama", "qwen2", "mistral"), comma-separated.
std::string_view known_archs();
bool is_known_arch(std::string_view arch);

// A family's defaults (norm, positions, MLP, biases, tied head, eps, theta) with the sizes of
// `sizes` (vocab_size, max_seq_len, n_layer, n_head, n_kv_head, d_model, head_dim, d_ff).
// Throws lora::InputError for an unknown arch.
ModelSpec family_spec(const std::string& arch, const ModelSpec& sizes);

// GPT-2 of these sizes (d_ff 4 d_model).
ModelSpec gpt2_spec(int vocab_size, int max_seq_len, int n_layer, int n_head, int d_model);

// Throws lora::InputError (message prefixed with `where`) when the sizes do not make a model:
// non-positive sizes, n_kv_head not dividing n_head, head_dim * n_head != d_model for GPT-2,
// an odd head_dim with RoPE, a non-positive eps or theta.
void validate_spec(const ModelSpec& spec, const std::string& where);

// One line for start-up output and `lora inspect`: "llama: 8 layers, d_model 512, 8 heads
// (2 kv, head_dim 64), d_ff 1408, vocab 32000, RMSNorm, RoPE theta 10000, SwiGLU, untied".
std::string describe_spec(const ModelSpec& spec);

// The whole spec as one JSON object (checkpoints store it) and back. spec_from_json throws
// lora::InputError (prefixed with `where`) on a malformed or incomplete text.
std::string spec_to_json(const ModelSpec& spec);
ModelSpec spec_from_json(const std::string& text, const std::string& where);

std::string_view norm_kind_name(NormKind k);
std::string_view position_kind_name(PositionKind k);
std::string_view mlp_kind_name(MlpKind k);

}  // namespace lora
