// Token + position embedding.
//   out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]      (wpe null: token embedding alone, as
//                                                        models with rotary positions have)
// Shapes: tokens [n_batch, n_seq] int32 in [0, vocab); wte [vocab, d_model]; wpe [max_seq, d_model];
//         out [n_batch, n_seq, d_model].
// Backward accumulates (+=) into dwte and dwpe; a null gradient pointer is skipped (frozen).
#pragma once

#include <cstdint>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void embedding_forward_cpu(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                           int n_batch, int n_seq, int d_model, int vocab);
void embedding_backward_cpu(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                            int n_batch, int n_seq, int d_model, int vocab);

#ifdef LORA_WITH_CUDA
void embedding_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                            int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream);
void embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                             int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_embedding_sizes(const int32_t* tokens, int n_batch, int n_seq, int d_model,
                                  int vocab) {
  LORA_CHECK(tokens != nullptr, "tokens must not be null");
  LORA_CHECK(n_batch > 0 && n_seq > 0 && d_model > 0 && vocab > 0,
             "sizes must be positive: n_batch=", n_batch, " n_seq=", n_seq, " d_model=", d_model,
             " vocab=", vocab);
}

inline void check_embedding_forward_args(const float* out, const int32_t* tokens, const float* wte,
                                         const float* wpe, int n_batch, int n_seq, int d_model,
                                         int vocab) {
  LORA_CHECK(out != nullptr && wte != nullptr, "out and wte must not be null");
  (void)wpe;  // may be null
  check_embedding_sizes(tokens, n_batch, n_seq, d_model, vocab);
}

// dwte and dwpe may be null (frozen).
inline void check_embedding_backward_args(const float* dout, const int32_t* tokens, int n_batch,
                                          int n_seq, int d_model, int vocab) {
  LORA_CHECK(dout != nullptr, "dout must not be null");
  check_embedding_sizes(tokens, n_batch, n_seq, d_model, vocab);
}

}  // namespace detail

}  // namespace lora::ops
