#include "core/optimizer.h"

#include <cmath>

namespace lora {

void AdamW::update(float* params, const float* grads, float lr) {
  ++step_;
  ops::AdamWParams hp = hp_;
  hp.lr = lr;
  ops::adamw_update_cpu(params, grads, m_.data(), v_.data(), m_.size(), hp, step_);
}

float clip_grad_norm(float* grads, size_t n, float max_norm) {
  const double norm = std::sqrt(ops::sum_squares_cpu(grads, n));
  if (max_norm > 0.0f && norm > max_norm) {
    ops::scale_cpu(grads, static_cast<float>(max_norm / (norm + 1e-6)), n);
  }
  return static_cast<float>(norm);
}

}  // namespace lora
