// Causal multi-head self-attention with grouped-query heads (the part between the input and the
// output projections).
// Input qkv [n_batch, n_seq, (n_head + 2 * n_kv_head) * head_dim]: for each position the n_head
// query heads, then the n_kv_head key heads, then the n_kv_head value heads, each head_dim wide.
// Query head h reads key/value head g = h / (n_head / n_kv_head) (GQA; n_kv_head = n_head is plain
// multi-head attention, as GPT-2's c_attn output q | k | v is laid out).
//   att[b, h, t, u] = softmax_u<=t( q[b,t,h] . k[b,u,g] / sqrt(head_dim) )   (0 for u > t)
//   out[b, t, h*hd:(h+1)*hd] = sum_u att[b, h, t, u] v[b, u, g]
// Shapes: out [n_batch, n_seq, n_head * head_dim]; att [n_batch, n_head, n_seq, n_seq]
// (probabilities, saved for backward).
// Backward accumulates (+=) into dqkv (same layout as qkv): a key/value head's gradient sums over
// the query heads of its group.
#pragma once

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void attention_forward_cpu(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                           int n_head, int n_kv_head, int head_dim);
void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* att,
                            int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim);

#ifdef LORA_WITH_CUDA
void attention_forward_cuda(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                            int n_head, int n_kv_head, int head_dim, cudaStream_t stream);
void attention_backward_cuda(float* dqkv, const float* dout, const float* qkv, const float* att,
                             int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim,
                             cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_attention_sizes(int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim) {
  LORA_CHECK(n_batch > 0 && n_seq > 0 && n_head > 0 && n_kv_head > 0 && head_dim > 0,
             "sizes must be positive: n_batch=", n_batch, " n_seq=", n_seq, " n_head=", n_head,
             " n_kv_head=", n_kv_head, " head_dim=", head_dim);
  LORA_CHECK(n_head % n_kv_head == 0, "n_kv_head (", n_kv_head, ") must divide n_head (", n_head,
             ")");
}

inline void check_attention_forward_args(const float* out, const float* att, const float* qkv,
                                         int n_batch, int n_seq, int n_head, int n_kv_head,
                                         int head_dim) {
  LORA_CHECK(out != nullptr && att != nullptr && qkv != nullptr, "out, att, qkv must not be null");
  check_attention_sizes(n_batch, n_seq, n_head, n_kv_head, head_dim);
}

inline void check_attention_backward_args(const float* dqkv, const float* dout, const float* qkv,
                                          const float* att, int n_batch, int n_seq, int n_head,
                                          int n_kv_head, int head_dim) {
  LORA_CHECK(dqkv != nullptr && dout != nullptr && qkv != nullptr && att != nullptr,
             "dqkv, dout, qkv, att must not be null");
  check_attention_sizes(n_batch, n_seq, n_head, n_kv_head, head_dim);
}

}  // namespace detail

}  // namespace lora::ops
