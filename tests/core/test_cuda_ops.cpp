// CUDA ops against the CPU reference ops: every forward and backward on random inputs, copied to
// the device, run on a stream, copied back and compared element by element with a per-op
// tolerance (|cpu - gpu| <= atol + rtol |cpu|). Gradients start from non-zero values so that
// "accumulates (+=)" is checked, not only the product. Dropout masks must be equal bit for bit.
// The Llama family's ops too: RMSNorm, RoPE (with llama3-scaled tables), SwiGLU, nn.Linear-
// orientation linears, grouped-query and multi-query attention (with head_dim independent of
// d_model); and the device-side loss mean and norm clipping the training step uses.
// Also at real sizes: attention at GPT-2's head size and context (64, 1024), a Llama-like
// grouped-query attention (16 query heads, 4 key/value heads, head size 128), attention rows that
// need more than the default 48 KiB of shared memory, and the LM head plus cross-entropy over a
// 128256-token vocabulary with more than 2^31 logits; and DeviceBuffer's copies and fills are
// ordered on the caller's stream. Without a device (or without a CUDA build) those tests skip with
// the reason, or fail under LORA_REQUIRE_CUDA=1 (tests/common/cuda_device.h). The parts that need
// no device still run: the device copy of the hash equals core/rng.h, device discovery reports a
// reason instead of failing, and every CUDA entry point validates its arguments before it touches
// the device.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda_runtime.h"
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
#include "core/ops/rng_device.cuh"
#include "core/ops/rope.h"
#include "core/ops/swiglu.h"
#include "core/rng.h"
#include "tests/common/cuda_device.h"

namespace lora::ops {
namespace {

constexpr uint64_t kSeed = 918273645;

// ---- no device needed ----

TEST(CudaRng, DeviceHashEqualsHostHash) {
  for (uint64_t i = 0; i < 4096; ++i) {
    const uint64_t seed = hash_u64(1, i);
    const uint64_t a = i * 0x9E3779B97F4A7C15ull;
    const uint64_t b = ~i;
    const uint64_t c = i >> 3;
    ASSERT_EQ(rng_device::mix64(a), mix64(a)) << i;
    const uint64_t h = rng_device::hash_u64(seed, a, b, c);
    ASSERT_EQ(h, hash_u64(seed, a, b, c)) << i;
    ASSERT_EQ(rng_device::uniform01(h), uniform01(h)) << i;
  }
}

TEST(CudaRuntime, DeviceAvailabilityGivesAReason) {
  std::string why = "unchanged";
  const bool available = cuda_device_available(&why);
  if (available) {
    EXPECT_TRUE(why.empty()) << why;
  } else {
    EXPECT_FALSE(why.empty());
    EXPECT_NE(why, "unchanged");
  }
  EXPECT_EQ(cuda_device_available(nullptr), available);
#ifdef LORA_WITH_CUDA
  EXPECT_EQ(cuda::device_count() > 0, available);
  if (!available) {
    EXPECT_THROW(cuda::select_device(0), Error);
  }
#else
  EXPECT_FALSE(available);
#endif
}

#ifdef LORA_WITH_CUDA

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = shift + scale * normal01(kSeed, stream, i);
  return v;
}

std::vector<int32_t> random_ids(size_t n, uint64_t stream, int bound) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(hash_u64(kSeed, stream, i) % bound);
  return v;
}

// Entry points check their arguments on the host before any CUDA call, so these throw
// lora::Error on any machine (the null stream is never used).
TEST(CudaOpsValidation, EntryPointsRejectBadArguments) {
  float f = 0.0f;
  float* p = &f;
  const int32_t tok = 0;
  const uint64_t row_id = 0;
  double d = 0.0;
  cudaStream_t s = nullptr;
  EXPECT_THROW(embedding_forward_cuda(p, &tok, p, p, 0, 1, 1, 1, s), Error);
  EXPECT_THROW(embedding_forward_cuda(nullptr, &tok, p, p, 1, 1, 1, 1, s), Error);
  EXPECT_THROW(embedding_backward_cuda(p, p, nullptr, &tok, 1, 1, 1, 1, s), Error);
  EXPECT_THROW(layernorm_forward_cuda(p, nullptr, p, p, p, p, 1, 1, s), Error);
  EXPECT_THROW(layernorm_backward_cuda(p, p, p, p, p, p, p, p, 1, 0, s), Error);
  EXPECT_THROW(matmul_forward_cuda(p, p, p, nullptr, 1, 0, 1, s), Error);
  EXPECT_THROW(matmul_backward_cuda(p, nullptr, nullptr, p, p, nullptr, 1, 1, 1, s), Error);
  EXPECT_THROW(lm_head_forward_cuda(p, p, nullptr, 1, 1, 1, s), Error);
  EXPECT_THROW(lm_head_backward_cuda(nullptr, p, p, nullptr, p, 1, 1, 1, s), Error);
  EXPECT_THROW(attention_forward_cuda(p, p, p, 1, 4, 2, 3, 4, s), Error);  // 3 kv heads, 2 query heads
  // Shared memory beyond any device's per-block limit is refused before the device is asked.
  EXPECT_THROW(attention_forward_cuda(p, p, p, 1, 100000, 1, 1, 64, s), Error);
  EXPECT_THROW(attention_backward_cuda(p, p, p, p, 1, 100000, 1, 1, 64, s), Error);
  EXPECT_THROW(attention_backward_cuda(p, nullptr, p, p, 1, 4, 2, 2, 4, s), Error);
  EXPECT_THROW(gelu_forward_cuda(p, p, 0, s), Error);
  EXPECT_THROW(gelu_backward_cuda(p, nullptr, p, 1, s), Error);
  EXPECT_THROW(residual_forward_cuda(p, nullptr, p, 1, s), Error);
  EXPECT_THROW(residual_backward_cuda(p, p, p, 0, s), Error);
  EXPECT_THROW(cross_entropy_forward_cuda(p, p, &tok, 1, 0, s), Error);
  EXPECT_THROW(cross_entropy_backward_cuda(p, p, &tok, NAN, 1, 1, s), Error);
  EXPECT_THROW(dropout_forward_cuda(p, p, &row_id, 1.0f, 0, 0, 1, 1, s), Error);
  EXPECT_THROW(dropout_backward_cuda(p, p, &row_id, -0.1f, 0, 0, 1, 1, s), Error);
  EXPECT_THROW(lora_forward_cuda(p, p, p, p, p, INFINITY, 1, 1, 1, 1, 1, s), Error);
  EXPECT_THROW(lora_backward_cuda(p, p, p, nullptr, p, p, p, p, p, 1.0f, 1, 1, 1, 1, 1, s), Error);
  EXPECT_THROW(adamw_update_cuda(p, p, p, p, 1, AdamWParams{}, 0, s), Error);
  AdamWParams bad;
  bad.beta2 = 1.0f;
  EXPECT_THROW(adamw_update_cuda(p, p, p, p, 1, bad, 1, s), Error);
  EXPECT_THROW(sum_squares_cuda(nullptr, p, 1, s), Error);
  EXPECT_THROW(sum_squares_cuda(&d, nullptr, 1, s), Error);
  EXPECT_THROW(scale_cuda(nullptr, 2.0f, 1, s), Error);
  EXPECT_THROW(clip_by_norm_cuda(p, 1, nullptr, 1.0f, s), Error);
  EXPECT_THROW(rmsnorm_forward_cuda(p, p, p, p, 0.0f, 1, 1, s), Error);  // eps must be positive
  EXPECT_THROW(rmsnorm_forward_cuda(p, nullptr, p, p, 1e-5f, 1, 1, s), Error);
  EXPECT_THROW(rmsnorm_backward_cuda(p, p, p, p, p, nullptr, 1, 1, s), Error);
  EXPECT_THROW(rope_forward_cuda(p, p, p, 1, 1, 1, 1, 3, s), Error);  // odd head_dim
  EXPECT_THROW(rope_backward_cuda(p, nullptr, p, 1, 1, 1, 1, 4, s), Error);
  EXPECT_THROW(swiglu_forward_cuda(p, nullptr, 1, 1, s), Error);
  EXPECT_THROW(swiglu_backward_cuda(p, p, p, 1, 0, s), Error);
  EXPECT_THROW(linear_forward_cuda(p, p, nullptr, p, 1, 1, 1, s), Error);
  EXPECT_THROW(linear_backward_cuda(nullptr, p, nullptr, p, nullptr, p, 1, 1, 1, s), Error);
  EXPECT_THROW(attention_forward_cuda(p, p, p, 1, 4, 4, 3, 4, s), Error);  // 3 does not divide 4
  EXPECT_THROW(cross_entropy_mean_cuda(p, &d, p, &tok, 1, 2, s), Error);   // 2 unmasked of 1 row
  EXPECT_THROW(cross_entropy_mean_cuda(p, nullptr, p, &tok, 1, 1, s), Error);
}

// ---- on a device ----

class CudaOps : public ::testing::Test {
 protected:
  // A non-blocking stream: nothing is ordered by the legacy default stream, so an op or copy that
  // used it instead of the stream it was given would race with the work queued here.
  void SetUp() override {
    LORA_CUDA_DEVICE_OR_SKIP();
    LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  template <typename T>
  cuda::DeviceBuffer<T> upload(const std::vector<T>& host) {
    cuda::DeviceBuffer<T> d(host.size());
    d.copy_from_host(host.data(), stream_);
    return d;
  }
  template <typename T>
  std::vector<T> download(const cuda::DeviceBuffer<T>& d) {
    std::vector<T> host(d.size());
    d.copy_to_host(host.data(), stream_);
    return host;
  }

  // Forward and backward of attention at one size (defined below).
  void check_attention(int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim);

  cudaStream_t stream_ = nullptr;
};

// Every element within atol + rtol * |expected|; reports the count and the worst element.
void expect_close(const std::string& what, const std::vector<float>& expected,
                  const std::vector<float>& actual, double rtol, double atol) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  size_t n_bad = 0;
  size_t worst_i = 0;
  double worst = -1.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(expected[i]) - actual[i]);
    const double ratio = diff / (atol + rtol * std::fabs(static_cast<double>(expected[i])));
    if (!(ratio <= 1.0)) ++n_bad;
    if (!(ratio <= worst)) {
      worst = std::isnan(ratio) ? INFINITY : ratio;
      worst_i = i;
    }
  }
  EXPECT_EQ(n_bad, 0u) << what << ": " << n_bad << " of " << expected.size()
                       << " elements differ; worst at " << worst_i << ": cpu " << expected[worst_i]
                       << " vs cuda " << actual[worst_i];
}

void expect_equal(const std::string& what, const std::vector<float>& expected,
                  const std::vector<float>& actual) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  size_t n_bad = 0;
  size_t first = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != actual[i]) {
      if (n_bad == 0) first = i;
      ++n_bad;
    }
  }
  EXPECT_EQ(n_bad, 0u) << what << ": first difference at " << first << ": cpu " << expected[first]
                       << " vs cuda " << actual[first];
}

TEST_F(CudaOps, Embedding) {
  const int n_batch = 3, n_seq = 7, d_model = 40, vocab = 11;  // few tokens: repeats in dwte
  const auto tokens = random_ids(static_cast<size_t>(n_batch) * n_seq, 1, vocab);
  const auto wte = randn(static_cast<size_t>(vocab) * d_model, 2);
  const auto wpe = randn(static_cast<size_t>(n_seq) * d_model, 3);
  const size_t n_out = static_cast<size_t>(n_batch) * n_seq * d_model;
  std::vector<float> out(n_out);
  embedding_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), n_batch, n_seq, d_model,
                        vocab);
  auto d_tokens = upload(tokens);
  auto d_wte = upload(wte);
  auto d_wpe = upload(wpe);
  cuda::DeviceBuffer<float> d_out(n_out);
  embedding_forward_cuda(d_out.data(), d_tokens.data(), d_wte.data(), d_wpe.data(), n_batch, n_seq,
                         d_model, vocab, stream_);
  expect_equal("embedding out", out, download(d_out));

  const auto dout = randn(n_out, 4);
  auto dwte = randn(wte.size(), 5);
  auto dwpe = randn(wpe.size(), 6);
  auto d_dwte = upload(dwte);
  auto d_dwpe = upload(dwpe);
  auto d_dout = upload(dout);
  embedding_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tokens.data(), n_batch, n_seq,
                         d_model, vocab);
  embedding_backward_cuda(d_dwte.data(), d_dwpe.data(), d_dout.data(), d_tokens.data(), n_batch,
                          n_seq, d_model, vocab, stream_);
  expect_close("embedding dwte", dwte, download(d_dwte), 1e-5, 1e-5);
  expect_close("embedding dwpe", dwpe, download(d_dwpe), 1e-5, 1e-5);

  // Frozen table: only dwpe.
  embedding_backward_cpu(nullptr, dwpe.data(), dout.data(), tokens.data(), n_batch, n_seq, d_model,
                         vocab);
  embedding_backward_cuda(nullptr, d_dwpe.data(), d_dout.data(), d_tokens.data(), n_batch, n_seq,
                          d_model, vocab, stream_);
  expect_close("embedding dwpe (frozen wte)", dwpe, download(d_dwpe), 1e-5, 1e-5);
  expect_close("embedding dwte untouched", dwte, download(d_dwte), 1e-5, 1e-5);
}

TEST_F(CudaOps, LayerNorm) {
  const int n = 300, c = 67;  // c not a multiple of 32; n spans several row chunks
  const auto x = randn(static_cast<size_t>(n) * c, 10, 2.0f, 0.5f);
  const auto w = randn(c, 11, 0.5f, 1.0f);
  const auto b = randn(c, 12, 0.1f);
  std::vector<float> y(x.size()), mean(n), rstd(n);
  layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, c);
  auto d_x = upload(x);
  auto d_w = upload(w);
  auto d_b = upload(b);
  cuda::DeviceBuffer<float> d_y(x.size()), d_mean(n), d_rstd(n);
  layernorm_forward_cuda(d_y.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(),
                         d_b.data(), n, c, stream_);
  expect_close("layernorm y", y, download(d_y), 1e-4, 1e-5);
  expect_close("layernorm mean", mean, download(d_mean), 1e-5, 1e-6);
  expect_close("layernorm rstd", rstd, download(d_rstd), 1e-5, 1e-6);

  const auto dy = randn(x.size(), 13);
  auto dx = randn(x.size(), 14);
  auto dw = randn(c, 15);
  auto db = randn(c, 16);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_dw = upload(dw);
  auto d_db = upload(db);
  // The CPU statistics for both, so only the backward is compared.
  auto d_mean_cpu = upload(mean);
  auto d_rstd_cpu = upload(rstd);
  layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                         mean.data(), rstd.data(), n, c);
  layernorm_backward_cuda(d_dx.data(), d_dw.data(), d_db.data(), d_dy.data(), d_x.data(),
                          d_w.data(), d_mean_cpu.data(), d_rstd_cpu.data(), n, c, stream_);
  expect_close("layernorm dx", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("layernorm dweight", dw, download(d_dw), 1e-4, 1e-4);
  expect_close("layernorm dbias", db, download(d_db), 1e-4, 1e-4);

  // Frozen weight and bias: dx only.
  layernorm_backward_cpu(dx.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), mean.data(),
                         rstd.data(), n, c);
  layernorm_backward_cuda(d_dx.data(), nullptr, nullptr, d_dy.data(), d_x.data(), d_w.data(),
                          d_mean_cpu.data(), d_rstd_cpu.data(), n, c, stream_);
  expect_close("layernorm dx (frozen)", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("layernorm dweight untouched", dw, download(d_dw), 1e-4, 1e-4);
}

TEST_F(CudaOps, Matmul) {
  const int n = 45, d_in = 37, d_out = 29;
  const auto x = randn(static_cast<size_t>(n) * d_in, 20);
  const auto w = randn(static_cast<size_t>(d_in) * d_out, 21, 0.2f);
  const auto bias = randn(d_out, 22);
  auto d_x = upload(x);
  auto d_w = upload(w);
  auto d_bias = upload(bias);
  for (const bool with_bias : {true, false}) {
    std::vector<float> y(static_cast<size_t>(n) * d_out);
    matmul_forward_cpu(y.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, n, d_in,
                       d_out);
    cuda::DeviceBuffer<float> d_y(y.size());
    matmul_forward_cuda(d_y.data(), d_x.data(), d_w.data(), with_bias ? d_bias.data() : nullptr, n,
                        d_in, d_out, stream_);
    expect_close(with_bias ? "matmul y (bias)" : "matmul y (no bias)", y, download(d_y), 1e-4, 1e-4);
  }

  const auto dy = randn(static_cast<size_t>(n) * d_out, 23);
  auto dx = randn(x.size(), 24);
  auto dw = randn(w.size(), 25);
  auto dbias = randn(d_out, 26);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_dw = upload(dw);
  auto d_dbias = upload(dbias);
  matmul_backward_cpu(dx.data(), dw.data(), dbias.data(), dy.data(), x.data(), w.data(), n, d_in,
                      d_out);
  matmul_backward_cuda(d_dx.data(), d_dw.data(), d_dbias.data(), d_dy.data(), d_x.data(), d_w.data(),
                       n, d_in, d_out, stream_);
  expect_close("matmul dx", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("matmul dw", dw, download(d_dw), 1e-4, 1e-4);
  expect_close("matmul dbias", dbias, download(d_dbias), 1e-4, 1e-4);

  // Frozen weight: dx only.
  matmul_backward_cpu(dx.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), n, d_in, d_out);
  matmul_backward_cuda(d_dx.data(), nullptr, nullptr, d_dy.data(), d_x.data(), d_w.data(), n, d_in,
                       d_out, stream_);
  expect_close("matmul dx (frozen)", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("matmul dw untouched", dw, download(d_dw), 1e-4, 1e-4);
}

TEST_F(CudaOps, LmHead) {
  const int n = 13, c = 24, vocab = 71;
  const auto x = randn(static_cast<size_t>(n) * c, 30);
  const auto e = randn(static_cast<size_t>(vocab) * c, 31, 0.3f);
  std::vector<float> y(static_cast<size_t>(n) * vocab);
  lm_head_forward_cpu(y.data(), x.data(), e.data(), n, c, vocab);
  auto d_x = upload(x);
  auto d_e = upload(e);
  cuda::DeviceBuffer<float> d_y(y.size());
  lm_head_forward_cuda(d_y.data(), d_x.data(), d_e.data(), n, c, vocab, stream_);
  expect_close("lm_head y", y, download(d_y), 1e-4, 1e-4);

  const auto dy = randn(y.size(), 32);
  auto dx = randn(x.size(), 33);
  auto de = randn(e.size(), 34);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_de = upload(de);
  lm_head_backward_cpu(dx.data(), de.data(), dy.data(), x.data(), e.data(), n, c, vocab);
  lm_head_backward_cuda(d_dx.data(), d_de.data(), d_dy.data(), d_x.data(), d_e.data(), n, c, vocab,
                        stream_);
  expect_close("lm_head dx", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("lm_head dE", de, download(d_de), 1e-4, 1e-4);
}

// n_kv_head key/value heads (n_head: plain multi-head attention, as GPT-2) of head_dim each.
void CudaOps::check_attention(int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim) {
  CudaOps& t = *this;
  cudaStream_t stream = stream_;
  const int hd = head_dim;
  const size_t n_qkv = static_cast<size_t>(n_batch) * n_seq * (n_head + 2 * n_kv_head) * hd;
  const size_t n_out = static_cast<size_t>(n_batch) * n_seq * n_head * hd;
  const size_t n_att = static_cast<size_t>(n_batch) * n_head * n_seq * n_seq;
  const auto qkv = randn(n_qkv, 40);
  std::vector<float> out(n_out), att(n_att);
  attention_forward_cpu(out.data(), att.data(), qkv.data(), n_batch, n_seq, n_head, n_kv_head, hd);
  auto d_qkv = t.upload(qkv);
  cuda::DeviceBuffer<float> d_out(n_out);
  auto d_att = t.upload(randn(n_att, 41));  // garbage: the masked half must be overwritten
  attention_forward_cuda(d_out.data(), d_att.data(), d_qkv.data(), n_batch, n_seq, n_head,
                         n_kv_head, hd, stream);
  expect_close("attention out", out, t.download(d_out), 1e-4, 1e-5);
  expect_close("attention att", att, t.download(d_att), 1e-4, 1e-6);

  const auto dout = randn(n_out, 42);
  auto dqkv = randn(n_qkv, 43);
  auto d_dout = t.upload(dout);
  auto d_dqkv = t.upload(dqkv);
  auto d_att_cpu = t.upload(att);  // the CPU probabilities for both backwards
  attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), att.data(), n_batch, n_seq, n_head,
                         n_kv_head, hd);
  attention_backward_cuda(d_dqkv.data(), d_dout.data(), d_qkv.data(), d_att_cpu.data(), n_batch,
                          n_seq, n_head, n_kv_head, hd, stream);
  expect_close("attention dqkv", dqkv, t.download(d_dqkv), 1e-4, 1e-4);
}

TEST_F(CudaOps, AttentionSmall) { check_attention(2, 9, 3, 3, 8); }
// One query row with more keys than a block has threads (n_seq > 128), head size 32.
TEST_F(CudaOps, AttentionLongRows) { check_attention(1, 150, 2, 2, 32); }

// GPT-2's real attention: 12 heads of size 64 over a 1024-token context.
TEST_F(CudaOps, AttentionGpt2Size) { check_attention(1, 1024, 12, 12, 64); }

// Grouped-query attention: two query heads per key/value head, a head size that is not a power
// of two; one key/value head for all (multi-query); and rows longer than a block has threads.
TEST_F(CudaOps, AttentionGroupedQuery) { check_attention(2, 9, 4, 2, 6); }
TEST_F(CudaOps, AttentionMultiQuery) { check_attention(2, 40, 4, 1, 16); }
TEST_F(CudaOps, AttentionGroupedQueryLongRows) { check_attention(1, 200, 8, 2, 32); }
// A Llama-like shape: 16 query heads, 4 key/value heads, head size 128, 512 positions.
TEST_F(CudaOps, AttentionGroupedQueryLlamaSize) { check_attention(1, 512, 16, 4, 128); }

// One attention row in double: scores, probabilities, out, and dq for dout_t, as the op defines
// them (attention.h), for spot checks at sizes where the whole CPU op would be too slow.
struct AttentionRow {
  std::vector<double> att;   // [t + 1]
  std::vector<double> out;   // [hs]
  std::vector<double> datt;  // [t + 1]: dout_t . v_u
  double d_sum = 0.0;        // sum_u att[u] datt[u]
  std::vector<double> dq;    // [hs], the gradient added to q_t
};

AttentionRow attention_row(const std::vector<float>& qkv, const std::vector<float>& dout,
                           int d_model, int head, int hs, int t) {
  const size_t stride = 3 * static_cast<size_t>(d_model);
  auto q = [&](int u, int d) { return double(qkv[u * stride + head * hs + d]); };
  auto k = [&](int u, int d) { return double(qkv[u * stride + d_model + head * hs + d]); };
  auto v = [&](int u, int d) { return double(qkv[u * stride + 2 * d_model + head * hs + d]); };
  const double scale = 1.0 / std::sqrt(double(hs));
  AttentionRow r;
  r.att.resize(t + 1);
  double m = -INFINITY;
  for (int u = 0; u <= t; ++u) {
    double dot = 0.0;
    for (int d = 0; d < hs; ++d) dot += q(t, d) * k(u, d);
    r.att[u] = dot * scale;
    m = std::max(m, r.att[u]);
  }
  double sum = 0.0;
  for (int u = 0; u <= t; ++u) sum += (r.att[u] = std::exp(r.att[u] - m));
  for (int u = 0; u <= t; ++u) r.att[u] /= sum;
  r.out.assign(hs, 0.0);
  for (int u = 0; u <= t; ++u) {
    for (int d = 0; d < hs; ++d) r.out[d] += r.att[u] * v(u, d);
  }
  // ds[u] = att[u] (datt[u] - d_sum);  dq = sum_u ds[u] k_u / sqrt(hs)
  r.datt.assign(t + 1, 0.0);
  for (int u = 0; u <= t; ++u) {
    for (int d = 0; d < hs; ++d) {
      r.datt[u] += double(dout[size_t(t) * d_model + head * hs + d]) * v(u, d);
    }
    r.d_sum += r.att[u] * r.datt[u];
  }
  r.dq.assign(hs, 0.0);
  for (int u = 0; u <= t; ++u) {
    const double ds = r.att[u] * (r.datt[u] - r.d_sum);
    for (int d = 0; d < hs; ++d) r.dq[d] += ds * k(u, d) * scale;
  }
  return r;
}

// Rows this long need more than the default 48 KiB of dynamic shared memory (the scores row and
// q_t: (64 + 12288) * 4 bytes), so the kernels' limit must be raised before the launch. Spot
// checks against a double reference: the first, a middle and the last query rows (out, att, dq),
// and the last key row (dk, dv: only query row n_seq - 1 attends to it).
TEST_F(CudaOps, AttentionRowsBeyondTheDefaultSharedMemory) {
  const int n_seq = 12288, d_model = 64, n_head = 1, hs = 64;
  const size_t n_qkv = size_t(n_seq) * 3 * d_model, n_out = size_t(n_seq) * d_model;
  const auto qkv = randn(n_qkv, 44);
  const auto dout = randn(n_out, 45);
  auto d_qkv = upload(qkv);
  auto d_dout = upload(dout);
  cuda::DeviceBuffer<float> d_out(n_out), d_att(size_t(n_seq) * n_seq), d_dqkv(n_qkv);
  attention_forward_cuda(d_out.data(), d_att.data(), d_qkv.data(), 1, n_seq, n_head, n_head, hs,
                         stream_);
  d_dqkv.zero(stream_);
  attention_backward_cuda(d_dqkv.data(), d_dout.data(), d_qkv.data(), d_att.data(), 1, n_seq,
                          n_head, n_head, hs, stream_);
  const auto out = download(d_out);
  const auto dqkv = download(d_dqkv);
  for (const int t : {0, n_seq / 2 + 3, n_seq - 1}) {
    const AttentionRow r = attention_row(qkv, dout, d_model, 0, hs, t);
    std::vector<float> att_row(n_seq);
    LORA_CUDA_CHECK(cudaMemcpyAsync(att_row.data(), d_att.data() + size_t(t) * n_seq,
                                    n_seq * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<float> want_att(n_seq, 0.0f), want_out(hs), got_out(hs), want_dq(hs), got_dq(hs);
    for (int u = 0; u <= t; ++u) want_att[u] = float(r.att[u]);
    for (int d = 0; d < hs; ++d) {
      want_out[d] = float(r.out[d]);
      got_out[d] = out[size_t(t) * d_model + d];
      want_dq[d] = float(r.dq[d]);
      got_dq[d] = dqkv[size_t(t) * 3 * d_model + d];
    }
    const std::string row = " row " + std::to_string(t);
    expect_close("att" + row, want_att, att_row, 1e-4, 1e-7);
    expect_close("out" + row, want_out, got_out, 1e-4, 1e-5);
    expect_close("dq" + row, want_dq, got_dq, 1e-3, 1e-5);
  }
  // Key row n_seq - 1: only query row n_seq - 1 attends to it, so with a = att[T-1, T-1] and
  // ds = a (datt[T-1] - d_sum): dk = ds q_{T-1} / sqrt(hs) and dv = a dout_{T-1}.
  const int t = n_seq - 1;
  const AttentionRow r = attention_row(qkv, dout, d_model, 0, hs, t);
  const double a = r.att[t], ds = a * (r.datt[t] - r.d_sum);
  std::vector<float> want_dk(hs), got_dk(hs), want_dv(hs), got_dv(hs);
  for (int d = 0; d < hs; ++d) {
    want_dk[d] = float(ds * qkv[size_t(t) * 3 * d_model + d] / std::sqrt(double(hs)));
    want_dv[d] = float(a * dout[size_t(t) * d_model + d]);
    got_dk[d] = dqkv[size_t(t) * 3 * d_model + d_model + d];
    got_dv[d] = dqkv[size_t(t) * 3 * d_model + 2 * d_model + d];
  }
  expect_close("dk last key row", want_dk, got_dk, 1e-3, 1e-6);
  expect_close("dv last key row", want_dv, got_dv, 1e-4, 1e-7);
}

// The device's per-block limit counts the kernels' static shared memory (their reduction
// scratch): a row whose dynamic part alone fills the limit exactly is refused, naming it.
TEST_F(CudaOps, AttentionSharedMemoryLimitCountsStaticSharedMemory) {
  int device = 0, optin = 0;
  LORA_CUDA_CHECK(cudaGetDevice(&device));
  LORA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int hs = 64;
  const int n_seq = optin / int(sizeof(float)) - hs;  // (hs + n_seq) * 4 == optin
  cuda::DeviceBuffer<float> tiny(16);  // never read: the launch is refused first
  float* p = tiny.data();
  try {
    attention_forward_cuda(p, p, p, 1, n_seq, 1, 1, hs, stream_);
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ADD_FAILURE() << "n_seq " << n_seq << " was launched although static + dynamic > " << optin;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("static"), std::string::npos) << e.what();
  }
  // 32 floats fewer fit (the forward kernel's static part is 32 floats): the check passes and
  // only the launch itself is left, so it is not made here.
}

// The LM head and cross-entropy over Llama 3's vocabulary (128256) with more than 2^31 logits
// (16800 rows): every offset must be computed in 64 bits. Spot checks against a double reference
// on the rows around element 2^31 and the last row: logits, loss, in-place dlogits, and dx.
TEST_F(CudaOps, LmHeadAndCrossEntropyBeyond2To31Logits) {
  const int n = 16800, c = 64, vocab = 128256;
  const size_t n_logits = size_t(n) * vocab;
  ASSERT_GT(n_logits, size_t(1) << 31);
  size_t free_bytes = 0, total_bytes = 0;
  LORA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (free_bytes < n_logits * sizeof(float) + (size_t(1) << 30)) {
    GTEST_SKIP() << "needs " << (n_logits * sizeof(float) >> 20) << " MiB of device memory, "
                 << (free_bytes >> 20) << " MiB free";
  }
  const auto x = randn(size_t(n) * c, 120);
  const auto e = randn(size_t(vocab) * c, 121, 0.3f);
  const auto targets = random_ids(n, 122, vocab);
  auto d_x = upload(x);
  auto d_e = upload(e);
  auto d_targets = upload(targets);
  cuda::DeviceBuffer<float> d_logits(n_logits), d_losses(n), d_dx(size_t(n) * c);
  lm_head_forward_cuda(d_logits.data(), d_x.data(), d_e.data(), n, c, vocab, stream_);
  cross_entropy_forward_cuda(d_losses.data(), d_logits.data(), d_targets.data(), n, vocab, stream_);
  const int boundary_row = int((size_t(1) << 31) / vocab);  // holds logit number 2^31
  const std::vector<int> rows = {0, boundary_row, boundary_row + 1, n - 1};
  auto row_of = [&](int i) {
    std::vector<float> row(vocab);
    LORA_CUDA_CHECK(cudaMemcpyAsync(row.data(), d_logits.data() + size_t(i) * vocab,
                                    vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return row;
  };
  std::vector<std::vector<double>> want_logits;
  for (const int i : rows) {
    std::vector<double> ref(vocab);
    std::vector<float> ref_f(vocab);
    for (int j = 0; j < vocab; ++j) {
      double dot = 0.0;
      for (int k = 0; k < c; ++k) dot += double(x[size_t(i) * c + k]) * e[size_t(j) * c + k];
      ref[j] = dot;
      ref_f[j] = float(dot);
    }
    expect_close("logits row " + std::to_string(i), ref_f, row_of(i), 1e-4, 1e-4);
    want_logits.push_back(std::move(ref));
  }
  const auto losses = download(d_losses);
  size_t n_bad_losses = 0;
  for (const float l : losses) n_bad_losses += !(std::isfinite(l) && l > 0.0f);
  EXPECT_EQ(n_bad_losses, 0u) << "losses must be finite and positive";

  const float dloss = 1.0f / n;
  cross_entropy_backward_cuda(d_logits.data(), d_logits.data(), d_targets.data(), dloss, n, vocab,
                              stream_);
  d_dx.zero(stream_);
  lm_head_backward_cuda(d_dx.data(), nullptr, d_logits.data(), d_x.data(), d_e.data(), n, c, vocab,
                        stream_);
  const auto dx = download(d_dx);
  for (size_t r = 0; r < rows.size(); ++r) {
    const int i = rows[r];
    const std::vector<double>& z = want_logits[r];
    double m = -INFINITY, sum = 0.0;
    for (const double v : z) m = std::max(m, v);
    for (const double v : z) sum += std::exp(v - m);
    const double lse = m + std::log(sum);
    const std::string tag = " row " + std::to_string(i);
    EXPECT_NEAR(losses[i], lse - z[targets[i]], 1e-4 * (lse - z[targets[i]])) << "loss" << tag;
    std::vector<float> want_d(vocab);
    std::vector<double> want_dx(c, 0.0);
    for (int j = 0; j < vocab; ++j) {
      const double d = (std::exp(z[j] - lse) - (j == targets[i] ? 1.0 : 0.0)) * dloss;
      want_d[j] = float(d);
      for (int k = 0; k < c; ++k) want_dx[k] += d * e[size_t(j) * c + k];
    }
    expect_close("dlogits" + tag, want_d, row_of(i), 1e-3, 1e-12);
    std::vector<float> want_dx_f(c), got_dx(c);
    double dx_max = 0.0;
    for (int k = 0; k < c; ++k) dx_max = std::max(dx_max, std::fabs(want_dx[k]));
    for (int k = 0; k < c; ++k) {
      want_dx_f[k] = float(want_dx[k]);
      got_dx[k] = dx[size_t(i) * c + k];
    }
    expect_close("dx" + tag, want_dx_f, got_dx, 1e-3, 1e-4 * dx_max);
  }
}

TEST_F(CudaOps, RmsNorm) {
  const int n = 300, c = 67;  // c not a multiple of 32; n spans several row chunks
  const float eps = 1e-6f;
  const auto x = randn(static_cast<size_t>(n) * c, 120, 2.0f, 0.5f);
  const auto w = randn(c, 121, 0.5f, 1.0f);
  std::vector<float> y(x.size()), rstd(n);
  rmsnorm_forward_cpu(y.data(), rstd.data(), x.data(), w.data(), eps, n, c);
  auto d_x = upload(x);
  auto d_w = upload(w);
  cuda::DeviceBuffer<float> d_y(x.size()), d_rstd(n);
  rmsnorm_forward_cuda(d_y.data(), d_rstd.data(), d_x.data(), d_w.data(), eps, n, c, stream_);
  expect_close("rmsnorm y", y, download(d_y), 1e-5, 1e-6);
  expect_close("rmsnorm rstd", rstd, download(d_rstd), 1e-5, 1e-7);

  const auto dy = randn(x.size(), 122);
  auto dx = randn(x.size(), 123);
  auto dw = randn(c, 124);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_dw = upload(dw);
  auto d_rstd_cpu = upload(rstd);  // the CPU statistics for both, so only the backward is compared
  rmsnorm_backward_cpu(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, c);
  rmsnorm_backward_cuda(d_dx.data(), d_dw.data(), d_dy.data(), d_x.data(), d_w.data(),
                        d_rstd_cpu.data(), n, c, stream_);
  expect_close("rmsnorm dx", dx, download(d_dx), 1e-4, 1e-5);
  expect_close("rmsnorm dweight", dw, download(d_dw), 1e-4, 1e-4);

  // Frozen weight: dx only.
  rmsnorm_backward_cpu(dx.data(), nullptr, dy.data(), x.data(), w.data(), rstd.data(), n, c);
  rmsnorm_backward_cuda(d_dx.data(), nullptr, d_dy.data(), d_x.data(), d_w.data(),
                        d_rstd_cpu.data(), n, c, stream_);
  expect_close("rmsnorm dx (frozen)", dx, download(d_dx), 1e-4, 1e-5);
  expect_close("rmsnorm dweight untouched", dw, download(d_dw), 1e-4, 1e-4);
}

TEST_F(CudaOps, Rope) {
  const int n_batch = 2, n_seq = 11, n_head = 4, n_kv_head = 2, head_dim = 12, max_seq = 16;
  std::vector<float> inv = rope_inv_freq(head_dim, 500.0f);
  rope_scale_llama3(inv, 4.0f, 1.0f, 4.0f, 8);  // llama3: scaled and blended bands both hit
  std::vector<float> cos, sin;
  rope_tables(inv, max_seq, cos, sin);
  const size_t n = static_cast<size_t>(n_batch) * n_seq * (n_head + 2 * n_kv_head) * head_dim;
  const auto qkv = randn(n, 130);
  auto d_cos = upload(cos);
  auto d_sin = upload(sin);
  auto want = qkv;
  rope_forward_cpu(want.data(), cos.data(), sin.data(), n_batch, n_seq, n_head, n_kv_head, head_dim);
  auto d_qkv = upload(qkv);
  rope_forward_cuda(d_qkv.data(), d_cos.data(), d_sin.data(), n_batch, n_seq, n_head, n_kv_head,
                    head_dim, stream_);
  const auto got = download(d_qkv);
  expect_close("rope forward", want, got, 1e-5, 1e-6);
  // The value heads are untouched, bit for bit.
  const int ld = (n_head + 2 * n_kv_head) * head_dim;
  for (size_t row = 0; row < static_cast<size_t>(n_batch) * n_seq; ++row) {
    for (int j = (n_head + n_kv_head) * head_dim; j < ld; ++j) {
      ASSERT_EQ(got[row * ld + j], qkv[row * ld + j]) << "value column " << j << " of row " << row;
    }
  }
  // Backward is the transposed rotation: on the same data it undoes the forward.
  auto back = want;
  rope_backward_cpu(back.data(), cos.data(), sin.data(), n_batch, n_seq, n_head, n_kv_head, head_dim);
  rope_backward_cuda(d_qkv.data(), d_cos.data(), d_sin.data(), n_batch, n_seq, n_head, n_kv_head,
                     head_dim, stream_);
  const auto got_back = download(d_qkv);
  expect_close("rope backward", back, got_back, 1e-5, 1e-6);
  expect_close("rope round trip", qkv, got_back, 1e-5, 1e-5);
}

TEST_F(CudaOps, SwiGlu) {
  const int n = 37, f = 300;
  const auto gate_up = randn(static_cast<size_t>(n) * 2 * f, 140, 3.0f);
  std::vector<float> out(static_cast<size_t>(n) * f);
  swiglu_forward_cpu(out.data(), gate_up.data(), n, f);
  auto d_gate_up = upload(gate_up);
  cuda::DeviceBuffer<float> d_out(out.size());
  swiglu_forward_cuda(d_out.data(), d_gate_up.data(), n, f, stream_);
  expect_close("swiglu out", out, download(d_out), 1e-5, 1e-6);

  const auto dout = randn(out.size(), 141);
  auto dgu = randn(gate_up.size(), 142);
  auto d_dout = upload(dout);
  auto d_dgu = upload(dgu);
  swiglu_backward_cpu(dgu.data(), dout.data(), gate_up.data(), n, f);
  swiglu_backward_cuda(d_dgu.data(), d_dout.data(), d_gate_up.data(), n, f, stream_);
  expect_close("swiglu d_gate_up", dgu, download(d_dgu), 1e-5, 1e-5);
}

TEST_F(CudaOps, LinearNnOrientation) {
  const int n = 45, d_in = 37, d_out = 29;
  const auto x = randn(static_cast<size_t>(n) * d_in, 150);
  const auto w = randn(static_cast<size_t>(d_out) * d_in, 151, 0.2f);  // [d_out, d_in]
  const auto bias = randn(d_out, 152);
  auto d_x = upload(x);
  auto d_w = upload(w);
  auto d_bias = upload(bias);
  for (const bool with_bias : {true, false}) {
    std::vector<float> y(static_cast<size_t>(n) * d_out);
    linear_forward_cpu(y.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, n, d_in,
                       d_out);
    cuda::DeviceBuffer<float> d_y(y.size());
    linear_forward_cuda(d_y.data(), d_x.data(), d_w.data(), with_bias ? d_bias.data() : nullptr, n,
                        d_in, d_out, stream_);
    expect_close(with_bias ? "linear y (bias)" : "linear y (no bias)", y, download(d_y), 1e-4, 1e-4);
  }

  const auto dy = randn(static_cast<size_t>(n) * d_out, 153);
  auto dx = randn(x.size(), 154);
  auto dw = randn(w.size(), 155);
  auto dbias = randn(d_out, 156);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_dw = upload(dw);
  auto d_dbias = upload(dbias);
  linear_backward_cpu(dx.data(), dw.data(), dbias.data(), dy.data(), x.data(), w.data(), n, d_in,
                      d_out);
  linear_backward_cuda(d_dx.data(), d_dw.data(), d_dbias.data(), d_dy.data(), d_x.data(), d_w.data(),
                       n, d_in, d_out, stream_);
  expect_close("linear dx", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("linear dw", dw, download(d_dw), 1e-4, 1e-4);
  expect_close("linear dbias", dbias, download(d_dbias), 1e-4, 1e-4);

  // Frozen weight: dx only.
  linear_backward_cpu(dx.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), n, d_in, d_out);
  linear_backward_cuda(d_dx.data(), nullptr, nullptr, d_dy.data(), d_x.data(), d_w.data(), n, d_in,
                       d_out, stream_);
  expect_close("linear dx (frozen)", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("linear dw untouched", dw, download(d_dw), 1e-4, 1e-4);
}

TEST_F(CudaOps, CrossEntropyMeanOverUnmaskedRows) {
  const int n = 3000;  // more rows than the block has threads
  const auto losses = randn(n, 160, 1.0f, 3.0f);
  auto targets = random_ids(n, 161, 50);
  long n_unmasked = n;
  for (int i = 0; i < n; i += 7) {
    targets[i] = -1;
    --n_unmasked;
  }
  float mean = 0.0f;
  double sum = 0.25;  // accumulates
  cross_entropy_mean_cpu(&mean, &sum, losses.data(), targets.data(), n, n_unmasked);
  auto d_losses = upload(losses);
  auto d_targets = upload(targets);
  cuda::DeviceBuffer<float> d_mean(1);
  auto d_sum = upload(std::vector<double>{0.25});
  cross_entropy_mean_cuda(d_mean.data(), d_sum.data(), d_losses.data(), d_targets.data(), n,
                          n_unmasked, stream_);
  EXPECT_NEAR(download(d_mean)[0], mean, 1e-6 * std::fabs(mean));
  EXPECT_NEAR(download(d_sum)[0], sum, 1e-6 * std::fabs(sum));
  // Every row masked: mean 0, nothing added.
  const std::vector<int32_t> masked(n, -1);
  auto d_masked = upload(masked);
  cross_entropy_mean_cuda(d_mean.data(), d_sum.data(), d_losses.data(), d_masked.data(), n, 0,
                          stream_);
  EXPECT_EQ(download(d_mean)[0], 0.0f);
  EXPECT_NEAR(download(d_sum)[0], sum, 1e-6 * std::fabs(sum));
}

TEST_F(CudaOps, ClipByNormFromADeviceSum) {
  const size_t n = 70001;
  const auto g = randn(n, 170);
  auto d_g = upload(g);
  cuda::DeviceBuffer<double> d_sum(1);
  sum_squares_cuda(d_sum.data(), d_g.data(), n, stream_);
  const double sum = download(d_sum)[0];
  for (const float max_norm : {0.0f, 1e9f, 10.0f}) {  // off, above the norm, clipping
    auto want = g;
    clip_by_norm_cpu(want.data(), n, &sum, max_norm);
    auto d_x = upload(g);
    clip_by_norm_cuda(d_x.data(), n, d_sum.data(), max_norm, stream_);
    expect_equal("clip_by_norm max_norm=" + std::to_string(max_norm), want, download(d_x));
  }
  auto clipped = g;
  clip_by_norm_cpu(clipped.data(), n, &sum, 10.0f);
  EXPECT_NEAR(std::sqrt(sum_squares_cpu(clipped.data(), n)), 10.0, 1e-4);
}

TEST_F(CudaOps, Gelu) {
  const size_t n = 5000;
  const auto x = randn(n, 50, 3.0f);
  std::vector<float> y(n);
  gelu_forward_cpu(y.data(), x.data(), n);
  auto d_x = upload(x);
  cuda::DeviceBuffer<float> d_y(n);
  gelu_forward_cuda(d_y.data(), d_x.data(), n, stream_);
  expect_close("gelu y", y, download(d_y), 1e-5, 1e-6);

  const auto dy = randn(n, 51);
  auto dx = randn(n, 52);
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  gelu_backward_cpu(dx.data(), dy.data(), x.data(), n);
  gelu_backward_cuda(d_dx.data(), d_dy.data(), d_x.data(), n, stream_);
  expect_close("gelu dx", dx, download(d_dx), 1e-5, 1e-5);
}

TEST_F(CudaOps, Residual) {
  const size_t n = 3001;
  const auto a = randn(n, 60);
  const auto b = randn(n, 61);
  std::vector<float> y(n);
  residual_forward_cpu(y.data(), a.data(), b.data(), n);
  auto d_a = upload(a);
  auto d_b = upload(b);
  cuda::DeviceBuffer<float> d_y(n);
  residual_forward_cuda(d_y.data(), d_a.data(), d_b.data(), n, stream_);
  expect_equal("residual y", y, download(d_y));
  residual_forward_cuda(d_a.data(), d_a.data(), d_b.data(), n, stream_);  // y aliases a
  expect_equal("residual y in place", y, download(d_a));

  const auto dy = randn(n, 62);
  auto da = randn(n, 63);
  auto db = randn(n, 64);
  auto d_dy = upload(dy);
  auto d_da = upload(da);
  auto d_db = upload(db);
  residual_backward_cpu(da.data(), db.data(), dy.data(), n);
  residual_backward_cuda(d_da.data(), d_db.data(), d_dy.data(), n, stream_);
  expect_equal("residual da", da, download(d_da));
  expect_equal("residual db", db, download(d_db));
  residual_backward_cpu(nullptr, db.data(), dy.data(), n);
  residual_backward_cuda(nullptr, d_db.data(), d_dy.data(), n, stream_);
  expect_equal("residual db only", db, download(d_db));
  expect_equal("residual da untouched", da, download(d_da));
}

TEST_F(CudaOps, CrossEntropy) {
  const int n = 6, vocab = 1234;  // vocab above the block size
  const auto logits = randn(static_cast<size_t>(n) * vocab, 70, 4.0f, 20.0f);  // large offset
  const auto targets = random_ids(n, 71, vocab);
  std::vector<float> losses(n);
  cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), n, vocab);
  auto d_logits = upload(logits);
  auto d_targets = upload(targets);
  cuda::DeviceBuffer<float> d_losses(n);
  cross_entropy_forward_cuda(d_losses.data(), d_logits.data(), d_targets.data(), n, vocab, stream_);
  expect_close("cross-entropy losses", losses, download(d_losses), 1e-5, 1e-5);

  const float dloss = 1.0f / n;
  std::vector<float> dlogits(logits.size());
  cross_entropy_backward_cpu(dlogits.data(), logits.data(), targets.data(), dloss, n, vocab);
  cuda::DeviceBuffer<float> d_dlogits(logits.size());
  cross_entropy_backward_cuda(d_dlogits.data(), d_logits.data(), d_targets.data(), dloss, n, vocab,
                              stream_);
  expect_close("cross-entropy dlogits", dlogits, download(d_dlogits), 1e-4, 1e-7);
  // In place: dlogits aliases logits.
  cross_entropy_backward_cuda(d_logits.data(), d_logits.data(), d_targets.data(), dloss, n, vocab,
                              stream_);
  expect_close("cross-entropy dlogits in place", dlogits, download(d_logits), 1e-4, 1e-7);
}

TEST_F(CudaOps, DropoutMasksEqualCpu) {
  const int rows = 13, cols = 77;
  const size_t n = static_cast<size_t>(rows) * cols;
  std::vector<uint64_t> row_ids(rows);
  for (int r = 0; r < rows; ++r) row_ids[r] = hash_u64(kSeed, 80, r);  // full 64-bit ids
  const auto x = randn(n, 81);
  const auto dy = randn(n, 82);
  auto d_row_ids = upload(row_ids);
  auto d_x = upload(x);
  auto d_dy = upload(dy);
  for (const float p : {0.0f, 0.1f, 0.5f}) {
    std::vector<float> y(n);
    dropout_forward_cpu(y.data(), x.data(), row_ids.data(), p, 7, 3, rows, cols);
    cuda::DeviceBuffer<float> d_y(n);
    dropout_forward_cuda(d_y.data(), d_x.data(), d_row_ids.data(), p, 7, 3, rows, cols, stream_);
    const auto y_gpu = download(d_y);
    expect_equal("dropout y p=" + std::to_string(p), y, y_gpu);
    size_t n_dropped = 0;
    for (float v : y_gpu) n_dropped += v == 0.0f;
    if (p == 0.0f) {
      EXPECT_EQ(n_dropped, 0u);
    }
    if (p == 0.5f) {
      EXPECT_GT(n_dropped, n / 4);  // a mask, not an identity
    }

    // From zero the backward is exactly the masked, scaled dy; then it must accumulate.
    std::vector<float> dx(n, 0.0f);
    auto d_dx = upload(dx);
    dropout_backward_cpu(dx.data(), dy.data(), row_ids.data(), p, 7, 3, rows, cols);
    dropout_backward_cuda(d_dx.data(), d_dy.data(), d_row_ids.data(), p, 7, 3, rows, cols, stream_);
    expect_equal("dropout dx p=" + std::to_string(p), dx, download(d_dx));
    auto dx_acc = randn(n, 83);
    auto d_dx_acc = upload(dx_acc);
    dropout_backward_cpu(dx_acc.data(), dy.data(), row_ids.data(), p, 7, 3, rows, cols);
    dropout_backward_cuda(d_dx_acc.data(), d_dy.data(), d_row_ids.data(), p, 7, 3, rows, cols,
                          stream_);
    expect_close("dropout dx accumulated p=" + std::to_string(p), dx_acc, download(d_dx_acc), 1e-6,
                 1e-7);
  }
}

TEST_F(CudaOps, Lora) {
  const int n = 21, d_in = 19, rank = 4, d_out = 23;
  const float scaling = 16.0f / rank;
  const auto x = randn(static_cast<size_t>(n) * d_in, 90);
  const auto a = randn(static_cast<size_t>(d_in) * rank, 91, 0.3f);
  const auto b = randn(static_cast<size_t>(rank) * d_out, 92, 0.3f);  // non-zero B: all paths live
  auto y = randn(static_cast<size_t>(n) * d_out, 93);  // the base output the update is added to
  std::vector<float> h(static_cast<size_t>(n) * rank);
  auto d_x = upload(x);
  auto d_a = upload(a);
  auto d_b = upload(b);
  auto d_y = upload(y);
  cuda::DeviceBuffer<float> d_h(h.size());
  lora_forward_cpu(y.data(), h.data(), x.data(), a.data(), b.data(), scaling, n, d_in, rank, d_out,
                   d_out);
  lora_forward_cuda(d_y.data(), d_h.data(), d_x.data(), d_a.data(), d_b.data(), scaling, n, d_in,
                    rank, d_out, d_out, stream_);
  expect_close("lora y", y, download(d_y), 1e-4, 1e-4);
  expect_close("lora h", h, download(d_h), 1e-4, 1e-5);

  const auto dy = randn(y.size(), 94);
  auto dx = randn(x.size(), 95);
  auto da = randn(a.size(), 96);
  auto db = randn(b.size(), 97);
  std::vector<float> dh(h.size());
  auto d_dy = upload(dy);
  auto d_dx = upload(dx);
  auto d_da = upload(da);
  auto d_db = upload(db);
  cuda::DeviceBuffer<float> d_dh(dh.size());
  auto d_h_cpu = upload(h);
  lora_backward_cpu(dx.data(), da.data(), db.data(), dh.data(), dy.data(), x.data(), h.data(),
                    a.data(), b.data(), scaling, n, d_in, rank, d_out, d_out);
  lora_backward_cuda(d_dx.data(), d_da.data(), d_db.data(), d_dh.data(), d_dy.data(), d_x.data(),
                     d_h_cpu.data(), d_a.data(), d_b.data(), scaling, n, d_in, rank, d_out, d_out,
                     stream_);
  expect_close("lora dx", dx, download(d_dx), 1e-4, 1e-4);
  expect_close("lora dA", da, download(d_da), 1e-4, 1e-4);
  expect_close("lora dB", db, download(d_db), 1e-4, 1e-4);
  expect_close("lora dh", dh, download(d_dh), 1e-4, 1e-4);

  // No input gradient, no dA: dB and dh only.
  lora_backward_cpu(nullptr, nullptr, db.data(), dh.data(), dy.data(), x.data(), h.data(), a.data(),
                    b.data(), scaling, n, d_in, rank, d_out, d_out);
  lora_backward_cuda(nullptr, nullptr, d_db.data(), d_dh.data(), d_dy.data(), d_x.data(),
                     d_h_cpu.data(), d_a.data(), d_b.data(), scaling, n, d_in, rank, d_out, d_out,
                     stream_);
  expect_close("lora dB (second pass)", db, download(d_db), 1e-4, 1e-4);
  expect_close("lora dA untouched", da, download(d_da), 1e-4, 1e-4);
}

TEST_F(CudaOps, AdamWSumSquaresScale) {
  const size_t n = 70001;  // several blocks, not a multiple of the block size
  auto params = randn(n, 100);
  auto m = randn(n, 101, 0.01f);
  auto v = randn(n, 102, 0.0f, 0.02f);  // v >= 0
  auto d_params = upload(params);
  auto d_m = upload(m);
  auto d_v = upload(v);
  AdamWParams hp;
  hp.lr = 1e-2f;
  hp.weight_decay = 0.1f;
  for (long step = 1; step <= 3; ++step) {
    const auto grads = randn(n, 103 + step);
    auto d_grads = upload(grads);
    adamw_update_cpu(params.data(), grads.data(), m.data(), v.data(), n, hp, step);
    adamw_update_cuda(d_params.data(), d_grads.data(), d_m.data(), d_v.data(), n, hp, step, stream_);
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  expect_close("adamw params", params, download(d_params), 1e-5, 1e-6);
  expect_close("adamw m", m, download(d_m), 1e-5, 1e-7);
  expect_close("adamw v", v, download(d_v), 1e-5, 1e-8);

  const auto g = randn(n, 110);
  auto d_g = upload(g);
  cuda::DeviceBuffer<double> d_sum(1);
  d_sum.zero(stream_);
  sum_squares_cuda(d_sum.data(), d_g.data(), n, stream_);
  const double expected = sum_squares_cpu(g.data(), n);
  const double got = download(d_sum)[0];
  EXPECT_NEAR(got, expected, 1e-12 * expected);
  sum_squares_cuda(d_sum.data(), d_g.data(), n, stream_);  // overwrites, does not accumulate
  EXPECT_NEAR(download(d_sum)[0], expected, 1e-12 * expected);

  auto scaled = g;
  scale_cpu(scaled.data(), 0.37f, n);
  scale_cuda(d_g.data(), 0.37f, n, stream_);
  expect_equal("scale", scaled, download(d_g));
}

TEST_F(CudaOps, DeviceBufferMovesOwnership) {
  cuda::DeviceBuffer<float> a(16);
  float* p = a.data();
  ASSERT_NE(p, nullptr);
  cuda::DeviceBuffer<float> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 16u);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  const std::vector<float> values(16, 2.5f);
  b.copy_from_host(values.data(), stream_);
  std::vector<float> back(16);
  b.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, values);
}

// The stream is held for a while by a host function; work queued on it behind that function runs
// only afterwards. A copy or fill that went to the legacy default stream instead would not wait
// for this non-blocking stream and would land first.
void CUDART_CB hold_stream(void* milliseconds) {
  std::this_thread::sleep_for(std::chrono::milliseconds(*static_cast<const int*>(milliseconds)));
}

TEST_F(CudaOps, DeviceBufferCopiesAndZeroingFollowTheCallersStream) {
  static const int kHoldMs = 200;
  const size_t n = 1 << 20;
  const std::vector<float> ones(n, 1.0f);
  float pattern = 0.0f;
  const uint32_t pattern_bits = 0x3f3f3f3fu;  // each float after cudaMemset with byte 0x3f
  std::memcpy(&pattern, &pattern_bits, sizeof(pattern));
  cuda::DeviceBuffer<float> buf(n);
  std::vector<float> back(n);

  // Reading: the copy to the host must wait for the fill queued before it.
  buf.copy_from_host(ones.data(), stream_);
  LORA_CUDA_CHECK(cudaLaunchHostFunc(stream_, hold_stream, const_cast<int*>(&kHoldMs)));
  LORA_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0x3f, buf.size_bytes(), stream_));
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, std::vector<float>(n, pattern)) << "copy_to_host ran before earlier work";

  // Zeroing: lands after the fill queued before it.
  LORA_CUDA_CHECK(cudaLaunchHostFunc(stream_, hold_stream, const_cast<int*>(&kHoldMs)));
  LORA_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0x3f, buf.size_bytes(), stream_));
  buf.zero(stream_);
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, std::vector<float>(n, 0.0f)) << "zero ran before earlier work";

  // Writing: the upload lands after the fill queued before it.
  LORA_CUDA_CHECK(cudaLaunchHostFunc(stream_, hold_stream, const_cast<int*>(&kHoldMs)));
  LORA_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0x3f, buf.size_bytes(), stream_));
  buf.copy_from_host(ones.data(), stream_);
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, ones) << "copy_from_host ran before earlier work";
}

#else  // !LORA_WITH_CUDA

TEST(CudaOps, BuiltWithoutCuda) {
  LORA_CUDA_SKIP_OR_FAIL(lora::testing::cuda_not_built_reason());
}

#endif  // LORA_WITH_CUDA

}  // namespace
}  // namespace lora::ops
