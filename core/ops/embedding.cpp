// Token + position embedding on the CPU.
//   forward:  out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]
//   backward: dwte[tokens[b, t], :] += dout[b, t, :];  dwpe[t, :] += sum_b dout[b, t, :]
// Shapes: tokens [n_batch, n_seq]; wte [vocab, d_model]; wpe [>= n_seq, d_model];
// out, dout [n_batch, n_seq, d_model]. Several positions may share a token, so the backward
// splits the work over column blocks of d_model: no two threads touch the same gradient value
// and the summation order does not depend on the thread count.
#include "core/ops/embedding.h"

#include <algorithm>
#include <cstddef>

#include "core/error.h"

namespace lora::ops {
namespace {

// Token ids are host memory here, so every one is range-checked.
void check_tokens(const int32_t* tokens, size_t n_tokens, int vocab) {
  for (size_t i = 0; i < n_tokens; ++i) {
    LORA_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token id ", tokens[i], " at position ", i,
               " is outside [0, ", vocab, ")");
  }
}

constexpr int kColumnBlock = 32;

}  // namespace

void embedding_forward_cpu(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                           int n_batch, int n_seq, int d_model, int vocab) {
  detail::check_embedding_forward_args(out, tokens, wte, wpe, n_batch, n_seq, d_model, vocab);
  check_tokens(tokens, static_cast<size_t>(n_batch) * n_seq, vocab);
  const long n_rows = static_cast<long>(n_batch) * n_seq;
#pragma omp parallel for schedule(static) if (n_rows * d_model > 32768)
  for (long i = 0; i < n_rows; ++i) {
    const int t = static_cast<int>(i % n_seq);
    const float* te = wte + static_cast<size_t>(tokens[i]) * d_model;
    float* o = out + static_cast<size_t>(i) * d_model;
    if (wpe == nullptr) {
      std::copy(te, te + d_model, o);
      continue;
    }
    const float* pe = wpe + static_cast<size_t>(t) * d_model;
#pragma omp simd
    for (int j = 0; j < d_model; ++j) o[j] = te[j] + pe[j];
  }
}

void embedding_backward_cpu(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                            int n_batch, int n_seq, int d_model, int vocab) {
  detail::check_embedding_backward_args(dout, tokens, n_batch, n_seq, d_model, vocab);
  check_tokens(tokens, static_cast<size_t>(n_batch) * n_seq, vocab);
  if (dwte == nullptr && dwpe == nullptr) return;
  const long n_rows = static_cast<long>(n_batch) * n_seq;
  const int n_blocks = (d_model + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (n_rows * d_model > 32768)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int j0 = blk * kColumnBlock;
    const int j1 = std::min(d_model, j0 + kColumnBlock);
    for (long i = 0; i < n_rows; ++i) {
      const float* g = dout + static_cast<size_t>(i) * d_model;
      if (dwte != nullptr) {
        float* dte = dwte + static_cast<size_t>(tokens[i]) * d_model;
#pragma omp simd
        for (int j = j0; j < j1; ++j) dte[j] += g[j];
      }
      if (dwpe != nullptr) {
        float* dpe = dwpe + static_cast<size_t>(i % n_seq) * d_model;
#pragma omp simd
        for (int j = j0; j < j1; ++j) dpe[j] += g[j];
      }
    }
  }
}

}  // namespace lora::ops
