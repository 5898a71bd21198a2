// Fused softmax + cross-entropy over the vocabulary on the CPU, one row per OpenMP iteration.
//   forward:  loss[i] = m + log(sum_j exp(l[i, j] - m)) - l[i, t[i]],  m = max_j l[i, j]
//   backward: dlogits[i, j] = (exp(l[i, j] - m) / sum - [j == t[i]]) * dloss   (written)
// The exponentials are float (detail::exp_approx, vectorised), their sum is accumulated in
// double. The backward recomputes max and sum (or takes the forward's), then overwrites the row,
// so dlogits may alias logits. A negative target masks its row (loss 0, gradient row 0).
// Shapes: logits, dlogits [n, vocab]; targets [n] in [0, vocab) or < 0; losses [n].
#include "core/ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "core/error.h"
#include "core/ops/vec_math.h"

namespace lora::ops {
namespace {

// Targets are host memory here, so every one is range-checked (negative ones are masked rows).
void check_targets(const int32_t* targets, int n, int vocab) {
  for (int i = 0; i < n; ++i) {
    LORA_CHECK(targets[i] < vocab, "target ", targets[i], " of row ", i, " is outside [0, ", vocab,
               ") (negative ids mask a row)");
  }
}

float row_max(const float* row, int vocab) {
  float m = row[0];
#pragma omp simd reduction(max : m)
  for (int j = 0; j < vocab; ++j) m = row[j] > m ? row[j] : m;
  return m;
}

double row_sum_exp(const float* row, float m, int vocab) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < vocab; ++j) sum += static_cast<double>(detail::exp_approx(row[j] - m));
  return sum;
}

}  // namespace

void cross_entropy_forward_cpu(float* losses, const float* logits, const int32_t* targets, int n,
                               int vocab, float* row_max_out, double* row_sum_out) {
  LORA_CHECK((row_max_out == nullptr) == (row_sum_out == nullptr),
             "row_max and row_sum go together");
  detail::check_cross_entropy_forward_args(losses, logits, targets, n, vocab);
  check_targets(targets, n, vocab);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * vocab > 32768)
  for (int i = 0; i < n; ++i) {
    if (targets[i] < 0) {
      losses[i] = 0.0f;
      continue;
    }
    const float* row = logits + static_cast<size_t>(i) * vocab;
    const float m = row_max(row, vocab);
    const double sum = row_sum_exp(row, m, vocab);
    if (row_max_out != nullptr) {
      row_max_out[i] = m;
      row_sum_out[i] = sum;
    }
    losses[i] = static_cast<float>(static_cast<double>(m) + std::log(sum) -
                                   static_cast<double>(row[targets[i]]));
  }
}

void cross_entropy_backward_cpu(float* dlogits, const float* logits, const int32_t* targets,
                                float dloss, int n, int vocab, const float* row_max_in,
                                const double* row_sum_in) {
  LORA_CHECK((row_max_in == nullptr) == (row_sum_in == nullptr), "row_max and row_sum go together");
  detail::check_cross_entropy_backward_args(dlogits, logits, targets, dloss, n, vocab);
  check_targets(targets, n, vocab);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * vocab > 32768)
  for (int i = 0; i < n; ++i) {
    const float* row = logits + static_cast<size_t>(i) * vocab;
    float* drow = dlogits + static_cast<size_t>(i) * vocab;
    if (targets[i] < 0) {
      std::fill(drow, drow + vocab, 0.0f);
      continue;
    }
    const float m = row_max_in ? row_max_in[i] : row_max(row, vocab);
    const double sum = row_sum_in ? row_sum_in[i] : row_sum_exp(row, m, vocab);
    const float scale = static_cast<float>(static_cast<double>(dloss) / sum);
#pragma omp simd
    for (int j = 0; j < vocab; ++j) drow[j] = detail::exp_approx(row[j] - m) * scale;
    drow[targets[i]] -= dloss;
  }
}

void cross_entropy_mean_cpu(float* mean_out, double* loss_sum, const float* losses,
                            const int32_t* targets, int n, long n_unmasked) {
  detail::check_cross_entropy_mean_args(mean_out, loss_sum, losses, targets, n, n_unmasked);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    if (targets[i] >= 0) sum += losses[i];
  }
  const float mean =
      n_unmasked > 0 ? static_cast<float>(sum / static_cast<double>(n_unmasked)) : 0.0f;
  *mean_out = mean;
  *loss_sum += static_cast<double>(mean) * static_cast<double>(n_unmasked);
}

}  // namespace lora::ops
