// The transformer forward and backward on one GPU, composed from the CUDA ops in core/ops/ (the
// `_cuda` entry points), op for op as core/model/transformer.cpp composes the CPU ones:
//   a   = norm_1(x)            qkv = a Wqkv [+ bqkv] [+ s (drop(a) A) B per q/k/v|c_attn adapter]
//   RoPE on the q and k heads of qkv (rotary models)
//   o   = attention(qkv)       p   = o Wo [+ bo] [+ lora]
//   x1  = x + p
//   m   = norm_2(x1)           f   = m Wup [+ bup] [+ lora per gate/up or c_fc adapter]
//   g   = gelu(f) | silu(gate) * up
//   q   = g Wdown [+ bdown] [+ lora]
//   x2  = x1 + q
// then the final norm, the LM head and the fused softmax cross-entropy over the unmasked
// positions, whose mean is computed on the device (cross_entropy_mean) and read back only when
// asked. Each linear runs as Conv1D (GPT-2) or nn.Linear (the Llama family) on the weights as the
// checkpoint stores them. The activation buffers and their shapes are the CPU model's, from
// core/model/activations.h. Also the device AdamW (TrainableOptimizer): sum of squares, clipping
// and the update all on the compute stream, the norm read back only by last_grad_norm().
#ifdef LORA_WITH_CUDA

#include "core/model/transformer_cuda.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/error.h"
#include "core/hash.h"
#include "core/model/activations.h"
#include "core/model/transformer.h"
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

// Host staging for one forward's inputs; the upload event says when the slot may be rewritten.
struct StagingSlot {
  PinnedBuffer<int32_t> tokens, targets;  // [BT]
  PinnedBuffer<uint64_t> row_ids;         // [BT]
  Event uploaded;
};

// The base product of one linear in the orientation the family stores: y = x W + b (Conv1D) or
// y = x W^T + b (nn.Linear).
void base_forward(const ModelSpec& s, float* y, const float* x, const float* w, const float* bias,
                  int n, int d_in, int d_out, cudaStream_t stream) {
  if (s.conv1d) {
    ops::matmul_forward_cuda(y, x, w, bias, n, d_in, d_out, stream);
  } else {
    ops::linear_forward_cuda(y, x, w, bias, n, d_in, d_out, stream);
  }
}

void base_backward(const ModelSpec& s, float* dx, float* dw, float* dbias, const float* dy,
                   const float* x, const float* w, int n, int d_in, int d_out,
                   cudaStream_t stream) {
  if (s.conv1d) {
    ops::matmul_backward_cuda(dx, dw, dbias, dy, x, w, n, d_in, d_out, stream);
  } else {
    ops::linear_backward_cuda(dx, dw, dbias, dy, x, w, n, d_in, d_out, stream);
  }
}

void norm_forward(const ModelSpec& s, float* y, float* mean, float* rstd, const float* x,
                  const float* w, const float* b, int n, int c, cudaStream_t stream) {
  if (s.norm == NormKind::kLayerNorm) {
    ops::layernorm_forward_cuda(y, mean, rstd, x, w, b, n, c, stream);
  } else {
    ops::rmsnorm_forward_cuda(y, rstd, x, w, s.norm_eps, n, c, stream);
  }
}

// dx += ...; dw, db (may be null) += ...
void norm_backward(const ModelSpec& s, float* dx, float* dw, float* db, const float* dy,
                   const float* x, const float* w, const float* mean, const float* rstd, int n,
                   int c, cudaStream_t stream) {
  if (s.norm == NormKind::kLayerNorm) {
    ops::layernorm_backward_cuda(dx, dw, db, dy, x, w, mean, rstd, n, c, stream);
  } else {
    ops::rmsnorm_backward_cuda(dx, dw, dy, x, w, rstd, n, c, stream);
  }
}

}  // namespace

// The float buffers (core/model/activations.h) on the device, plus the inputs of the last forward.
struct CudaTransformerModel::Activations : ActivationBuffers<Buf> {
  int n_batch = 0, n_seq = 0;
  size_t n_bytes = 0;                     // device bytes of all device buffers
  DeviceBuffer<int32_t> tokens, targets;  // [BT]
  DeviceBuffer<uint64_t> row_ids;         // [BT] dropout row ids
  StagingSlot slots[2];                   // used alternately by successive forwards
  int next_slot = 0;
  bool has_targets = false;
  ForwardOptions opts;
  uint64_t dropout_seed = 0;

  template <typename T>
  DeviceBuffer<T> alloc(size_t n) {
    n_bytes += n * sizeof(T);
    return DeviceBuffer<T>(n);
  }
};

CudaTransformerModel::CudaTransformerModel(const ModelSpec& spec, TrainMode mode,
                                           const std::optional<LoraSpec>& lora,
                                           cudaStream_t stream)
    : layout_(spec), mode_(mode), device_(cuda::current_device()), stream_(stream) {
  if (mode == TrainMode::kLora) {
    LORA_CHECK(lora.has_value(), "lora mode needs a LoraSpec");
    lora_layout_ = std::make_unique<LoraLayout>(spec, *lora);
  } else {
    LORA_CHECK(!lora.has_value(), "full mode takes no LoraSpec");
  }
  if (stream_ == nullptr) {
    LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    owns_stream_ = true;
  }
  try {
    base_ = DeviceBuffer<float>(layout_.n_params());
    if (lora_layout_) {
      lora_ = DeviceBuffer<float>(lora_layout_->n_params());
      lora_grads_ = DeviceBuffer<float>(lora_layout_->n_params());
    } else {
      base_grads_ = DeviceBuffer<float>(layout_.n_params());
    }
    loss_sum_ = DeviceBuffer<double>(1);
    loss_mean_ = DeviceBuffer<float>(1);
    // Parameters start at zero, as the CPU model's; the fills are ordered on the compute stream.
    base_.zero(stream_);
    lora_.zero(stream_);
    loss_sum_.zero(stream_);
    loss_mean_.zero(stream_);
    zero_grads();
    if (spec.positions == PositionKind::kRope) {
      // The tables are made on the host exactly as the CPU model makes them, uploaded once.
      std::vector<float> inv = ops::rope_inv_freq(spec.head_size(), spec.rope_theta);
      if (spec.rope_scaling.llama3) {
        const RopeScaling& r = spec.rope_scaling;
        ops::rope_scale_llama3(inv, r.factor, r.low_freq_factor, r.high_freq_factor,
                               r.original_max_position_embeddings);
      }
      std::vector<float> cos, sin;
      ops::rope_tables(inv, spec.max_seq_len, cos, sin);
      rope_cos_ = DeviceBuffer<float>(cos.size());
      rope_sin_ = DeviceBuffer<float>(sin.size());
      rope_cos_.copy_from_host(cos.data(), stream_);
      rope_sin_.copy_from_host(sin.data(), stream_);
    }
    // One event per hand-off range: every block, plus the final norm/head and the embeddings in
    // full mode.
    const int n_events = spec.n_layer + (mode == TrainMode::kFull ? 2 : 0);
    for (int i = 0; i < n_events; ++i) {
      cudaEvent_t e = nullptr;
      LORA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      ready_events_.push_back(e);
    }
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    for (cudaEvent_t e : ready_events_) cudaEventDestroy(e);
    if (owns_stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

std::unique_ptr<CudaTransformerModel> CudaTransformerModel::from_host(const TransformerModel& host,
                                                                      cudaStream_t stream) {
  std::optional<LoraSpec> lora;
  if (host.lora_layout() != nullptr) lora = host.lora_layout()->spec();
  auto model = std::make_unique<CudaTransformerModel>(host.spec(), host.mode(), lora, stream);
  model->copy_to_device(model->base_.data(), host.base_params(), model->base_.size());
  if (lora) model->copy_to_device(model->lora_.data(), host.lora_params(), model->lora_.size());
  model->fingerprint_ = host.base_fingerprint();
  return model;
}

CudaTransformerModel::~CudaTransformerModel() {
  // Work still queued may use the buffers; errors cannot be reported from here.
  cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : ready_events_) cudaEventDestroy(e);
  acts_.reset();
  if (owns_stream_) cudaStreamDestroy(stream_);
}

float* CudaTransformerModel::trainable_params() {
  return mode_ == TrainMode::kLora ? lora_.data() : base_.data();
}

float* CudaTransformerModel::trainable_grads() {
  return mode_ == TrainMode::kLora ? lora_grads_.data() : base_grads_.data();
}

void CudaTransformerModel::zero_grads() {
  lora_grads_.zero(stream_);
  base_grads_.zero(stream_);
}

size_t CudaTransformerModel::grad_bytes() const {
  return base_grads_.size_bytes() + lora_grads_.size_bytes();
}

size_t CudaTransformerModel::workspace_bytes() const { return acts_ ? acts_->n_bytes : 0; }

size_t CudaTransformerModel::device_bytes() const {
  return base_.size_bytes() + base_grads_.size_bytes() + lora_.size_bytes() +
         lora_grads_.size_bytes() + rope_cos_.size_bytes() + rope_sin_.size_bytes() +
         loss_sum_.size_bytes() + loss_mean_.size_bytes() + workspace_bytes();
}

void CudaTransformerModel::copy_to_device(float* device, const float* host, size_t n) const {
  LORA_CHECK(host != nullptr, "host buffer is null");
  if (n == 0) return;
  LORA_CUDA_CHECK(
      cudaMemcpyAsync(device, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaTransformerModel::copy_to_host(float* host, const float* device, size_t n) const {
  LORA_CHECK(host != nullptr, "host buffer is null");
  if (n == 0) return;
  LORA_CUDA_CHECK(
      cudaMemcpyAsync(host, device, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaTransformerModel::upload_base(const float* host) {
  copy_to_device(base_.data(), host, base_.size());
  fingerprint_ = fingerprint_floats(host, base_.size());
}

void CudaTransformerModel::upload_lora(const float* host) {
  LORA_CHECK(lora_layout_ != nullptr, "a full-mode model has no adapters to upload");
  copy_to_device(lora_.data(), host, lora_.size());
}

void CudaTransformerModel::download_base(float* host) const {
  copy_to_host(host, base_.data(), base_.size());
}

void CudaTransformerModel::download_lora(float* host) const {
  LORA_CHECK(lora_layout_ != nullptr, "a full-mode model has no adapters to download");
  copy_to_host(host, lora_.data(), lora_.size());
}

void CudaTransformerModel::get_trainable(std::span<float> out) const {
  const size_t n = mode_ == TrainMode::kLora ? lora_.size() : base_.size();
  LORA_CHECK(out.size() == n, "get_trainable: ", out.size(), " floats given, ", n, " needed");
  copy_to_host(out.data(), mode_ == TrainMode::kLora ? lora_.data() : base_.data(), n);
}

void CudaTransformerModel::set_trainable(std::span<const float> in) {
  const size_t n = mode_ == TrainMode::kLora ? lora_.size() : base_.size();
  LORA_CHECK(in.size() == n, "set_trainable: ", in.size(), " floats given, ", n, " needed");
  if (mode_ == TrainMode::kLora) {
    copy_to_device(lora_.data(), in.data(), n);
  } else {
    upload_base(in.data());
  }
}

void CudaTransformerModel::get_base(std::span<float> out) const {
  LORA_CHECK(out.size() == base_.size(), "get_base: ", out.size(), " floats given, ",
             base_.size(), " needed");
  copy_to_host(out.data(), base_.data(), base_.size());
}

void CudaTransformerModel::logits_to_host(float* host) const {
  LORA_CHECK(acts_ != nullptr, "logits_to_host needs a forward first");
  copy_to_host(host, acts_->logits.data(), acts_->logits.size());
}

void CudaTransformerModel::losses_to_host(float* host) const {
  LORA_CHECK(acts_ != nullptr && acts_->has_targets, "losses_to_host needs a forward with targets");
  copy_to_host(host, acts_->losses.data(), acts_->losses.size());
}

const float* CudaTransformerModel::logits() const {
  if (!acts_) return nullptr;
  if (!logits_host_valid_) {
    logits_host_.resize(acts_->logits.size());
    logits_to_host(logits_host_.data());
    logits_host_valid_ = true;
  }
  return logits_host_.data();
}

double CudaTransformerModel::loss_sum() {
  double sum = 0.0;
  LORA_CUDA_CHECK(cudaMemcpyAsync(&sum, loss_sum_.data(), sizeof(double), cudaMemcpyDeviceToHost,
                                  stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return sum;
}

void CudaTransformerModel::clear_loss_sum() { loss_sum_.zero(stream_); }

namespace {

// AdamW with global-norm clipping on the device: the sum of squares, the clipping factor and the
// update are kernels on the model's stream; the norm is copied back only by last_grad_norm().
class CudaOptimizer final : public TrainableOptimizer {
 public:
  CudaOptimizer(CudaTransformerModel& model, const ops::AdamWParams& hp)
      : model_(model), hp_(hp), m_(model.n_trainable()), v_(model.n_trainable()), sum_sq_(1) {
    m_.zero(model_.stream());
    v_.zero(model_.stream());
    sum_sq_.zero(model_.stream());
  }
  void step(float lr, float max_norm) override {
    const size_t n = model_.n_trainable();
    cudaStream_t s = model_.stream();
    ops::sum_squares_cuda(sum_sq_.data(), model_.trainable_grads(), n, s);
    if (max_norm > 0.0f) {
      ops::clip_by_norm_cuda(model_.trainable_grads(), n, sum_sq_.data(), max_norm, s);
    }
    ++steps_;
    ops::AdamWParams hp = hp_;
    hp.lr = lr;
    ops::adamw_update_cuda(model_.trainable_params(), model_.trainable_grads(), m_.data(),
                           v_.data(), n, hp, steps_, s);
  }
  float last_grad_norm() override {
    double sum = 0.0;
    LORA_CUDA_CHECK(cudaMemcpyAsync(&sum, sum_sq_.data(), sizeof(double), cudaMemcpyDeviceToHost,
                                    model_.stream()));
    LORA_CUDA_CHECK(cudaStreamSynchronize(model_.stream()));
    return static_cast<float>(std::sqrt(sum));
  }
  long steps() const override { return steps_; }
  void set_steps(long steps) override { steps_ = steps; }
  void get_moments(std::span<float> m, std::span<float> v) const override {
    LORA_CHECK(m.size() == m_.size() && v.size() == v_.size(), "get_moments: wrong sizes");
    m_.copy_to_host(m.data(), model_.stream());
    v_.copy_to_host(v.data(), model_.stream());
  }
  void set_moments(std::span<const float> m, std::span<const float> v) override {
    LORA_CHECK(m.size() == m_.size() && v.size() == v_.size(), "set_moments: ", m.size(), " and ",
               v.size(), " floats given, ", m_.size(), " needed");
    m_.copy_from_host(m.data(), model_.stream());
    v_.copy_from_host(v.data(), model_.stream());
  }

 private:
  CudaTransformerModel& model_;
  ops::AdamWParams hp_;
  DeviceBuffer<float> m_, v_;
  DeviceBuffer<double> sum_sq_;  // sum of squares of the gradients at the last step
  long steps_ = 0;
};

}  // namespace

std::unique_ptr<TrainableOptimizer> CudaTransformerModel::make_optimizer(
    const ops::AdamWParams& hp) {
  return std::make_unique<CudaOptimizer>(*this, hp);
}

void CudaTransformerModel::ensure_activations(int B, int T) {
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
  for (StagingSlot& slot : a.slots) {
    slot.tokens = PinnedBuffer<int32_t>(BT);
    slot.targets = PinnedBuffer<int32_t>(BT);
    slot.row_ids = PinnedBuffer<uint64_t>(BT);
  }
  acts_ = std::move(fresh);
}

float CudaTransformerModel::forward(const int32_t* tokens, const int32_t* targets, int B, int T,
                                    const ForwardOptions& opts) {
  const ModelSpec& s = spec();
  LORA_CHECK(tokens != nullptr, "tokens is null");
  LORA_CHECK(B > 0 && T > 0, "batch ", B, " x seq ", T, " must be positive");
  LORA_CHECK(T <= s.max_seq_len, "sequence length ", T, " exceeds max_seq_len ", s.max_seq_len);
  const int BT = B * T, C = s.d_model, V = s.vocab_size, NH = s.n_head, NKV = s.kv_heads(),
            HD = s.head_size(), QKV = s.qkv_dim(), Q = s.q_dim(), F = s.ff(), M = s.mlp_in_dim();
  // The device kernels cannot report a bad id, so the ids are checked here (as the CPU ops do);
  // a negative target masks its position.
  long n_unmasked = 0;
  for (int i = 0; i < BT; ++i) {
    LORA_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id ", tokens[i], " at position ", i,
               " is outside [0, ", V, ")");
    if (targets) {
      LORA_CHECK(targets[i] < V, "target ", targets[i], " at position ", i, " is outside [0, ", V,
                 ") (negative ids mask a position)");
      n_unmasked += targets[i] >= 0 ? 1 : 0;
    }
  }
  ensure_activations(B, T);
  auto& a = *acts_;
  logits_host_valid_ = false;

  // Stage tokens, targets and dropout row ids in a pinned slot and upload them. The slot was last
  // used two forwards ago; its upload must have run before it is rewritten.
  StagingSlot& slot = a.slots[a.next_slot];
  a.next_slot = 1 - a.next_slot;
  LORA_CUDA_CHECK(cudaEventSynchronize(slot.uploaded.get()));
  std::copy(tokens, tokens + BT, slot.tokens.data());
  a.has_targets = targets != nullptr;
  if (targets) std::copy(targets, targets + BT, slot.targets.data());
  a.opts = opts;
  a.opts.seq_ids = nullptr;
  for (int b = 0; b < B; ++b) {
    const uint64_t seq = opts.seq_ids ? opts.seq_ids[b] : static_cast<uint64_t>(b);
    uint64_t* row = slot.row_ids.data() + static_cast<size_t>(b) * T;
    for (int t = 0; t < T; ++t) row[t] = (seq << 20) | static_cast<uint64_t>(t);
  }
  a.dropout_seed = hash_u64(opts.dropout_seed, opts.step, 0x64726f70ull);
  LORA_CUDA_CHECK(cudaMemcpyAsync(a.tokens.data(), slot.tokens.data(), a.tokens.size_bytes(),
                                  cudaMemcpyHostToDevice, stream_));
  if (targets) {
    LORA_CUDA_CHECK(cudaMemcpyAsync(a.targets.data(), slot.targets.data(), a.targets.size_bytes(),
                                    cudaMemcpyHostToDevice, stream_));
  }
  LORA_CUDA_CHECK(cudaMemcpyAsync(a.row_ids.data(), slot.row_ids.data(), a.row_ids.size_bytes(),
                                  cudaMemcpyHostToDevice, stream_));
  LORA_CUDA_CHECK(cudaEventRecord(slot.uploaded.get(), stream_));

  const BaseParams p = layout_.bind(base_.data());
  const LoraSpec* lspec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = opts.training && lspec && lspec->dropout > 0.0f;

  // One linear with its adapters: y = x W + b [+ s (drop(x) A) B into each adapter's columns].
  auto linear = [&](float* y, const float* x, const float* w, const float* bias, int d_in,
                    int d_out, int layer, BlockLinear which, BlockActs& b) {
    base_forward(s, y, x, w, bias, BT, d_in, d_out, stream_);
    if (!lora_layout_) return;
    for (const LoraModule* m : lora_layout_->modules_of(layer, which)) {
      LoraActs& la = b.lora[static_cast<int>(m->target)];
      const float* x_in = x;
      if (dropout) {
        ops::dropout_forward_cuda(la.x_drop.data(), x, a.row_ids.data(), lspec->dropout,
                                  a.dropout_seed, m->dropout_stream(), BT, d_in, stream_);
        x_in = la.x_drop.data();
      }
      ops::lora_forward_cuda(y + m->col_offset, la.h.data(), x_in, lora_.data() + m->a_offset,
                             lora_.data() + m->b_offset, m->scaling, BT, d_in, m->rank, m->d_out,
                             m->ld_out, stream_);
    }
  };

  ops::embedding_forward_cuda(a.encoded.data(), a.tokens.data(), p.wte, p.wpe, B, T, C, V, stream_);
  const float* x = a.encoded.data();
  const size_t n_res = static_cast<size_t>(BT) * C;
  for (int l = 0; l < s.n_layer; ++l) {
    BlockActs& b = a.blocks[l];
    const LayerParams& w = p.layers[l];
    norm_forward(s, b.ln1_out.data(), b.ln1_mean.data(), b.ln1_rstd.data(), x, w.norm1_w,
                 w.norm1_b, BT, C, stream_);
    linear(b.qkv.data(), b.ln1_out.data(), w.qkv_w, w.qkv_b, C, QKV, l, BlockLinear::kAttnIn, b);
    if (s.positions == PositionKind::kRope) {
      ops::rope_forward_cuda(b.qkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, NH, NKV, HD,
                             stream_);
    }
    ops::attention_forward_cuda(b.att_out.data(), b.att_probs.data(), b.qkv.data(), B, T, NH, NKV,
                                HD, stream_);
    linear(a.scratch.data(), b.att_out.data(), w.o_w, w.o_b, Q, C, l, BlockLinear::kAttnOut, b);
    ops::residual_forward_cuda(b.res1.data(), x, a.scratch.data(), n_res, stream_);
    norm_forward(s, b.ln2_out.data(), b.ln2_mean.data(), b.ln2_rstd.data(), b.res1.data(),
                 w.norm2_w, w.norm2_b, BT, C, stream_);
    linear(b.fc_out.data(), b.ln2_out.data(), w.up_w, w.up_b, C, M, l, BlockLinear::kMlpIn, b);
    if (s.mlp == MlpKind::kGeluTanh) {
      ops::gelu_forward_cuda(b.act_out.data(), b.fc_out.data(), static_cast<size_t>(BT) * F,
                             stream_);
    } else {
      ops::swiglu_forward_cuda(b.act_out.data(), b.fc_out.data(), BT, F, stream_);
    }
    linear(a.scratch.data(), b.act_out.data(), w.down_w, w.down_b, F, C, l, BlockLinear::kMlpOut,
           b);
    ops::residual_forward_cuda(b.res2.data(), b.res1.data(), a.scratch.data(), n_res, stream_);
    x = b.res2.data();
  }
  norm_forward(s, a.lnf_out.data(), a.lnf_mean.data(), a.lnf_rstd.data(), x, p.normf_w, p.normf_b,
               BT, C, stream_);
  ops::lm_head_forward_cuda(a.logits.data(), a.lnf_out.data(), p.lm_head, BT, C, V, stream_);
  n_targets_ = 0;
  if (!targets) return 0.0f;
  n_targets_ = n_unmasked;
  ops::cross_entropy_forward_cuda(a.losses.data(), a.logits.data(), a.targets.data(), BT, V,
                                  stream_);
  ops::cross_entropy_mean_cuda(loss_mean_.data(), loss_sum_.data(), a.losses.data(),
                               a.targets.data(), BT, n_unmasked, stream_);
  if (opts.defer_loss) return std::numeric_limits<float>::quiet_NaN();
  float mean = 0.0f;
  LORA_CUDA_CHECK(cudaMemcpyAsync(&mean, loss_mean_.data(), sizeof(float), cudaMemcpyDeviceToHost,
                                  stream_));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return mean;
}

void CudaTransformerModel::backward(float loss_scale, const GradReadyFn& ready) {
  if (!ready) {
    run_backward(loss_scale, nullptr);
    return;
  }
  run_backward(loss_scale, [&ready](size_t offset, size_t count, cudaEvent_t) {
    ready(offset, count);
  });
}

void CudaTransformerModel::backward_with_events(float loss_scale, const CudaGradReadyFn& ready) {
  run_backward(loss_scale, ready);
}

void CudaTransformerModel::run_backward(float loss_scale, const CudaGradReadyFn& ready) {
  LORA_CHECK(acts_ && acts_->has_targets, "backward needs a forward with targets first");
  auto& a = *acts_;
  logits_host_valid_ = false;  // the logits become their gradient
  const ModelSpec& s = spec();
  const int B = a.n_batch, T = a.n_seq, BT = B * T, C = s.d_model, V = s.vocab_size,
            NH = s.n_head, NKV = s.kv_heads(), HD = s.head_size(), QKV = s.qkv_dim(),
            Q = s.q_dim(), F = s.ff(), M = s.mlp_in_dim();
  const bool full = mode_ == TrainMode::kFull;
  const BaseParams p = layout_.bind(base_.data());
  BaseParams g{};
  if (full) g = layout_.bind(base_grads_.data());
  const LoraSpec* lspec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = a.opts.training && lspec && lspec->dropout > 0.0f;

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

  // Backward of one linear with its adapters. dy: gradient of y; dx (may be null): += input grad.
  auto linear_backward = [&](float* dx, float* dw, float* dbias, const float* dy, const float* x,
                             const float* w, int d_in, int d_out, int layer, BlockLinear which,
                             BlockActs& b) {
    base_backward(s, dx, dw, dbias, dy, x, w, BT, d_in, d_out, stream_);
    if (!lora_layout_) return;
    for (const LoraModule* m : lora_layout_->modules_of(layer, which)) {
      LoraActs& la = b.lora[static_cast<int>(m->target)];
      const float* a_w = lora_.data() + m->a_offset;
      const float* b_w = lora_.data() + m->b_offset;
      float* da = lora_grads_.data() + m->a_offset;
      float* db = lora_grads_.data() + m->b_offset;
      const float* dy_m = dy + m->col_offset;
      if (dropout) {
        float* dxd = dx ? a.d_xdrop.data() : nullptr;
        if (dxd) zero(dxd, static_cast<size_t>(BT) * d_in);
        ops::lora_backward_cuda(dxd, da, db, a.d_h.data(), dy_m, la.x_drop.data(), la.h.data(),
                                a_w, b_w, m->scaling, BT, d_in, m->rank, m->d_out, m->ld_out,
                                stream_);
        if (dx) {
          ops::dropout_backward_cuda(dx, dxd, a.row_ids.data(), lspec->dropout, a.dropout_seed,
                                     m->dropout_stream(), BT, d_in, stream_);
        }
      } else {
        ops::lora_backward_cuda(dx, da, db, a.d_h.data(), dy_m, x, la.h.data(), a_w, b_w,
                                m->scaling, BT, d_in, m->rank, m->d_out, m->ld_out, stream_);
      }
    }
  };

  // Loss: mean over the unmasked positions, times loss_scale. dlogits overwrite the logits.
  const float dloss = n_targets_ > 0 ? loss_scale / static_cast<float>(n_targets_) : 0.0f;
  ops::cross_entropy_backward_cuda(a.logits.data(), a.logits.data(), a.targets.data(), dloss, BT,
                                   V, stream_);
  zero_buf(a.d_ln);
  ops::lm_head_backward_cuda(a.d_ln.data(), full ? g.lm_head : nullptr, a.logits.data(),
                             a.lnf_out.data(), p.lm_head, BT, C, V, stream_);
  zero_buf(a.d_res);
  const float* x_last = a.blocks[s.n_layer - 1].res2.data();
  norm_backward(s, a.d_res.data(), full ? g.normf_w : nullptr, full ? g.normf_b : nullptr,
                a.d_ln.data(), x_last, p.normf_w, a.lnf_mean.data(), a.lnf_rstd.data(), BT, C,
                stream_);
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
                    w.down_w, F, C, l, BlockLinear::kMlpOut, b);
    zero_buf(a.d_fc);
    if (s.mlp == MlpKind::kGeluTanh) {
      ops::gelu_backward_cuda(a.d_fc.data(), a.d_act.data(), b.fc_out.data(),
                              static_cast<size_t>(BT) * F, stream_);
    } else {
      ops::swiglu_backward_cuda(a.d_fc.data(), a.d_act.data(), b.fc_out.data(), BT, F, stream_);
    }
    zero_buf(a.d_ln);
    linear_backward(a.d_ln.data(), gw.up_w, gw.up_b, a.d_fc.data(), b.ln2_out.data(), w.up_w, C, M,
                    l, BlockLinear::kMlpIn, b);
    norm_backward(s, a.d_res.data(), gw.norm2_w, gw.norm2_b, a.d_ln.data(), b.res1.data(),
                  w.norm2_w, b.ln2_mean.data(), b.ln2_rstd.data(), BT, C, stream_);

    // Attention branch: d_res now holds dL/dx1.
    zero_buf(a.d_att);
    linear_backward(a.d_att.data(), gw.o_w, gw.o_b, a.d_res.data(), b.att_out.data(), w.o_w, Q, C,
                    l, BlockLinear::kAttnOut, b);
    zero_buf(a.d_qkv);
    ops::attention_backward_cuda(a.d_qkv.data(), a.d_att.data(), b.qkv.data(), b.att_probs.data(),
                                 B, T, NH, NKV, HD, stream_);
    if (s.positions == PositionKind::kRope) {
      ops::rope_backward_cuda(a.d_qkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, NH, NKV,
                              HD, stream_);
    }
    if (need_dx) zero_buf(a.d_ln);
    linear_backward(need_dx ? a.d_ln.data() : nullptr, gw.qkv_w, gw.qkv_b, a.d_qkv.data(),
                    b.ln1_out.data(), w.qkv_w, C, QKV, l, BlockLinear::kAttnIn, b);
    if (need_dx) {
      norm_backward(s, a.d_res.data(), gw.norm1_w, gw.norm1_b, a.d_ln.data(), x_in, w.norm1_w,
                    b.ln1_mean.data(), b.ln1_rstd.data(), BT, C, stream_);
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
