// Causal multi-head self-attention on the CPU, parallel over (batch, head) with OpenMP.
//   forward, per (b, h), hs = d_model / n_head, q/k/v rows read in place from qkv [B, T, 3C]:
//     s[t, u] = q_t . k_u / sqrt(hs)  (u <= t);  att[b, h, t, :] = softmax(s[t, :u<=t]), 0 after t
//     out[b, t, h*hs:(h+1)*hs] = sum_{u<=t} att[t, u] v_u
//   backward (accumulates into dqkv [B, T, 3C]), with g_t = dout[b, t, head h]:
//     dv_u += att[t, u] g_t;   dp[t, u] = g_t . v_u
//     ds[t, u] = att[t, u] (dp[t, u] - sum_u' att[t, u'] dp[t, u']) / sqrt(hs)
//     dq_t += sum_u ds[t, u] k_u;   dk_u += sum_t ds[t, u] q_t
// Only the causal triangle is computed. The dot products against all earlier keys (values in
// backward) run as vector updates over u on a transposed per-thread copy of K (V); the rest are
// vector updates over the head dimension. No BLAS call is made inside the parallel region.
#include "core/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/error.h"
#include "core/ops/vec_math.h"

namespace lora::ops {
namespace {

void check_args(int n_batch, int n_seq, int d_model, int n_head) {
  LORA_CHECK(n_batch > 0 && n_seq > 0 && d_model > 0 && n_head > 0,
             "sizes must be positive: n_batch=", n_batch, " n_seq=", n_seq, " d_model=", d_model,
             " n_head=", n_head);
  LORA_CHECK(d_model % n_head == 0, "d_model (", d_model, ") must be a multiple of n_head (",
             n_head, ")");
}

// dst[d * n_seq + u] = src[u * stride + d] for u < n_seq, d < hs.
void transpose_head(float* dst, const float* src, int n_seq, int hs, size_t stride) {
  for (int u = 0; u < n_seq; ++u) {
    const float* row = src + static_cast<size_t>(u) * stride;
    for (int d = 0; d < hs; ++d) dst[static_cast<size_t>(d) * n_seq + u] = row[d];
  }
}

}  // namespace

void attention_forward_cpu(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                           int d_model, int n_head) {
  LORA_CHECK(out != nullptr && att != nullptr && qkv != nullptr, "out, att, qkv must not be null");
  check_args(n_batch, n_seq, d_model, n_head);
  const int T = n_seq;
  const int hs = d_model / n_head;
  const size_t stride = 3 * static_cast<size_t>(d_model);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const double work = static_cast<double>(n_batch) * n_head * T * T * hs;
#pragma omp parallel if (work > 262144.0)
  {
    std::vector<float> kt(static_cast<size_t>(hs) * T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < n_batch; ++b) {
      for (int h = 0; h < n_head; ++h) {
        const float* base = qkv + static_cast<size_t>(b) * T * stride;
        const float* q_base = base + static_cast<size_t>(h) * hs;
        const float* k_base = q_base + d_model;
        const float* v_base = q_base + 2 * static_cast<size_t>(d_model);
        float* att_bh = att + (static_cast<size_t>(b) * n_head + h) * T * T;
        transpose_head(kt.data(), k_base, T, hs, stride);
        for (int t = 0; t < T; ++t) {
          const float* q = q_base + static_cast<size_t>(t) * stride;
          float* s = att_bh + static_cast<size_t>(t) * T;
          const int n_keys = t + 1;
#pragma omp simd
          for (int u = 0; u < n_keys; ++u) s[u] = 0.0f;
          for (int d = 0; d < hs; ++d) {
            const float qd = q[d] * scale;
            const float* kd = kt.data() + static_cast<size_t>(d) * T;
#pragma omp simd
            for (int u = 0; u < n_keys; ++u) s[u] += qd * kd[u];
          }
          float m = s[0];
#pragma omp simd reduction(max : m)
          for (int u = 0; u < n_keys; ++u) m = s[u] > m ? s[u] : m;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int u = 0; u < n_keys; ++u) {
            const float e = detail::exp_approx(s[u] - m);
            s[u] = e;
            sum += e;
          }
          const float inv = 1.0f / sum;
#pragma omp simd
          for (int u = 0; u < n_keys; ++u) s[u] *= inv;
          for (int u = n_keys; u < T; ++u) s[u] = 0.0f;

          float* o = out + (static_cast<size_t>(b) * T + t) * d_model + static_cast<size_t>(h) * hs;
#pragma omp simd
          for (int d = 0; d < hs; ++d) o[d] = 0.0f;
          for (int u = 0; u < n_keys; ++u) {
            const float p = s[u];
            const float* v = v_base + static_cast<size_t>(u) * stride;
#pragma omp simd
            for (int d = 0; d < hs; ++d) o[d] += p * v[d];
          }
        }
      }
    }
  }
}

void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* att,
                            int n_batch, int n_seq, int d_model, int n_head) {
  LORA_CHECK(dqkv != nullptr && dout != nullptr && qkv != nullptr && att != nullptr,
             "dqkv, dout, qkv, att must not be null");
  check_args(n_batch, n_seq, d_model, n_head);
  const int T = n_seq;
  const int hs = d_model / n_head;
  const size_t stride = 3 * static_cast<size_t>(d_model);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const double work = static_cast<double>(n_batch) * n_head * T * T * hs;
#pragma omp parallel if (work > 262144.0)
  {
    std::vector<float> vt(static_cast<size_t>(hs) * T);
    std::vector<float> dk(static_cast<size_t>(T) * hs);
    std::vector<float> dv(static_cast<size_t>(T) * hs);
    std::vector<float> ds(T);
    std::vector<float> dq(hs);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < n_batch; ++b) {
      for (int h = 0; h < n_head; ++h) {
        const float* base = qkv + static_cast<size_t>(b) * T * stride;
        const float* q_base = base + static_cast<size_t>(h) * hs;
        const float* k_base = q_base + d_model;
        const float* v_base = q_base + 2 * static_cast<size_t>(d_model);
        const float* att_bh = att + (static_cast<size_t>(b) * n_head + h) * T * T;
        transpose_head(vt.data(), v_base, T, hs, stride);
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        for (int t = 0; t < T; ++t) {
          const float* p = att_bh + static_cast<size_t>(t) * T;
          const float* g = dout + (static_cast<size_t>(b) * T + t) * d_model +
                           static_cast<size_t>(h) * hs;
          const float* q = q_base + static_cast<size_t>(t) * stride;
          const int n_keys = t + 1;
          // dp[u] = g . v_u, kept in ds.
          float* dp = ds.data();
#pragma omp simd
          for (int u = 0; u < n_keys; ++u) dp[u] = 0.0f;
          for (int d = 0; d < hs; ++d) {
            const float gd = g[d];
            const float* vd = vt.data() + static_cast<size_t>(d) * T;
#pragma omp simd
            for (int u = 0; u < n_keys; ++u) dp[u] += gd * vd[u];
          }
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int u = 0; u < n_keys; ++u) dot += p[u] * dp[u];
#pragma omp simd
          for (int u = 0; u < n_keys; ++u) ds[u] = p[u] * (dp[u] - dot) * scale;

#pragma omp simd
          for (int d = 0; d < hs; ++d) dq[d] = 0.0f;
          for (int u = 0; u < n_keys; ++u) {
            const float pu = p[u];
            const float su = ds[u];
            const float* k = k_base + static_cast<size_t>(u) * stride;
            float* dvu = dv.data() + static_cast<size_t>(u) * hs;
            float* dku = dk.data() + static_cast<size_t>(u) * hs;
#pragma omp simd
            for (int d = 0; d < hs; ++d) {
              dq[d] += su * k[d];
              dku[d] += su * q[d];
              dvu[d] += pu * g[d];
            }
          }
          float* dq_out = dqkv + (static_cast<size_t>(b) * T + t) * stride +
                          static_cast<size_t>(h) * hs;
#pragma omp simd
          for (int d = 0; d < hs; ++d) dq_out[d] += dq[d];
        }
        for (int u = 0; u < T; ++u) {
          float* row = dqkv + (static_cast<size_t>(b) * T + u) * stride + static_cast<size_t>(h) * hs;
          float* dk_out = row + d_model;
          float* dv_out = row + 2 * static_cast<size_t>(d_model);
          const float* dku = dk.data() + static_cast<size_t>(u) * hs;
          const float* dvu = dv.data() + static_cast<size_t>(u) * hs;
#pragma omp simd
          for (int d = 0; d < hs; ++d) {
            dk_out[d] += dku[d];
            dv_out[d] += dvu[d];
          }
        }
      }
    }
  }
}

}  // namespace lora::ops
