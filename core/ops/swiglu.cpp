// SwiGLU on the CPU: rows in parallel, columns vectorised (sigmoid through the vectorisable
// exp_approx of vec_math.h).
#include "core/ops/swiglu.h"

#include <cstddef>

#include "core/ops/vec_math.h"

namespace lora::ops {
namespace {

inline float sigmoid(float g) { return 1.0f / (1.0f + detail::exp_approx(-g)); }

template <bool kAccumulate>
void backward(float* d_gate_up, const float* dout, const float* gate_up, int n, int f) {
#pragma omp parallel for schedule(static) if (static_cast <long>(n) * f > 65536)
  for (int i = 0; i < n; ++i) {
    const float* g = gate_up + static_cast<size_t>(i) * 2 * f;
    const float* u = g + f;
    const float* d = dout + static_cast<size_t>(i) * f;
    float* dg = d_gate_up + static_cast<size_t>(i) * 2 * f;
    float* du = dg + f;
#pragma omp simd
    for (int j = 0; j < f; ++j) {
      const float s = sigmoid(g[j]);
      const float silu = g[j] * s;
      const float vg = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s)), vu = d[j] * silu;
      if constexpr (kAccumulate) {
        dg[j] += vg;
        du[j] += vu;
      } else {
        dg[j] = vg;
        du[j] = vu;
      }
    }
  }
}

}  // namespace

void swiglu_forward_cpu(float* out, const float* gate_up, int n, int f) {
  detail::check_swiglu_forward_args(out, gate_up, n, f);
#pragma omp parallel for schedule(static) if (static_cast <long>(n) * f > 65536)
  for (int i = 0; i < n; ++i) {
    const float* g = gate_up + static_cast<size_t>(i) * 2 * f;
    const float* u = g + f;
    float* o = out + static_cast<size_t>(i) * f;
#pragma omp simd
    for (int j = 0; j < f; ++j) o[j] = g[j] * sigmoid(g[j]) * u[j];
  }
}

void swiglu_backward_cpu(float* d_gate_up, const float* dout, const float* gate_up, int n, int f) {
  detail::check_swiglu_backward_args(d_gate_up, dout, gate_up, n, f);
  backward<true>(d_gate_up, dout, gate_up, n, f);
}

void swiglu_backward_write_cpu(float* d_gate_up, const float* dout, const float* gate_up, int n,
                               int f) {
  detail::check_swiglu_backward_args(d_gate_up, dout, gate_up, n, f);
  backward<false>(d_gate_up, dout, gate_up, n, f);
}

}  // namespace lora::ops
