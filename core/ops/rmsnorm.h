// RMSNorm over the last dimension (the Llama family's norm):
//   rstd[i] = 1 / sqrt(mean_j x[i, j]^2 + eps);   y[i, j] = x[i, j] * rstd[i] * weight[j]
// Backward, with u = weight * dy (per row):
//   dx[i, k]     += rstd[i] * (u[k] - x[i, k] * rstd[i]^2 * mean_j(u[j] x[i, j]))
//   dweight[j]   += sum_i dy[i, j] x[i, j] rstd[i]          (dweight may be null: frozen)
// Shapes: x, y, dx, dy [n, c]; weight [c]; rstd [n] (saved for backward).
// The CUDA entry points take device pointers and run on the given stream.
#pragma once

#include <cmath>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void rmsnorm_forward_cpu(float* y, float* rstd, const float* x, const float* weight, float eps,
                         int n, int c);
void rmsnorm_backward_cpu(float* dx, float* dweight, const float* dy, const float* x,
                          const float* weight, const float* rstd, int n, int c);
// The residual add fused in front (CPU): x = a + b is written to x_out [n, c] (kept for backward)
// and normalised while its row is in cache. The same bits as residual_forward_cpu then
// rmsnorm_forward_cpu; x_out may alias a or b.
void residual_rmsnorm_forward_cpu(float* x_out, float* y, float* rstd, const float* a,
                                  const float* b, const float* weight, float eps, int n, int c);

#ifdef LORA_WITH_CUDA
void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* weight, float eps,
                          int n, int c, cudaStream_t stream);
void rmsnorm_backward_cuda(float* dx, float* dweight, const float* dy, const float* x,
                           const float* weight, const float* rstd, int n, int c,
                           cudaStream_t stream);
#endif

namespace detail {

inline void check_rmsnorm_forward_args(const float* y, const float* rstd, const float* x,
                                       const float* weight, float eps, int n, int c) {
  LORA_CHECK(y != nullptr && rstd != nullptr && x != nullptr && weight != nullptr,
             "y, rstd, x, weight must not be null");
  LORA_CHECK(n > 0 && c > 0, "sizes must be positive: n=", n, " c=", c);
  LORA_CHECK(std::isfinite(eps) && eps > 0, "eps must be positive, got ", eps);
}

inline void check_rmsnorm_backward_args(const float* dx, const float* dy, const float* x,
                                        const float* weight, const float* rstd, int n, int c) {
  LORA_CHECK(dx != nullptr && dy != nullptr && x != nullptr && weight != nullptr &&
                 rstd != nullptr,
             "dx, dy, x, weight, rstd must not be null");
  LORA_CHECK(n > 0 && c > 0, "sizes must be positive: n=", n, " c=", c);
}

}  // namespace detail

}  // namespace lora::ops
