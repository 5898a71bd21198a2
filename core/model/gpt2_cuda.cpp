// GPT-2 forward and backward on one GPU, composed from the CUDA ops in core/ops/ (the `_cuda` entry
// points), step for step as core/model/gpt2.cpp composes the CPU ones:
//   a   = ln_1(x)                 qkv = a Wqkv + bqkv [+ s (drop(a) Aqkv) Bqkv]
//   o   = attention(qkv)          p   = o Wproj + bproj [+ lora]
//   x1  = x + p
//   m   = ln_2(x1)                f   = m Wfc + bfc [+ lora];  g = gelu(f)
//   q   = g Wfcproj + bfcproj [+ lora]
//   x2  = x1 + q
// then ln_f, the tied LM head and the fused softmax cross-entropy. Backward keeps one
// residual-stream gradient buffer that every branch accumulates into.
// The activation buffers and their shapes are the CPU model's, from core/model/activations.h.
// Everything is enqueued on the compute stream. Host staging buffers (tokens, targets, dropout row
// ids, per-position losses) are pinned so the copies are truly asynchronous.
#ifdef LORA_WITH_CUDA

#include "core/model/gpt2_cuda.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "core/model/activations.h"
#include "core/ops/attention.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/dropout.h"
#include "core/ops/embedding.h"
#include "core/ops/gelu.h"
#include "core/ops/layernorm.h"
#include "core/ops/lora.h"
#include "core/ops/matmul.h"
#include "core/ops/residual.h"
#include "core/rng.h"

namespace lora {

namespace {

using cuda::DeviceBuffer;

// Page-locked host memory for n elements of T; frees itself.
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t n_elems) : n_elems_(n_elems) {
    if (n_elems_ > 0) {
      LORA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data_), n_elems_ * sizeof(T)));
    }
  }
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), n_elems_(std::exchange(other.n_elems_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      n_elems_ = std::exchange(other.n_elems_, 0);
    }
    return *this;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size_bytes() const { return n_elems_ * sizeof(T); }
  void reset() noexcept {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    n_elems_ = 0;
  }

 private:
  T* data_ = nullptr;
  size_t n_elems_ = 0;
};

// A CUDA event without timing; destroyed with its owner.
class Event {
 public:
  Event() { LORA_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

using Buf = DeviceBuffer<float>;
using BlockActs = BlockActivations<Buf>;
using LoraActs = LoraActivations<Buf>;

}  // namespace

// The float buffers (core/model/activations.h) on the device, plus the inputs of the last forward.
struct Gpt2CudaModel::Activations : ActivationBuffers<Buf> {
  int n_batch = 0, n_seq = 0;
  size_t n_bytes = 0;                     // device bytes of all device buffers
  DeviceBuffer<int32_t> tokens, targets;  // [BT]
  DeviceBuffer<uint64_t> row_ids;         // [BT] dropout row ids
  // host side
  PinnedBuffer<int32_t> tokens_host, targets_host;  // [BT] staging for the uploads
  PinnedBuffer<uint64_t> row_ids_host;              // [BT]
  PinnedBuffer<float> losses_host;                  // [BT] per-position losses read back
  Event uploaded;  // recorded after the uploads: the staging buffers may be rewritten after it
  bool has_targets = false;
  ForwardOptions opts;
  uint64_t dropout_seed = 0;

  template <typename T>
  DeviceBuffer<T> alloc(size_t n) {
    n_bytes += n * sizeof(T);
    return DeviceBuffer<T>(n);
  }
};

Gpt2CudaModel::Gpt2CudaModel(const ModelSpec& shape, TrainMode mode,
                             const std::optional<LoraSpec>& lora, cudaStream_t compute)
    : layout_(shape), mode_(mode), stream_(compute) {
  LORA_CHECK(shape.is_gpt2() && shape.ff() == 4 * shape.d_model,
             "the GPU model implements GPT-2 specs with d_ff = 4 * d_model only, got ",
             describe_spec(shape));
  if (mode == TrainMode::kLora) {
    LORA_CHECK(lora.has_value(), "lora mode needs a LoraSpec");
    lora_layout_ = std::make_unique<LoraLayout>(shape, *lora);
  } else {
    LORA_CHECK(!lora.has_value(), "full mode takes no LoraSpec");
  }
  base_ = DeviceBuffer<float>(layout_.n_params());
  if (lora_layout_) {
    lora_ = DeviceBuffer<float>(lora_layout_->n_params());
    lora_grads_ = DeviceBuffer<float>(lora_layout_->n_params());
  } else {
    base_grads_ = DeviceBuffer<float>(layout_.n_params());
  }
  // Parameters start at zero, as the CPU model's; the fills are ordered on the compute stream.
  LORA_CUDA_CHECK(cudaMemsetAsync(base_.data(), 0, base_.size_bytes(), stream_));
  if (lora_.size() > 0) {
    LORA_CUDA_CHECK(cudaMemsetAsync(lora_.data(), 0, lora_.size_bytes(), stream_));
  }
  zero_grads();
  // One event per hand-off range: every block, plus ln_f and the embeddings in full mode.
  const int n_events = shape.n_layer + (mode == TrainMode::kFull ? 2 : 0);
  try {
    for (int i = 0; i < n_events; ++i) {
      cudaEvent_t e = nullptr;
      LORA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      ready_events_.push_back(e);
    }
  } catch (...) {
    for (cudaEvent_t e : ready_events_) cudaEventDestroy(e);
    throw;
  }
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

Gpt2CudaModel::~Gpt2CudaModel() {
  // Work still queued may use the buffers; errors cannot be reported from here.
  cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : ready_events_) cudaEventDestroy(e);
}

size_t Gpt2CudaModel::n_trainable() const {
  return mode_ == TrainMode::kLora ? lora_.size() : base_.size();
}

float* Gpt2CudaModel::trainable_params() {
  return mode_ == TrainMode::kLora ? lora_.data() : base_.data();
}

float* Gpt2CudaModel::trainable_grads() {
  return mode_ == TrainMode::kLora ? lora_grads_.data() : base_grads_.data();
}

void Gpt2CudaModel::zero_grads() {
  if (lora_grads_.size() > 0)
    LORA_CUDA_CHECK(cudaMemsetAsync(lora_grads_.data(), 0, lora_grads_.size_bytes(), stream_));
  if (base_grads_.size() > 0)
    LORA_CUDA_CHECK(cudaMemsetAsync(base_grads_.data(), 0, base_grads_.size_bytes(), stream_));
}

void Gpt2CudaModel::copy_to_device(float* device, const float* host, size_t n) const {
  LORA_CHECK(host != nullptr, "host buffer is null");
  if (n == 0) return;
  LORA_CUDA_CHECK(
      cudaMemcpyAsync(device, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Gpt2CudaModel::copy_to_host(float* host, const float* device, size_t n) const {
  LORA_CHECK(host != nullptr, "host buffer is null");
  if (n == 0) return;
  LORA_CUDA_CHECK(
      cudaMemcpyAsync(host, device, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Gpt2CudaModel::upload_base(const float* host) {
  copy_to_device(base_.data(), host, base_.size());
}

void Gpt2CudaModel::upload_lora(const float* host) {
  LORA_CHECK(lora_layout_ != nullptr, "a full-mode model has no adapters to upload");
  copy_to_device(lora_.data(), host, lora_.size());
}

void Gpt2CudaModel::download_base(float* host) const {
  copy_to_host(host, base_.data(), base_.size());
}

void Gpt2CudaModel::download_lora(float* host) const {
  LORA_CHECK(lora_layout_ != nullptr, "a full-mode model has no adapters to download");
  copy_to_host(host, lora_.data(), lora_.size());
}

void Gpt2CudaModel::logits_to_host(float* host) const {
  LORA_CHECK(acts_ != nullptr, "logits_to_host needs a forward first");
  copy_to_host(host, acts_->logits.data(), acts_->logits.size());
}

size_t Gpt2CudaModel::device_bytes() const {
  const size_t params = base_.size_bytes() + base_grads_.size_bytes() + lora_.size_bytes() +
                        lora_grads_.size_bytes();
  return params + (acts_ ? acts_->n_bytes : 0);
}

void Gpt2CudaModel::ensure_activations(int B, int T) {
  if (acts_ && acts_->n_batch == B && acts_->n_seq == T) return;
  // The old buffers may still be in use by queued work.
  if (acts_) LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  acts_.reset();
  auto fresh = std::make_unique<Activations>();
  auto& a = *fresh;
  const size_t BT = static_cast<size_t>(B) * T;
  a.n_batch = B;
  a.n_seq = T;
  make_activation_buffers(a, spec(), lora_layout_.get(), B, T,
                          [&a](Buf& buf, size_t n_elems) { buf = a.alloc<float>(n_elems); });
  a.tokens = a.alloc<int32_t>(BT);
  a.targets = a.alloc<int32_t>(BT);
  a.row_ids = a.alloc<uint64_t>(BT);
  a.tokens_host = PinnedBuffer<int32_t>(BT);
  a.targets_host = PinnedBuffer<int32_t>(BT);
  a.row_ids_host = PinnedBuffer<uint64_t>(BT);
  a.losses_host = PinnedBuffer<float>(BT);
  acts_ = std::move(fresh);
}

float Gpt2CudaModel::forward(const int32_t* tokens, const int32_t* targets, int B, int T,
                             const ForwardOptions& opts) {
  const ModelSpec& s = spec();
  LORA_CHECK(tokens != nullptr, "tokens is null");
  LORA_CHECK(B > 0 && T > 0, "batch ", B, " x seq ", T, " must be positive");
  LORA_CHECK(T <= s.max_seq_len, "sequence length ", T, " exceeds max_seq_len ", s.max_seq_len);
  const int BT = B * T, C = s.d_model, V = s.vocab_size, NH = s.n_head;
  // The device kernels cannot report a bad id, so they are checked here (as the CPU ops do).
  for (int i = 0; i < BT; ++i) {
    LORA_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id ", tokens[i], " at position ", i,
               " is outside [0, ", V, ")");
    if (targets) {
      LORA_CHECK(targets[i] >= 0 && targets[i] < V, "target ", targets[i], " at position ", i,
                 " is outside [0, ", V, ")");
    }
  }
  ensure_activations(B, T);
  auto& a = *acts_;

  // Stage tokens, targets and dropout row ids in pinned memory and upload them. The previous
  // forward's uploads must have read the staging buffers before they are rewritten.
  LORA_CUDA_CHECK(cudaEventSynchronize(a.uploaded.get()));
  std::copy(tokens, tokens + BT, a.tokens_host.data());
  a.has_targets = targets != nullptr;
  if (targets) std::copy(targets, targets + BT, a.targets_host.data());
  a.opts = opts;
  a.opts.seq_ids = nullptr;
  for (int b = 0; b < B; ++b) {
    const uint64_t seq = opts.seq_ids ? opts.seq_ids[b] : static_cast<uint64_t>(b);
    uint64_t* row = a.row_ids_host.data() + static_cast<size_t>(b) * T;
    for (int t = 0; t < T; ++t) row[t] = (seq << 20) | static_cast<uint64_t>(t);
  }
  a.dropout_seed = hash_u64(opts.dropout_seed, opts.step, 0x64726f70ull);
  LORA_CUDA_CHECK(cudaMemcpyAsync(a.tokens.data(), a.tokens_host.data(), a.tokens.size_bytes(),
                                  cudaMemcpyHostToDevice, stream_));
  if (targets) {
    LORA_CUDA_CHECK(cudaMemcpyAsync(a.targets.data(), a.targets_host.data(),
                                    a.targets.size_bytes(), cudaMemcpyHostToDevice, stream_));
  }
  LORA_CUDA_CHECK(cudaMemcpyAsync(a.row_ids.data(), a.row_ids_host.data(), a.row_ids.size_bytes(),
                                  cudaMemcpyHostToDevice, stream_));
  LORA_CUDA_CHECK(cudaEventRecord(a.uploaded.get(), stream_));

  const BaseParams p = layout_.bind(base_.data());
  const LoraSpec* spec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = opts.training && spec && spec->dropout > 0.0f;
  const float scaling = spec ? spec->scaling() : 0.0f;

  // One linear with its optional adapter: y = x W + b [+ s (drop(x) A) B].
  auto linear = [&](float* y, const float* x, const float* w, const float* bias, int d_in,
                    int d_out, int layer, LoraTarget target, LoraActs& la) {
    ops::matmul_forward_cuda(y, x, w, bias, BT, d_in, d_out, stream_);
    const LoraModule* m = lora_layout_ ? lora_layout_->find(layer, target) : nullptr;
    if (!m) return;
    const float* x_in = x;
    if (dropout) {
      ops::dropout_forward_cuda(la.x_drop.data(), x, a.row_ids.data(), spec->dropout,
                                a.dropout_seed, m->dropout_stream(), BT, d_in, stream_);
      x_in = la.x_drop.data();
    }
    ops::lora_forward_cuda(y, la.h.data(), x_in, lora_.data() + m->a_offset,
                           lora_.data() + m->b_offset, scaling, BT, d_in, m->rank, d_out, d_out,
                           stream_);
  };

  ops::embedding_forward_cuda(a.encoded.data(), a.tokens.data(), p.wte, p.wpe, B, T, C, V, stream_);
  const float* x = a.encoded.data();
  const size_t n_res = static_cast<size_t>(BT) * C;
  for (int l = 0; l < s.n_layer; ++l) {
    BlockActs& b = a.blocks[l];
    const LayerParams& w = p.layers[l];
    ops::layernorm_forward_cuda(b.ln1_out.data(), b.ln1_mean.data(), b.ln1_rstd.data(), x, w.norm1_w,
                                w.norm1_b, BT, C, stream_);
    linear(b.qkv.data(), b.ln1_out.data(), w.qkv_w, w.qkv_b, C, 3 * C, l, LoraTarget::kAttnQkv,
           b.lora[0]);
    ops::attention_forward_cuda(b.att_out.data(), b.att_probs.data(), b.qkv.data(), B, T, NH, NH,
                                C / NH, stream_);
    linear(a.scratch.data(), b.att_out.data(), w.o_w, w.o_b, C, C, l, LoraTarget::kAttnProj,
           b.lora[1]);
    ops::residual_forward_cuda(b.res1.data(), x, a.scratch.data(), n_res, stream_);
    ops::layernorm_forward_cuda(b.ln2_out.data(), b.ln2_mean.data(), b.ln2_rstd.data(),
                                b.res1.data(), w.norm2_w, w.norm2_b, BT, C, stream_);
    linear(b.fc_out.data(), b.ln2_out.data(), w.up_w, w.up_b, C, 4 * C, l, LoraTarget::kMlpFc,
           b.lora[2]);
    ops::gelu_forward_cuda(b.act_out.data(), b.fc_out.data(), static_cast<size_t>(BT) * 4 * C,
                           stream_);
    linear(a.scratch.data(), b.act_out.data(), w.down_w, w.down_b, 4 * C, C, l,
           LoraTarget::kMlpProj, b.lora[3]);
    ops::residual_forward_cuda(b.res2.data(), b.res1.data(), a.scratch.data(), n_res, stream_);
    x = b.res2.data();
  }
  ops::layernorm_forward_cuda(a.lnf_out.data(), a.lnf_mean.data(), a.lnf_rstd.data(), x, p.normf_w,
                              p.normf_b, BT, C, stream_);
  ops::lm_head_forward_cuda(a.logits.data(), a.lnf_out.data(), p.wte, BT, C, V, stream_);
  if (!targets) return 0.0f;
  ops::cross_entropy_forward_cuda(a.losses.data(), a.logits.data(), a.targets.data(), BT, V,
                                  stream_);
  // The one synchronisation of a training step: the per-position losses, summed on the host in
  // double as the CPU model sums them.
  LORA_CUDA_CHECK(cudaMemcpyAsync(a.losses_host.data(), a.losses.data(), a.losses.size_bytes(),
                                  cudaMemcpyDeviceToHost, stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) sum += a.losses_host.data()[i];
  return static_cast<float>(sum / BT);
}

void Gpt2CudaModel::backward(float loss_scale, const CudaGradReadyFn& ready) {
  LORA_CHECK(acts_ && acts_->has_targets, "backward needs a forward with targets first");
  auto& a = *acts_;
  const ModelSpec& s = spec();
  const int B = a.n_batch, T = a.n_seq, BT = B * T, C = s.d_model, V = s.vocab_size,
            NH = s.n_head;
  const bool full = mode_ == TrainMode::kFull;
  const BaseParams p = layout_.bind(base_.data());
  BaseParams g{};
  if (full) g = layout_.bind(base_grads_.data());
  const LoraSpec* spec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = a.opts.training && spec && spec->dropout > 0.0f;
  const float scaling = spec ? spec->scaling() : 0.0f;

  size_t n_notified = 0;
  auto notify = [&](size_t begin, size_t end) {
    if (!ready || end <= begin) return;
    LORA_CHECK(n_notified < ready_events_.size(), "more gradient ranges than events");
    cudaEvent_t event = ready_events_[n_notified++];
    LORA_CUDA_CHECK(cudaEventRecord(event, stream_));
    ready(begin, end - begin, event);
  };
  auto zero = [&](float* buf, size_t n) {
    LORA_CUDA_CHECK(cudaMemsetAsync(buf, 0, n * sizeof(float), stream_));
  };
  auto zero_buf = [&](Buf& buf) { zero(buf.data(), buf.size()); };

  // Backward of one linear with its adapter. dy: gradient of y; dx (may be null): += input grad.
  auto linear_backward = [&](float* dx, float* dw, float* dbias, const float* dy, const float* x,
                             const float* w, int d_in, int d_out, int layer, LoraTarget target,
                             LoraActs& la) {
    ops::matmul_backward_cuda(dx, dw, dbias, dy, x, w, BT, d_in, d_out, stream_);
    const LoraModule* m = lora_layout_ ? lora_layout_->find(layer, target) : nullptr;
    if (!m) return;
    const float* a_w = lora_.data() + m->a_offset;
    const float* b_w = lora_.data() + m->b_offset;
    float* da = lora_grads_.data() + m->a_offset;
    float* db = lora_grads_.data() + m->b_offset;
    const uint64_t module_stream = m->dropout_stream();
    if (dropout) {
      float* dxd = dx ? a.d_xdrop.data() : nullptr;
      if (dxd) zero(dxd, static_cast<size_t>(BT) * d_in);
      ops::lora_backward_cuda(dxd, da, db, a.d_h.data(), dy, la.x_drop.data(), la.h.data(), a_w,
                              b_w, scaling, BT, d_in, m->rank, d_out, d_out, stream_);
      if (dx) {
        ops::dropout_backward_cuda(dx, dxd, a.row_ids.data(), spec->dropout, a.dropout_seed,
                                   module_stream, BT, d_in, stream_);
      }
    } else {
      ops::lora_backward_cuda(dx, da, db, a.d_h.data(), dy, x, la.h.data(), a_w, b_w, scaling, BT,
                              d_in, m->rank, d_out, d_out, stream_);
    }
  };

  // Loss: mean over BT positions, times loss_scale. dlogits overwrite the logits in place.
  ops::cross_entropy_backward_cuda(a.logits.data(), a.logits.data(), a.targets.data(),
                                   loss_scale / static_cast<float>(BT), BT, V, stream_);
  zero_buf(a.d_ln);
  ops::lm_head_backward_cuda(a.d_ln.data(), full ? g.wte : nullptr, a.logits.data(),
                             a.lnf_out.data(), p.wte, BT, C, V, stream_);
  zero_buf(a.d_res);
  const float* x_last = a.blocks[s.n_layer - 1].res2.data();
  ops::layernorm_backward_cuda(a.d_res.data(), full ? g.normf_w : nullptr, full ? g.normf_b : nullptr,
                               a.d_ln.data(), x_last, p.normf_w, a.lnf_mean.data(),
                               a.lnf_rstd.data(), BT, C, stream_);
  if (full) notify(layout_.final_begin(), layout_.n_params());

  for (int l = s.n_layer - 1; l >= 0; --l) {
    BlockActs& b = a.blocks[l];
    const LayerParams& w = p.layers[l];
    LayerParams gw{};
    if (full) gw = g.layers[l];
    const float* x_in = l == 0 ? a.encoded.data() : a.blocks[l - 1].res2.data();
    // In lora mode nothing below block 0 needs a gradient, so its input gradient is skipped.
    const bool need_dx = full || l > 0;

    // MLP branch: d_res holds dL/dx2 = dL/dq (residual) and flows on to x1 unchanged.
    zero_buf(a.d_act);
    linear_backward(a.d_act.data(), gw.down_w, gw.down_b, a.d_res.data(), b.act_out.data(),
                    w.down_w, 4 * C, C, l, LoraTarget::kMlpProj, b.lora[3]);
    zero_buf(a.d_fc);
    ops::gelu_backward_cuda(a.d_fc.data(), a.d_act.data(), b.fc_out.data(),
                            static_cast<size_t>(BT) * 4 * C, stream_);
    zero_buf(a.d_ln);
    linear_backward(a.d_ln.data(), gw.up_w, gw.up_b, a.d_fc.data(), b.ln2_out.data(), w.up_w, C,
                    4 * C, l, LoraTarget::kMlpFc, b.lora[2]);
    ops::layernorm_backward_cuda(a.d_res.data(), gw.norm2_w, gw.norm2_b, a.d_ln.data(), b.res1.data(),
                                 w.norm2_w, b.ln2_mean.data(), b.ln2_rstd.data(), BT, C, stream_);

    // Attention branch: d_res now holds dL/dx1.
    zero_buf(a.d_att);
    linear_backward(a.d_att.data(), gw.o_w, gw.o_b, a.d_res.data(), b.att_out.data(),
                    w.o_w, C, C, l, LoraTarget::kAttnProj, b.lora[1]);
    zero_buf(a.d_qkv);
    ops::attention_backward_cuda(a.d_qkv.data(), a.d_att.data(), b.qkv.data(), b.att_probs.data(),
                                 B, T, NH, NH, C / NH, stream_);
    if (need_dx) zero_buf(a.d_ln);
    linear_backward(need_dx ? a.d_ln.data() : nullptr, gw.qkv_w, gw.qkv_b, a.d_qkv.data(),
                    b.ln1_out.data(), w.qkv_w, C, 3 * C, l, LoraTarget::kAttnQkv, b.lora[0]);
    if (need_dx) {
      ops::layernorm_backward_cuda(a.d_res.data(), gw.norm1_w, gw.norm1_b, a.d_ln.data(), x_in,
                                   w.norm1_w, b.ln1_mean.data(), b.ln1_rstd.data(), BT, C, stream_);
    }
    // Block l's trainable gradients are final once the kernels above have run.
    if (full) {
      notify(layout_.layer_begin(l), layout_.layer_end(l));
    } else {
      notify(lora_layout_->layer_begin(l), lora_layout_->layer_end(l));
    }
  }
  if (full) {
    ops::embedding_backward_cuda(g.wte, g.wpe, a.d_res.data(), a.tokens.data(), B, T, C, V,
                                 stream_);
    notify(0, layout_.embeddings_end());
  }
}

}  // namespace lora

#endif  // LORA_WITH_CUDA
