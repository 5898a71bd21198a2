// The CPU attention op alone: forward and backward of causal multi-head attention
// (core/ops/attention.h) on one shape, median of --reps timed runs after one warm-up.
//
//   attention_op --batch 8 --seq 128 --heads 4 [--kv-heads 4] [--head-dim 64] [--threads 1]
//                [--reps 15]
//
// Prints one JSON line. It uses only the op's public entry points, so the same file builds
// against an older core library for a before/after comparison.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/ops/attention.h"

namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 8, seq = 128, heads = 4, kv_heads = 0, head_dim = 64, threads = 1, reps = 15;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "attention_op: %s needs a value\n", key.c_str());
      return 2;
    }
    char* end = nullptr;
    const long v = std::strtol(argv[++i], &end, 10);
    if (*end != '\0' || v <= 0 || v > 1 << 20) {
      std::fprintf(stderr, "attention_op: %s expects a positive integer, got '%s'\n", key.c_str(),
                   argv[i]);
      return 2;
    }
    if (key == "--batch") batch = static_cast<int>(v);
    else if (key == "--seq") seq = static_cast<int>(v);
    else if (key == "--heads") heads = static_cast<int>(v);
    else if (key == "--kv-heads") kv_heads = static_cast<int>(v);
    else if (key == "--head-dim") head_dim = static_cast<int>(v);
    else if (key == "--threads") threads = static_cast<int>(v);
    else if (key == "--reps") reps = static_cast<int>(v);
    else {
      std::fprintf(stderr, "attention_op: unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (kv_heads == 0) kv_heads = heads;
  if (heads % kv_heads != 0) {
    std::fprintf(stderr, "attention_op: --heads %d is not a multiple of --kv-heads %d\n", heads,
                 kv_heads);
    return 2;
  }
  omp_set_num_threads(threads);
  const int ld = (heads + 2 * kv_heads) * head_dim, C = heads * head_dim;
  std::vector<float> qkv(static_cast<size_t>(batch) * seq * ld);
  std::vector<float> out(static_cast<size_t>(batch) * seq * C), dout(out.size(), 0.01f);
  std::vector<float> att(static_cast<size_t>(batch) * heads * seq * seq), dqkv(qkv.size());
  for (size_t i = 0; i < qkv.size(); ++i)
    qkv[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;

  std::vector<double> fwd, bwd;
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    lora::ops::attention_forward_cpu(out.data(), att.data(), qkv.data(), batch, seq, heads,
                                     kv_heads, head_dim);
    const auto t1 = std::chrono::steady_clock::now();
    std::fill(dqkv.begin(), dqkv.end(), 0.0f);
    const auto t2 = std::chrono::steady_clock::now();
    lora::ops::attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), att.data(), batch, seq,
                                      heads, kv_heads, head_dim);
    const auto t3 = std::chrono::steady_clock::now();
    if (r == 0) continue;  // warm-up
    fwd.push_back(seconds_between(t0, t1));
    bwd.push_back(seconds_between(t2, t3));
  }
  std::sort(fwd.begin(), fwd.end());
  std::sort(bwd.begin(), bwd.end());
  const double f = fwd[fwd.size() / 2], b = bwd[bwd.size() / 2];
  std::printf(
      "{\"bench\": \"attention_op\", \"batch\": %d, \"seq\": %d, \"heads\": %d, \"kv_heads\": %d, "
      "\"head_dim\": %d, \"threads\": %d, \"forward_ms\": %.3f, \"backward_ms\": %.3f, "
      "\"total_ms\": %.3f}\n",
      batch, seq, heads, kv_heads, head_dim, threads, f * 1e3, b * 1e3, (f + b) * 1e3);
  return 0;
}
