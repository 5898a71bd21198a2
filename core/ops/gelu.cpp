// GELU (tanh form, GPT-2's gelu_new) on the CPU, element-wise over [n]:
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dx += dy * ( 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) )
// tanh comes from detail::tanh_approx so the loops vectorise.
#include "core/ops/gelu.h"

#include "core/ops/vec_math.h"

namespace lora::ops {
namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
}  // namespace

void gelu_forward_cpu(float* y, const float* x, size_t n) {
  detail::check_gelu_forward_args(y, x, n);
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 16384)
  for (long i = 0; i < count; ++i) {
    const float v = x[i];
    const float u = kSqrt2OverPi * (v + kCubic * v * v * v);
    y[i] = 0.5f * v * (1.0f + detail::tanh_approx(u));
  }
}

void gelu_backward_cpu(float* dx, const float* dy, const float* x, size_t n) {
  detail::check_gelu_backward_args(dx, dy, x, n);
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 16384)
  for (long i = 0; i < count; ++i) {
    const float v = x[i];
    const float u = kSqrt2OverPi * (v + kCubic * v * v * v);
    const float t = detail::tanh_approx(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    const float grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
    dx[i] += dy[i] * grad;
  }
}

}  // namespace lora::ops
