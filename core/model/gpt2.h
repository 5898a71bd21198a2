// GPT-2 with LoRA adapters: forward, loss and backward on the CPU (fp32, the reference backend).
//
// y = x W + b + s * (dropout(x) A) B on every adapted linear (DESIGN.md section 2).
// In lora mode the base is frozen: no base gradient memory exists, and backward computes only what
// the adapter gradients need. In full mode every base parameter has a gradient and no adapters exist.
//
// Backward runs the blocks last to first and reports each range of the trainable-gradient buffer as
// soon as it is final, so a gradient reducer can start communicating it while earlier blocks are
// still being differentiated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "core/model/gpt2_layout.h"
#include "core/model/lora_layout.h"
#include "core/model/shape.h"

namespace lora {

struct ForwardOptions {
  bool training = false;      // enables LoRA dropout
  uint64_t dropout_seed = 0;  // masks are a function of (dropout_seed, step, seq id, position, module)
  uint64_t step = 0;
  const uint64_t* seq_ids = nullptr;  // [n_batch] global sequence indices; null: 0..n_batch-1
};

// Called with [offset, offset + count) of the trainable-gradient buffer once that range is final.
using GradReadyFn = std::function<void(size_t offset, size_t count)>;

class Gpt2Model {
 public:
  // lora must be set in lora mode and empty in full mode. Base parameters start at zero:
  // call init_base_random() or load weights into base_params().
  Gpt2Model(const ModelShape& shape, TrainMode mode, const std::optional<LoraSpec>& lora);
  ~Gpt2Model();
  Gpt2Model(const Gpt2Model&) = delete;
  Gpt2Model& operator=(const Gpt2Model&) = delete;

  const ModelShape& shape() const { return layout_.shape(); }
  TrainMode mode() const { return mode_; }
  const Gpt2Layout& base_layout() const { return layout_; }
  const LoraLayout* lora_layout() const { return lora_layout_.get(); }

  float* base_params() { return base_.data(); }
  const float* base_params() const { return base_.data(); }
  size_t n_base_params() const { return base_.size(); }
  float* lora_params() { return lora_.data(); }
  const float* lora_params() const { return lora_.data(); }
  size_t n_lora_params() const { return lora_.size(); }

  // What the optimizer updates: the adapters in lora mode, the base in full mode.
  float* trainable_params();
  float* trainable_grads();
  size_t n_trainable() const;
  void zero_grads();

  void init_base_random(uint64_t seed);
  void init_lora(uint64_t seed);

  // tokens [n_batch, n_seq]; targets [n_batch, n_seq] or null (no loss). Returns the mean loss over
  // all n_batch * n_seq positions (0 when targets is null). Logits stay available until the next
  // forward or backward.
  float forward(const int32_t* tokens, const int32_t* targets, int n_batch, int n_seq,
                const ForwardOptions& opts = {});
  // Accumulates (+=) into trainable_grads() the gradient of loss_scale * (mean loss of the last
  // forward). ready, if set, is called for every range of the trainable buffer once final.
  void backward(float loss_scale = 1.0f, const GradReadyFn& ready = nullptr);

  // [n_batch, n_seq, vocab] of the last forward (backward overwrites them with their gradient).
  const float* logits() const;
  // Per-position losses [n_batch, n_seq] of the last forward with targets.
  const float* losses() const;

  // Bytes of activation + gradient working memory currently allocated (for reporting).
  size_t workspace_bytes() const;
  // Bytes of parameter-gradient memory: the adapters' in lora mode (no base gradients exist),
  // every parameter's in full mode.
  size_t grad_bytes() const { return (base_grads_.size() + lora_grads_.size()) * sizeof(float); }

 private:
  struct Activations;
  void ensure_activations(int n_batch, int n_seq);

  Gpt2Layout layout_;
  TrainMode mode_;
  std::unique_ptr<LoraLayout> lora_layout_;
  std::vector<float> base_;
  std::vector<float> base_grads_;  // full mode only
  std::vector<float> lora_;
  std::vector<float> lora_grads_;  // lora mode only
  std::unique_ptr<Activations> acts_;
};

}  // namespace lora
