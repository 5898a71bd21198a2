// Small pieces shared by the CUDA op files (included only from core/ops/*.cu): launch sizes for
// grid-stride loops and warp/block sum and max reductions. Every reduction helper must be called
// by all threads of the block (or warp), with blockDim.x a multiple of 32 and at most 1024.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

namespace lora::ops::cuda_detail {

inline constexpr int kWarpSize = 32;
inline constexpr int kBlockSize = 256;  // threads per block for element-wise kernels
inline constexpr size_t kMaxGridBlocks = 65536;

// Blocks for a grid-stride loop over n elements with kBlockSize threads.
inline unsigned int grid_for(size_t n) {
  const size_t blocks = (n + kBlockSize - 1) / kBlockSize;
  return static_cast<unsigned int>(std::clamp<size_t>(blocks, 1, kMaxGridBlocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the block, returned to every thread. `scratch` holds at least 32 values of T in shared
// memory; it may be reused after the call returns.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int n_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < n_warps ? scratch[lane] : T(0);
  total = warp_sum(total);
  return total;
}

// Max over the block, returned to every thread (same contract as block_sum).
__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int n_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = lane < n_warps ? scratch[lane] : -INFINITY;
  m = warp_max(m);
  return m;
}

}  // namespace lora::ops::cuda_detail
