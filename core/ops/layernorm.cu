// LayerNorm over the last dimension on the GPU (eps = kLayerNormEps).
//   forward:  mean[i], rstd[i] of row i;  y[i, j] = (x[i, j] - mean[i]) rstd[i] w[j] + b[j]
//   backward, with xhat = (x - mean) rstd and g = dy * w:
//     dx[i, :]  += rstd[i] (g - mean_j(g) - xhat mean_j(g xhat))
//     dweight   += sum_i dy[i, :] xhat[i, :];   dbias += sum_i dy[i, :]
// Shapes: x, y, dx, dy [n, c]; weight, bias, dweight, dbias [c]; mean, rstd [n].
// One warp per row for the row statistics and dx (two passes over the row: mean, then the
// variance of x - mean, as the CPU version). dweight/dbias are column sums over the rows: blocks
// of 32 columns x 8 row lanes sum partial column sums in shared memory, then add them atomically.
#include "core/ops/layernorm.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::kWarpSize;
using cuda_detail::warp_sum;

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kColumnTile = 32;   // columns per block in the column-sum kernel
constexpr int kRowLanes = 8;      // row lanes per block in the column-sum kernel
constexpr int kMaxRowChunks = 256;

}  // namespace

static __global__ void layernorm_forward_kernel(float* y, float* mean, float* rstd, const float* x,
                                                const float* weight, const float* bias, int n,
                                                int c) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= n) return;  // whole warps leave together
  const float* xi = x + static_cast<size_t>(row) * c;
  float* yi = y + static_cast<size_t>(row) * c;
  float sum = 0.0f;
  for (int j = lane; j < c; j += kWarpSize) sum += xi[j];
  const float m = warp_sum(sum) / static_cast<float>(c);
  float sq = 0.0f;
  for (int j = lane; j < c; j += kWarpSize) {
    const float d = xi[j] - m;
    sq += d * d;
  }
  const float s = 1.0f / sqrtf(warp_sum(sq) / static_cast<float>(c) + kLayerNormEps);
  for (int j = lane; j < c; j += kWarpSize) yi[j] = (xi[j] - m) * s * weight[j] + bias[j];
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

static __global__ void layernorm_backward_dx_kernel(float* dx, const float* dy, const float* x,
                                                    const float* weight, const float* mean,
                                                    const float* rstd, int n, int c) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= n) return;
  const size_t offset = static_cast<size_t>(row) * c;
  const float* xi = x + offset;
  const float* gi = dy + offset;
  float* dxi = dx + offset;
  const float m = mean[row];
  const float s = rstd[row];
  float sum_g = 0.0f;
  float sum_gx = 0.0f;
  for (int j = lane; j < c; j += kWarpSize) {
    const float g = gi[j] * weight[j];
    sum_g += g;
    sum_gx += g * (xi[j] - m) * s;
  }
  const float inv_c = 1.0f / static_cast<float>(c);
  const float mean_g = warp_sum(sum_g) * inv_c;
  const float mean_gx = warp_sum(sum_gx) * inv_c;
  for (int j = lane; j < c; j += kWarpSize) {
    const float xhat = (xi[j] - m) * s;
    dxi[j] += s * (gi[j] * weight[j] - mean_g - xhat * mean_gx);
  }
}

// grid (ceil(c / kColumnTile), row chunks), block (kColumnTile, kRowLanes).
static __global__ void layernorm_backward_params_kernel(float* dweight, float* dbias,
                                                        const float* dy, const float* x,
                                                        const float* mean, const float* rstd,
                                                        int n, int c) {
  __shared__ float dw_part[kRowLanes][kColumnTile];
  __shared__ float db_part[kRowLanes][kColumnTile];
  const int j = blockIdx.x * kColumnTile + threadIdx.x;
  float dw = 0.0f;
  float db = 0.0f;
  if (j < c) {
    for (int i = blockIdx.y * kRowLanes + threadIdx.y; i < n; i += gridDim.y * kRowLanes) {
      const size_t idx = static_cast<size_t>(i) * c + j;
      const float g = dy[idx];
      dw += g * (x[idx] - mean[i]) * rstd[i];
      db += g;
    }
  }
  dw_part[threadIdx.y][threadIdx.x] = dw;
  db_part[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && j < c) {
    for (int r = 1; r < kRowLanes; ++r) {
      dw += dw_part[r][threadIdx.x];
      db += db_part[r][threadIdx.x];
    }
    if (dweight != nullptr) atomicAdd(dweight + j, dw);
    if (dbias != nullptr) atomicAdd(dbias + j, db);
  }
}

void layernorm_forward_cuda(float* y, float* mean, float* rstd, const float* x, const float* weight,
                            const float* bias, int n, int c, cudaStream_t stream) {
  detail::check_layernorm_forward_args(y, mean, rstd, x, weight, bias, n, c);
  const unsigned int blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * kWarpSize, 0, stream>>>(y, mean, rstd, x,
                                                                            weight, bias, n, c);
  LORA_CUDA_CHECK_LAUNCH();
}

void layernorm_backward_cuda(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                             const float* weight, const float* mean, const float* rstd, int n, int c,
                             cudaStream_t stream) {
  detail::check_layernorm_backward_args(dx, dy, x, weight, mean, rstd, n, c);
  const unsigned int blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  layernorm_backward_dx_kernel<<<blocks, kRowsPerBlock * kWarpSize, 0, stream>>>(
      dx, dy, x, weight, mean, rstd, n, c);
  LORA_CUDA_CHECK_LAUNCH();
  if (dweight == nullptr && dbias == nullptr) return;
  const int row_chunks = std::min(kMaxRowChunks, (n + 63) / 64);
  const dim3 grid((c + kColumnTile - 1) / kColumnTile, row_chunks);
  const dim3 block(kColumnTile, kRowLanes);
  layernorm_backward_params_kernel<<<grid, block, 0, stream>>>(dweight, dbias, dy, x, mean, rstd,
                                                               n, c);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
