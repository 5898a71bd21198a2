// AdamW over one contiguous parameter buffer on the GPU, and the gradient-norm helpers.
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * ( (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps) + weight_decay * p )
//   sum_squares: *out_device = sum_i x[i]^2, accumulated in double (per-thread partial sums,
//                a block reduction, then one atomicAdd on a double per block; sm_60+).
//   scale:       x[i] *= factor.
//   clip_by_norm: x[i] *= max_norm / (norm + 1e-6) when max_norm > 0 and norm > max_norm, with
//                norm = sqrt(*sum_sq_device) read on the device (no host read of the norm).
// Shapes: params, grads, m, v, x [n]. Grid-stride kernels on the caller's stream. The reciprocal
// bias corrections 1 / (1 - b^step) are computed once on the host in double, as the CPU version.
#include "core/ops/adamw.h"

#include <cmath>

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::block_sum;
using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

constexpr unsigned int kMaxReduceBlocks = 1024;

}  // namespace

static __global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n,
                                    float lr, float beta1, float beta2, float eps,
                                    float weight_decay, float bc1, float bc2) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = grads[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = params[i];
    params[i] = p - lr * ((mi * bc1) / (sqrtf(vi * bc2) + eps) + weight_decay * p);
  }
}

static __global__ void sum_squares_kernel(double* out, const float* x, size_t n) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const double xi = x[i];
    sum += xi * xi;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) atomicAdd(out, sum);
}

static __global__ void scale_kernel(float* x, float factor, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] *= factor;
  }
}

// Every thread computes the factor from the device sum (the same double arithmetic as the CPU).
static __global__ void clip_by_norm_kernel(float* x, size_t n, const double* sum_sq,
                                           float max_norm) {
  const double norm = sqrt(*sum_sq);
  if (!(max_norm > 0.0f && norm > max_norm)) return;
  const float factor = static_cast<float>(max_norm / (norm + 1e-6));
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] *= factor;
  }
}

void adamw_update_cuda(float* params, const float* grads, float* m, float* v, size_t n,
                       const AdamWParams& hp, long step, cudaStream_t stream) {
  detail::check_adamw_update_args(params, grads, m, v, n, hp, step);
  // Reciprocal bias corrections, in double, as the CPU version.
  const float bc1 = static_cast<float>(
      1.0 / (1.0 - std::pow(static_cast<double>(hp.beta1), static_cast<double>(step))));
  const float bc2 = static_cast<float>(
      1.0 / (1.0 - std::pow(static_cast<double>(hp.beta2), static_cast<double>(step))));
  adamw_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(params, grads, m, v, n, hp.lr, hp.beta1,
                                                       hp.beta2, hp.eps, hp.weight_decay, bc1,
                                                       bc2);
  LORA_CUDA_CHECK_LAUNCH();
}

void sum_squares_cuda(double* out_device, const float* x, size_t n, cudaStream_t stream) {
  LORA_CHECK(out_device != nullptr, "out_device must not be null");
  LORA_CHECK(x != nullptr, "x must not be null");
  LORA_CUDA_CHECK(cudaMemsetAsync(out_device, 0, sizeof(double), stream));
  if (n == 0) return;
  const unsigned int blocks = std::min(grid_for(n), kMaxReduceBlocks);
  sum_squares_kernel<<<blocks, kBlockSize, 0, stream>>>(out_device, x, n);
  LORA_CUDA_CHECK_LAUNCH();
}

void scale_cuda(float* x, float factor, size_t n, cudaStream_t stream) {
  LORA_CHECK(x != nullptr, "x must not be null");
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(x, factor, n);
  LORA_CUDA_CHECK_LAUNCH();
}

void clip_by_norm_cuda(float* x, size_t n, const double* sum_sq_device, float max_norm,
                       cudaStream_t stream) {
  LORA_CHECK(x != nullptr && sum_sq_device != nullptr, "x and sum_sq_device must not be null");
  if (n == 0) return;
  clip_by_norm_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(x, n, sum_sq_device, max_norm);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
