// GELU (tanh form, GPT-2's gelu_new) on the GPU, element-wise over [n]:
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dx += dy * ( 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) )
// y may alias x. Grid-stride kernels; tanhf is the accurate CUDA tanh.
#include "core/ops/gelu.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {
using cuda_detail::grid_for;
using cuda_detail::kBlockSize;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
}  // namespace

static __global__ void gelu_forward_kernel(float* y, const float* x, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const float u = kSqrt2OverPi * (v + kCubic * v * v * v);
    y[i] = 0.5f * v * (1.0f + tanhf(u));
  }
}

static __global__ void gelu_backward_kernel(float* dx, const float* dy, const float* x, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const float u = kSqrt2OverPi * (v + kCubic * v * v * v);
    const float t = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    const float grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
    dx[i] += dy[i] * grad;
  }
}

void gelu_forward_cuda(float* y, const float* x, size_t n, cudaStream_t stream) {
  detail::check_gelu_forward_args(y, x, n);
  gelu_forward_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(y, x, n);
  LORA_CUDA_CHECK_LAUNCH();
}

void gelu_backward_cuda(float* dx, const float* dy, const float* x, size_t n, cudaStream_t stream) {
  detail::check_gelu_backward_args(dx, dy, x, n);
  gelu_backward_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(dx, dy, x, n);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
