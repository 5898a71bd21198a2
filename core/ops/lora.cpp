// The LoRA path of an adapted linear layer on the CPU (DESIGN.md section 2), on OpenBLAS sgemm:
//   forward:  h[n, r] = x[n, d_in] A[d_in, r];   y[n, d_out] += s h B[r, d_out]
//   backward: dB += s h^T g;  dh = s g B^T (written);  dA += x^T dh;  dx += dh A^T
// with g = dy [n, d_out] (y and dy with row stride ldy). Null dx, dA or dB is not computed; dh is the caller's [n, r] scratch.
// With B = 0 the product g B^T is exactly zero, so dA stays exactly unchanged.
#include "core/ops/lora.h"

#include <cblas.h>

namespace lora::ops {

void lora_forward_cpu(float* y, float* h, const float* x, const float* a, const float* b,
                      float scaling, int n, int d_in, int rank, int d_out, int ldy) {
  detail::check_lora_forward_args(y, h, x, a, b, scaling, n, d_in, rank, d_out, ldy);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, rank, d_in, 1.0f, x, d_in, a, rank,
              0.0f, h, rank);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d_out, rank, scaling, h, rank, b, d_out,
              1.0f, y, ldy);
}

void lora_backward_cpu(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                       const float* h, const float* a, const float* b, float scaling, int n,
                       int d_in, int rank, int d_out, int ldy) {
  detail::check_lora_backward_args(da, db, dh, dy, x, h, a, b, scaling, n, d_in, rank, d_out,
                                   ldy);
  if (db != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rank, d_out, n, scaling, h, rank, dy,
                ldy, 1.0f, db, d_out);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rank, d_out, scaling, dy, ldy, b, d_out,
              0.0f, dh, rank);
  if (da != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d_in, rank, n, 1.0f, x, d_in, dh, rank,
                1.0f, da, rank);
  }
  if (dx != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d_in, rank, 1.0f, dh, rank, a, rank,
                1.0f, dx, d_in);
  }
}

}  // namespace lora::ops
