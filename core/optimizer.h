// AdamW state over one contiguous trainable buffer (the adapters, or every base parameter in full
// mode), plus global-norm gradient clipping. The moments live in two buffers of the same layout as
// the parameters, so a checkpoint stores them per module by the same offsets.
#pragma once

#include <cstddef>
#include <vector>

#include "core/ops/adamw.h"

namespace lora {

class AdamW {
 public:
  AdamW(size_t n, const ops::AdamWParams& hp) : hp_(hp), m_(n, 0.0f), v_(n, 0.0f) {}

  // One update with learning rate lr; increments step() first (the first update uses step 1).
  void update(float* params, const float* grads, float lr);

  long step() const { return step_; }
  void set_step(long s) { step_ = s; }
  const ops::AdamWParams& hparams() const { return hp_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  const std::vector<float>& m() const { return m_; }
  const std::vector<float>& v() const { return v_; }

 private:
  ops::AdamWParams hp_;
  std::vector<float> m_, v_;
  long step_ = 0;
};

// Scales grads so their global L2 norm is at most max_norm (no-op when max_norm <= 0).
// Returns the norm before clipping.
float clip_grad_norm(float* grads, size_t n, float max_norm);

}  // namespace lora
