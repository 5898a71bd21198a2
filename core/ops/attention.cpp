// Causal multi-head self-attention on the CPU, one (batch, head) pair at a time, each product
// over the whole sequence by small_sgemm (core/ops/small_gemm.h: register tiles on the calling
// thread, none of the BLAS's per-call cost) in its causal modes, so that only the 6 x 16 tiles
// that reach the diagonal are computed: about half of each T x T product is skipped, to within
// one tile.
//   forward, per (b, h), hs = head_dim, q/k/v read in place from qkv [B, T, (NH + 2 NKV) hs]
//   (query head h reads key/value head h / (NH / NKV)):
//     S = Q K^T / sqrt(hs)   (rows t, keys u <= t)
//     att[b, h] = P = row softmax of S over u <= t, 0 above the diagonal
//     out[b, :, head h] = P V
//   backward, with dO = dout[b, :, head h] (accumulates into dqkv):
//     dV += P^T dO;   dP = dO V^T;   dS = P * (dP - rowsum(P * dP)) / sqrt(hs)
//     dQ += dS K;     dK += dS^T Q
// P and dS hold exact zeros above the diagonal, so the products that sum over keys stop at each
// tile's diagonal (and those over queries start there) with the values of the full products.
// With at least as many (batch, head) pairs as threads, the pairs run in parallel (OpenMP), each
// on one thread: many small products keep every thread busy, where threading each small product
// would not. Otherwise the pairs run one after another with the softmax rows in parallel.
// Backward runs in parallel over (batch, key/value head), so the query heads that share a
// key/value head (grouped-query attention) add into its dK and dV on one thread. Every value is
// computed by one thread in a fixed order: the same bits at any thread count.
#include "core/ops/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/ops/small_gemm.h"
#include "core/ops/vec_math.h"

namespace lora::ops {

void attention_forward_cpu(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                           int n_head, int n_kv_head, int head_dim) {
  detail::check_attention_forward_args(out, att, qkv, n_batch, n_seq, n_head, n_kv_head, head_dim);
  const int T = n_seq, hs = head_dim, C = n_head * hs, group = n_head / n_kv_head;
  const int ld = (n_head + 2 * n_kv_head) * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int pairs = n_batch * n_head;
  const bool parallel_pairs = pairs >= omp_get_max_threads() && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(dynamic) if (parallel_pairs)
  for (int bh = 0; bh < pairs; ++bh) {
    const int b = bh / n_head, h = bh % n_head;
    const int kvh = h / group;
    const float* row0 = qkv + static_cast<size_t>(b) * T * ld;
    const float* q = row0 + static_cast<size_t>(h) * hs;
    const float* k = row0 + static_cast<size_t>(n_head + kvh) * hs;
    const float* v = row0 + static_cast<size_t>(n_head + n_kv_head + kvh) * hs;
    float* p = att + (static_cast<size_t>(b) * n_head + h) * T * T;
    float* o = out + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;
    small_sgemm(false, true, T, T, hs, scale, q, ld, k, ld, 0.0f, p, T, Causal::kOutputLower);
#pragma omp parallel for schedule(static) if (!parallel_pairs && T >= 256)
    for (int t = 0; t < T; ++t) {
      float* s = p + static_cast<size_t>(t) * T;
      const int n = t + 1;
      float m = s[0];
#pragma omp simd reduction(max : m)
      for (int u = 1; u < n; ++u) m = s[u] > m ? s[u] : m;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int u = 0; u < n; ++u) {
        const float e = detail::exp_approx(s[u] - m);
        s[u] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;
#pragma omp simd
      for (int u = 0; u < n; ++u) s[u] *= inv;
      std::fill(s + n, s + T, 0.0f);
    }
    small_sgemm(false, false, T, hs, T, 1.0f, p, T, v, ld, 0.0f, o, C, Causal::kInnerUpToRow);
  }
}

void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* att,
                            int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim) {
  detail::check_attention_backward_args(dqkv, dout, qkv, att, n_batch, n_seq, n_head, n_kv_head,
                                        head_dim);
  const int T = n_seq, hs = head_dim, C = n_head * hs, group = n_head / n_kv_head;
  const int ld = (n_head + 2 * n_kv_head) * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int pairs = n_batch * n_kv_head;
  const int threads = omp_get_max_threads();
  const bool parallel_pairs = pairs >= threads && threads > 1;
  // dP, then dS, in place: one T x T scratch per thread.
  std::vector<float> scratch(static_cast<size_t>(parallel_pairs ? threads : 1) * T * T);
#pragma omp parallel for schedule(dynamic) if (parallel_pairs)
  for (int bkv = 0; bkv < pairs; ++bkv) {
    const int b = bkv / n_kv_head, kvh = bkv % n_kv_head;
    float* ds =
        scratch.data() + (parallel_pairs ? static_cast<size_t>(omp_get_thread_num()) * T * T : 0);
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
      const size_t row0 = static_cast<size_t>(b) * T * ld;
      const size_t q_col = static_cast<size_t>(h) * hs;
      const size_t k_col = static_cast<size_t>(n_head + kvh) * hs;
      const size_t v_col = static_cast<size_t>(n_head + n_kv_head + kvh) * hs;
      const float* q = qkv + row0 + q_col;
      const float* k = qkv + row0 + k_col;
      const float* v = qkv + row0 + v_col;
      float* dq = dqkv + row0 + q_col;
      float* dk = dqkv + row0 + k_col;
      float* dv = dqkv + row0 + v_col;
      const float* p = att + (static_cast<size_t>(b) * n_head + h) * T * T;
      const float* g = dout + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;
      // dV += P^T dO (P^T(u, t) = 0 for t < u);  dP = dO V^T (wanted for u <= t)
      small_sgemm(true, false, T, hs, T, 1.0f, p, T, g, C, 1.0f, dv, ld, Causal::kInnerFromRow);
      small_sgemm(false, true, T, T, hs, 1.0f, g, C, v, ld, 0.0f, ds, T, Causal::kOutputLower);
#pragma omp parallel for schedule(static) if (!parallel_pairs && T >= 256)
      for (int t = 0; t < T; ++t) {
        const float* pt = p + static_cast<size_t>(t) * T;
        float* dst = ds + static_cast<size_t>(t) * T;
        const int n = t + 1;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int u = 0; u < n; ++u) dot += pt[u] * dst[u];
#pragma omp simd
        for (int u = 0; u < n; ++u) dst[u] = pt[u] * (dst[u] - dot) * scale;
        // Above the diagonal dS is 0 (the products below read it up to their tiles' edges).
        std::fill(dst + n, dst + T, 0.0f);
      }
      // dQ += dS K (dS(t, u) = 0 for u > t);  dK += dS^T Q (dS^T(u, t) = 0 for t < u)
      small_sgemm(false, false, T, hs, T, 1.0f, ds, T, k, ld, 1.0f, dq, ld, Causal::kInnerUpToRow);
      small_sgemm(true, false, T, hs, T, 1.0f, ds, T, q, ld, 1.0f, dk, ld, Causal::kInnerFromRow);
    }
  }
}

}  // namespace lora::ops
