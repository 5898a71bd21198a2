#include "core/profile.h"

namespace lora::prof {
namespace {

bool g_enabled = false;
Totals g_totals;
Op g_current = Op::kCount;

}  // namespace

const char* op_name(Op op) {
  switch (op) {
    case Op::kLinear:
      return "linear";
    case Op::kLora:
      return "lora";
    case Op::kAttention:
      return "attention";
    case Op::kNorm:
      return "norm";
    case Op::kActivation:
      return "activation";
    case Op::kHead:
      return "lm_head";
    case Op::kLoss:
      return "loss";
    case Op::kRope:
      return "rope";
    case Op::kDropout:
      return "dropout";
    case Op::kEmbedding:
      return "embedding";
    case Op::kOptimizer:
      return "optimizer";
    case Op::kFill:
      return "fill";
    case Op::kCount:
      break;
  }
  return "?";
}

bool enabled() { return g_enabled; }
void enable(bool on) { g_enabled = on; }
void reset() { g_totals = Totals{}; }
Totals totals() { return g_totals; }
Op current() { return g_current; }
Op set_current(Op op) {
  const Op prev = g_current;
  g_current = op;
  return prev;
}
void add(Op op, double seconds) {
  g_totals.seconds[static_cast<int>(op)] += seconds;
  g_totals.calls[static_cast<int>(op)] += 1;
}

}  // namespace lora::prof
