// The LoRA path of an adapted linear layer (DESIGN.md section 2):
//   h[n, r] = x[n, d_in] A[d_in, r]
//   y[n, d_out] += s * h B[r, d_out]          s = alpha / r, or alpha / sqrt(r) with rsLoRA
// x is the (possibly dropped-out) LoRA input; the frozen base product x W + b is computed by
// matmul and y already holds it when lora_forward adds the low-rank update.
// Backward, with g = dL/dy:
//   dB[r, d_out]  += s * h^T g
//   dh[n, r]       = s * g B^T                (written into the caller's scratch dh)
//   dA[d_in, r]   += x^T dh
//   dx[n, d_in]   += dh A^T                   (dx may be null: no input gradient wanted)
// With B = 0: dh = 0, so dA = 0 while dB = s h^T g != 0 (B moves first).
#pragma once

#include "core/ops/stream.h"

namespace lora::ops {

void lora_forward_cpu(float* y, float* h, const float* x, const float* a, const float* b,
                      float scaling, int n, int d_in, int rank, int d_out);
void lora_backward_cpu(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                       const float* h, const float* a, const float* b, float scaling, int n,
                       int d_in, int rank, int d_out);

#ifdef LORA_WITH_CUDA
void lora_forward_cuda(float* y, float* h, const float* x, const float* a, const float* b,
                       float scaling, int n, int d_in, int rank, int d_out, cudaStream_t stream);
void lora_backward_cuda(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                        const float* h, const float* a, const float* b, float scaling, int n,
                        int d_in, int rank, int d_out, cudaStream_t stream);
#endif

}  // namespace lora::ops
