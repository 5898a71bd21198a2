// LayerNorm over the last dimension (eps = 1e-5, as GPT-2).
//   mean[i] = avg_j x[i, j];  rstd[i] = 1 / sqrt(var_j x[i, j] + eps)
//   y[i, j] = (x[i, j] - mean[i]) * rstd[i] * weight[j] + bias[j]
// Shapes: x, y [n, c]; weight, bias [c]; mean, rstd [n] (saved for backward).
// Backward accumulates (+=) into dx, dweight, dbias; null dweight/dbias are skipped (frozen).
#pragma once

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

inline constexpr float kLayerNormEps = 1e-5f;

void layernorm_forward_cpu(float* y, float* mean, float* rstd, const float* x, const float* weight,
                           const float* bias, int n, int c);
void layernorm_backward_cpu(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                            const float* weight, const float* mean, const float* rstd, int n, int c);
// The residual add fused in front (CPU): x = a + b is written to x_out [n, c] (kept for backward)
// and normalised while its row is in cache. The same bits as residual_forward_cpu then
// layernorm_forward_cpu; x_out may alias a or b.
void residual_layernorm_forward_cpu(float* x_out, float* y, float* mean, float* rstd, const float* a,
                                    const float* b, const float* weight, const float* bias, int n,
                                    int c);

#ifdef LORA_WITH_CUDA
void layernorm_forward_cuda(float* y, float* mean, float* rstd, const float* x, const float* weight,
                            const float* bias, int n, int c, cudaStream_t stream);
void layernorm_backward_cuda(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                             const float* weight, const float* mean, const float* rstd, int n, int c,
                             cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_layernorm_sizes(int n, int c) {
  LORA_CHECK(n > 0 && c > 0, "sizes must be positive: n=", n, " c=", c);
}

inline void check_layernorm_forward_args(const float* y, const float* mean, const float* rstd,
                                         const float* x, const float* weight, const float* bias,
                                         int n, int c) {
  LORA_CHECK(y != nullptr && mean != nullptr && rstd != nullptr && x != nullptr &&
                 weight != nullptr && bias != nullptr,
             "y, mean, rstd, x, weight, bias must not be null");
  check_layernorm_sizes(n, c);
}

// dweight and dbias may be null (frozen).
inline void check_layernorm_backward_args(const float* dx, const float* dy, const float* x,
                                          const float* weight, const float* mean,
                                          const float* rstd, int n, int c) {
  LORA_CHECK(dx != nullptr && dy != nullptr && x != nullptr && weight != nullptr &&
                 mean != nullptr && rstd != nullptr,
             "dx, dy, x, weight, mean, rstd must not be null");
  check_layernorm_sizes(n, c);
}

}  // namespace detail

}  // namespace lora::ops
