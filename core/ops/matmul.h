// Dense layer in Conv1D orientation (as Hugging Face GPT-2 stores it).
//   y[n, d_out] = x[n, d_in] W[d_in, d_out] + bias[d_out]      (bias may be null)
// Backward:
//   dx[n, d_in]      += dy W^T
//   dw[d_in, d_out]  += x^T dy
//   dbias[d_out]     += sum_i dy[i, :]
// Any of dx, dw, dbias may be null and is then not computed (frozen weight: no dw, no dbias).
// The CPU version calls OpenBLAS sgemm; the CUDA version cuBLAS.
#pragma once

#include "core/ops/stream.h"

namespace lora::ops {

void matmul_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out);
void matmul_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out);

#ifdef LORA_WITH_CUDA
void matmul_forward_cuda(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                         int d_out, cudaStream_t stream);
void matmul_backward_cuda(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                          const float* w, int n, int d_in, int d_out, cudaStream_t stream);
#endif

}  // namespace lora::ops

namespace lora::ops {

// Language-model head with tied embeddings: the embedding table is used transposed.
//   y[n, vocab] = x[n, c] E[vocab, c]^T
// Backward: dx[n, c] += dy E;  dE[vocab, c] += dy^T x   (dx or dE may be null).
void lm_head_forward_cpu(float* y, const float* x, const float* e, int n, int c, int vocab);
void lm_head_backward_cpu(float* dx, float* de, const float* dy, const float* x, const float* e,
                          int n, int c, int vocab);

#ifdef LORA_WITH_CUDA
void lm_head_forward_cuda(float* y, const float* x, const float* e, int n, int c, int vocab,
                          cudaStream_t stream);
void lm_head_backward_cuda(float* dx, float* de, const float* dy, const float* x, const float* e,
                           int n, int c, int vocab, cudaStream_t stream);
#endif

}  // namespace lora::ops
