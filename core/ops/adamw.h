// AdamW (decoupled weight decay, Loshchilov & Hutter) over one contiguous parameter buffer,
// with bias correction; `step` counts from 1.
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * ( (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps) + weight_decay * p )
// And the gradient-norm helpers used for global-norm clipping:
//   sum_squares = sum_i g[i]^2 (accumulated in double);  scale: g[i] *= factor;
//   clip_by_norm: with norm = sqrt(*sum_sq), g[i] *= float(max_norm / (norm + 1e-6)) when
//   max_norm > 0 and norm > max_norm (core/optimizer.h's clipping rule), the sum read where it
//   lies (device memory for the CUDA version, so clipping needs no host read).
// Shapes: params, grads, m, v [n].
#pragma once

#include <cmath>
#include <cstddef>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, size_t n,
                      const AdamWParams& hp, long step);
double sum_squares_cpu(const float* x, size_t n);
void scale_cpu(float* x, float factor, size_t n);
void clip_by_norm_cpu(float* x, size_t n, const double* sum_sq, float max_norm);

#ifdef LORA_WITH_CUDA
void adamw_update_cuda(float* params, const float* grads, float* m, float* v, size_t n,
                       const AdamWParams& hp, long step, cudaStream_t stream);
// Writes sum of squares (as double) into *out_device, a device pointer.
void sum_squares_cuda(double* out_device, const float* x, size_t n, cudaStream_t stream);
void scale_cuda(float* x, float factor, size_t n, cudaStream_t stream);
void clip_by_norm_cuda(float* x, size_t n, const double* sum_sq_device, float max_norm,
                       cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_adamw_update_args(const float* params, const float* grads, const float* m,
                                    const float* v, size_t n, const AdamWParams& hp, long step) {
  LORA_CHECK(params != nullptr && grads != nullptr && m != nullptr && v != nullptr,
             "params, grads, m, v must not be null");
  LORA_CHECK(n > 0, "n must be positive");
  LORA_CHECK(step >= 1, "step counts from 1, got ", step);
  LORA_CHECK(std::isfinite(hp.lr) && hp.lr >= 0.0f, "lr must be finite and >= 0, got ", hp.lr);
  LORA_CHECK(hp.beta1 >= 0.0f && hp.beta1 < 1.0f, "beta1 must be in [0, 1), got ", hp.beta1);
  LORA_CHECK(hp.beta2 >= 0.0f && hp.beta2 < 1.0f, "beta2 must be in [0, 1), got ", hp.beta2);
  LORA_CHECK(hp.eps > 0.0f, "eps must be positive, got ", hp.eps);
  LORA_CHECK(hp.weight_decay >= 0.0f, "weight_decay must be >= 0, got ", hp.weight_decay);
}

}  // namespace detail

}  // namespace lora::ops
