// GELU (tanh form, GPT-2's gelu_new) on the CPU, element-wise over [n]:
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// computed as y = x sigma(2u) (the same function: 0.5 (1 + tanh(u)) = sigma(2u)), which costs one
// exponential and one division per element instead of the two-branch tanh:
//   y' = sigma(2u) + x sigma(2u) (1 - sigma(2u)) 2 u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// The exponential is detail::exp_approx so the loops vectorise.
// backward accumulates (dx += dy y'); gelu_backward_write_cpu writes (dx = dy y').
#include "core/ops/gelu.h"

#include "core/ops/vec_math.h"

namespace lora::ops {
namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// sigma(2u) for the input v.
inline float gate(float v) {
  const float u2 = 2.0f * kSqrt2OverPi * (v + kCubic * v * v * v);
  return 1.0f / (1.0f + detail::exp_approx(-u2));
}

inline float grad(float v) {
  const float s = gate(v);
  const float du2 = 2.0f * kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
  return s + v * s * (1.0f - s) * du2;
}

template <bool kAccumulate>
void backward(float* dx, const float* dy, const float* x, size_t n) {
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (long i = 0; i < count; ++i) {
    const float g = dy[i] * grad(x[i]);
    if constexpr (kAccumulate) {
      dx[i] += g;
    } else {
      dx[i] = g;
    }
  }
}

}  // namespace

void gelu_forward_cpu(float* y, const float* x, size_t n) {
  detail::check_gelu_forward_args(y, x, n);
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (long i = 0; i < count; ++i) y[i] = x[i] * gate(x[i]);
}

void gelu_backward_cpu(float* dx, const float* dy, const float* x, size_t n) {
  detail::check_gelu_backward_args(dx, dy, x, n);
  backward<true>(dx, dy, x, n);
}

void gelu_backward_write_cpu(float* dx, const float* dy, const float* x, size_t n) {
  detail::check_gelu_backward_args(dx, dy, x, n);
  backward<false>(dx, dy, x, n);
}

}  // namespace lora::ops
