// small_sgemm (core/ops/small_gemm.h) against the product computed in double,
// and against the BLAS (ops::sgemm) within float rounding: every orientation,
// sizes around the 6 x 16 register tile (remainders of rows and columns, k =
// 1), leading dimensions larger than the matrices, beta = 0 over a C full of
// NaN (C must be written, not read), beta = 1 accumulating, alpha scaling, and
// the recorder seeing its calls marked as its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/ops/sgemm.h"
#include "core/ops/small_gemm.h"
#include "core/rng.h"

namespace lora::ops {
namespace {

struct Case {
  bool ta, tb;
  int m, n, k;
  int pad;  // extra columns in each leading dimension
  float alpha, beta;
};

std::vector<float> randn(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = normal01(91, stream, i);
  return v;
}

void check(const Case& cs) {
  const int rows_a = cs.ta ? cs.k : cs.m, cols_a = cs.ta ? cs.m : cs.k;
  const int rows_b = cs.tb ? cs.n : cs.k, cols_b = cs.tb ? cs.k : cs.n;
  const int lda = cols_a + cs.pad, ldb = cols_b + cs.pad, ldc = cs.n + cs.pad;
  const std::vector<float> a = randn(size_t(rows_a) * lda, 1), b = randn(size_t(rows_b) * ldb, 2);
  std::vector<float> c0 = randn(size_t(cs.m) * ldc, 3);
  if (cs.beta == 0.0f) c0.assign(c0.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> ours = c0, blas = c0;
  small_sgemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, a.data(), lda, b.data(), ldb, cs.beta,
              ours.data(), ldc);
  sgemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, a.data(), lda, b.data(), ldb, cs.beta,
        blas.data(), ldc);
  const std::string what = std::string(cs.ta ? "T" : "N") + (cs.tb ? "T" : "N") + " m " +
                           std::to_string(cs.m) + " n " + std::to_string(cs.n) + " k " +
                           std::to_string(cs.k) + " pad " + std::to_string(cs.pad) + " beta " +
                           std::to_string(cs.beta);
  for (int i = 0; i < cs.m; ++i) {
    for (int j = 0; j < ldc; ++j) {
      const size_t at = size_t(i) * ldc + j;
      if (j >= cs.n) {  // padding columns of C are never touched
        EXPECT_TRUE(std::isnan(c0[at]) ? std::isnan(ours[at]) : ours[at] == c0[at])
            << what << " wrote outside C at (" << i << ", " << j << ")";
        continue;
      }
      double exact = 0.0, magnitude = 0.0;
      for (int p = 0; p < cs.k; ++p) {
        const double x = cs.ta ? a[size_t(p) * lda + i] : a[size_t(i) * lda + p];
        const double y = cs.tb ? b[size_t(j) * ldb + p] : b[size_t(p) * ldb + j];
        exact += x * y;
        magnitude += std::fabs(x * y);
      }
      exact *= cs.alpha;
      if (cs.beta != 0.0f) exact += double(cs.beta) * c0[at];
      const double c_in = cs.beta != 0.0f ? std::fabs(double(cs.beta) * c0[at]) : 0.0;
      const double tol = 4e-7 * (std::fabs(cs.alpha) * magnitude + c_in + 1.0) * 8;
      ASSERT_NEAR(ours[at], exact, tol) << what << " at (" << i << ", " << j << ")";
      ASSERT_NEAR(ours[at], blas[at], 2 * tol)
          << what << " against the BLAS at (" << i << ", " << j << ")";
    }
  }
}

TEST(SmallGemm, MatchesDoubleAndTheBlasInEveryOrientation) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int m : {1, 5, 6, 7, 13, 64})
        for (int n : {1, 15, 16, 17, 40, 128})
          for (int k : {1, 3, 64})
            for (int pad : {0, 3}) check({ta, tb, m, n, k, pad, 1.0f, 0.0f});
}

TEST(SmallGemm, AccumulatesWithBetaAndScalesWithAlpha) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check({ta, tb, 64, 128, 64, 5, 0.125f, 1.0f});
      check({ta, tb, 19, 33, 70, 0, -2.0f, 0.5f});
      check({ta, tb, 128, 64, 128, 1, 1.0f, 1.0f});
    }
}

TEST(SmallGemm, KZeroScalesC) {
  std::vector<float> c = {1.0f, 2.0f, 3.0f, 4.0f}, a(1), b(1);
  small_sgemm(false, false, 2, 2, 0, 1.0f, a.data(), 1, b.data(), 2, 0.5f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f}));
  c.assign(4, std::numeric_limits<float>::quiet_NaN());
  small_sgemm(false, false, 2, 2, 0, 1.0f, a.data(), 1, b.data(), 2, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>(4, 0.0f)));
}

// The causal modes against the full product: the wanted outputs (kOutputLower) or all outputs
// (inner modes, with op(A) zero on the skipped side of the diagonal) carry the same bits, and
// kOutputLower leaves panels wholly past the diagonal untouched.
TEST(SmallGemm, CausalModesEqualTheFullProduct) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int m : {1, 7, 64, 100})
        for (int diag : {0, 5, -3, 64})
          for (Causal mode : {Causal::kOutputLower, Causal::kInnerUpToRow, Causal::kInnerFromRow}) {
            const int k = mode == Causal::kOutputLower ? 24 : m + std::max(diag, 0);
            const int n = mode == Causal::kOutputLower ? m + std::max(diag, 0) : 20;
            const int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2, ldc = n + 1;
            std::vector<float> a = randn(size_t(ta ? k : m) * lda, 7);
            const std::vector<float> b = randn(size_t(tb ? n : k) * ldb, 8);
            auto a_at = [&](int i, int p) -> float& {
              return ta ? a[size_t(p) * lda + i] : a[size_t(i) * lda + p];
            };
            for (int i = 0; i < m; ++i)
              for (int p = 0; p < k; ++p) {
                if (mode == Causal::kInnerUpToRow && p > i + diag) a_at(i, p) = 0.0f;
                if (mode == Causal::kInnerFromRow && p < i + diag) a_at(i, p) = 0.0f;
              }
            const float sentinel = 12345.0f;
            std::vector<float> full(size_t(m) * ldc, sentinel), part = full;
            small_sgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 0.0f, full.data(),
                        ldc);
            small_sgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 0.0f, part.data(), ldc,
                        mode, diag);
            const std::string what = std::string(ta ? "T" : "N") + (tb ? "T" : "N") + " m " +
                                     std::to_string(m) + " diag " + std::to_string(diag) +
                                     " mode " + std::to_string(static_cast<int>(mode));
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < n; ++j) {
                const size_t at = size_t(i) * ldc + j;
                if (mode != Causal::kOutputLower || j <= i + diag) {
                  ASSERT_EQ(part[at], full[at]) << what << " at (" << i << ", " << j << ")";
                } else if (j / 16 * 16 > (i / 6 * 6 + 5) + diag) {
                  ASSERT_EQ(part[at], sentinel) << what << " wrote (" << i << ", " << j << ")";
                }
              }
          }
}

TEST(SmallGemm, RecorderMarksItsCalls) {
  std::vector<SgemmShape> seen;
  set_sgemm_recorder([&](const SgemmShape& s, double) { seen.push_back(s); });
  const std::vector<float> a = randn(6 * 4, 5), b = randn(4 * 9, 6);
  std::vector<float> c(6 * 9);
  small_sgemm(false, false, 6, 9, 4, 1.0f, a.data(), 4, b.data(), 9, 0.0f, c.data(), 9);
  sgemm(false, false, 6, 9, 4, 1.0f, a.data(), 4, b.data(), 9, 0.0f, c.data(), 9);
  set_sgemm_recorder({});
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].own_kernel);
  EXPECT_FALSE(seen[1].own_kernel);
  EXPECT_EQ(seen[0].m, 6);
  EXPECT_EQ(seen[0].n, 9);
  EXPECT_EQ(seen[0].k, 4);
}

}  // namespace
}  // namespace lora::ops
