// Causal multi-head self-attention (the part between the qkv and the output projections).
// Input qkv [n_batch, n_seq, 3 * d_model]: for each position, q then k then v, each d_model wide,
// head h owning columns [h * hs, (h + 1) * hs) of each, hs = d_model / n_head.
//   att[b, h, t, u] = softmax_u<=t( q[b,t,h] . k[b,u,h] / sqrt(hs) )   (0 for u > t)
//   out[b, t, h*hs:(h+1)*hs] = sum_u att[b, h, t, u] v[b, u, h]
// Shapes: out [n_batch, n_seq, d_model]; att [n_batch, n_head, n_seq, n_seq] (probabilities,
// saved for backward).
// Backward accumulates (+=) into dqkv [n_batch, n_seq, 3 * d_model].
#pragma once

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void attention_forward_cpu(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                           int d_model, int n_head);
void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* att,
                            int n_batch, int n_seq, int d_model, int n_head);

#ifdef LORA_WITH_CUDA
void attention_forward_cuda(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                            int d_model, int n_head, cudaStream_t stream);
void attention_backward_cuda(float* dqkv, const float* dout, const float* qkv, const float* att,
                             int n_batch, int n_seq, int d_model, int n_head, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_attention_sizes(int n_batch, int n_seq, int d_model, int n_head) {
  LORA_CHECK(n_batch > 0 && n_seq > 0 && d_model > 0 && n_head > 0,
             "sizes must be positive: n_batch=", n_batch, " n_seq=", n_seq, " d_model=", d_model,
             " n_head=", n_head);
  LORA_CHECK(d_model % n_head == 0, "d_model (", d_model, ") must be a multiple of n_head (",
             n_head, ")");
}

inline void check_attention_forward_args(const float* out, const float* att, const float* qkv,
                                         int n_batch, int n_seq, int d_model, int n_head) {
  LORA_CHECK(out != nullptr && att != nullptr && qkv != nullptr, "out, att, qkv must not be null");
  check_attention_sizes(n_batch, n_seq, d_model, n_head);
}

inline void check_attention_backward_args(const float* dqkv, const float* dout, const float* qkv,
                                          const float* att, int n_batch, int n_seq, int d_model,
                                          int n_head) {
  LORA_CHECK(dqkv != nullptr && dout != nullptr && qkv != nullptr && att != nullptr,
             "dqkv, dout, qkv, att must not be null");
  check_attention_sizes(n_batch, n_seq, d_model, n_head);
}

}  // namespace detail

}  // namespace lora::ops
