// The LoRA path of an adapted linear layer (DESIGN.md section 2):
//   h[n, r] = x[n, d_in] A[d_in, r]
//   y[n, d_out] += s * h B[r, d_out]          s = alpha / r, or alpha / sqrt(r) with rsLoRA
// y and dy have row stride ldy >= d_out: an adapter may add into a column range of a wider product
// (q_proj's columns of the fused q/k/v output, say), with y pointing at its first column.
// x is the (possibly dropped-out) LoRA input; the frozen base product x W + b is computed by
// matmul and y already holds it when lora_forward adds the low-rank update.
// Backward, with g = dL/dy:
//   dB[r, d_out]  += s * h^T g
//   dh[n, r]       = s * g B^T                (written into the caller's scratch dh)
//   dA[d_in, r]   += x^T dh
//   dx[n, d_in]   += dh A^T                   (dx may be null: no input gradient wanted)
// With B = 0: dh = 0, so dA = 0 while dB = s h^T g != 0 (B moves first).
#pragma once

#include <cmath>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void lora_forward_cpu(float* y, float* h, const float* x, const float* a, const float* b,
                      float scaling, int n, int d_in, int rank, int d_out, int ldy);
void lora_backward_cpu(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                       const float* h, const float* a, const float* b, float scaling, int n,
                       int d_in, int rank, int d_out, int ldy);

#ifdef LORA_WITH_CUDA
void lora_forward_cuda(float* y, float* h, const float* x, const float* a, const float* b,
                       float scaling, int n, int d_in, int rank, int d_out, int ldy, cudaStream_t stream);
void lora_backward_cuda(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                        const float* h, const float* a, const float* b, float scaling, int n,
                        int d_in, int rank, int d_out, int ldy, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_lora_sizes(float scaling, int n, int d_in, int rank, int d_out, int ldy) {
  LORA_CHECK(n > 0 && d_in > 0 && rank > 0 && d_out > 0, "sizes must be positive: n=", n,
             " d_in=", d_in, " rank=", rank, " d_out=", d_out);
  LORA_CHECK(ldy >= d_out, "ldy (", ldy, ") must be at least d_out (", d_out, ")");
  LORA_CHECK(std::isfinite(scaling), "scaling must be finite, got ", scaling);
}

inline void check_lora_forward_args(const float* y, const float* h, const float* x,
                                    const float* a, const float* b, float scaling, int n,
                                    int d_in, int rank, int d_out, int ldy) {
  LORA_CHECK(y != nullptr && h != nullptr && x != nullptr && a != nullptr && b != nullptr,
             "y, h, x, a, b must not be null");
  check_lora_sizes(scaling, n, d_in, rank, d_out, ldy);
}

// dx, da, db may be null (not computed); h is needed for db and x for da.
inline void check_lora_backward_args(const float* da, const float* db, const float* dh,
                                     const float* dy, const float* x, const float* h,
                                     const float* a, const float* b, float scaling, int n,
                                     int d_in, int rank, int d_out, int ldy) {
  LORA_CHECK(dh != nullptr && dy != nullptr && a != nullptr && b != nullptr,
             "dh, dy, a, b must not be null");
  check_lora_sizes(scaling, n, d_in, rank, d_out, ldy);
  if (db != nullptr) LORA_CHECK(h != nullptr, "h must not be null when db is wanted");
  if (da != nullptr) LORA_CHECK(x != nullptr, "x must not be null when da is wanted");
}

}  // namespace detail

}  // namespace lora::ops
