// CPU op tests: every backward against central finite differences of its forward, plus the
// contract details of each header (accumulation, null gradients skipped, causality, LoRA with
// B = 0, hand-computed losses and optimizer steps, dropout statistics and reproducibility).
//
// A gradient check draws inputs and a weight tensor w from lora::normal01 with a fixed seed,
// defines L = sum(forward_output * w) (accumulated in double), runs the backward with
// dout = w and compares each analytic gradient element with (L(x + eps) - L(x - eps)) / 2eps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/ops/adamw.h"
#include "core/ops/attention.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/dropout.h"
#include "core/ops/embedding.h"
#include "core/ops/gelu.h"
#include "core/ops/layernorm.h"
#include "core/ops/lora.h"
#include "core/ops/matmul.h"
#include "core/ops/residual.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/rope.h"
#include "core/ops/swiglu.h"
#include "core/rng.h"

namespace lora::ops {
namespace {

constexpr uint64_t kSeed = 20240607;

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = shift + scale * normal01(kSeed, stream, i);
  return v;
}

double weighted_sum(const std::vector<float>& y, const std::vector<float>& w) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * w[i];
  return s;
}

double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// Compares `analytic` (dL/dx) with central differences of `objective` over every element of x.
// An element passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
void check_gradient(const std::string& name, std::vector<float>& x,
                    const std::vector<float>& analytic, const std::function<double()>& objective,
                    float eps = 1e-2f, double rtol = 1e-2, double atol = 1e-3,
                    size_t max_checks = 0) {
  ASSERT_EQ(x.size(), analytic.size()) << name;
  double worst = 0.0;
  size_t worst_i = 0;
  double worst_numeric = 0.0;
  // Large tensors: check max_checks elements spread over the whole buffer.
  const size_t step = max_checks == 0 || x.size() <= max_checks ? 1 : x.size() / max_checks;
  for (size_t i = step / 2; i < x.size(); i += step) {
    const float orig = x[i];
    const float xp = orig + eps;
    const float xm = orig - eps;
    x[i] = xp;
    const double lp = objective();
    x[i] = xm;
    const double lm = objective();
    x[i] = orig;
    const double numeric = (lp - lm) / (static_cast<double>(xp) - static_cast<double>(xm));
    const double a = analytic[i];
    const double err =
        std::fabs(a - numeric) / (atol + rtol * std::max(std::fabs(a), std::fabs(numeric)));
    if (err > worst) {
      worst = err;
      worst_i = i;
      worst_numeric = numeric;
    }
  }
  EXPECT_LE(worst, 1.0) << name << ": element " << worst_i << " analytic " << analytic[worst_i]
                        << " numeric " << worst_numeric;
  EXPECT_GT(max_abs(analytic), 1e-3) << name << ": gradient is (nearly) zero, check is vacuous";
}

void expect_all_near(const std::vector<float>& got, const std::vector<float>& want, double tol,
                     const std::string& name) {
  ASSERT_EQ(got.size(), want.size()) << name;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::fabs(want[i]))) << name << " at " << i;
  }
}

std::vector<float> doubled(const std::vector<float>& v) {
  std::vector<float> out(v);
  for (float& x : out) x *= 2.0f;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Embedding

struct EmbeddingCase {
  int n_batch = 2, n_seq = 3, d_model = 4, vocab = 5, max_seq = 4;
  std::vector<int32_t> tokens{1, 3, 1, 4, 0, 3};  // repeated ids exercise the += into dwte
  std::vector<float> wte = randn(static_cast<size_t>(vocab) * d_model, 1);
  std::vector<float> wpe = randn(static_cast<size_t>(max_seq) * d_model, 2);
  std::vector<float> w = randn(static_cast<size_t>(n_batch) * n_seq * d_model, 3);
  std::vector<float> out = std::vector<float>(w.size());

  double objective() {
    embedding_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), n_batch, n_seq,
                          d_model, vocab);
    return weighted_sum(out, w);
  }
};

TEST(EmbeddingOp, ForwardAddsTokenAndPositionRows) {
  EmbeddingCase c;
  c.objective();
  for (int b = 0; b < c.n_batch; ++b) {
    for (int t = 0; t < c.n_seq; ++t) {
      const int tok = c.tokens[b * c.n_seq + t];
      for (int j = 0; j < c.d_model; ++j) {
        EXPECT_FLOAT_EQ(c.out[(b * c.n_seq + t) * c.d_model + j],
                        c.wte[tok * c.d_model + j] + c.wpe[t * c.d_model + j]);
      }
    }
  }
}

TEST(EmbeddingOp, GradientsMatchFiniteDifferences) {
  EmbeddingCase c;
  std::vector<float> dwte(c.wte.size(), 0.0f), dwpe(c.wpe.size(), 0.0f);
  embedding_backward_cpu(dwte.data(), dwpe.data(), c.w.data(), c.tokens.data(), c.n_batch,
                         c.n_seq, c.d_model, c.vocab);
  check_gradient("embedding dwte", c.wte, dwte, [&] { return c.objective(); });
  check_gradient("embedding dwpe", c.wpe, dwpe, [&] { return c.objective(); });
  // Row max_seq - 1 is beyond n_seq: it gets no gradient.
  for (int j = 0; j < c.d_model; ++j) EXPECT_EQ(dwpe[(c.max_seq - 1) * c.d_model + j], 0.0f);
}

TEST(EmbeddingOp, BackwardAccumulatesAndSkipsNull) {
  EmbeddingCase c;
  std::vector<float> dwte(c.wte.size(), 0.0f), dwpe(c.wpe.size(), 0.0f);
  embedding_backward_cpu(dwte.data(), dwpe.data(), c.w.data(), c.tokens.data(), c.n_batch,
                         c.n_seq, c.d_model, c.vocab);
  const std::vector<float> once_wte = dwte, once_wpe = dwpe;
  embedding_backward_cpu(dwte.data(), dwpe.data(), c.w.data(), c.tokens.data(), c.n_batch,
                         c.n_seq, c.d_model, c.vocab);
  expect_all_near(dwte, doubled(once_wte), 1e-6, "dwte twice");
  expect_all_near(dwpe, doubled(once_wpe), 1e-6, "dwpe twice");
  // Frozen table: only dwpe is computed, and it matches.
  std::vector<float> dwpe_only(c.wpe.size(), 0.0f);
  embedding_backward_cpu(nullptr, dwpe_only.data(), c.w.data(), c.tokens.data(), c.n_batch,
                         c.n_seq, c.d_model, c.vocab);
  expect_all_near(dwpe_only, once_wpe, 1e-6, "dwpe alone");
  embedding_backward_cpu(nullptr, nullptr, c.w.data(), c.tokens.data(), c.n_batch, c.n_seq,
                         c.d_model, c.vocab);
}

TEST(EmbeddingOp, RejectsOutOfRangeTokens) {
  EmbeddingCase c;
  c.tokens[4] = c.vocab;
  EXPECT_THROW(c.objective(), lora::Error);
  c.tokens[4] = -1;
  EXPECT_THROW(c.objective(), lora::Error);
  std::vector<float> dwte(c.wte.size());
  EXPECT_THROW(embedding_backward_cpu(dwte.data(), nullptr, c.w.data(), c.tokens.data(), c.n_batch,
                                      c.n_seq, c.d_model, c.vocab),
               lora::Error);
  EXPECT_THROW(embedding_forward_cpu(c.out.data(), c.tokens.data(), c.wte.data(), c.wpe.data(), 0,
                                     c.n_seq, c.d_model, c.vocab),
               lora::Error);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

struct LayerNormCase {
  int n = 3, c = 8;
  std::vector<float> x = randn(static_cast<size_t>(n) * c, 10, 1.5f, 0.7f);
  std::vector<float> weight = randn(c, 11, 0.5f, 1.0f);
  std::vector<float> bias = randn(c, 12, 0.3f);
  std::vector<float> w = randn(static_cast<size_t>(n) * c, 13);
  std::vector<float> y = std::vector<float>(x.size());
  std::vector<float> mean = std::vector<float>(n), rstd = std::vector<float>(n);

  double objective() {
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias.data(),
                          n, c);
    return weighted_sum(y, w);
  }
  void backward(float* dx, float* dweight, float* dbias) {
    objective();
    layernorm_backward_cpu(dx, dweight, dbias, w.data(), x.data(), weight.data(), mean.data(),
                           rstd.data(), n, c);
  }
};

TEST(LayerNormOp, ForwardNormalisesRows) {
  LayerNormCase t;
  t.objective();
  for (int i = 0; i < t.n; ++i) {
    double m = 0.0, v = 0.0;
    for (int j = 0; j < t.c; ++j) m += t.x[i * t.c + j];
    m /= t.c;
    for (int j = 0; j < t.c; ++j) v += (t.x[i * t.c + j] - m) * (t.x[i * t.c + j] - m);
    v /= t.c;
    const double r = 1.0 / std::sqrt(v + kLayerNormEps);
    EXPECT_NEAR(t.mean[i], m, 1e-6);
    EXPECT_NEAR(t.rstd[i], r, 1e-5 * r);
    for (int j = 0; j < t.c; ++j) {
      EXPECT_NEAR(t.y[i * t.c + j], (t.x[i * t.c + j] - m) * r * t.weight[j] + t.bias[j], 1e-5);
    }
  }
}

TEST(LayerNormOp, GradientsMatchFiniteDifferences) {
  LayerNormCase t;
  std::vector<float> dx(t.x.size(), 0.0f), dweight(t.c, 0.0f), dbias(t.c, 0.0f);
  t.backward(dx.data(), dweight.data(), dbias.data());
  check_gradient("layernorm dx", t.x, dx, [&] { return t.objective(); });
  check_gradient("layernorm dweight", t.weight, dweight, [&] { return t.objective(); });
  check_gradient("layernorm dbias", t.bias, dbias, [&] { return t.objective(); });
}

TEST(LayerNormOp, BackwardAccumulatesAndSkipsNull) {
  LayerNormCase t;
  std::vector<float> dx(t.x.size(), 0.0f), dweight(t.c, 0.0f), dbias(t.c, 0.0f);
  t.backward(dx.data(), dweight.data(), dbias.data());
  const std::vector<float> dx1 = dx, dw1 = dweight, db1 = dbias;
  t.backward(dx.data(), dweight.data(), dbias.data());
  expect_all_near(dx, doubled(dx1), 1e-6, "layernorm dx twice");
  expect_all_near(dweight, doubled(dw1), 1e-6, "layernorm dweight twice");
  expect_all_near(dbias, doubled(db1), 1e-6, "layernorm dbias twice");
  std::vector<float> dx_frozen(t.x.size(), 0.0f);
  t.backward(dx_frozen.data(), nullptr, nullptr);
  expect_all_near(dx_frozen, dx1, 1e-6, "layernorm dx with frozen weight");
  EXPECT_THROW(t.backward(nullptr, nullptr, nullptr), lora::Error);
}

// ---------------------------------------------------------------------------------------------
// Matmul and LM head

struct MatmulCase {
  int n = 3, d_in = 5, d_out = 4;
  std::vector<float> x = randn(static_cast<size_t>(n) * d_in, 20);
  std::vector<float> wt = randn(static_cast<size_t>(d_in) * d_out, 21, 0.5f);
  std::vector<float> bias = randn(d_out, 22);
  std::vector<float> w = randn(static_cast<size_t>(n) * d_out, 23);
  std::vector<float> y = std::vector<float>(w.size());

  double objective() {
    matmul_forward_cpu(y.data(), x.data(), wt.data(), bias.data(), n, d_in, d_out);
    return weighted_sum(y, w);
  }
};

TEST(MatmulOp, ForwardMatchesDefinition) {
  MatmulCase m;
  m.objective();
  std::vector<float> y_nobias(m.y.size(), 123.0f);  // beta = 0: old contents are ignored
  matmul_forward_cpu(y_nobias.data(), m.x.data(), m.wt.data(), nullptr, m.n, m.d_in, m.d_out);
  for (int i = 0; i < m.n; ++i) {
    for (int j = 0; j < m.d_out; ++j) {
      double s = 0.0;
      for (int k = 0; k < m.d_in; ++k) s += double(m.x[i * m.d_in + k]) * m.wt[k * m.d_out + j];
      EXPECT_NEAR(y_nobias[i * m.d_out + j], s, 1e-5);
      EXPECT_NEAR(m.y[i * m.d_out + j], s + m.bias[j], 1e-5);
    }
  }
}

TEST(MatmulOp, GradientsMatchFiniteDifferences) {
  MatmulCase m;
  std::vector<float> dx(m.x.size(), 0.0f), dw(m.wt.size(), 0.0f), dbias(m.d_out, 0.0f);
  matmul_backward_cpu(dx.data(), dw.data(), dbias.data(), m.w.data(), m.x.data(), m.wt.data(), m.n,
                      m.d_in, m.d_out);
  check_gradient("matmul dx", m.x, dx, [&] { return m.objective(); });
  check_gradient("matmul dw", m.wt, dw, [&] { return m.objective(); });
  check_gradient("matmul dbias", m.bias, dbias, [&] { return m.objective(); });
}

TEST(MatmulOp, BackwardAccumulatesAndSkipsNull) {
  MatmulCase m;
  std::vector<float> dx(m.x.size(), 0.0f), dw(m.wt.size(), 0.0f), dbias(m.d_out, 0.0f);
  auto run = [&](float* a, float* b, float* c) {
    matmul_backward_cpu(a, b, c, m.w.data(), m.x.data(), m.wt.data(), m.n, m.d_in, m.d_out);
  };
  run(dx.data(), dw.data(), dbias.data());
  const std::vector<float> dx1 = dx, dw1 = dw, db1 = dbias;
  run(dx.data(), dw.data(), dbias.data());
  expect_all_near(dx, doubled(dx1), 1e-6, "matmul dx twice");
  expect_all_near(dw, doubled(dw1), 1e-6, "matmul dw twice");
  expect_all_near(dbias, doubled(db1), 1e-6, "matmul dbias twice");
  std::vector<float> dx_only(m.x.size(), 0.0f);
  run(dx_only.data(), nullptr, nullptr);  // frozen weight: input gradient only
  expect_all_near(dx_only, dx1, 1e-6, "matmul dx alone");
  std::vector<float> dw_only(m.wt.size(), 0.0f);
  run(nullptr, dw_only.data(), nullptr);
  expect_all_near(dw_only, dw1, 1e-6, "matmul dw alone");
  run(nullptr, nullptr, nullptr);
}

struct LmHeadCase {
  int n = 3, c = 4, vocab = 6;
  std::vector<float> x = randn(static_cast<size_t>(n) * c, 30);
  std::vector<float> e = randn(static_cast<size_t>(vocab) * c, 31);
  std::vector<float> w = randn(static_cast<size_t>(n) * vocab, 32);
  std::vector<float> y = std::vector<float>(w.size());

  double objective() {
    lm_head_forward_cpu(y.data(), x.data(), e.data(), n, c, vocab);
    return weighted_sum(y, w);
  }
};

TEST(LmHeadOp, EqualsMatmulWithTransposedTable) {
  LmHeadCase h;
  h.objective();
  std::vector<float> et(h.e.size());
  for (int v = 0; v < h.vocab; ++v) {
    for (int j = 0; j < h.c; ++j) et[j * h.vocab + v] = h.e[v * h.c + j];
  }
  std::vector<float> y_ref(h.y.size());
  matmul_forward_cpu(y_ref.data(), h.x.data(), et.data(), nullptr, h.n, h.c, h.vocab);
  expect_all_near(h.y, y_ref, 1e-6, "lm_head vs matmul");
  // The backward agrees too: dx equal, dE equal to dW transposed.
  std::vector<float> dx(h.x.size(), 0.0f), de(h.e.size(), 0.0f);
  lm_head_backward_cpu(dx.data(), de.data(), h.w.data(), h.x.data(), h.e.data(), h.n, h.c,
                       h.vocab);
  std::vector<float> dx_ref(h.x.size(), 0.0f), dw_ref(et.size(), 0.0f);
  matmul_backward_cpu(dx_ref.data(), dw_ref.data(), nullptr, h.w.data(), h.x.data(), et.data(),
                      h.n, h.c, h.vocab);
  expect_all_near(dx, dx_ref, 1e-6, "lm_head dx vs matmul");
  for (int v = 0; v < h.vocab; ++v) {
    for (int j = 0; j < h.c; ++j) EXPECT_NEAR(de[v * h.c + j], dw_ref[j * h.vocab + v], 1e-6);
  }
}

TEST(LmHeadOp, GradientsMatchFiniteDifferences) {
  LmHeadCase h;
  std::vector<float> dx(h.x.size(), 0.0f), de(h.e.size(), 0.0f);
  lm_head_backward_cpu(dx.data(), de.data(), h.w.data(), h.x.data(), h.e.data(), h.n, h.c,
                       h.vocab);
  check_gradient("lm_head dx", h.x, dx, [&] { return h.objective(); });
  check_gradient("lm_head de", h.e, de, [&] { return h.objective(); });
}

TEST(LmHeadOp, BackwardAccumulatesAndSkipsNull) {
  LmHeadCase h;
  std::vector<float> dx(h.x.size(), 0.0f), de(h.e.size(), 0.0f);
  auto run = [&](float* a, float* b) {
    lm_head_backward_cpu(a, b, h.w.data(), h.x.data(), h.e.data(), h.n, h.c, h.vocab);
  };
  run(dx.data(), de.data());
  const std::vector<float> dx1 = dx, de1 = de;
  run(dx.data(), de.data());
  expect_all_near(dx, doubled(dx1), 1e-6, "lm_head dx twice");
  expect_all_near(de, doubled(de1), 1e-6, "lm_head de twice");
  std::vector<float> dx_only(h.x.size(), 0.0f);
  run(dx_only.data(), nullptr);
  expect_all_near(dx_only, dx1, 1e-6, "lm_head dx alone");
  run(nullptr, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Attention

// Multi-head (n_kv_head = n_head, GPT-2's q | k | v layout) by default; the GQA case shares each
// key/value head among n_head / n_kv_head query heads.
struct AttentionCase {
  int n_batch = 2, n_seq = 5, n_head = 2, n_kv_head = 2, head_dim = 4;
  int d_model = n_head * head_dim;  // width of the output
  int ld = (n_head + 2 * n_kv_head) * head_dim;
  std::vector<float> qkv = randn(static_cast<size_t>(n_batch) * n_seq * ld, 40);
  std::vector<float> w = randn(static_cast<size_t>(n_batch) * n_seq * d_model, 41);
  std::vector<float> out = std::vector<float>(w.size());
  std::vector<float> att = std::vector<float>(static_cast<size_t>(n_batch) * n_head * n_seq * n_seq);

  static AttentionCase gqa() {
    AttentionCase a;
    a.n_head = 4;
    a.n_kv_head = 2;
    a.head_dim = 4;
    a.n_seq = 6;
    a.d_model = a.n_head * a.head_dim;
    a.ld = (a.n_head + 2 * a.n_kv_head) * a.head_dim;
    a.qkv = randn(static_cast<size_t>(a.n_batch) * a.n_seq * a.ld, 42);
    a.w = randn(static_cast<size_t>(a.n_batch) * a.n_seq * a.d_model, 43);
    a.out.assign(a.w.size(), 0.0f);
    a.att.assign(static_cast<size_t>(a.n_batch) * a.n_head * a.n_seq * a.n_seq, 0.0f);
    return a;
  }

  double objective() {
    attention_forward_cpu(out.data(), att.data(), qkv.data(), n_batch, n_seq, n_head, n_kv_head,
                          head_dim);
    return weighted_sum(out, w);
  }
  void backward(float* dqkv) {
    objective();
    attention_backward_cpu(dqkv, w.data(), qkv.data(), att.data(), n_batch, n_seq, n_head,
                           n_kv_head, head_dim);
  }
};

void expect_attention_matches_naive(AttentionCase& a) {
  a.objective();
  const int hs = a.head_dim, C = a.d_model, T = a.n_seq, group = a.n_head / a.n_kv_head;
  for (int b = 0; b < a.n_batch; ++b) {
    for (int h = 0; h < a.n_head; ++h) {
      for (int t = 0; t < T; ++t) {
        // which: 0 = q (head h), 1 = k, 2 = v (head h / group).
        auto at = [&](int pos, int which, int d) {
          const int col = which == 0 ? h * hs
                          : which == 1 ? (a.n_head + h / group) * hs
                                       : (a.n_head + a.n_kv_head + h / group) * hs;
          return double(a.qkv[(b * T + pos) * a.ld + col + d]);
        };
        std::vector<double> p(t + 1);
        double mx = -1e300, sum = 0.0;
        for (int u = 0; u <= t; ++u) {
          double s = 0.0;
          for (int d = 0; d < hs; ++d) s += at(t, 0, d) * at(u, 1, d);
          p[u] = s / std::sqrt(double(hs));
          mx = std::max(mx, p[u]);
        }
        for (int u = 0; u <= t; ++u) sum += (p[u] = std::exp(p[u] - mx));
        const float* att_row = a.att.data() + ((b * a.n_head + h) * T + t) * T;
        for (int u = 0; u < T; ++u) {
          EXPECT_NEAR(att_row[u], u <= t ? p[u] / sum : 0.0, 1e-6);
          if (u > t) {
            EXPECT_EQ(att_row[u], 0.0f);
          }
        }
        for (int d = 0; d < hs; ++d) {
          double o = 0.0;
          for (int u = 0; u <= t; ++u) o += p[u] / sum * at(u, 2, d);
          EXPECT_NEAR(a.out[(b * T + t) * C + h * hs + d], o, 1e-5);
        }
      }
    }
  }
}

TEST(AttentionOp, ForwardMatchesNaiveReference) {
  AttentionCase a;
  expect_attention_matches_naive(a);
}

TEST(AttentionOp, GroupedQueryForwardMatchesNaiveReference) {
  AttentionCase a = AttentionCase::gqa();
  expect_attention_matches_naive(a);
}

TEST(AttentionOp, GradientsMatchFiniteDifferences) {
  AttentionCase a;
  std::vector<float> dqkv(a.qkv.size(), 0.0f);
  a.backward(dqkv.data());
  check_gradient("attention dqkv", a.qkv, dqkv, [&] { return a.objective(); });
}

TEST(AttentionOp, GroupedQueryGradientsMatchFiniteDifferences) {
  AttentionCase a = AttentionCase::gqa();
  std::vector<float> dqkv(a.qkv.size(), 0.0f);
  a.backward(dqkv.data());
  check_gradient("gqa attention dqkv", a.qkv, dqkv, [&] { return a.objective(); });
}

TEST(AttentionOp, BackwardAccumulates) {
  AttentionCase a;
  std::vector<float> dqkv(a.qkv.size(), 0.0f);
  a.backward(dqkv.data());
  const std::vector<float> once = dqkv;
  a.backward(dqkv.data());
  expect_all_near(dqkv, doubled(once), 1e-6, "attention dqkv twice");
}

TEST(AttentionOp, IsCausal) {
  AttentionCase a;
  a.objective();
  const std::vector<float> before = a.out;
  // Change the key and value of position 3 in batch 0.
  const int t_changed = 3, C = a.d_model, T = a.n_seq;
  for (int j = C; j < 3 * C; ++j) a.qkv[t_changed * a.ld + j] += 1.0f;
  a.objective();
  for (int t = 0; t < T; ++t) {
    bool changed = false;
    for (int j = 0; j < C; ++j) changed |= a.out[t * C + j] != before[t * C + j];
    if (t < t_changed) {
      EXPECT_FALSE(changed) << "output at position " << t << " depends on a later token";
    } else {
      EXPECT_TRUE(changed) << "output at position " << t << " ignores an earlier token";
    }
  }
  // Batch 1 is independent of batch 0.
  for (size_t i = static_cast<size_t>(T) * C; i < a.out.size(); ++i) EXPECT_EQ(a.out[i], before[i]);
}

TEST(AttentionOp, RejectsBadShapes) {
  AttentionCase a;
  EXPECT_THROW(attention_forward_cpu(a.out.data(), a.att.data(), a.qkv.data(), a.n_batch, a.n_seq,
                                     a.n_head, 3, a.head_dim),
               lora::Error);  // 3 key/value heads cannot share 2 query heads
  EXPECT_THROW(attention_forward_cpu(a.out.data(), nullptr, a.qkv.data(), a.n_batch, a.n_seq,
                                     a.n_head, a.n_kv_head, a.head_dim),
               lora::Error);
}

// ---------------------------------------------------------------------------------------------
// GELU and residual

TEST(GeluOp, ForwardMatchesTanhFormula) {
  std::vector<float> x;
  for (int i = -200; i <= 200; ++i) x.push_back(0.05f * i);
  for (float v : {1e-6f, -1e-6f, 0.0f, 30.0f, -30.0f}) x.push_back(v);
  std::vector<float> y(x.size());
  gelu_forward_cpu(y.data(), x.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double ref = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(y[i], ref, 1e-6 * (1.0 + std::fabs(ref))) << "x = " << v;
  }
}

TEST(GeluOp, GradientMatchesFiniteDifferencesAndAccumulates) {
  const size_t n = 64;
  std::vector<float> x = randn(n, 50, 2.0f);
  std::vector<float> w = randn(n, 51);
  std::vector<float> y(n);
  auto objective = [&] {
    gelu_forward_cpu(y.data(), x.data(), n);
    return weighted_sum(y, w);
  };
  std::vector<float> dx(n, 0.0f);
  gelu_backward_cpu(dx.data(), w.data(), x.data(), n);
  check_gradient("gelu dx", x, dx, objective, 1e-3f);
  const std::vector<float> once = dx;
  gelu_backward_cpu(dx.data(), w.data(), x.data(), n);
  expect_all_near(dx, doubled(once), 1e-6, "gelu dx twice");
}

TEST(ResidualOp, ForwardBackwardAndAliasing) {
  const size_t n = 10;
  std::vector<float> a = randn(n, 60), b = randn(n, 61), w = randn(n, 62), y(n);
  auto objective = [&] {
    residual_forward_cpu(y.data(), a.data(), b.data(), n);
    return weighted_sum(y, w);
  };
  std::vector<float> da(n, 0.0f), db(n, 0.0f);
  residual_backward_cpu(da.data(), db.data(), w.data(), n);
  check_gradient("residual da", a, da, objective);
  check_gradient("residual db", b, db, objective);
  residual_backward_cpu(da.data(), nullptr, w.data(), n);
  expect_all_near(da, doubled(w), 1e-7, "residual da twice");
  expect_all_near(db, w, 1e-7, "residual db skipped");
  // In place: a += b.
  std::vector<float> sum(n);
  for (size_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
  residual_forward_cpu(a.data(), a.data(), b.data(), n);
  expect_all_near(a, sum, 0.0, "residual in place");
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(CrossEntropyOp, HandComputedLosses) {
  // Uniform logits: the loss is log(vocab) whatever the target.
  const int vocab = 7;
  std::vector<float> uniform(2 * vocab, 0.25f);
  std::vector<int32_t> targets{0, 6};
  std::vector<float> losses(2);
  cross_entropy_forward_cpu(losses.data(), uniform.data(), targets.data(), 2, vocab);
  EXPECT_NEAR(losses[0], std::log(7.0), 1e-6);
  EXPECT_NEAR(losses[1], std::log(7.0), 1e-6);
  // logits (1, 2, 3), target 2: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2).
  std::vector<float> l3{1.0f, 2.0f, 3.0f, 1000.0f, 0.0f, -1000.0f};
  std::vector<int32_t> t3{2, 1};
  cross_entropy_forward_cpu(losses.data(), l3.data(), t3.data(), 2, 3);
  EXPECT_NEAR(losses[0], std::log(1.0 + std::exp(-1.0) + std::exp(-2.0)), 1e-6);
  // Huge logits must not overflow: the second row's loss is 1000 - 0.
  EXPECT_NEAR(losses[1], 1000.0, 1e-3);
}

TEST(CrossEntropyOp, GradientMatchesFiniteDifferences) {
  const int n = 4, vocab = 9;
  std::vector<float> logits = randn(static_cast<size_t>(n) * vocab, 70, 2.0f);
  std::vector<int32_t> targets{3, 0, 8, 3};
  std::vector<float> losses(n);
  const float dloss = 1.0f / n;
  auto objective = [&] {
    cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), n, vocab);
    double s = 0.0;
    for (float l : losses) s += l;
    return s * dloss;
  };
  std::vector<float> dlogits(logits.size(), 55.0f);  // written, not accumulated
  cross_entropy_backward_cpu(dlogits.data(), logits.data(), targets.data(), dloss, n, vocab);
  check_gradient("cross_entropy dlogits", logits, dlogits, objective, 1e-2f, 1e-2, 1e-4);
  // Each row of the gradient sums to zero (softmax minus one-hot).
  for (int i = 0; i < n; ++i) {
    double s = 0.0;
    for (int j = 0; j < vocab; ++j) s += dlogits[i * vocab + j];
    EXPECT_NEAR(s, 0.0, 1e-6);
  }
  // In place: dlogits aliasing logits gives the same values.
  std::vector<float> inplace = logits;
  cross_entropy_backward_cpu(inplace.data(), inplace.data(), targets.data(), dloss, n, vocab);
  expect_all_near(inplace, dlogits, 0.0, "cross_entropy in place");
}

TEST(CrossEntropyOp, RejectsBadTargets) {
  std::vector<float> logits(6, 0.0f), losses(2);
  std::vector<int32_t> targets{0, 3};
  EXPECT_THROW(cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), 2, 3),
               lora::Error);
  targets[1] = 7;
  EXPECT_THROW(cross_entropy_backward_cpu(logits.data(), logits.data(), targets.data(), 1.0f, 2, 3),
               lora::Error);
}

TEST(CrossEntropyOp, NegativeTargetsMaskTheirRows) {
  const int n = 3, vocab = 4;
  std::vector<float> logits = randn(static_cast<size_t>(n) * vocab, 60, 2.0f);
  std::vector<int32_t> targets{2, kIgnoreTarget, 0};
  std::vector<float> losses(n, 5.0f), dlogits(logits.size(), 5.0f);
  cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), n, vocab);
  EXPECT_EQ(losses[1], 0.0f);
  EXPECT_GT(losses[0], 0.0f);
  cross_entropy_backward_cpu(dlogits.data(), logits.data(), targets.data(), 1.0f, n, vocab);
  for (int j = 0; j < vocab; ++j) EXPECT_EQ(dlogits[vocab + j], 0.0f);
  // The unmasked rows are what they are without the masked one.
  std::vector<float> two(logits.begin(), logits.begin() + vocab);
  two.insert(two.end(), logits.begin() + 2 * vocab, logits.end());
  std::vector<int32_t> t2{2, 0};
  std::vector<float> l2(2), d2(two.size());
  cross_entropy_forward_cpu(l2.data(), two.data(), t2.data(), 2, vocab);
  cross_entropy_backward_cpu(d2.data(), two.data(), t2.data(), 1.0f, 2, vocab);
  EXPECT_EQ(l2[0], losses[0]);
  EXPECT_EQ(l2[1], losses[2]);
  for (int j = 0; j < vocab; ++j) {
    EXPECT_EQ(d2[j], dlogits[j]);
    EXPECT_EQ(d2[vocab + j], dlogits[2 * vocab + j]);
  }
}

// ---------------------------------------------------------------------------------------------
// LoRA

struct LoraCase {
  int n = 4, d_in = 5, rank = 3, d_out = 6;
  float scaling = 0.75f;
  std::vector<float> x = randn(static_cast<size_t>(n) * d_in, 80);
  std::vector<float> a = randn(static_cast<size_t>(d_in) * rank, 81, 0.5f);
  std::vector<float> b = randn(static_cast<size_t>(rank) * d_out, 82, 0.5f);
  std::vector<float> base = randn(static_cast<size_t>(n) * d_out, 83);  // x W + bias, given
  std::vector<float> w = randn(static_cast<size_t>(n) * d_out, 84);
  std::vector<float> y = std::vector<float>(w.size());
  std::vector<float> h = std::vector<float>(static_cast<size_t>(n) * rank);

  double objective() {
    y = base;
    lora_forward_cpu(y.data(), h.data(), x.data(), a.data(), b.data(), scaling, n, d_in, rank,
                     d_out, d_out);
    return weighted_sum(y, w);
  }
  std::vector<float> backward(float* dx, float* da, float* db) {
    objective();
    std::vector<float> dh(h.size(), 99.0f);  // scratch, overwritten
    lora_backward_cpu(dx, da, db, dh.data(), w.data(), x.data(), h.data(), a.data(), b.data(),
                      scaling, n, d_in, rank, d_out, d_out);
    return dh;
  }
};

TEST(LoraOp, ForwardAddsScaledLowRankProduct) {
  LoraCase l;
  l.objective();
  for (int i = 0; i < l.n; ++i) {
    for (int j = 0; j < l.d_out; ++j) {
      double s = 0.0;
      for (int k = 0; k < l.d_in; ++k) {
        for (int r = 0; r < l.rank; ++r) {
          s += double(l.x[i * l.d_in + k]) * l.a[k * l.rank + r] * l.b[r * l.d_out + j];
        }
      }
      EXPECT_NEAR(l.y[i * l.d_out + j], l.base[i * l.d_out + j] + l.scaling * s, 1e-5);
    }
  }
}

TEST(LoraOp, GradientsMatchFiniteDifferences) {
  LoraCase l;
  std::vector<float> dx(l.x.size(), 0.0f), da(l.a.size(), 0.0f), db(l.b.size(), 0.0f);
  const std::vector<float> dh = l.backward(dx.data(), da.data(), db.data());
  check_gradient("lora dx", l.x, dx, [&] { return l.objective(); });
  check_gradient("lora dA", l.a, da, [&] { return l.objective(); });
  check_gradient("lora dB", l.b, db, [&] { return l.objective(); });
  // dh = s g B^T.
  for (int i = 0; i < l.n; ++i) {
    for (int r = 0; r < l.rank; ++r) {
      double s = 0.0;
      for (int j = 0; j < l.d_out; ++j) s += double(l.w[i * l.d_out + j]) * l.b[r * l.d_out + j];
      EXPECT_NEAR(dh[i * l.rank + r], l.scaling * s, 1e-5);
    }
  }
}

TEST(LoraOp, ZeroBGivesZeroDaAndNonZeroDb) {
  LoraCase l;
  std::fill(l.b.begin(), l.b.end(), 0.0f);
  l.objective();
  expect_all_near(l.y, l.base, 0.0, "B = 0 leaves the base output unchanged");
  std::vector<float> dx(l.x.size(), 0.0f), da(l.a.size(), 0.0f), db(l.b.size(), 0.0f);
  const std::vector<float> dh = l.backward(dx.data(), da.data(), db.data());
  for (float v : da) EXPECT_EQ(v, 0.0f);
  for (float v : dx) EXPECT_EQ(v, 0.0f);
  for (float v : dh) EXPECT_EQ(v, 0.0f);
  EXPECT_GT(max_abs(db), 1e-2);
  check_gradient("lora dB at B = 0", l.b, db, [&] { return l.objective(); });
  // A = B = 0: no gradient at all, training can never start.
  std::fill(l.a.begin(), l.a.end(), 0.0f);
  std::fill(db.begin(), db.end(), 0.0f);
  l.backward(dx.data(), da.data(), db.data());
  for (float v : db) EXPECT_EQ(v, 0.0f);
  for (float v : da) EXPECT_EQ(v, 0.0f);
}

// An adapter adding into a column range of a wider product (q_proj's columns of the fused q/k/v
// output): with row stride ldy it touches exactly its columns, and its gradients equal those of the
// same adapter on a product of its own width.
TEST(LoraOp, ColumnRangeOfAWiderProduct) {
  LoraCase l;
  const int ld = l.d_out + 5, col = 2;
  std::vector<float> wide = randn(static_cast<size_t>(l.n) * ld, 85);
  const std::vector<float> before = wide;
  std::vector<float> h(l.h.size());
  lora_forward_cpu(wide.data() + col, h.data(), l.x.data(), l.a.data(), l.b.data(), l.scaling, l.n,
                   l.d_in, l.rank, l.d_out, ld);
  l.base.assign(l.base.size(), 0.0f);
  l.objective();  // y = the update alone
  for (int i = 0; i < l.n; ++i) {
    for (int j = 0; j < ld; ++j) {
      const float w0 = before[i * ld + j];
      if (j < col || j >= col + l.d_out) {
        EXPECT_EQ(wide[i * ld + j], w0) << "column " << j << " outside the range changed";
      } else {
        EXPECT_NEAR(wide[i * ld + j], w0 + l.y[i * l.d_out + j - col], 1e-5);
      }
    }
  }
  std::vector<float> g_wide(static_cast<size_t>(l.n) * ld, 0.0f);
  for (int i = 0; i < l.n; ++i)
    for (int j = 0; j < l.d_out; ++j) g_wide[i * ld + col + j] = l.w[i * l.d_out + j];
  std::vector<float> dx1(l.x.size(), 0.0f), da1(l.a.size(), 0.0f), db1(l.b.size(), 0.0f);
  l.backward(dx1.data(), da1.data(), db1.data());
  std::vector<float> dx2(l.x.size(), 0.0f), da2(l.a.size(), 0.0f), db2(l.b.size(), 0.0f),
      dh(l.h.size());
  lora_backward_cpu(dx2.data(), da2.data(), db2.data(), dh.data(), g_wide.data() + col,
                    l.x.data(), h.data(), l.a.data(), l.b.data(), l.scaling, l.n, l.d_in, l.rank,
                    l.d_out, ld);
  expect_all_near(dx2, dx1, 1e-6, "lora dx with ldy");
  expect_all_near(da2, da1, 1e-6, "lora dA with ldy");
  expect_all_near(db2, db1, 1e-6, "lora dB with ldy");
  EXPECT_THROW(lora_forward_cpu(wide.data(), h.data(), l.x.data(), l.a.data(), l.b.data(),
                                l.scaling, l.n, l.d_in, l.rank, l.d_out, l.d_out - 1),
               lora::Error);
}

TEST(LoraOp, BackwardAccumulatesAndSkipsNull) {
  LoraCase l;
  std::vector<float> dx(l.x.size(), 0.0f), da(l.a.size(), 0.0f), db(l.b.size(), 0.0f);
  l.backward(dx.data(), da.data(), db.data());
  const std::vector<float> dx1 = dx, da1 = da, db1 = db;
  l.backward(dx.data(), da.data(), db.data());
  expect_all_near(dx, doubled(dx1), 1e-6, "lora dx twice");
  expect_all_near(da, doubled(da1), 1e-6, "lora dA twice");
  expect_all_near(db, doubled(db1), 1e-6, "lora dB twice");
  std::vector<float> da_only(l.a.size(), 0.0f), db_only(l.b.size(), 0.0f);
  l.backward(nullptr, da_only.data(), db_only.data());  // first layer: no input gradient
  expect_all_near(da_only, da1, 1e-6, "lora dA without dx");
  expect_all_near(db_only, db1, 1e-6, "lora dB without dx");
}

// ---------------------------------------------------------------------------------------------
// Dropout

TEST(DropoutOp, KeepsExpectedFractionAndScales) {
  const int rows = 64, cols = 256;
  const float p = 0.25f;
  std::vector<float> x = randn(static_cast<size_t>(rows) * cols, 90);
  std::vector<uint64_t> ids(rows);
  for (int r = 0; r < rows; ++r) ids[r] = 1000 + 7 * r;
  std::vector<float> y(x.size());
  dropout_forward_cpu(y.data(), x.data(), ids.data(), p, 5, 2, rows, cols);
  size_t kept = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (y[i] != 0.0f) {
      ++kept;
      EXPECT_FLOAT_EQ(y[i], x[i] / (1.0f - p));
    }
  }
  // 16384 draws: the standard deviation of the kept fraction is 0.0034.
  const double frac = static_cast<double>(kept) / x.size();
  EXPECT_NEAR(frac, 1.0 - p, 0.02);
  // p = 0 is the identity.
  dropout_forward_cpu(y.data(), x.data(), ids.data(), 0.0f, 5, 2, rows, cols);
  expect_all_near(y, x, 0.0, "dropout p = 0");
}

TEST(DropoutOp, MaskIsAFunctionOfSeedStreamAndRowId) {
  const int rows = 6, cols = 32;
  const float p = 0.5f;
  std::vector<float> ones(static_cast<size_t>(rows) * cols, 1.0f);
  std::vector<uint64_t> ids{11, 12, 13, 14, 15, 16};
  std::vector<float> y(ones.size()), y_again(ones.size());
  dropout_forward_cpu(y.data(), ones.data(), ids.data(), p, 3, 1, rows, cols);
  dropout_forward_cpu(y_again.data(), ones.data(), ids.data(), p, 3, 1, rows, cols);
  expect_all_near(y_again, y, 0.0, "same seed, same mask");
  // The same row id at another position (another micro-batch or rank) gets the same mask.
  std::vector<uint64_t> ids_shuffled{16, 15, 14, 13, 12, 11};
  dropout_forward_cpu(y_again.data(), ones.data(), ids_shuffled.data(), p, 3, 1, rows, cols);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < cols; ++j) EXPECT_EQ(y_again[r * cols + j], y[(rows - 1 - r) * cols + j]);
  }
  // Another seed or stream gives another mask.
  dropout_forward_cpu(y_again.data(), ones.data(), ids.data(), p, 4, 1, rows, cols);
  EXPECT_NE(y_again, y);
  dropout_forward_cpu(y_again.data(), ones.data(), ids.data(), p, 3, 2, rows, cols);
  EXPECT_NE(y_again, y);
}

TEST(DropoutOp, GradientMatchesFiniteDifferencesAndAccumulates) {
  const int rows = 3, cols = 8;
  const float p = 0.3f;
  std::vector<uint64_t> ids{7, 8, 9};
  std::vector<float> x = randn(static_cast<size_t>(rows) * cols, 91);
  std::vector<float> w = randn(x.size(), 92);
  std::vector<float> y(x.size());
  auto objective = [&] {
    dropout_forward_cpu(y.data(), x.data(), ids.data(), p, 1, 0, rows, cols);
    return weighted_sum(y, w);
  };
  std::vector<float> dx(x.size(), 0.0f);
  dropout_backward_cpu(dx.data(), w.data(), ids.data(), p, 1, 0, rows, cols);
  check_gradient("dropout dx", x, dx, objective);
  // The backward mask is the forward mask.
  objective();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(dx[i] == 0.0f, y[i] == 0.0f) << i;
  const std::vector<float> once = dx;
  dropout_backward_cpu(dx.data(), w.data(), ids.data(), p, 1, 0, rows, cols);
  expect_all_near(dx, doubled(once), 1e-7, "dropout dx twice");
}

TEST(DropoutOp, RejectsBadProbability) {
  std::vector<float> x(4, 1.0f), y(4);
  std::vector<uint64_t> ids{0};
  EXPECT_THROW(dropout_forward_cpu(y.data(), x.data(), ids.data(), 1.0f, 0, 0, 1, 4), lora::Error);
  EXPECT_THROW(dropout_forward_cpu(y.data(), x.data(), ids.data(), -0.1f, 0, 0, 1, 4), lora::Error);
  EXPECT_THROW(dropout_backward_cpu(y.data(), x.data(), nullptr, 0.1f, 0, 0, 1, 4), lora::Error);
}

// ---------------------------------------------------------------------------------------------
// AdamW and the gradient-norm helpers

TEST(AdamWOp, StepsMatchHandWorkedValues) {
  // p = 1, g = 0.5, lr = 0.1, weight decay 0.01, default betas.
  // Step 1: m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25; the Adam term is 0.5 / 0.5 = 1
  //         (minus eps), so p = 1 - 0.1 * (1 + 0.01 * 1) = 0.899.
  // Step 2 (same g): m = 0.095, v = 0.00049975; m_hat = 0.095 / 0.19 = 0.5,
  //         v_hat = 0.00049975 / 0.001999 = 0.25: p = 0.899 - 0.1 * (1 + 0.00899) = 0.798101.
  AdamWParams hp;
  hp.lr = 0.1f;
  hp.weight_decay = 0.01f;
  std::vector<float> p{1.0f, -2.0f}, g{0.5f, 0.0f}, m(2, 0.0f), v(2, 0.0f);
  adamw_update_cpu(p.data(), g.data(), m.data(), v.data(), 2, hp, 1);
  EXPECT_NEAR(m[0], 0.05f, 1e-7);
  EXPECT_NEAR(v[0], 0.00025, 0.00025 * 2e-5);  // 1 - 0.999f is 0.00099998713 in float
  EXPECT_NEAR(p[0], 0.899f, 1e-6);
  // Zero gradient: only the decoupled weight decay acts: p -= lr * wd * p.
  EXPECT_NEAR(p[1], -2.0f * (1.0f - 0.1f * 0.01f), 1e-6);
  EXPECT_EQ(m[1], 0.0f);
  adamw_update_cpu(p.data(), g.data(), m.data(), v.data(), 2, hp, 2);
  EXPECT_NEAR(m[0], 0.095f, 1e-7);
  EXPECT_NEAR(v[0], 0.00049975, 0.00049975 * 2e-5);
  EXPECT_NEAR(p[0], 0.798101f, 2e-6);
  EXPECT_THROW(adamw_update_cpu(p.data(), g.data(), m.data(), v.data(), 2, hp, 0), lora::Error);
}

TEST(AdamWOp, SumSquaresAndScale) {
  std::vector<float> x{1.0f, -2.0f, 3.0f, 0.5f};
  EXPECT_DOUBLE_EQ(sum_squares_cpu(x.data(), x.size()), 14.25);
  scale_cpu(x.data(), 0.5f, x.size());
  EXPECT_EQ(x, (std::vector<float>{0.5f, -1.0f, 1.5f, 0.25f}));
  // A long buffer (parallel path): 1..n squared sums to n (n + 1) (2n + 1) / 6.
  const size_t n = 300000;
  std::vector<float> big(n);
  for (size_t i = 0; i < n; ++i) big[i] = static_cast<float>(i + 1);
  const double want = double(n) * (n + 1) * (2.0 * n + 1) / 6.0;
  EXPECT_NEAR(sum_squares_cpu(big.data(), n), want, want * 1e-12);
}

}  // namespace
}  // namespace lora::ops

namespace lora::ops {
namespace {

// ---------------------------------------------------------------------------------------------
// nn.Linear orientation

TEST(LinearOp, EqualsMatmulWithTheTransposedWeight) {
  const int n = 5, d_in = 6, d_out = 4;
  std::vector<float> x = randn(static_cast<size_t>(n) * d_in, 120);
  std::vector<float> w = randn(static_cast<size_t>(d_out) * d_in, 121);  // [out, in]
  std::vector<float> bias = randn(d_out, 122);
  std::vector<float> wt(w.size());
  for (int o = 0; o < d_out; ++o)
    for (int i = 0; i < d_in; ++i) wt[i * d_out + o] = w[o * d_in + i];
  std::vector<float> y1(static_cast<size_t>(n) * d_out), y2(y1.size());
  linear_forward_cpu(y1.data(), x.data(), w.data(), bias.data(), n, d_in, d_out);
  matmul_forward_cpu(y2.data(), x.data(), wt.data(), bias.data(), n, d_in, d_out);
  expect_all_near(y1, y2, 1e-6, "linear vs matmul");
  std::vector<float> g = randn(y1.size(), 123);
  std::vector<float> dx1(x.size(), 0.0f), dx2(x.size(), 0.0f), dw(w.size(), 0.0f),
      dwt(w.size(), 0.0f), db1(d_out, 0.0f), db2(d_out, 0.0f);
  linear_backward_cpu(dx1.data(), dw.data(), db1.data(), g.data(), x.data(), w.data(), n, d_in,
                      d_out);
  matmul_backward_cpu(dx2.data(), dwt.data(), db2.data(), g.data(), x.data(), wt.data(), n, d_in,
                      d_out);
  expect_all_near(dx1, dx2, 1e-6, "linear dx");
  expect_all_near(db1, db2, 1e-6, "linear dbias");
  for (int o = 0; o < d_out; ++o)
    for (int i = 0; i < d_in; ++i)
      EXPECT_NEAR(dw[o * d_in + i], dwt[i * d_out + o], 1e-5) << "dw[" << o << ", " << i << "]";
}

TEST(LinearOp, GradientsMatchFiniteDifferences) {
  const int n = 4, d_in = 5, d_out = 3;
  std::vector<float> x = randn(static_cast<size_t>(n) * d_in, 124);
  std::vector<float> w = randn(static_cast<size_t>(d_out) * d_in, 125);
  std::vector<float> bias = randn(d_out, 126);
  std::vector<float> g = randn(static_cast<size_t>(n) * d_out, 127);
  std::vector<float> y(g.size());
  auto objective = [&] {
    linear_forward_cpu(y.data(), x.data(), w.data(), bias.data(), n, d_in, d_out);
    return weighted_sum(y, g);
  };
  std::vector<float> dx(x.size(), 0.0f), dw(w.size(), 0.0f), db(d_out, 0.0f);
  linear_backward_cpu(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), n, d_in, d_out);
  check_gradient("linear dx", x, dx, objective);
  check_gradient("linear dw", w, dw, objective);
  check_gradient("linear dbias", bias, db, objective);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

TEST(RmsNormOp, ForwardMatchesDefinition) {
  const int n = 3, c = 7;
  const float eps = 1e-6f;
  std::vector<float> x = randn(static_cast<size_t>(n) * c, 130, 2.0f, 0.5f);
  std::vector<float> w = randn(c, 131, 0.3f, 1.0f);
  std::vector<float> y(x.size()), rstd(n);
  rmsnorm_forward_cpu(y.data(), rstd.data(), x.data(), w.data(), eps, n, c);
  for (int i = 0; i < n; ++i) {
    double ss = 0;
    for (int j = 0; j < c; ++j) ss += double(x[i * c + j]) * x[i * c + j];
    const double r = 1.0 / std::sqrt(ss / c + eps);
    EXPECT_NEAR(rstd[i], r, 1e-6 * r);
    for (int j = 0; j < c; ++j) EXPECT_NEAR(y[i * c + j], w[j] * x[i * c + j] * r, 1e-5);
  }
}

TEST(RmsNormOp, GradientsMatchFiniteDifferencesAndAccumulate) {
  const int n = 4, c = 6;
  std::vector<float> x = randn(static_cast<size_t>(n) * c, 132, 1.5f, 0.2f);
  std::vector<float> w = randn(c, 133, 0.3f, 1.0f);
  std::vector<float> g = randn(x.size(), 134);
  std::vector<float> y(x.size()), rstd(n);
  auto objective = [&] {
    rmsnorm_forward_cpu(y.data(), rstd.data(), x.data(), w.data(), 1e-5f, n, c);
    return weighted_sum(y, g);
  };
  objective();
  std::vector<float> dx(x.size(), 0.0f), dw(c, 0.0f);
  rmsnorm_backward_cpu(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), n, c);
  check_gradient("rmsnorm dx", x, dx, objective, 1e-2f, 1e-2, 1e-3);
  check_gradient("rmsnorm dweight", w, dw, objective, 1e-2f, 1e-2, 1e-3);
  objective();
  const std::vector<float> dx1 = dx, dw1 = dw;
  rmsnorm_backward_cpu(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), n, c);
  expect_all_near(dx, doubled(dx1), 1e-6, "rmsnorm dx twice");
  expect_all_near(dw, doubled(dw1), 1e-6, "rmsnorm dweight twice");
  std::vector<float> dx_only(x.size(), 0.0f);
  rmsnorm_backward_cpu(dx_only.data(), nullptr, g.data(), x.data(), w.data(), rstd.data(), n, c);
  expect_all_near(dx_only, dx1, 1e-6, "rmsnorm dx without dweight");
}

// ---------------------------------------------------------------------------------------------
// RoPE

struct RopeCase {
  int n_batch = 2, n_seq = 6, n_head = 2, n_kv_head = 1, head_dim = 8;
  int ld = (n_head + 2 * n_kv_head) * head_dim;
  std::vector<float> inv = rope_inv_freq(head_dim, 100.0f);
  std::vector<float> cos, sin;
  RopeCase() { rope_tables(inv, 16, cos, sin); }
};

TEST(RopeOp, ForwardRotatesHalvesOfQueryAndKeyHeadsOnly) {
  RopeCase r;
  std::vector<float> x = randn(static_cast<size_t>(r.n_batch) * r.n_seq * r.ld, 140);
  std::vector<float> y = x;
  rope_forward_cpu(y.data(), r.cos.data(), r.sin.data(), r.n_batch, r.n_seq, r.n_head,
                   r.n_kv_head, r.head_dim);
  const int half = r.head_dim / 2;
  for (int b = 0; b < r.n_batch; ++b) {
    for (int t = 0; t < r.n_seq; ++t) {
      const float* xr = x.data() + (static_cast<size_t>(b) * r.n_seq + t) * r.ld;
      const float* yr = y.data() + (static_cast<size_t>(b) * r.n_seq + t) * r.ld;
      for (int h = 0; h < r.n_head + r.n_kv_head; ++h) {
        for (int i = 0; i < half; ++i) {
          // theta^(-2i/d) in double, angle t * that: transformers' rotate_half convention.
          const double a = t * std::pow(100.0, -2.0 * i / r.head_dim);
          const double x1 = xr[h * r.head_dim + i], x2 = xr[h * r.head_dim + half + i];
          EXPECT_NEAR(yr[h * r.head_dim + i], x1 * std::cos(a) - x2 * std::sin(a), 2e-5);
          EXPECT_NEAR(yr[h * r.head_dim + half + i], x2 * std::cos(a) + x1 * std::sin(a), 2e-5);
        }
      }
      // The value head is untouched.
      for (int j = (r.n_head + r.n_kv_head) * r.head_dim; j < r.ld; ++j) EXPECT_EQ(yr[j], xr[j]);
    }
  }
}

TEST(RopeOp, BackwardIsTheTransposedRotation) {
  RopeCase r;
  std::vector<float> x = randn(static_cast<size_t>(r.n_batch) * r.n_seq * r.ld, 141);
  std::vector<float> g = randn(x.size(), 142);
  std::vector<float> y(x.size());
  auto objective = [&] {
    y = x;
    rope_forward_cpu(y.data(), r.cos.data(), r.sin.data(), r.n_batch, r.n_seq, r.n_head,
                     r.n_kv_head, r.head_dim);
    return weighted_sum(y, g);
  };
  std::vector<float> dx = g;  // the gradient of y, rotated back in place
  rope_backward_cpu(dx.data(), r.cos.data(), r.sin.data(), r.n_batch, r.n_seq, r.n_head,
                    r.n_kv_head, r.head_dim);
  check_gradient("rope dx", x, dx, objective);
  // Rotating forward then backward is the identity (a rotation's transpose is its inverse).
  std::vector<float> z = x;
  rope_forward_cpu(z.data(), r.cos.data(), r.sin.data(), r.n_batch, r.n_seq, r.n_head,
                   r.n_kv_head, r.head_dim);
  rope_backward_cpu(z.data(), r.cos.data(), r.sin.data(), r.n_batch, r.n_seq, r.n_head,
                    r.n_kv_head, r.head_dim);
  expect_all_near(z, x, 1e-5, "rope round trip");
}

// Llama-3.1's rule, worked in double from its definition: wavelengths longer than
// original_max / low_freq_factor are divided by factor, shorter than original_max /
// high_freq_factor kept, and in between blended by (original_max / wavelen - low) / (high - low).
TEST(RopeOp, Llama3ScalingMatchesItsDefinition) {
  const int head_dim = 64;
  const float theta = 500000.0f, factor = 8.0f, low = 1.0f, high = 4.0f;
  const int orig = 8192;
  std::vector<float> inv = rope_inv_freq(head_dim, theta);
  const std::vector<float> plain = inv;
  rope_scale_llama3(inv, factor, low, high, orig);
  int n_scaled = 0, n_kept = 0, n_blended = 0;
  for (size_t i = 0; i < inv.size(); ++i) {
    const double f = plain[i], wavelen = 2 * M_PI / f;
    double want;
    if (wavelen < orig / high) {
      want = f;
      ++n_kept;
    } else if (wavelen > orig / low) {
      want = f / factor;
      ++n_scaled;
    } else {
      const double smooth = (orig / wavelen - low) / (high - low);
      want = (1 - smooth) * f / factor + smooth * f;
      ++n_blended;
    }
    EXPECT_NEAR(inv[i], want, 1e-6 * want) << "frequency " << i;
  }
  EXPECT_GT(n_scaled, 0);
  EXPECT_GT(n_kept, 0);
  EXPECT_GT(n_blended, 0);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

TEST(SwigluOp, ForwardMatchesDefinition) {
  const int n = 3, f = 5;
  std::vector<float> gu = randn(static_cast<size_t>(n) * 2 * f, 150, 3.0f);
  std::vector<float> out(static_cast<size_t>(n) * f);
  swiglu_forward_cpu(out.data(), gu.data(), n, f);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < f; ++j) {
      const double g = gu[i * 2 * f + j], u = gu[i * 2 * f + f + j];
      EXPECT_NEAR(out[i * f + j], g / (1 + std::exp(-g)) * u, 1e-5 * (1 + std::fabs(g * u)));
    }
  }
}

TEST(SwigluOp, GradientsMatchFiniteDifferencesAndAccumulate) {
  const int n = 4, f = 6;
  std::vector<float> gu = randn(static_cast<size_t>(n) * 2 * f, 151, 2.0f);
  std::vector<float> g = randn(static_cast<size_t>(n) * f, 152);
  std::vector<float> out(g.size());
  auto objective = [&] {
    swiglu_forward_cpu(out.data(), gu.data(), n, f);
    return weighted_sum(out, g);
  };
  std::vector<float> d(gu.size(), 0.0f);
  swiglu_backward_cpu(d.data(), g.data(), gu.data(), n, f);
  check_gradient("swiglu d_gate_up", gu, d, objective);
  const std::vector<float> once = d;
  swiglu_backward_cpu(d.data(), g.data(), gu.data(), n, f);
  expect_all_near(d, doubled(once), 1e-6, "swiglu twice");
}

// ---------------------------------------------------------------------------------------------
// Shapes past the OpenMP thresholds and with several column blocks, checked on sampled elements.

TEST(LargerShapes, LayerNormEmbeddingMatmulBias) {
  const int n = 128, c = 300;
  std::vector<float> x = randn(static_cast<size_t>(n) * c, 100, 2.0f, -0.5f);
  std::vector<float> weight = randn(c, 101, 0.5f, 1.0f), bias = randn(c, 102);
  std::vector<float> w = randn(x.size(), 103);
  std::vector<float> y(x.size()), mean(n), rstd(n);
  auto ln_objective = [&] {
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias.data(),
                          n, c);
    return weighted_sum(y, w);
  };
  ln_objective();
  std::vector<float> dx(x.size(), 0.0f), dweight(c, 0.0f), dbias(c, 0.0f);
  layernorm_backward_cpu(dx.data(), dweight.data(), dbias.data(), w.data(), x.data(), weight.data(),
                         mean.data(), rstd.data(), n, c);
  check_gradient("large layernorm dx", x, dx, ln_objective, 1e-2f, 1e-2, 1e-3, 60);
  check_gradient("large layernorm dweight", weight, dweight, ln_objective, 1e-2f, 1e-2, 1e-3, 60);
  check_gradient("large layernorm dbias", bias, dbias, ln_objective, 1e-2f, 1e-2, 1e-3, 60);

  const int n_batch = 4, n_seq = 32, vocab = 50;
  std::vector<int32_t> tokens(n_batch * n_seq);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % vocab);
  std::vector<float> wte = randn(static_cast<size_t>(vocab) * c, 104);
  std::vector<float> wpe = randn(static_cast<size_t>(n_seq) * c, 105);
  auto emb_objective = [&] {
    embedding_forward_cpu(y.data(), tokens.data(), wte.data(), wpe.data(), n_batch, n_seq, c,
                          vocab);
    return weighted_sum(y, w);
  };
  std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  embedding_backward_cpu(dwte.data(), dwpe.data(), w.data(), tokens.data(), n_batch, n_seq, c,
                         vocab);
  check_gradient("large embedding dwte", wte, dwte, emb_objective, 1e-2f, 1e-2, 1e-3, 60);
  check_gradient("large embedding dwpe", wpe, dwpe, emb_objective, 1e-2f, 1e-2, 1e-3, 60);

  const int d_in = 24;
  std::vector<float> xm = randn(static_cast<size_t>(n) * d_in, 106);
  std::vector<float> wm = randn(static_cast<size_t>(d_in) * c, 107, 0.3f);
  auto mm_objective = [&] {
    matmul_forward_cpu(y.data(), xm.data(), wm.data(), bias.data(), n, d_in, c);
    return weighted_sum(y, w);
  };
  std::fill(dbias.begin(), dbias.end(), 0.0f);
  std::vector<float> dwm(wm.size(), 0.0f);
  matmul_backward_cpu(nullptr, dwm.data(), dbias.data(), w.data(), xm.data(), wm.data(), n, d_in,
                      c);
  check_gradient("large matmul dbias", bias, dbias, mm_objective, 1e-2f, 1e-2, 1e-3, 60);
  check_gradient("large matmul dw", wm, dwm, mm_objective, 1e-2f, 1e-2, 1e-3, 60);
}

TEST(LargerShapes, AttentionCrossEntropyGelu) {
  const int n_batch = 2, n_seq = 40, d_model = 64, n_head = 4;
  std::vector<float> qkv = randn(static_cast<size_t>(n_batch) * n_seq * 3 * d_model, 110);
  std::vector<float> w = randn(static_cast<size_t>(n_batch) * n_seq * d_model, 111);
  std::vector<float> out(w.size()), att(static_cast<size_t>(n_batch) * n_head * n_seq * n_seq);
  const int hd = d_model / n_head;
  auto att_objective = [&] {
    attention_forward_cpu(out.data(), att.data(), qkv.data(), n_batch, n_seq, n_head, n_head, hd);
    return weighted_sum(out, w);
  };
  att_objective();
  std::vector<float> dqkv(qkv.size(), 0.0f);
  attention_backward_cpu(dqkv.data(), w.data(), qkv.data(), att.data(), n_batch, n_seq, n_head,
                         n_head, hd);
  check_gradient("large attention dqkv", qkv, dqkv, att_objective, 1e-2f, 1e-2, 1e-3, 120);

  const int n = 40, vocab = 1000;
  std::vector<float> logits = randn(static_cast<size_t>(n) * vocab, 112, 3.0f);
  std::vector<int32_t> targets(n);
  for (int i = 0; i < n; ++i) targets[i] = (i * 37) % vocab;
  std::vector<float> losses(n);
  auto ce_objective = [&] {
    cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), n, vocab);
    double s = 0.0;
    for (float l : losses) s += l;
    return s;
  };
  std::vector<float> dlogits(logits.size());
  cross_entropy_backward_cpu(dlogits.data(), logits.data(), targets.data(), 1.0f, n, vocab);
  // Check every target logit (large gradients) and a spread of the others (small ones).
  check_gradient("large cross_entropy dlogits", logits, dlogits, ce_objective, 1e-2f, 1e-2, 3e-4,
                 200);
  for (int i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i) * vocab + targets[i];
    const float orig = logits[k];
    logits[k] = orig + 1e-2f;
    const double lp = ce_objective();
    logits[k] = orig - 1e-2f;
    const double lm = ce_objective();
    logits[k] = orig;
    EXPECT_NEAR(dlogits[k], (lp - lm) / 2e-2, 1e-3) << "row " << i;
  }

  const size_t n_gelu = 100000;
  std::vector<float> xg = randn(n_gelu, 113, 3.0f), wg = randn(n_gelu, 114), yg(n_gelu);
  auto gelu_objective = [&] {
    gelu_forward_cpu(yg.data(), xg.data(), n_gelu);
    return weighted_sum(yg, wg);
  };
  std::vector<float> dxg(n_gelu, 0.0f);
  gelu_backward_cpu(dxg.data(), wg.data(), xg.data(), n_gelu);
  check_gradient("large gelu dx", xg, dxg, gelu_objective, 1e-3f, 1e-2, 1e-3, 50);
}

}  // namespace
}  // namespace lora::ops
