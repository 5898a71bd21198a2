// Fused softmax + cross-entropy over the vocabulary.
//   loss[i] = logsumexp(logits[i, :]) - logits[i, targets[i]]
// Backward writes (does not accumulate)
//   dlogits[i, :] = (softmax(logits[i, :]) - onehot(targets[i])) * dloss
// where dloss is the gradient of the objective with respect to each row's loss (1/n for the mean).
// dlogits may alias logits (in place), so the logits never need a second buffer.
// A negative target masks its row: loss 0 and a zero gradient row (prompt tokens, padding).
// Shapes: logits, dlogits [n, vocab]; targets [n] int32 in [0, vocab) or < 0; losses [n].
// cross_entropy_mean: the mean loss over the n_unmasked rows whose target is >= 0, and a running
// sum that a model reads once per log line instead of once per forward:
//   mean = n_unmasked > 0 ? float(sum_{i: targets[i] >= 0} losses[i] / n_unmasked) : 0
//   (the sum in double);  *mean_out = mean;  *loss_sum += double(mean) * n_unmasked
// The CUDA version keeps mean_out and loss_sum in device memory.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

// The target id of a masked position (any negative id masks).
inline constexpr int32_t kIgnoreTarget = -1;

// On the CPU the forward can keep each unmasked row's max and sum of exponentials (row_max [n],
// row_sum [n], both or neither); a backward given them skips recomputing both (two fewer passes
// over the logits) and produces the same bits.
void cross_entropy_forward_cpu(float* losses, const float* logits, const int32_t* targets, int n,
                               int vocab, float* row_max = nullptr, double* row_sum = nullptr);
void cross_entropy_backward_cpu(float* dlogits, const float* logits, const int32_t* targets,
                                float dloss, int n, int vocab, const float* row_max = nullptr,
                                const double* row_sum = nullptr);
void cross_entropy_mean_cpu(float* mean_out, double* loss_sum, const float* losses,
                            const int32_t* targets, int n, long n_unmasked);

#ifdef LORA_WITH_CUDA
void cross_entropy_forward_cuda(float* losses, const float* logits, const int32_t* targets, int n,
                                int vocab, cudaStream_t stream);
void cross_entropy_backward_cuda(float* dlogits, const float* logits, const int32_t* targets,
                                 float dloss, int n, int vocab, cudaStream_t stream);
void cross_entropy_mean_cuda(float* mean_out, double* loss_sum, const float* losses,
                             const int32_t* targets, int n, long n_unmasked, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_cross_entropy_sizes(const float* logits, const int32_t* targets, int n,
                                      int vocab) {
  LORA_CHECK(logits != nullptr && targets != nullptr, "logits and targets must not be null");
  LORA_CHECK(n > 0 && vocab > 0, "sizes must be positive: n=", n, " vocab=", vocab);
}

inline void check_cross_entropy_forward_args(const float* losses, const float* logits,
                                             const int32_t* targets, int n, int vocab) {
  LORA_CHECK(losses != nullptr, "losses must not be null");
  check_cross_entropy_sizes(logits, targets, n, vocab);
}

inline void check_cross_entropy_backward_args(const float* dlogits, const float* logits,
                                              const int32_t* targets, float dloss, int n,
                                              int vocab) {
  LORA_CHECK(dlogits != nullptr, "dlogits must not be null");
  check_cross_entropy_sizes(logits, targets, n, vocab);
  LORA_CHECK(std::isfinite(dloss), "dloss must be finite, got ", dloss);
}

inline void check_cross_entropy_mean_args(const float* mean_out, const double* loss_sum,
                                          const float* losses, const int32_t* targets, int n,
                                          long n_unmasked) {
  LORA_CHECK(mean_out != nullptr && loss_sum != nullptr && losses != nullptr && targets != nullptr,
             "mean_out, loss_sum, losses, targets must not be null");
  LORA_CHECK(n > 0, "n must be positive, got ", n);
  LORA_CHECK(n_unmasked >= 0 && n_unmasked <= n, "n_unmasked ", n_unmasked, " outside [0, ", n,
             "]");
}

}  // namespace detail

}  // namespace lora::ops
