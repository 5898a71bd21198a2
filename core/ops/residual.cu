// Residual add on the GPU: y = a + b (y may alias a or b); backward da += dy, db += dy.
// Shapes: all [n]. Null da or db is skipped. Grid-stride element-wise kernels.
#include "core/ops/residual.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {
using cuda_detail::grid_for;
using cuda_detail::kBlockSize;
}  // namespace

static __global__ void residual_forward_kernel(float* y, const float* a, const float* b, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = a[i] + b[i];
  }
}

static __global__ void accumulate_kernel(float* dst, const float* src, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] += src[i];
  }
}

static __global__ void accumulate_both_kernel(float* da, float* db, const float* dy, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = dy[i];
    da[i] += g;
    db[i] += g;
  }
}

void residual_forward_cuda(float* y, const float* a, const float* b, size_t n, cudaStream_t stream) {
  detail::check_residual_forward_args(y, a, b, n);
  residual_forward_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(y, a, b, n);
  LORA_CUDA_CHECK_LAUNCH();
}

void residual_backward_cuda(float* da, float* db, const float* dy, size_t n, cudaStream_t stream) {
  detail::check_residual_backward_args(dy, n);
  if (da != nullptr && db != nullptr && da != db) {
    accumulate_both_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(da, db, dy, n);
    LORA_CUDA_CHECK_LAUNCH();
    return;
  }
  // One target, or da == db (which then receives dy twice, as on the CPU).
  if (da != nullptr) {
    accumulate_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(da, dy, n);
    LORA_CUDA_CHECK_LAUNCH();
  }
  if (db != nullptr) {
    accumulate_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(db, dy, n);
    LORA_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace lora::ops
