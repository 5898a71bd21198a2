// RMSNorm over the last dimension on the GPU (the Llama family's norm).
//   forward:  rstd[i] = 1 / sqrt(mean_j x[i, j]^2 + eps);  y[i, j] = x[i, j] rstd[i] w[j]
//   backward, with u = w * dy:
//     dx[i, :]  += rstd[i] (u - x[i, :] rstd[i]^2 mean_j(u[j] x[i, j]))
//     dweight   += sum_i dy[i, :] x[i, :] rstd[i]                     (null: frozen, skipped)
// Shapes: x, y, dx, dy [n, c]; weight, dweight [c]; rstd [n].
// One warp per row for the row statistics and dx; the row sums accumulate in double, as the CPU
// version's do. dweight is a column sum over the rows: blocks of 32 columns x 8 row lanes sum
// partial column sums in shared memory, then add them atomically (as layernorm.cu).
#include "core/ops/rmsnorm.h"

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

static __global__ void rmsnorm_forward_kernel(float* y, float* rstd, const float* x,
                                              const float* weight, float eps, int n, int c) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= n) return;  // whole warps leave together
  const float* xi = x + static_cast<size_t>(row) * c;
  float* yi = y + static_cast<size_t>(row) * c;
  double ss = 0.0;
  for (int j = lane; j < c; j += kWarpSize) ss += static_cast<double>(xi[j]) * xi[j];
  ss = warp_sum(ss);
  const float r = static_cast<float>(1.0 / sqrt(ss / c + static_cast<double>(eps)));
  for (int j = lane; j < c; j += kWarpSize) yi[j] = weight[j] * (xi[j] * r);
  if (lane == 0) rstd[row] = r;
}

static __global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x,
                                                  const float* weight, const float* rstd, int n,
                                                  int c) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= n) return;
  const size_t offset = static_cast<size_t>(row) * c;
  const float* xi = x + offset;
  const float* gi = dy + offset;
  float* dxi = dx + offset;
  const float r = rstd[row];
  double dot = 0.0;
  for (int j = lane; j < c; j += kWarpSize) dot += static_cast<double>(weight[j] * gi[j]) * xi[j];
  dot = warp_sum(dot);
  const float k = static_cast<float>(dot / c) * r * r;
  for (int j = lane; j < c; j += kWarpSize) dxi[j] += r * (weight[j] * gi[j] - xi[j] * k);
}

// grid (ceil(c / kColumnTile), row chunks), block (kColumnTile, kRowLanes).
static __global__ void rmsnorm_backward_weight_kernel(float* dweight, const float* dy,
                                                      const float* x, const float* rstd, int n,
                                                      int c) {
  __shared__ float part[kRowLanes][kColumnTile];
  const int j = blockIdx.x * kColumnTile + threadIdx.x;
  float dw = 0.0f;
  if (j < c) {
    for (int i = blockIdx.y * kRowLanes + threadIdx.y; i < n; i += gridDim.y * kRowLanes) {
      const size_t idx = static_cast<size_t>(i) * c + j;
      dw += dy[idx] * x[idx] * rstd[i];
    }
  }
  part[threadIdx.y][threadIdx.x] = dw;
  __syncthreads();
  if (threadIdx.y == 0 && j < c) {
    for (int r = 1; r < kRowLanes; ++r) dw += part[r][threadIdx.x];
    atomicAdd(dweight + j, dw);
  }
}

void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* weight, float eps,
                          int n, int c, cudaStream_t stream) {
  detail::check_rmsnorm_forward_args(y, rstd, x, weight, eps, n, c);
  const unsigned int blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  rmsnorm_forward_kernel<<<blocks, kRowsPerBlock * kWarpSize, 0, stream>>>(y, rstd, x, weight, eps,
                                                                          n, c);
  LORA_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_cuda(float* dx, float* dweight, const float* dy, const float* x,
                           const float* weight, const float* rstd, int n, int c,
                           cudaStream_t stream) {
  detail::check_rmsnorm_backward_args(dx, dy, x, weight, rstd, n, c);
  const unsigned int blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  rmsnorm_backward_dx_kernel<<<blocks, kRowsPerBlock * kWarpSize, 0, stream>>>(dx, dy, x, weight,
                                                                              rstd, n, c);
  LORA_CUDA_CHECK_LAUNCH();
  if (dweight == nullptr) return;
  const int row_chunks = std::min(kMaxRowChunks, (n + 63) / 64);
  const dim3 grid((c + kColumnTile - 1) / kColumnTile, row_chunks);
  rmsnorm_backward_weight_kernel<<<grid, dim3(kColumnTile, kRowLanes), 0, stream>>>(dweight, dy, x,
                                                                                   rstd, n, c);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
