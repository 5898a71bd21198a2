// Dense layers, in both orientations Hugging Face checkpoints store them.
// matmul: Conv1D orientation (GPT-2), W [d_in, d_out]:
//   y[n, d_out] = x[n, d_in] W[d_in, d_out] + bias[d_out]      (bias may be null)
// Backward:
//   dx[n, d_in]      += dy W^T
//   dw[d_in, d_out]  += x^T dy
//   dbias[d_out]     += sum_i dy[i, :]
// linear: nn.Linear orientation (the Llama family), W [d_out, d_in]:
//   y = x W^T + bias;  dx += dy W;  dw[d_out, d_in] += dy^T x;  dbias += sum_i dy[i, :]
// Any of dx, dw, dbias may be null and is then not computed (frozen weight: no dw, no dbias).
// On the CPU, overwrite_dx = true writes dx = ... instead of accumulating (no need to clear it).
// The CPU version calls OpenBLAS sgemm; the CUDA version cuBLAS (fp32 math, no TF32).
#pragma once

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void matmul_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out);
void matmul_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out, bool overwrite_dx = false);
void linear_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out);
void linear_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out, bool overwrite_dx = false);

#ifdef LORA_WITH_CUDA
void matmul_forward_cuda(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                         int d_out, cudaStream_t stream);
void matmul_backward_cuda(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                          const float* w, int n, int d_in, int d_out, cudaStream_t stream);
void linear_forward_cuda(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                         int d_out, cudaStream_t stream);
void linear_backward_cuda(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                          const float* w, int n, int d_in, int d_out, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_matmul_sizes(int n, int d_in, int d_out) {
  LORA_CHECK(n > 0 && d_in > 0 && d_out > 0, "sizes must be positive: n=", n, " d_in=", d_in,
             " d_out=", d_out);
}

inline void check_matmul_forward_args(const float* y, const float* x, const float* w, int n,
                                      int d_in, int d_out) {
  LORA_CHECK(y != nullptr && x != nullptr && w != nullptr, "y, x, w must not be null");
  check_matmul_sizes(n, d_in, d_out);
}

// dx, dw, dbias may be null (not computed); w is needed for dx and x for dw.
inline void check_matmul_backward_args(const float* dx, const float* dw, const float* dy,
                                       const float* x, const float* w, int n, int d_in,
                                       int d_out) {
  LORA_CHECK(dy != nullptr, "dy must not be null");
  check_matmul_sizes(n, d_in, d_out);
  if (dx != nullptr) LORA_CHECK(w != nullptr, "w must not be null when dx is wanted");
  if (dw != nullptr) LORA_CHECK(x != nullptr, "x must not be null when dw is wanted");
}

}  // namespace detail

}  // namespace lora::ops

namespace lora::ops {

// Language-model head with tied embeddings: the embedding table is used transposed.
//   y[n, vocab] = x[n, c] E[vocab, c]^T
// Backward: dx[n, c] += dy E;  dE[vocab, c] += dy^T x   (dx or dE may be null).
void lm_head_forward_cpu(float* y, const float* x, const float* e, int n, int c, int vocab);
void lm_head_backward_cpu(float* dx, float* de, const float* dy, const float* x, const float* e,
                          int n, int c, int vocab, bool overwrite_dx = false);

#ifdef LORA_WITH_CUDA
void lm_head_forward_cuda(float* y, const float* x, const float* e, int n, int c, int vocab,
                          cudaStream_t stream);
void lm_head_backward_cuda(float* dx, float* de, const float* dy, const float* x, const float* e,
                           int n, int c, int vocab, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_lm_head_sizes(int n, int c, int vocab) {
  LORA_CHECK(n > 0 && c > 0 && vocab > 0, "sizes must be positive: n=", n, " c=", c,
             " vocab=", vocab);
}

inline void check_lm_head_forward_args(const float* y, const float* x, const float* e, int n,
                                       int c, int vocab) {
  LORA_CHECK(y != nullptr && x != nullptr && e != nullptr, "y, x, e must not be null");
  check_lm_head_sizes(n, c, vocab);
}

// dx and de may be null (not computed); e is needed for dx and x for de.
inline void check_lm_head_backward_args(const float* dx, const float* de, const float* dy,
                                        const float* x, const float* e, int n, int c, int vocab) {
  LORA_CHECK(dy != nullptr, "dy must not be null");
  check_lm_head_sizes(n, c, vocab);
  if (dx != nullptr) LORA_CHECK(e != nullptr, "e must not be null when dx is wanted");
  if (de != nullptr) LORA_CHECK(x != nullptr, "x must not be null when de is wanted");
}

}  // namespace detail

}  // namespace lora::ops
