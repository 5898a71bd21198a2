// Inverted dropout with a counter-based mask on the GPU (the mask equals the CPU version's bit for
// bit: the hash is core/ops/rng_device.cuh, a copy of core/rng.h).
//   keep[i] = uniform01(hash_u64(seed, stream_id, row_ids[i / cols], i % cols)) >= p
//   forward:  y[i]   = keep[i] ? x[i] * (1 / (1 - p)) : 0
//   backward: dx[i] += keep[i] ? dy[i] * (1 / (1 - p)) : 0      (mask recomputed, nothing stored)
// The arithmetic is the CPU version's (multiply by the float 1 / (1 - p)), so both give the same
// values, not only the same mask.
// Shapes: x, y, dx, dy [rows, cols]; row_ids [rows] (device). 0 <= p < 1; y may alias x.
#include "core/ops/dropout.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"
#include "core/ops/rng_device.cuh"

namespace lora::ops {
namespace {

using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

__device__ __forceinline__ bool keep_element(const uint64_t* row_ids, float p, uint64_t seed,
                                             uint64_t stream_id, size_t i, int cols) {
  const uint64_t h = rng_device::hash_u64(seed, stream_id, row_ids[i / cols],
                                          static_cast<uint64_t>(i % cols));
  return rng_device::uniform01(h) >= p;
}

}  // namespace

static __global__ void dropout_forward_kernel(float* y, const float* x, const uint64_t* row_ids,
                                              float p, uint64_t seed, uint64_t stream_id,
                                              size_t n, int cols) {
  const float keep_scale = 1.0f / (1.0f - p);
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = keep_element(row_ids, p, seed, stream_id, i, cols) ? x[i] * keep_scale : 0.0f;
  }
}

static __global__ void dropout_backward_kernel(float* dx, const float* dy, const uint64_t* row_ids,
                                               float p, uint64_t seed, uint64_t stream_id,
                                               size_t n, int cols) {
  const float keep_scale = 1.0f / (1.0f - p);
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    // __fmul_rn: a rounded product, never fused into the add (the CPU's arithmetic).
    if (keep_element(row_ids, p, seed, stream_id, i, cols)) dx[i] += __fmul_rn(dy[i], keep_scale);
  }
}

void dropout_forward_cuda(float* y, const float* x, const uint64_t* row_ids, float p, uint64_t seed,
                          uint64_t stream_id, int rows, int cols, cudaStream_t stream) {
  detail::check_dropout_forward_args(y, x, row_ids, p, rows, cols);
  const size_t n = static_cast<size_t>(rows) * cols;
  dropout_forward_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(y, x, row_ids, p, seed, stream_id,
                                                                 n, cols);
  LORA_CUDA_CHECK_LAUNCH();
}

void dropout_backward_cuda(float* dx, const float* dy, const uint64_t* row_ids, float p,
                           uint64_t seed, uint64_t stream_id, int rows, int cols,
                           cudaStream_t stream) {
  detail::check_dropout_backward_args(dx, dy, row_ids, p, rows, cols);
  const size_t n = static_cast<size_t>(rows) * cols;
  dropout_backward_kernel<<<grid_for(n), kBlockSize, 0, stream>>>(dx, dy, row_ids, p, seed,
                                                                  stream_id, n, cols);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
