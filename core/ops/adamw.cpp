// AdamW over one contiguous parameter buffer on the CPU, and the global-norm helpers.
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr ( (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps) + weight_decay p )
//   sum_squares = sum g^2 (double);  scale: g *= factor;
//   clip_by_norm: g *= max_norm / (norm + 1e-6) when max_norm > 0 and
//                 norm = sqrt(*sum_sq) > max_norm.
// Shapes: params, grads, m, v [n]; step counts from 1. The bias corrections are computed once
// in double; the element loop is float, parallel and vectorised.
#include "core/ops/adamw.h"

#include <cmath>

#include "core/error.h"

namespace lora::ops {

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, size_t n,
                      const AdamWParams& hp, long step) {
  detail::check_adamw_update_args(params, grads, m, v, n, hp, step);
  const float b1 = hp.beta1, b2 = hp.beta2;
  const float bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b1), step)));
  const float bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b2), step)));
  const float lr = hp.lr, eps = hp.eps, wd = hp.weight_decay;
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (long i = 0; i < count; ++i) {
    const float g = grads[i];
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] -= lr * ((mi * bc1) / (std::sqrt(vi * bc2) + eps) + wd * params[i]);
  }
}

double sum_squares_cpu(const float* x, size_t n) {
  LORA_CHECK(x != nullptr, "x must not be null");
  const long count = static_cast<long>(n);
  double sum = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : sum) if (count > 65536)
  for (long i = 0; i < count; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

void scale_cpu(float* x, float factor, size_t n) {
  LORA_CHECK(x != nullptr, "x must not be null");
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (long i = 0; i < count; ++i) x[i] *= factor;
}

void clip_by_norm_cpu(float* x, size_t n, const double* sum_sq, float max_norm) {
  LORA_CHECK(x != nullptr && sum_sq != nullptr, "x and sum_sq must not be null");
  const double norm = std::sqrt(*sum_sq);
  if (max_norm > 0.0f && norm > max_norm) {
    scale_cpu(x, static_cast<float>(max_norm / (norm + 1e-6)), n);
  }
}

}  // namespace lora::ops
