// A register-tiled single-precision GEMM for the small products of the CPU ops (attention's
// per-head blocks), on the calling thread:
//   C[m, n] = alpha op(A) op(B) + beta C,  row-major, op(X) = X or X^T  (the sgemm contract;
//   beta == 0 writes C without reading it)
// A BLAS call carries fixed costs that weigh on products of a few MFLOP (argument handling, a
// separate pass over C for beta, packing both operands into fresh buffers), and it cannot skip
// the half of a causal product past the diagonal. Here each 16-column panel of op(B) is packed
// once per call, each 6 x 16 tile of C is summed in registers over k in order (every element's
// value is the same whatever tile it falls in and whichever thread computes it), and the causal
// modes below skip what the diagonal makes zero or unwanted.
//
// Calls are reported to the sgemm recorder (core/ops/sgemm.h) with own_kernel set, so
// bench/roofline can time the BLAS alone on the same products.
#pragma once

namespace lora::ops {

// What a causal (attention) product may skip, with the diagonal at column/inner index i + diag
// for row i of C:
//   kNone            the full product
//   kOutputLower     only C(i, j) with j <= i + diag is wanted: the 16-column panels that lie
//                    wholly beyond every row of a 6-row tile are neither computed nor written
//                    (entries past the diagonal inside a computed panel are written)
//   kInnerUpToRow    op(A)(i, p) == 0 for p > i + diag: a tile's sum stops after its last row's
//                    diagonal (terms skipped are products with zeros of op(A))
//   kInnerFromRow    op(A)(i, p) == 0 for p < i + diag: a tile's sum starts at its first row's
//                    diagonal
// In the inner modes the skipped terms are exact zeros (op(A) must hold zeros there, also
// between the diagonal and the tile's edge), so C is the same as the full product's.
enum class Causal { kNone, kOutputLower, kInnerUpToRow, kInnerFromRow };

void small_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc,
                 Causal causal = Causal::kNone, int diag = 0);

}  // namespace lora::ops
