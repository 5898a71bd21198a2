// A decoder-only transformer of any family (core/model/spec.h) with LoRA adapters: forward, loss
// and backward on the CPU (fp32, the reference backend), implementing the Model interface.
//
// y = x W + b + s * (dropout(x) A) B on every adapted linear (DESIGN.md section 2).
// In lora mode the base is frozen: no base gradient memory exists, and backward computes only what
// the adapter gradients need. In full mode every base parameter has a gradient and no adapters exist.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/model/model.h"

namespace lora {

class TransformerModel final : public Model {
 public:
  // lora must be set in lora mode and empty in full mode. Base parameters start at zero: call
  // init_base_random() or load weights into base_params(), then refresh_fingerprint().
  TransformerModel(const ModelSpec& spec, TrainMode mode, const std::optional<LoraSpec>& lora);
  ~TransformerModel() override;
  TransformerModel(const TransformerModel&) = delete;
  TransformerModel& operator=(const TransformerModel&) = delete;

  const ModelSpec& spec() const override { return layout_.spec(); }
  TrainMode mode() const override { return mode_; }
  DeviceKind device() const override { return DeviceKind::kCpu; }
  const BaseLayout& base_layout() const override { return layout_; }
  const LoraLayout* lora_layout() const override { return lora_layout_.get(); }

  size_t n_base_params() const override { return base_.size(); }
  size_t n_lora_params() const override { return lora_.size(); }
  float* base_params() { return base_.data(); }
  const float* base_params() const { return base_.data(); }
  float* lora_params() { return lora_.data(); }
  const float* lora_params() const { return lora_.data(); }

  float* trainable_params() override;
  float* trainable_grads() override;
  void zero_grads() override;
  std::unique_ptr<TrainableOptimizer> make_optimizer(const ops::AdamWParams& hp) override;
  void get_trainable(std::span<float> out) const override;
  void set_trainable(std::span<const float> in) override;
  void get_base(std::span<float> out) const override;
  const std::string& base_fingerprint() const override { return fingerprint_; }
  // Recomputes base_fingerprint() after the base was written through base_params().
  void refresh_fingerprint();

  void init_base_random(uint64_t seed);
  void init_lora(uint64_t seed);

  float forward(const int32_t* tokens, const int32_t* targets, int n_batch, int n_seq,
                const ForwardOptions& opts = {}) override;
  long n_targets() const override { return n_targets_; }
  double loss_sum() override { return loss_sum_; }
  void clear_loss_sum() override { loss_sum_ = 0.0; }
  void backward(float loss_scale = 1.0f, const GradReadyFn& ready = nullptr) override;
  const float* logits() const override;
  // Per-position losses [n_batch, n_seq] of the last forward with targets (0 where masked).
  const float* losses() const;

  size_t workspace_bytes() const override;
  size_t grad_bytes() const override {
    return (base_grads_.size() + lora_grads_.size()) * sizeof(float);
  }

 private:
  struct Activations;
  void ensure_activations(int n_batch, int n_seq);

  BaseLayout layout_;
  TrainMode mode_;
  std::unique_ptr<LoraLayout> lora_layout_;
  std::vector<float> base_;
  std::vector<float> base_grads_;  // full mode only
  std::vector<float> lora_;
  std::vector<float> lora_grads_;  // lora mode only
  std::vector<float> rope_cos_, rope_sin_;  // [max_seq_len, head_dim / 2], RoPE models only
  std::string fingerprint_;
  long n_targets_ = 0;
  double loss_sum_ = 0.0;
  std::unique_ptr<Activations> acts_;
};

}  // namespace lora
