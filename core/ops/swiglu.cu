// SwiGLU on the GPU, element-wise over the [n, f] output, reading the fused gate|up product
// gate_up [n, 2f] (gate in columns [0, f), up in [f, 2f)):
//   forward:  out = silu(g) u,  silu(g) = g s,  s = 1 / (1 + exp(-g))
//   backward: d_gate += dout u s (1 + g (1 - s));   d_up += dout silu(g)   (accumulated)
// Grid-stride kernels; expf is CUDA's accurate exp (the CPU version uses a vectorised exp within
// about 2 ulp of it).
#include "core/ops/swiglu.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

}  // namespace

static __global__ void swiglu_forward_kernel(float* out, const float* gate_up, size_t total,
                                             int f) {
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t i = idx / f;
    const size_t j = idx % f;
    const float g = gate_up[i * 2 * f + j];
    const float u = gate_up[i * 2 * f + f + j];
    out[idx] = g * sigmoid(g) * u;
  }
}

static __global__ void swiglu_backward_kernel(float* d_gate_up, const float* dout,
                                              const float* gate_up, size_t total, int f) {
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t i = idx / f;
    const size_t j = idx % f;
    const size_t g_at = i * 2 * f + j;
    const float g = gate_up[g_at];
    const float u = gate_up[g_at + f];
    const float d = dout[idx];
    const float s = sigmoid(g);
    d_gate_up[g_at] += d * u * s * (1.0f + g * (1.0f - s));
    d_gate_up[g_at + f] += d * (g * s);
  }
}

void swiglu_forward_cuda(float* out, const float* gate_up, int n, int f, cudaStream_t stream) {
  detail::check_swiglu_forward_args(out, gate_up, n, f);
  const size_t total = static_cast<size_t>(n) * f;
  swiglu_forward_kernel<<<grid_for(total), kBlockSize, 0, stream>>>(out, gate_up, total, f);
  LORA_CUDA_CHECK_LAUNCH();
}

void swiglu_backward_cuda(float* d_gate_up, const float* dout, const float* gate_up, int n, int f,
                          cudaStream_t stream) {
  detail::check_swiglu_backward_args(d_gate_up, dout, gate_up, n, f);
  const size_t total = static_cast<size_t>(n) * f;
  swiglu_backward_kernel<<<grid_for(total), kBlockSize, 0, stream>>>(d_gate_up, dout, gate_up,
                                                                     total, f);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
