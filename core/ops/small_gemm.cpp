// small_sgemm (core/ops/small_gemm.h): B packed into panels of kNr columns (zero past n), then
// for each panel every group of kMr rows of C is accumulated in kMr x kNr registers:
//   acc[r][j] = sum over p = p0 .. p1-1, in order, of A(i + r, p) * Bpanel(p, j)
// ([p0, p1) = [0, k) unless a causal mode narrows it) and written as alpha acc + beta C. A is
// read in place (a row of op(A) is either a contiguous row of A or a strided column; kMr rows at
// one p are kMr loads). The vectors are GCC/Clang vector extensions: AVX with FMA contraction
// under -march=native on x86-64, pairs of 128-bit registers elsewhere.
#include "core/ops/small_gemm.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/ops/sgemm.h"

namespace lora::ops {
namespace {

typedef float v8 __attribute__((vector_size(32)));
constexpr int kNr = 16;  // columns per panel: two vectors
constexpr int kMr = 6;   // rows per register tile: 12 accumulators + 2 panel vectors + 1 broadcast

inline v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

// Panel of op(B): kNr consecutive floats per p, columns j0 .. j0 + kNr - 1 (0 beyond n).
void pack_panel(float* dst, const float* b, int ldb, bool trans_b, int k, int j0, int n) {
  const int cols = std::min(kNr, n - j0);
  if (!trans_b) {
    for (int p = 0; p < k; ++p) {
      const float* src = b + static_cast<size_t>(p) * ldb + j0;
      float* d = dst + static_cast<size_t>(p) * kNr;
      if (cols == kNr) {
        store(d, load(src));
        store(d + 8, load(src + 8));
        continue;
      }
      int j = 0;
      for (; j < cols; ++j) d[j] = src[j];
      for (; j < kNr; ++j) d[j] = 0.0f;
    }
  } else {
    // op(B)(p, j) = b[j * ldb + p]: walk each column of op(B) (a row of b) contiguously.
    for (int j = 0; j < kNr; ++j) {
      if (j < cols) {
        const float* src = b + static_cast<size_t>(j0 + j) * ldb;
        for (int p = 0; p < k; ++p) dst[static_cast<size_t>(p) * kNr + j] = src[p];
      } else {
        for (int p = 0; p < k; ++p) dst[static_cast<size_t>(p) * kNr + j] = 0.0f;
      }
    }
  }
}

// Rows i0 .. i0 + R - 1 of C against one packed panel (columns j0 .. j0 + cols - 1), the sum
// over p in [p0, p1).
template <int R>
void tile(const float* a, int lda, bool trans_a, const float* panel, int p0, int p1, float alpha,
          float beta, float* c, int ldc, int i0, int j0, int cols) {
  // C's rows are usually far apart (a head's columns of a wider matrix) and not in cache: ask for
  // them now so that the loads and stores after the sum do not wait.
  for (int r = 0; r < R; ++r) {
    const float* ci = c + static_cast<size_t>(i0 + r) * ldc + j0;
    __builtin_prefetch(ci, 1);
    __builtin_prefetch(ci + kNr - 1, 1);
  }
  v8 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = v8{};
  if (!trans_a) {
    const float* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a + static_cast<size_t>(i0 + r) * lda;
    for (int p = p0; p < p1; ++p) {
      const v8 b0 = load(panel + static_cast<size_t>(p) * kNr);
      const v8 b1 = load(panel + static_cast<size_t>(p) * kNr + 8);
      for (int r = 0; r < R; ++r) {
        const float x = rows[r][p];
        acc[r][0] += x * b0;
        acc[r][1] += x * b1;
      }
    }
  } else {
    // op(A)(i, p) = a[p * lda + i]: the R values at one p are adjacent.
    for (int p = p0; p < p1; ++p) {
      const v8 b0 = load(panel + static_cast<size_t>(p) * kNr);
      const v8 b1 = load(panel + static_cast<size_t>(p) * kNr + 8);
      const float* col = a + static_cast<size_t>(p) * lda + i0;
      for (int r = 0; r < R; ++r) {
        const float x = col[r];
        acc[r][0] += x * b0;
        acc[r][1] += x * b1;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    float* ci = c + static_cast<size_t>(i0 + r) * ldc + j0;
    if (cols == kNr) {
      v8 y0 = alpha * acc[r][0], y1 = alpha * acc[r][1];
      if (beta != 0.0f) {
        y0 += beta * load(ci);
        y1 += beta * load(ci + 8);
      }
      store(ci, y0);
      store(ci + 8, y1);
    } else {
      float out[kNr];
      store(out, alpha * acc[r][0]);
      store(out + 8, alpha * acc[r][1]);
      for (int j = 0; j < cols; ++j) ci[j] = beta != 0.0f ? out[j] + beta * ci[j] : out[j];
    }
  }
}

using TileFn = void (*)(const float*, int, bool, const float*, int, int, float, float, float*, int,
                        int, int, int);
constexpr TileFn kTiles[kMr + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

void compute(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
             int lda, const float* b, int ldb, float beta, float* c, int ldc, Causal causal,
             int diag) {
  if (m <= 0 || n <= 0) return;
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(std::max(k, 1)) * kNr);
  for (int j0 = 0; j0 < n; j0 += kNr) {
    const int cols = std::min(kNr, n - j0);
    // kOutputLower: rows i with i + diag < j0 want nothing of this panel.
    int first_row = 0;
    if (causal == Causal::kOutputLower) {
      first_row = std::max(0, j0 - diag);
      if (first_row >= m) break;
      first_row -= first_row % kMr;
    }
    if (k > 0) pack_panel(panel.data(), b, ldb, trans_b, k, j0, n);
    for (int i0 = first_row; i0 < m; i0 += kMr) {
      const int rows = std::min(kMr, m - i0);
      int p0 = 0, p1 = k;
      if (causal == Causal::kInnerUpToRow) p1 = std::clamp(i0 + rows + diag, 0, k);
      if (causal == Causal::kInnerFromRow) p0 = std::clamp(i0 + diag, 0, k);
      p1 = std::max(p0, p1);
      kTiles[rows](a, lda, trans_a, panel.data(), p0, p1, alpha, beta, c, ldc, i0, j0, cols);
    }
  }
}

}  // namespace

void small_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc, Causal causal,
                 int diag) {
  if (!detail::sgemm_recording()) {
    compute(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, causal, diag);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  compute(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, causal, diag);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  detail::record_sgemm({trans_a, trans_b, m, n, k, lda, ldb, ldc, beta == 0.0f, true}, seconds);
}

}  // namespace lora::ops
