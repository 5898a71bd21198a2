// How close a CPU training step comes to the BLAS's own limit.
//
// For one model shape (options of bench/bench_args.h) it
//   1. times whole steps (forward, backward, clipping, AdamW; median of --steps after --warmup),
//   2. counts the step's FLOPs by formula (below) and divides: achieved FLOP/s,
//   3. records every sgemm the step calls (shape, orientation, leading dimensions) and times the
//      BLAS alone on exactly those products, with the same threads, in the same process: the
//      sgemm FLOP/s the step could reach if nothing else ran and no product were wasted,
//   4. prints the fraction achieved / sgemm, and where the step's time goes per op class (the
//      model's own timers, one profiled step), next to the time the BLAS alone needs for that
//      class's products.
//
// FLOPs of one step, per token (T tokens per sequence, BT tokens), summed over the layers:
//   every base linear (d_in x d_out):  2 d_in d_out forward + 2 d_in d_out input gradient
//                                      (+ 2 d_in d_out weight gradient in full mode)
//   every LoRA module (rank r):        forward 2 r (d_in + d_out); backward dB 2 r d_out,
//                                      dh 2 r d_out, dA 2 r d_in, dx 2 r d_in
//   the LM head (d_model x vocab):     2 C V forward + 2 C V input gradient (+ 2 C V in full)
//   attention, per head and sequence:  QK^T and PV forward, dV, dP, dQ, dK backward: six
//                                      products of 2 hs T(T+1)/2 each (causal: keys u <= t)
// In LoRA mode nothing below the first block needs a gradient, so the input gradients of
// layer 0's attention-input linear (base and LoRA) are not computed and not counted. Norms,
// activations, softmax, cross-entropy, residual adds, RoPE, dropout and AdamW are counted as zero
// FLOPs: every nanosecond they take lowers the fraction.
//
// Prints a human-readable report, then one JSON line.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "bench/bench_args.h"
#include "core/model/transformer.h"
#include "core/ops/sgemm.h"
#include "core/profile.h"
#include "core/rng.h"
#include "trainer/trainer.h"

using namespace lora;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double step_flops(const TransformerModel& model, int B, int T) {
  const ModelSpec& s = model.spec();
  const bool full = model.mode() == TrainMode::kFull;
  const double BT = static_cast<double>(B) * T;
  const double C = s.d_model, V = s.vocab_size, hs = s.head_size();
  double per_token = 0.0;
  const double passes = full ? 3.0 : 2.0;  // forward, input gradient[, weight gradient]
  const double lin = C * s.qkv_dim() + s.q_dim() * C + C * s.mlp_in_dim() + s.ff() * C;
  per_token += 2.0 * passes * lin * s.n_layer;
  if (!full) per_token -= 2.0 * C * s.qkv_dim();  // layer 0: no input gradient of the qkv linear
  per_token += 2.0 * passes * C * V;
  double flops = per_token * BT;
  flops += 6.0 * 2.0 * hs * (static_cast<double>(T) * (T + 1) / 2.0) * s.n_head * B * s.n_layer;
  if (const LoraLayout* ll = model.lora_layout()) {
    for (const LoraModule& m : ll->modules()) {
      const bool dx = !(m.layer == 0 && m.linear == BlockLinear::kAttnIn);
      const double r = m.rank;
      double f = 2.0 * r * (m.d_in + m.d_out) + 2.0 * r * m.d_out * 2.0 + 2.0 * r * m.d_in;
      if (dx) f += 2.0 * r * m.d_in;
      flops += f * BT;
    }
  }
  return flops;
}

struct Key {
  ops::SgemmShape s;
  bool operator<(const Key& o) const {
    auto t = [](const ops::SgemmShape& x) {
      return std::tie(x.trans_a, x.trans_b, x.m, x.n, x.k, x.lda, x.ldb, x.ldc, x.beta_zero,
                      x.own_kernel);
    };
    return t(s) < t(o.s);
  }
};

struct Recorded {
  long calls = 0;
  double in_step_s = 0.0;  // summed wall time of these calls inside the profiled step
  std::map<prof::Op, long> calls_by_op;
};

// Seconds one call of this shape takes on the BLAS alone (median of timed batches).
double time_sgemm(const ops::SgemmShape& s) {
  const size_t rows_a = s.trans_a ? s.k : s.m, rows_b = s.trans_b ? s.n : s.k;
  std::vector<float> a(rows_a * s.lda), b(rows_b * s.ldb), c(static_cast<size_t>(s.m) * s.ldc);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(hash_u64(1, i, 0) % 1000) * 1e-3f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(hash_u64(2, i, 0) % 1000) * 1e-3f;
  const float beta = s.beta_zero ? 0.0f : 1.0f;
  auto call = [&] {
    ops::sgemm(s.trans_a, s.trans_b, s.m, s.n, s.k, 1.0f, a.data(), s.lda, b.data(), s.ldb, beta,
               c.data(), s.ldc);
  };
  call();  // warm
  const double flops = 2.0 * s.m * s.n * s.k;
  const int reps = static_cast<int>(std::clamp(2e8 / std::max(flops, 1.0), 1.0, 2000.0));
  std::vector<double> per_call;
  for (int batch = 0; batch < 5; ++batch) {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) call();
    per_call.push_back(seconds_since(t0) / reps);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bench::StepArgs args;
  if (!bench::parse_step_args(argc, argv, "roofline", args)) return 2;
  configure_threads(args.threads);
  const int B = args.batch, T = args.seq;
  TransformerModel model(args.shape, args.full() ? TrainMode::kFull : TrainMode::kLora,
                         args.lora_spec());
  model.init_base_random(1);
  model.init_lora(2);
  // B starts non-zero so that every adapter product does its real work (B = 0 is a valid start
  // but some libraries shortcut zeros; ours does not, the values do not change the timing).
  {
    std::vector<float> p(model.n_trainable());
    model.get_trainable(p);
    for (size_t i = 0; i < p.size(); ++i)
      p[i] = (static_cast<float>(hash_u64(5, i, 0) % 2001) - 1000.0f) * 1e-5f;
    model.set_trainable(p);
  }
  auto opt = model.make_optimizer(ops::AdamWParams{});
  std::vector<int32_t> tokens(static_cast<size_t>(B) * T), targets(tokens.size());
  auto step = [&](int s) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int32_t>(hash_u64(3, s, i) % args.shape.vocab_size);
      targets[i] = static_cast<int32_t>(hash_u64(4, s, i) % args.shape.vocab_size);
    }
    model.zero_grads();
    model.forward(tokens.data(), targets.data(), B, T);
    model.backward();
    opt->step(1e-4f, 1.0f);
  };

  for (int s = 0; s < args.warmup; ++s) step(s);
  std::vector<double> times;
  for (int s = 0; s < args.steps; ++s) {
    const auto t0 = Clock::now();
    step(args.warmup + s);
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  const double step_s = times[times.size() / 2];

  // One profiled step: time per op class, and the sgemm calls it makes.
  std::map<Key, Recorded> recorded;
  ops::set_sgemm_recorder([&recorded](const ops::SgemmShape& s, double seconds) {
    Recorded& r = recorded[Key{s}];
    ++r.calls;
    r.in_step_s += seconds;
    ++r.calls_by_op[prof::current()];
  });
  prof::reset();
  prof::enable(true);
  const auto tp = Clock::now();
  step(args.warmup + args.steps);
  const double profiled_s = seconds_since(tp);
  prof::enable(false);
  ops::set_sgemm_recorder({});
  const prof::Totals totals = prof::totals();

  // The BLAS alone on the same products.
  constexpr int kOps = static_cast<int>(prof::Op::kCount) + 1;  // + "outside any scope"
  std::vector<double> blas_s(kOps, 0.0);
  double blas_total_s = 0.0, blas_flops = 0.0;
  double large_s = 0.0, large_flops = 0.0;  // the base linears' and LM head's products only
  long n_calls = 0;
  struct ShapeRow {
    const Key* key;
    const Recorded* rec;
    double alone_s;
  };
  std::vector<ShapeRow> shape_rows;
  for (const auto& [key, rec] : recorded) {
    const double t = time_sgemm(key.s);
    shape_rows.push_back({&key, &rec, t * rec.calls});
    blas_total_s += t * rec.calls;
    blas_flops += 2.0 * key.s.m * key.s.n * key.s.k * rec.calls;
    n_calls += rec.calls;
    for (const auto& [op, n] : rec.calls_by_op) {
      blas_s[static_cast<int>(op)] += t * n;
      if (op == prof::Op::kLinear || op == prof::Op::kHead) {
        large_s += t * n;
        large_flops += 2.0 * key.s.m * key.s.n * key.s.k * n;
      }
    }
  }
  const double flops = step_flops(model, B, T);
  const double achieved = flops / step_s, sgemm_rate = blas_flops / blas_total_s;
  const double fraction = achieved / sgemm_rate;
  const double large_rate = large_s > 0.0 ? large_flops / large_s : 0.0;

  const ModelSpec& sh = args.shape;
  std::printf(
      "shape: %s, %d layers, d_model %d, %d heads (%d kv), d_ff %d, vocab %d, seq %d, "
      "batch %d, %s mode, rank %d on %s, %d thread(s), BLAS core %s\n",
      args.arch.c_str(), sh.n_layer, sh.d_model, sh.n_head, sh.kv_heads(), sh.ff(), sh.vocab_size,
      T, B, args.mode.c_str(), args.lora.rank, args.targets.c_str(), args.threads,
      openblas_get_corename());
  std::printf("step: %.2f ms median of %d (min %.2f), %.0f tokens/s\n", step_s * 1e3, args.steps,
              times.front() * 1e3, B * T / step_s);
  std::printf("FLOPs by formula: %.3f GFLOP per step -> %.1f GFLOP/s achieved\n", flops * 1e-9,
              achieved * 1e-9);
  std::printf(
      "sgemm alone on the step's %ld products (%zu shapes, %.3f GFLOP): %.2f ms -> "
      "%.1f GFLOP/s\n",
      n_calls, recorded.size(), blas_flops * 1e-9, blas_total_s * 1e3, sgemm_rate * 1e-9);
  std::printf("fraction of sgemm FLOP/s: %.3f\n", fraction);
  std::printf(
      "sgemm alone on the base linears' and LM head's products only: %.1f GFLOP/s; fraction of "
      "that: %.3f\n\n",
      large_rate * 1e-9, achieved / large_rate);
  std::printf("profiled step %.2f ms, by op class (sgemm-alone time of the class's products):\n",
              profiled_s * 1e3);
  std::printf("  %-11s %9s %7s %11s %7s\n", "class", "ms", "share", "sgemm ms", "calls");
  double accounted = 0.0;
  for (int i = 0; i < static_cast<int>(prof::Op::kCount); ++i) {
    const double t = totals.seconds[i];
    accounted += t;
    if (totals.calls[i] == 0 && blas_s[i] == 0.0) continue;
    std::printf("  %-11s %9.2f %6.1f%% %11.2f %7ld\n", prof::op_name(static_cast<prof::Op>(i)),
                t * 1e3, 100.0 * t / profiled_s, blas_s[i] * 1e3, totals.calls[i]);
  }
  // Nested scopes (dropout inside lora) are counted in both; the rest is bookkeeping.
  std::printf("  %-11s %9.2f %6.1f%%\n", "unscoped", (profiled_s - accounted) * 1e3,
              100.0 * (profiled_s - accounted) / profiled_s);

  // The products that lost most against the BLAS alone (with several threads the in-step time is
  // summed over the threads that ran calls concurrently, so read it at 1 thread).
  std::sort(shape_rows.begin(), shape_rows.end(), [](const ShapeRow& a, const ShapeRow& b) {
    return a.rec->in_step_s - a.alone_s > b.rec->in_step_s - b.alone_s;
  });
  std::printf("\nproducts by time lost in the step against sgemm alone (top 8 of %zu shapes):\n",
              shape_rows.size());
  std::printf("  %-4s %6s %6s %6s %6s %6s %6s %5s %6s %10s %10s\n", "op", "m", "n", "k", "lda", "ldb",
              "ldc", "beta", "calls", "step ms", "alone ms");
  std::printf("  (op marked * : computed in the step by small_sgemm; alone ms is still the BLAS)\n");
  for (size_t i = 0; i < std::min<size_t>(8, shape_rows.size()); ++i) {
    const ops::SgemmShape& k = shape_rows[i].key->s;
    std::printf("  %c%c%c  %6d %6d %6d %6d %6d %6d %5s %6ld %10.2f %10.2f\n", k.trans_a ? 'T' : 'N',
                k.trans_b ? 'T' : 'N', k.own_kernel ? '*' : ' ', k.m, k.n, k.k, k.lda, k.ldb, k.ldc, k.beta_zero ? "0" : "1",
                shape_rows[i].rec->calls, shape_rows[i].rec->in_step_s * 1e3,
                shape_rows[i].alone_s * 1e3);
  }

  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"bench\": \"roofline\", \"arch\": \"%s\", \"layers\": %d, \"d_model\": %d, \"vocab\": %d, "
      "\"seq\": %d, \"batch\": %d, \"mode\": \"%s\", \"rank\": %d, \"targets\": \"%s\", "
      "\"threads\": %d, \"blas_core\": \"%s\", \"step_s\": %.5f, \"tokens_per_s\": %.1f, "
      "\"gflop_per_step\": %.4f, \"achieved_gflops\": %.2f, \"sgemm_gflops\": %.2f, "
      "\"fraction\": %.4f, \"large_sgemm_gflops\": %.2f, \"fraction_of_large\": %.4f, "
      "\"peak_rss_mib\": %.1f}\n",
      args.arch.c_str(), sh.n_layer, sh.d_model, sh.vocab_size, T, B, args.mode.c_str(),
      args.lora.rank, args.targets.c_str(), args.threads, openblas_get_corename(), step_s,
      B * T / step_s, flops * 1e-9, achieved * 1e-9, sgemm_rate * 1e-9, fraction,
      large_rate * 1e-9, achieved / large_rate, ru.ru_maxrss / 1024.0);
  return 0;
}
