// Dense layers (Conv1D and nn.Linear orientations) and the LM head on the GPU, with cuBLAS.
//   matmul:  y[n, d_out] = x[n, d_in] W[d_in, d_out] + bias[d_out]
//            dx += dy W^T;  dw += x^T dy;  dbias += sum_i dy[i, :]   (null gradients skipped)
//   linear:  y[n, d_out] = x[n, d_in] W[d_out, d_in]^T + bias[d_out]
//            dx += dy W;    dw += dy^T x;  dbias += sum_i dy[i, :]   (null gradients skipped)
//   lm_head: y[n, vocab] = x[n, c] E[vocab, c]^T
//            dx += dy E;  dE += dy^T x                                (null gradients skipped)
// All matrices are row-major; the products go through cuda::sgemm_row_major (fp32 math, no TF32)
// on the caller's stream. The bias is written into y first and the product added (beta = 1);
// dbias is a column sum over the rows.
#include "core/ops/matmul.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

constexpr int kColumnTile = 32;
constexpr int kRowLanes = 8;
constexpr int kMaxRowChunks = 256;

}  // namespace

static __global__ void broadcast_rows_kernel(float* y, const float* bias, size_t n_rows, int cols) {
  const size_t total = n_rows * cols;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[idx] = bias[idx % cols];
  }
}

// dbias[j] += sum_i dy[i, j]. grid (ceil(cols / kColumnTile), row chunks), block (kColumnTile,
// kRowLanes).
static __global__ void column_sum_kernel(float* dbias, const float* dy, int n_rows, int cols) {
  __shared__ float part[kRowLanes][kColumnTile];
  const int j = blockIdx.x * kColumnTile + threadIdx.x;
  float sum = 0.0f;
  if (j < cols) {
    for (int i = blockIdx.y * kRowLanes + threadIdx.y; i < n_rows; i += gridDim.y * kRowLanes) {
      sum += dy[static_cast<size_t>(i) * cols + j];
    }
  }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int r = 1; r < kRowLanes; ++r) sum += part[r][threadIdx.x];
    atomicAdd(dbias + j, sum);
  }
}

void matmul_forward_cuda(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                         int d_out, cudaStream_t stream) {
  detail::check_matmul_forward_args(y, x, w, n, d_in, d_out);
  float beta = 0.0f;
  if (bias != nullptr) {
    broadcast_rows_kernel<<<grid_for(static_cast<size_t>(n) * d_out), kBlockSize, 0, stream>>>(
        y, bias, static_cast<size_t>(n), d_out);
    LORA_CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  }
  // y[n, d_out] (+)= x[n, d_in] W[d_in, d_out]
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_N, n, d_out, d_in, 1.0f, x, d_in, w, d_out,
                        beta, y, d_out);
}

void matmul_backward_cuda(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                          const float* w, int n, int d_in, int d_out, cudaStream_t stream) {
  detail::check_matmul_backward_args(dx, dw, dy, x, w, n, d_in, d_out);
  if (dx != nullptr) {
    // dx[n, d_in] += dy[n, d_out] W[d_in, d_out]^T
    cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_T, n, d_in, d_out, 1.0f, dy, d_out, w,
                          d_out, 1.0f, dx, d_in);
  }
  if (dw != nullptr) {
    // dw[d_in, d_out] += x[n, d_in]^T dy[n, d_out]
    cuda::sgemm_row_major(stream, CUBLAS_OP_T, CUBLAS_OP_N, d_in, d_out, n, 1.0f, x, d_in, dy,
                          d_out, 1.0f, dw, d_out);
  }
  if (dbias != nullptr) {
    const int row_chunks = std::min(kMaxRowChunks, (n + 63) / 64);
    const dim3 grid((d_out + kColumnTile - 1) / kColumnTile, row_chunks);
    column_sum_kernel<<<grid, dim3(kColumnTile, kRowLanes), 0, stream>>>(dbias, dy, n, d_out);
    LORA_CUDA_CHECK_LAUNCH();
  }
}

namespace {

// y's rows filled with the bias (so the product can accumulate onto it); the beta to use.
float fill_bias_rows(float* y, const float* bias, int n, int d_out, cudaStream_t stream) {
  if (bias == nullptr) return 0.0f;
  broadcast_rows_kernel<<<grid_for(static_cast<size_t>(n) * d_out), kBlockSize, 0, stream>>>(
      y, bias, static_cast<size_t>(n), d_out);
  LORA_CUDA_CHECK_LAUNCH();
  return 1.0f;
}

void bias_backward(float* dbias, const float* dy, int n, int d_out, cudaStream_t stream) {
  const int row_chunks = std::min(kMaxRowChunks, (n + 63) / 64);
  const dim3 grid((d_out + kColumnTile - 1) / kColumnTile, row_chunks);
  column_sum_kernel<<<grid, dim3(kColumnTile, kRowLanes), 0, stream>>>(dbias, dy, n, d_out);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

void linear_forward_cuda(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                         int d_out, cudaStream_t stream) {
  detail::check_matmul_forward_args(y, x, w, n, d_in, d_out);
  const float beta = fill_bias_rows(y, bias, n, d_out, stream);
  // y[n, d_out] (+)= x[n, d_in] W[d_out, d_in]^T
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_T, n, d_out, d_in, 1.0f, x, d_in, w, d_in,
                        beta, y, d_out);
}

void linear_backward_cuda(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                          const float* w, int n, int d_in, int d_out, cudaStream_t stream) {
  detail::check_matmul_backward_args(dx, dw, dy, x, w, n, d_in, d_out);
  if (dx != nullptr) {
    // dx[n, d_in] += dy[n, d_out] W[d_out, d_in]
    cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_N, n, d_in, d_out, 1.0f, dy, d_out, w,
                          d_in, 1.0f, dx, d_in);
  }
  if (dw != nullptr) {
    // dw[d_out, d_in] += dy[n, d_out]^T x[n, d_in]
    cuda::sgemm_row_major(stream, CUBLAS_OP_T, CUBLAS_OP_N, d_out, d_in, n, 1.0f, dy, d_out, x,
                          d_in, 1.0f, dw, d_in);
  }
  if (dbias != nullptr) bias_backward(dbias, dy, n, d_out, stream);
}

void lm_head_forward_cuda(float* y, const float* x, const float* e, int n, int c, int vocab,
                          cudaStream_t stream) {
  detail::check_lm_head_forward_args(y, x, e, n, c, vocab);
  // y[n, vocab] = x[n, c] E[vocab, c]^T
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_T, n, vocab, c, 1.0f, x, c, e, c, 0.0f, y,
                        vocab);
}

void lm_head_backward_cuda(float* dx, float* de, const float* dy, const float* x, const float* e,
                           int n, int c, int vocab, cudaStream_t stream) {
  detail::check_lm_head_backward_args(dx, de, dy, x, e, n, c, vocab);
  if (dx != nullptr) {
    // dx[n, c] += dy[n, vocab] E[vocab, c]
    cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_N, n, c, vocab, 1.0f, dy, vocab, e, c,
                          1.0f, dx, c);
  }
  if (de != nullptr) {
    // dE[vocab, c] += dy[n, vocab]^T x[n, c]
    cuda::sgemm_row_major(stream, CUBLAS_OP_T, CUBLAS_OP_N, vocab, c, n, 1.0f, dy, vocab, x, c,
                          1.0f, de, c);
  }
}

}  // namespace lora::ops
