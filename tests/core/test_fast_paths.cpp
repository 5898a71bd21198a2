// The CPU step's fast paths against what they replace:
//   - the _write / overwrite_dx backward forms equal accumulating into a cleared buffer, bit for
//     bit, whatever the buffer held before;
//   - LoRA products split across threads and attention run in parallel over (batch, head) pairs
//     give the same bits at 1, 2 and 3 threads (each slice or pair is computed alone, so the
//     thread count must not change any sum);
//   - the sgemm recorder sees every product with its shape;
//   - GELU's sigmoid form equals the tanh formula;
//   - cross-entropy backward from the forward's row statistics equals recomputing them;
//   - the residual add fused into LayerNorm / RMSNorm equals the add followed by the norm.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/ops/attention.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/gelu.h"
#include "core/ops/layernorm.h"
#include "core/ops/lora.h"
#include "core/ops/matmul.h"
#include "core/ops/residual.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/sgemm.h"
#include "core/ops/swiglu.h"
#include "core/rng.h"

namespace lora::ops {
namespace {

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * normal01(77, stream, i);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs f with `threads` OpenMP (and so OpenBLAS) threads, then restores the previous setting.
void with_threads(int threads, const std::function<void()>& f) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  f();
  omp_set_num_threads(before);
}

TEST(FastPaths, WriteFormsEqualAccumulatingIntoZeros) {
  const size_t n = 70000;  // above the OpenMP threshold
  const std::vector<float> x = randn(n, 1, 2.0f), dy = randn(n, 2);
  std::vector<float> acc(n, 0.0f), wr = randn(n, 3, 100.0f);  // wr starts as garbage
  gelu_backward_cpu(acc.data(), dy.data(), x.data(), n);
  gelu_backward_write_cpu(wr.data(), dy.data(), x.data(), n);
  EXPECT_TRUE(same_bits(acc, wr)) << "gelu";

  const int rows = 300, f = 130;
  const std::vector<float> gate_up = randn(size_t(rows) * 2 * f, 4, 2.0f),
                           dout = randn(size_t(rows) * f, 5);
  std::vector<float> sacc(gate_up.size(), 0.0f), swr = randn(gate_up.size(), 6, 100.0f);
  swiglu_backward_cpu(sacc.data(), dout.data(), gate_up.data(), rows, f);
  swiglu_backward_write_cpu(swr.data(), dout.data(), gate_up.data(), rows, f);
  EXPECT_TRUE(same_bits(sacc, swr)) << "swiglu";

  const int m = 37, d_in = 29, d_out = 41;
  const std::vector<float> xin = randn(size_t(m) * d_in, 7), w = randn(size_t(d_in) * d_out, 8),
                           g = randn(size_t(m) * d_out, 9);
  using Backward = void (*)(float*, float*, float*, const float*, const float*, const float*, int,
                            int, int, bool);
  for (Backward bw : {Backward(&matmul_backward_cpu), Backward(&linear_backward_cpu)}) {
    std::vector<float> dx_acc(xin.size(), 0.0f), dx_wr = randn(xin.size(), 10, 100.0f);
    bw(dx_acc.data(), nullptr, nullptr, g.data(), xin.data(), w.data(), m, d_in, d_out, false);
    bw(dx_wr.data(), nullptr, nullptr, g.data(), xin.data(), w.data(), m, d_in, d_out, true);
    EXPECT_TRUE(same_bits(dx_acc, dx_wr)) << "matmul / linear dx";
  }
  const int vocab = 53;
  const std::vector<float> e = randn(size_t(vocab) * d_in, 11), gl = randn(size_t(m) * vocab, 12);
  std::vector<float> hx_acc(xin.size(), 0.0f), hx_wr = randn(xin.size(), 13, 100.0f);
  lm_head_backward_cpu(hx_acc.data(), nullptr, gl.data(), xin.data(), e.data(), m, d_in, vocab);
  lm_head_backward_cpu(hx_wr.data(), nullptr, gl.data(), xin.data(), e.data(), m, d_in, vocab,
                       true);
  EXPECT_TRUE(same_bits(hx_acc, hx_wr)) << "lm_head dx";
}

TEST(FastPaths, LoraSlicesGiveTheSameBitsAtAnyThreadCount) {
  // A column range of a wider product (ldy > d_out), sizes that split unevenly.
  const int n = 133, d_in = 70, rank = 5, d_out = 51, ldy = 90, col = 17;
  const float s = 1.25f;
  const std::vector<float> x = randn(size_t(n) * d_in, 20), a = randn(size_t(d_in) * rank, 21),
                           b = randn(size_t(rank) * d_out, 22), dy = randn(size_t(n) * ldy, 23),
                           y0 = randn(size_t(n) * ldy, 24);
  struct Out {
    std::vector<float> y, h, dx, da, db, dh;
  };
  auto run = [&](int threads) {
    Out o{y0, std::vector<float>(size_t(n) * rank), randn(size_t(n) * d_in, 25),
          randn(a.size(), 26), randn(b.size(), 27), std::vector<float>(size_t(n) * rank)};
    with_threads(threads, [&] {
      lora_forward_cpu(o.y.data() + col, o.h.data(), x.data(), a.data(), b.data(), s, n, d_in,
                       rank, d_out, ldy);
      lora_backward_cpu(o.dx.data(), o.da.data(), o.db.data(), o.dh.data(), dy.data() + col,
                        x.data(), o.h.data(), a.data(), b.data(), s, n, d_in, rank, d_out, ldy);
    });
    return o;
  };
  const Out one = run(1);
  // Against the definition, once (the op's own finite-difference tests cover the gradients).
  for (int i = 0; i < n; i += 13) {
    for (int j = 0; j < d_out; j += 7) {
      double v = 0.0;
      for (int r = 0; r < rank; ++r) {
        double hr = 0.0;
        for (int k = 0; k < d_in; ++k) hr += double(x[i * d_in + k]) * a[k * rank + r];
        v += hr * b[r * d_out + j];
      }
      EXPECT_NEAR(one.y[size_t(i) * ldy + col + j], y0[size_t(i) * ldy + col + j] + s * v, 1e-4);
    }
  }
  for (int threads : {2, 3}) {
    const Out o = run(threads);
    EXPECT_TRUE(same_bits(one.y, o.y)) << threads << " threads: y";
    EXPECT_TRUE(same_bits(one.h, o.h)) << threads << " threads: h";
    EXPECT_TRUE(same_bits(one.dx, o.dx)) << threads << " threads: dx";
    EXPECT_TRUE(same_bits(one.da, o.da)) << threads << " threads: dA";
    EXPECT_TRUE(same_bits(one.db, o.db)) << threads << " threads: dB";
  }
}

TEST(FastPaths, AttentionPairsGiveTheSameBitsAtAnyThreadCount) {
  // Grouped-query (4 query heads on 2 key/value heads), a sequence of many 6 x 16 tiles, not a
  // multiple of the 16-column panels.
  const int B = 3, T = 150, NH = 4, NKV = 2, hs = 8, ld = (NH + 2 * NKV) * hs, C = NH * hs;
  const std::vector<float> qkv = randn(size_t(B) * T * ld, 30), dout = randn(size_t(B) * T * C, 31);
  struct Out {
    std::vector<float> out, att, dqkv;
  };
  auto run = [&](int threads) {
    Out o{std::vector<float>(size_t(B) * T * C), std::vector<float>(size_t(B) * NH * T * T),
          std::vector<float>(qkv.size(), 0.0f)};
    with_threads(threads, [&] {
      attention_forward_cpu(o.out.data(), o.att.data(), qkv.data(), B, T, NH, NKV, hs);
      attention_backward_cpu(o.dqkv.data(), dout.data(), qkv.data(), o.att.data(), B, T, NH, NKV,
                             hs);
    });
    return o;
  };
  const Out one = run(1);
  for (int threads : {2, 3}) {
    const Out o = run(threads);
    EXPECT_TRUE(same_bits(one.out, o.out)) << threads << " threads: out";
    EXPECT_TRUE(same_bits(one.att, o.att)) << threads << " threads: probabilities";
    EXPECT_TRUE(same_bits(one.dqkv, o.dqkv)) << threads << " threads: dqkv";
  }
}

TEST(FastPaths, SgemmRecorderSeesEveryProduct) {
  std::vector<SgemmShape> seen;
  set_sgemm_recorder([&](const SgemmShape& s, double seconds) {
    EXPECT_GE(seconds, 0.0);
    seen.push_back(s);
  });
  const int n = 6, d_in = 5, d_out = 7;
  const std::vector<float> x = randn(size_t(n) * d_in, 40), w = randn(size_t(d_out) * d_in, 41);
  std::vector<float> y(size_t(n) * d_out);
  linear_forward_cpu(y.data(), x.data(), w.data(), nullptr, n, d_in, d_out);
  set_sgemm_recorder({});
  linear_forward_cpu(y.data(), x.data(), w.data(), nullptr, n, d_in, d_out);  // not recorded
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_FALSE(seen[0].trans_a);
  EXPECT_TRUE(seen[0].trans_b);
  EXPECT_EQ(seen[0].m, n);
  EXPECT_EQ(seen[0].n, d_out);
  EXPECT_EQ(seen[0].k, d_in);
  EXPECT_EQ(seen[0].ldc, d_out);
  EXPECT_TRUE(seen[0].beta_zero);
}

TEST(FastPaths, GeluSigmoidFormEqualsTheTanhFormula) {
  // Denser and wider than the op's own test, in double: 0.5 (1 + tanh u) = sigma(2u).
  std::vector<float> x;
  for (int i = -4000; i <= 4000; ++i) x.push_back(0.005f * i);
  std::vector<float> y(x.size());
  gelu_forward_cpu(y.data(), x.data(), x.size());
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double ref = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    worst = std::max(worst, std::fabs(y[i] - ref) / (1e-3 + std::fabs(ref)));
  }
  EXPECT_LT(worst, 2e-6);
}

TEST(FastPaths, CrossEntropyBackwardFromForwardStatsIsTheSame) {
  const int n = 40, vocab = 1000;
  std::vector<float> logits = randn(size_t(n) * vocab, 50, 4.0f);
  std::vector<int32_t> targets(n);
  for (int i = 0; i < n; ++i) targets[i] = i % 7 == 3 ? kIgnoreTarget : (i * 37) % vocab;
  std::vector<float> losses(n), losses2(n), row_max(n);
  std::vector<double> row_sum(n);
  cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), n, vocab);
  cross_entropy_forward_cpu(losses2.data(), logits.data(), targets.data(), n, vocab,
                            row_max.data(), row_sum.data());
  EXPECT_TRUE(same_bits(losses, losses2));
  std::vector<float> plain(logits.size()), from_stats(logits.size());
  cross_entropy_backward_cpu(plain.data(), logits.data(), targets.data(), 0.3f, n, vocab);
  cross_entropy_backward_cpu(from_stats.data(), logits.data(), targets.data(), 0.3f, n, vocab,
                             row_max.data(), row_sum.data());
  EXPECT_TRUE(same_bits(plain, from_stats));
  EXPECT_THROW(cross_entropy_backward_cpu(plain.data(), logits.data(), targets.data(), 0.3f, n,
                                          vocab, row_max.data(), nullptr),
               lora::Error);
}

TEST(FastPaths, ResidualFusedIntoTheNormEqualsAddThenNorm) {
  const int n = 300, c = 96;  // above the OpenMP threshold
  const std::vector<float> a = randn(size_t(n) * c, 60, 2.0f), b = randn(size_t(n) * c, 61),
                           w = randn(c, 62), bias = randn(c, 63);
  std::vector<float> sum(a.size()), y(a.size()), mean(n), rstd(n);
  residual_forward_cpu(sum.data(), a.data(), b.data(), sum.size());
  layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), sum.data(), w.data(), bias.data(), n, c);
  std::vector<float> fsum = a, fy(a.size()), fmean(n), frstd(n);  // x_out aliases a
  residual_layernorm_forward_cpu(fsum.data(), fy.data(), fmean.data(), frstd.data(), fsum.data(),
                                 b.data(), w.data(), bias.data(), n, c);
  EXPECT_TRUE(same_bits(sum, fsum) && same_bits(y, fy) && same_bits(mean, fmean) &&
              same_bits(rstd, frstd))
      << "layernorm";

  std::vector<float> ry(a.size()), rr(n);
  rmsnorm_forward_cpu(ry.data(), rr.data(), sum.data(), w.data(), 1e-6f, n, c);
  std::vector<float> rsum(a.size()), fry(a.size()), frr(n);
  residual_rmsnorm_forward_cpu(rsum.data(), fry.data(), frr.data(), a.data(), b.data(), w.data(),
                               1e-6f, n, c);
  EXPECT_TRUE(same_bits(sum, rsum) && same_bits(ry, fry) && same_bits(rr, frr)) << "rmsnorm";
}

}  // namespace
}  // namespace lora::ops
