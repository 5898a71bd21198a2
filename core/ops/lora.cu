// The LoRA path of an adapted linear layer on the GPU (DESIGN.md section 2), four cuBLAS products
// on the caller's stream (row-major, fp32 math):
//   forward:  h[n, r] = x[n, d_in] A[d_in, r];   y[n, d_out] += s * h B[r, d_out]
//   backward: dB[r, d_out] += s * h^T g;   dh[n, r] = s * g B^T;
//             dA[d_in, r]  += x^T dh;      dx[n, d_in] += dh A^T   (dx may be null)
// y and dy have row stride ldy (an adapter may add into a column range of a wider product).
// s is `scaling` (alpha / r, or alpha / sqrt(r) with rsLoRA); g = dy. dh is always written; null
// dA, dB or dx are not computed.
#include "core/ops/lora.h"

#include "core/cuda_runtime.h"

namespace lora::ops {

void lora_forward_cuda(float* y, float* h, const float* x, const float* a, const float* b,
                       float scaling, int n, int d_in, int rank, int d_out, int ldy,
                       cudaStream_t stream) {
  detail::check_lora_forward_args(y, h, x, a, b, scaling, n, d_in, rank, d_out, ldy);
  // h[n, r] = x[n, d_in] A[d_in, r]
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_N, n, rank, d_in, 1.0f, x, d_in, a, rank,
                        0.0f, h, rank);
  // y[n, d_out] += s * h[n, r] B[r, d_out]
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_N, n, d_out, rank, scaling, h, rank, b,
                        d_out, 1.0f, y, ldy);
}

void lora_backward_cuda(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                        const float* h, const float* a, const float* b, float scaling, int n,
                        int d_in, int rank, int d_out, int ldy, cudaStream_t stream) {
  detail::check_lora_backward_args(da, db, dh, dy, x, h, a, b, scaling, n, d_in, rank, d_out,
                                   ldy);
  if (db != nullptr) {
    // dB[r, d_out] += s * h[n, r]^T g[n, d_out]
    cuda::sgemm_row_major(stream, CUBLAS_OP_T, CUBLAS_OP_N, rank, d_out, n, scaling, h, rank, dy,
                          ldy, 1.0f, db, d_out);
  }
  // dh[n, r] = s * g[n, d_out] B[r, d_out]^T
  cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_T, n, rank, d_out, scaling, dy, ldy, b,
                        d_out, 0.0f, dh, rank);
  if (da != nullptr) {
    // dA[d_in, r] += x[n, d_in]^T dh[n, r]
    cuda::sgemm_row_major(stream, CUBLAS_OP_T, CUBLAS_OP_N, d_in, rank, n, 1.0f, x, d_in, dh, rank,
                          1.0f, da, rank);
  }
  if (dx != nullptr) {
    // dx[n, d_in] += dh[n, r] A[d_in, r]^T
    cuda::sgemm_row_major(stream, CUBLAS_OP_N, CUBLAS_OP_T, n, d_in, rank, 1.0f, dh, rank, a, rank,
                          1.0f, dx, d_in);
  }
}

}  // namespace lora::ops
