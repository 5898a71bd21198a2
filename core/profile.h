// Wall time of the CPU model's work per op class, for benchmarks (bench/roofline): off unless
// enabled, then one clock read at each op's start and end on the calling thread. The model's
// forward and backward wrap each op in a Scope. Scopes open on one thread only.
#pragma once

#include <array>
#include <chrono>

namespace lora::prof {

enum class Op {
  kLinear,      // base products of the linears (and their bias)
  kLora,        // the rank-r adapter products
  kAttention,   // QK^T, softmax, PV and their backward
  kNorm,        // LayerNorm / RMSNorm, most with the residual add before them fused in
  kActivation,  // GELU / SwiGLU
  kHead,        // LM head product
  kLoss,        // softmax cross-entropy
  kRope,
  kDropout,
  kEmbedding,
  kOptimizer,  // clipping and AdamW
  kFill,       // clearing gradient buffers before they accumulate
  kCount
};

const char* op_name(Op op);

struct Totals {
  std::array<double, static_cast<int>(Op::kCount)> seconds{};
  std::array<long, static_cast<int>(Op::kCount)> calls{};
};

bool enabled();
void enable(bool on);
void reset();
Totals totals();
void add(Op op, double seconds);
// The op class whose scope is open (innermost) while profiling, kCount outside any.
Op current();
Op set_current(Op op);  // returns the previous one

class Scope {
 public:
  explicit Scope(Op op) : op_(op), on_(enabled()) {
    if (!on_) return;
    prev_ = set_current(op);
    t0_ = std::chrono::steady_clock::now();
  }
  ~Scope() {
    if (!on_) return;
    add(op_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
    set_current(prev_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Op op_, prev_ = Op::kCount;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace lora::prof
