// Rotary position embedding in Hugging Face's rotate-half convention (the Llama family).
// For a head vector x of even size d at position t, i < d/2, angle a = t * inv_freq[i]:
//   x'[i]       = x[i] cos(a) - x[i + d/2] sin(a)
//   x'[i + d/2] = x[i + d/2] cos(a) + x[i] sin(a)
// applied in place to the n_head query heads and n_kv_head key heads of
// qkv [n_batch, n_seq, (n_head + 2 * n_kv_head) * d] (the value heads are left alone), at
// positions t = 0 .. n_seq - 1 of every sequence. Backward applies the transposed rotation
// (angle -a) to the query and key gradients in place: the gradient with respect to the
// un-rotated q and k.
//   inv_freq[i] = theta^(-2i / d), computed in float32 as transformers does, optionally rescaled
//   by Llama-3.1's "llama3" rule (long wavelengths divided by factor, a smooth blend between
//   low_freq_factor and high_freq_factor).
// cos and sin tables are [max_seq, d/2], made on the host; the CUDA entry points read device
// copies of them (a model uploads its tables once) and run on the given stream.
#pragma once

#include <vector>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

std::vector<float> rope_inv_freq(int head_dim, float theta);
void rope_scale_llama3(std::vector<float>& inv_freq, float factor, float low_freq_factor,
                       float high_freq_factor, int original_max_position_embeddings);
// cos/sin [max_seq, inv_freq.size()].
void rope_tables(const std::vector<float>& inv_freq, int max_seq, std::vector<float>& cos,
                 std::vector<float>& sin);

void rope_forward_cpu(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                      int n_head, int n_kv_head, int head_dim);
void rope_backward_cpu(float* dqkv, const float* cos, const float* sin, int n_batch, int n_seq,
                       int n_head, int n_kv_head, int head_dim);

#ifdef LORA_WITH_CUDA
void rope_forward_cuda(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                       int n_head, int n_kv_head, int head_dim, cudaStream_t stream);
void rope_backward_cuda(float* dqkv, const float* cos, const float* sin, int n_batch, int n_seq,
                        int n_head, int n_kv_head, int head_dim, cudaStream_t stream);
#endif

namespace detail {

inline void check_rope_args(const float* qkv, const float* cos, const float* sin, int n_batch,
                            int n_seq, int n_head, int n_kv_head, int head_dim) {
  LORA_CHECK(qkv != nullptr && cos != nullptr && sin != nullptr, "qkv, cos, sin must not be null");
  LORA_CHECK(n_batch > 0 && n_seq > 0 && n_head > 0 && n_kv_head > 0 && head_dim > 0,
             "sizes must be positive: n_batch=", n_batch, " n_seq=", n_seq, " n_head=", n_head,
             " n_kv_head=", n_kv_head, " head_dim=", head_dim);
  LORA_CHECK(head_dim % 2 == 0, "head_dim must be even, got ", head_dim);
}

}  // namespace detail

}  // namespace lora::ops
