// The transformer forward and backward on the CPU, composed from the ops in core/ops/.
//
// Per block (pre-norm; norm = LayerNorm or RMSNorm per the spec):
//   a   = norm_1(x)            qkv = a Wqkv [+ bqkv] [+ s (drop(a) A) B per q/k/v or c_attn adapter]
//   RoPE on the q and k heads of qkv (rotary models)
//   o   = attention(qkv)       p   = o Wo [+ bo] [+ lora]
//   x1  = x + p            (the add fused with norm_2, and x2's with the next norm)
//   m   = norm_2(x1)           f   = m Wup [+ bup] [+ lora per gate/up or c_fc adapter]
//   g   = gelu(f) | silu(gate) * up
//   q   = g Wdown [+ bdown] [+ lora]
//   x2  = x1 + q
// then the final norm, the LM head (tied to the embedding or its own) and the fused softmax
// cross-entropy over the unmasked positions. Each linear runs as Conv1D (x W, GPT-2) or nn.Linear
// (x W^T, the Llama family) on the weights as the checkpoint stores them; the q/k/v and gate/up
// weights are consecutive in the base buffer, so each pair or triple is one product.
// Backward keeps one residual-stream gradient buffer that every branch accumulates into.
#include "core/model/transformer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/hash.h"
#include "core/model/activations.h"
#include "core/optimizer.h"
#include "core/ops/attention.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/dropout.h"
#include "core/ops/embedding.h"
#include "core/ops/gelu.h"
#include "core/ops/layernorm.h"
#include "core/ops/lora.h"
#include "core/ops/matmul.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/rope.h"
#include "core/ops/swiglu.h"
#include "core/profile.h"
#include "core/rng.h"

namespace lora {

namespace {

using Buf = std::vector<float>;
using BlockActs = BlockActivations<Buf>;
using LoraActs = LoraActivations<Buf>;

void zero(Buf& b) {
  prof::Scope scope(prof::Op::kFill);
  std::fill(b.begin(), b.end(), 0.0f);
}

}  // namespace

// The float buffers (core/model/activations.h), plus the host-side inputs of the last forward.
struct TransformerModel::Activations : ActivationBuffers<Buf> {
  int n_batch = 0, n_seq = 0;
  size_t n_bytes = 0;                    // bytes of the float buffers
  std::vector<int32_t> tokens, targets;  // [BT]
  std::vector<uint64_t> row_ids;         // [BT] dropout row ids
  std::vector<float> ce_max;             // [BT] the loss's row max and sum of exponentials,
  std::vector<double> ce_sum;            //      kept for backward
  bool has_targets = false;
  ForwardOptions opts;
  uint64_t dropout_seed = 0;
};

TransformerModel::TransformerModel(const ModelSpec& spec, TrainMode mode,
                                   const std::optional<LoraSpec>& lora)
    : layout_(spec), mode_(mode) {
  base_.assign(layout_.n_params(), 0.0f);
  if (mode == TrainMode::kLora) {
    LORA_CHECK(lora.has_value(), "lora mode needs a LoraSpec");
    lora_layout_ = std::make_unique<LoraLayout>(spec, *lora);
    lora_.assign(lora_layout_->n_params(), 0.0f);
    lora_grads_.assign(lora_layout_->n_params(), 0.0f);
  } else {
    LORA_CHECK(!lora.has_value(), "full mode takes no LoraSpec");
    base_grads_.assign(layout_.n_params(), 0.0f);
  }
  if (spec.positions == PositionKind::kRope) {
    std::vector<float> inv = ops::rope_inv_freq(spec.head_size(), spec.rope_theta);
    if (spec.rope_scaling.llama3) {
      const RopeScaling& r = spec.rope_scaling;
      ops::rope_scale_llama3(inv, r.factor, r.low_freq_factor, r.high_freq_factor,
                             r.original_max_position_embeddings);
    }
    ops::rope_tables(inv, spec.max_seq_len, rope_cos_, rope_sin_);
  }
  refresh_fingerprint();
}

TransformerModel::~TransformerModel() = default;

float* TransformerModel::trainable_params() {
  return mode_ == TrainMode::kLora ? lora_.data() : base_.data();
}
float* TransformerModel::trainable_grads() {
  return mode_ == TrainMode::kLora ? lora_grads_.data() : base_grads_.data();
}
void TransformerModel::zero_grads() {
  std::fill(lora_grads_.begin(), lora_grads_.end(), 0.0f);
  std::fill(base_grads_.begin(), base_grads_.end(), 0.0f);
}

namespace {

// AdamW and clipping on the host buffers of the CPU model.
class CpuOptimizer final : public TrainableOptimizer {
 public:
  CpuOptimizer(TransformerModel& model, const ops::AdamWParams& hp)
      : model_(model), adamw_(model.n_trainable(), hp) {}
  void step(float lr, float max_norm) override {
    prof::Scope scope(prof::Op::kOptimizer);
    norm_ = clip_grad_norm(model_.trainable_grads(), model_.n_trainable(), max_norm);
    adamw_.update(model_.trainable_params(), model_.trainable_grads(), lr);
  }
  float last_grad_norm() override { return norm_; }
  long steps() const override { return adamw_.step(); }
  void set_steps(long steps) override { adamw_.set_step(steps); }
  void get_moments(std::span<float> m, std::span<float> v) const override {
    LORA_CHECK(m.size() == adamw_.m().size() && v.size() == adamw_.v().size(),
               "get_moments: wrong sizes");
    std::copy(adamw_.m().begin(), adamw_.m().end(), m.begin());
    std::copy(adamw_.v().begin(), adamw_.v().end(), v.begin());
  }
  void set_moments(std::span<const float> m, std::span<const float> v) override {
    LORA_CHECK(m.size() == adamw_.m().size() && v.size() == adamw_.v().size(),
               "set_moments: ", m.size(), " and ", v.size(), " floats given, ", adamw_.m().size(),
               " needed");
    std::copy(m.begin(), m.end(), adamw_.m().begin());
    std::copy(v.begin(), v.end(), adamw_.v().begin());
  }

 private:
  TransformerModel& model_;
  AdamW adamw_;
  float norm_ = 0.0f;
};

}  // namespace

std::unique_ptr<TrainableOptimizer> TransformerModel::make_optimizer(const ops::AdamWParams& hp) {
  return std::make_unique<CpuOptimizer>(*this, hp);
}

void TransformerModel::get_trainable(std::span<float> out) const {
  const std::vector<float>& src = mode_ == TrainMode::kLora ? lora_ : base_;
  LORA_CHECK(out.size() == src.size(), "get_trainable: ", out.size(), " floats given, ",
             src.size(), " needed");
  std::copy(src.begin(), src.end(), out.begin());
}

void TransformerModel::set_trainable(std::span<const float> in) {
  std::vector<float>& dst = mode_ == TrainMode::kLora ? lora_ : base_;
  LORA_CHECK(in.size() == dst.size(), "set_trainable: ", in.size(), " floats given, ", dst.size(),
             " needed");
  std::copy(in.begin(), in.end(), dst.begin());
  if (mode_ == TrainMode::kFull) refresh_fingerprint();
}

void TransformerModel::get_base(std::span<float> out) const {
  LORA_CHECK(out.size() == base_.size(), "get_base: ", out.size(), " floats given, ", base_.size(),
             " needed");
  std::copy(base_.begin(), base_.end(), out.begin());
}

void TransformerModel::refresh_fingerprint() {
  fingerprint_ = fingerprint_floats(base_.data(), base_.size());
}

void TransformerModel::init_base_random(uint64_t seed) {
  init_base_params(layout_, base_.data(), seed);
  refresh_fingerprint();
}

void TransformerModel::init_lora(uint64_t seed) {
  if (lora_layout_) init_lora_params(*lora_layout_, lora_.data(), seed);
}

const float* TransformerModel::logits() const { return acts_ ? acts_->logits.data() : nullptr; }
const float* TransformerModel::losses() const { return acts_ ? acts_->losses.data() : nullptr; }
size_t TransformerModel::workspace_bytes() const { return acts_ ? acts_->n_bytes : 0; }

void TransformerModel::ensure_activations(int B, int T) {
  if (acts_ && acts_->n_batch == B && acts_->n_seq == T) return;
  acts_.reset();  // free the old buffers before allocating the new ones
  auto fresh = std::make_unique<Activations>();
  auto& a = *fresh;
  const size_t BT = static_cast<size_t>(B) * T;
  a.n_batch = B;
  a.n_seq = T;
  make_activation_buffers(a, spec(), lora_layout_.get(), B, T, [&a](Buf& buf, size_t n_elems) {
    buf.resize(n_elems);
    a.n_bytes += n_elems * sizeof(float);
  });
  a.tokens.resize(BT);
  a.targets.resize(BT);
  a.row_ids.resize(BT);
  a.ce_max.resize(BT);
  a.ce_sum.resize(BT);
  acts_ = std::move(fresh);
}

namespace {

// The base product of one linear in the orientation the family stores: y = x W + b (Conv1D) or
// y = x W^T + b (nn.Linear).
void base_forward(const ModelSpec& s, float* y, const float* x, const float* w, const float* bias,
                  int n, int d_in, int d_out) {
  prof::Scope scope(prof::Op::kLinear);
  if (s.conv1d) {
    ops::matmul_forward_cpu(y, x, w, bias, n, d_in, d_out);
  } else {
    ops::linear_forward_cpu(y, x, w, bias, n, d_in, d_out);
  }
}

// dx = ... (written, not accumulated).
void base_backward(const ModelSpec& s, float* dx, float* dw, float* dbias, const float* dy,
                   const float* x, const float* w, int n, int d_in, int d_out) {
  prof::Scope scope(prof::Op::kLinear);
  if (s.conv1d) {
    ops::matmul_backward_cpu(dx, dw, dbias, dy, x, w, n, d_in, d_out, /*overwrite_dx=*/true);
  } else {
    ops::linear_backward_cpu(dx, dw, dbias, dy, x, w, n, d_in, d_out, /*overwrite_dx=*/true);
  }
}

void norm_forward(const ModelSpec& s, float* y, float* mean, float* rstd, const float* x,
                  const float* w, const float* b, int n, int c) {
  prof::Scope scope(prof::Op::kNorm);
  if (s.norm == NormKind::kLayerNorm) {
    ops::layernorm_forward_cpu(y, mean, rstd, x, w, b, n, c);
  } else {
    ops::rmsnorm_forward_cpu(y, rstd, x, w, s.norm_eps, n, c);
  }
}

// x_out = a + b, then y = norm(x_out), in one pass over the rows.
void residual_norm_forward(const ModelSpec& s, float* x_out, float* y, float* mean, float* rstd,
                           const float* a, const float* b, const float* w, const float* bias, int n,
                           int c) {
  prof::Scope scope(prof::Op::kNorm);
  if (s.norm == NormKind::kLayerNorm) {
    ops::residual_layernorm_forward_cpu(x_out, y, mean, rstd, a, b, w, bias, n, c);
  } else {
    ops::residual_rmsnorm_forward_cpu(x_out, y, rstd, a, b, w, s.norm_eps, n, c);
  }
}

// dx += ...; dw, db (may be null) += ...
void norm_backward(const ModelSpec& s, float* dx, float* dw, float* db, const float* dy,
                   const float* x, const float* w, const float* mean, const float* rstd, int n,
                   int c) {
  prof::Scope scope(prof::Op::kNorm);
  if (s.norm == NormKind::kLayerNorm) {
    ops::layernorm_backward_cpu(dx, dw, db, dy, x, w, mean, rstd, n, c);
  } else {
    ops::rmsnorm_backward_cpu(dx, dw, dy, x, w, rstd, n, c);
  }
}

}  // namespace

float TransformerModel::forward(const int32_t* tokens, const int32_t* targets, int B, int T,
                                const ForwardOptions& opts) {
  const ModelSpec& s = spec();
  LORA_CHECK(tokens != nullptr, "tokens is null");
  LORA_CHECK(B > 0 && T > 0, "batch ", B, " x seq ", T, " must be positive");
  LORA_CHECK(T <= s.max_seq_len, "sequence length ", T, " exceeds max_seq_len ", s.max_seq_len);
  ensure_activations(B, T);
  auto& a = *acts_;
  const int BT = B * T, C = s.d_model, V = s.vocab_size, NH = s.n_head, NKV = s.kv_heads(),
            HD = s.head_size(), QKV = s.qkv_dim(), Q = s.q_dim(), F = s.ff(), M = s.mlp_in_dim();
  std::copy(tokens, tokens + BT, a.tokens.begin());
  a.has_targets = targets != nullptr;
  if (targets) std::copy(targets, targets + BT, a.targets.begin());
  a.opts = opts;
  a.opts.seq_ids = nullptr;
  for (int b = 0; b < B; ++b) {
    const uint64_t seq = opts.seq_ids ? opts.seq_ids[b] : static_cast<uint64_t>(b);
    for (int t = 0; t < T; ++t) a.row_ids[static_cast<size_t>(b) * T + t] = (seq << 20) | static_cast<uint64_t>(t);
  }
  a.dropout_seed = hash_u64(opts.dropout_seed, opts.step, 0x64726f70ull);

  const BaseParams p = layout_.bind(base_.data());
  const LoraSpec* lspec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = opts.training && lspec && lspec->dropout > 0.0f;

  // One linear with its adapters: y = x W + b [+ s (drop(x) A) B into each adapter's columns].
  auto linear = [&](float* y, const float* x, const float* w, const float* bias, int d_in,
                    int d_out, int layer, BlockLinear which, BlockActs& b) {
    base_forward(s, y, x, w, bias, BT, d_in, d_out);
    if (!lora_layout_) return;
    for (const LoraModule* m : lora_layout_->modules_of(layer, which)) {
      LoraActs& la = b.lora[static_cast<int>(m->target)];
      const float* x_in = x;
      if (dropout) {
        prof::Scope scope(prof::Op::kDropout);
        ops::dropout_forward_cpu(la.x_drop.data(), x, a.row_ids.data(), lspec->dropout,
                                 a.dropout_seed, m->dropout_stream(), BT, d_in);
        x_in = la.x_drop.data();
      }
      prof::Scope scope(prof::Op::kLora);
      ops::lora_forward_cpu(y + m->col_offset, la.h.data(), x_in, lora_.data() + m->a_offset,
                            lora_.data() + m->b_offset, m->scaling, BT, d_in, m->rank, m->d_out,
                            m->ld_out);
    }
  };

  {
    prof::Scope scope(prof::Op::kEmbedding);
    ops::embedding_forward_cpu(a.encoded.data(), a.tokens.data(), p.wte, p.wpe, B, T, C, V);
  }
  const float* x = a.encoded.data();
  // Each residual add is fused with the norm that reads its result: the attention branch's with
  // norm_2, the MLP branch's with the next block's norm_1 (or the final norm).
  norm_forward(s, a.blocks[0].ln1_out.data(), a.blocks[0].ln1_mean.data(),
               a.blocks[0].ln1_rstd.data(), x, p.layers[0].norm1_w, p.layers[0].norm1_b, BT, C);
  for (int l = 0; l < s.n_layer; ++l) {
    BlockActs& b = a.blocks[l];
    const LayerParams& w = p.layers[l];
    linear(b.qkv.data(), b.ln1_out.data(), w.qkv_w, w.qkv_b, C, QKV, l, BlockLinear::kAttnIn, b);
    if (s.positions == PositionKind::kRope) {
      prof::Scope scope(prof::Op::kRope);
      ops::rope_forward_cpu(b.qkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, NH, NKV, HD);
    }
    {
      prof::Scope scope(prof::Op::kAttention);
      ops::attention_forward_cpu(b.att_out.data(), b.att_probs.data(), b.qkv.data(), B, T, NH, NKV,
                                 HD);
    }
    linear(a.scratch.data(), b.att_out.data(), w.o_w, w.o_b, Q, C, l, BlockLinear::kAttnOut, b);
    residual_norm_forward(s, b.res1.data(), b.ln2_out.data(), b.ln2_mean.data(), b.ln2_rstd.data(),
                          x, a.scratch.data(), w.norm2_w, w.norm2_b, BT, C);
    linear(b.fc_out.data(), b.ln2_out.data(), w.up_w, w.up_b, C, M, l, BlockLinear::kMlpIn, b);
    if (s.mlp == MlpKind::kGeluTanh) {
      prof::Scope scope(prof::Op::kActivation);
      ops::gelu_forward_cpu(b.act_out.data(), b.fc_out.data(), static_cast<size_t>(BT) * F);
    } else {
      prof::Scope scope(prof::Op::kActivation);
      ops::swiglu_forward_cpu(b.act_out.data(), b.fc_out.data(), BT, F);
    }
    linear(a.scratch.data(), b.act_out.data(), w.down_w, w.down_b, F, C, l, BlockLinear::kMlpOut,
           b);
    if (l + 1 < s.n_layer) {
      BlockActs& next = a.blocks[l + 1];
      residual_norm_forward(s, b.res2.data(), next.ln1_out.data(), next.ln1_mean.data(),
                            next.ln1_rstd.data(), b.res1.data(), a.scratch.data(),
                            p.layers[l + 1].norm1_w, p.layers[l + 1].norm1_b, BT, C);
    } else {
      residual_norm_forward(s, b.res2.data(), a.lnf_out.data(), a.lnf_mean.data(),
                            a.lnf_rstd.data(), b.res1.data(), a.scratch.data(), p.normf_w,
                            p.normf_b, BT, C);
    }
    x = b.res2.data();
  }
  {
    prof::Scope scope(prof::Op::kHead);
    ops::lm_head_forward_cpu(a.logits.data(), a.lnf_out.data(), p.lm_head, BT, C, V);
  }
  n_targets_ = 0;
  if (!targets) return 0.0f;
  {
    prof::Scope scope(prof::Op::kLoss);
    ops::cross_entropy_forward_cpu(a.losses.data(), a.logits.data(), a.targets.data(), BT, V,
                                   a.ce_max.data(), a.ce_sum.data());
  }
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) {
    if (a.targets[i] < 0) continue;
    sum += a.losses[i];
    ++n_targets_;
  }
  const float mean =
      n_targets_ > 0 ? static_cast<float>(sum / static_cast<double>(n_targets_)) : 0.0f;
  loss_sum_ += static_cast<double>(mean) * static_cast<double>(n_targets_);
  return mean;
}

void TransformerModel::backward(float loss_scale, const GradReadyFn& ready) {
  LORA_CHECK(acts_ && acts_->has_targets, "backward needs a forward with targets first");
  auto& a = *acts_;
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
  auto notify = [&](size_t begin, size_t end) {
    if (ready && end > begin) ready(begin, end - begin);
  };

  // Backward of one linear with its adapters. dy: gradient of y; dx (may be null): the input
  // gradient, written (the base product overwrites it, the adapters add to it).
  auto linear_backward = [&](float* dx, float* dw, float* dbias, const float* dy, const float* x,
                             const float* w, int d_in, int d_out, int layer, BlockLinear which,
                             BlockActs& b) {
    base_backward(s, dx, dw, dbias, dy, x, w, BT, d_in, d_out);
    if (!lora_layout_) return;
    for (const LoraModule* m : lora_layout_->modules_of(layer, which)) {
      LoraActs& la = b.lora[static_cast<int>(m->target)];
      const float* a_w = lora_.data() + m->a_offset;
      const float* b_w = lora_.data() + m->b_offset;
      float* da = lora_grads_.data() + m->a_offset;
      float* db = lora_grads_.data() + m->b_offset;
      const float* dy_m = dy + m->col_offset;
      prof::Scope scope(prof::Op::kLora);
      if (dropout) {
        float* dxd = dx ? a.d_xdrop.data() : nullptr;
        if (dxd) std::fill(dxd, dxd + static_cast<size_t>(BT) * d_in, 0.0f);
        ops::lora_backward_cpu(dxd, da, db, a.d_h.data(), dy_m, la.x_drop.data(), la.h.data(), a_w,
                               b_w, m->scaling, BT, d_in, m->rank, m->d_out, m->ld_out);
        if (dx)
          ops::dropout_backward_cpu(dx, dxd, a.row_ids.data(), lspec->dropout, a.dropout_seed,
                                    m->dropout_stream(), BT, d_in);
      } else {
        ops::lora_backward_cpu(dx, da, db, a.d_h.data(), dy_m, x, la.h.data(), a_w, b_w,
                               m->scaling, BT, d_in, m->rank, m->d_out, m->ld_out);
      }
    }
  };

  // Loss: mean over the unmasked positions, times loss_scale. dlogits overwrite the logits.
  const float dloss = n_targets_ > 0 ? loss_scale / static_cast<float>(n_targets_) : 0.0f;
  {
    prof::Scope scope(prof::Op::kLoss);
    ops::cross_entropy_backward_cpu(a.logits.data(), a.logits.data(), a.targets.data(), dloss, BT,
                                    V, a.ce_max.data(), a.ce_sum.data());
  }
  {
    prof::Scope scope(prof::Op::kHead);
    ops::lm_head_backward_cpu(a.d_ln.data(), full ? g.lm_head : nullptr, a.logits.data(),
                              a.lnf_out.data(), p.lm_head, BT, C, V, /*overwrite_dx=*/true);
  }
  zero(a.d_res);
  const float* x_last = a.blocks[s.n_layer - 1].res2.data();
  norm_backward(s, a.d_res.data(), full ? g.normf_w : nullptr, full ? g.normf_b : nullptr,
                a.d_ln.data(), x_last, p.normf_w, a.lnf_mean.data(), a.lnf_rstd.data(), BT, C);
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
    linear_backward(a.d_act.data(), gw.down_w, gw.down_b, a.d_res.data(), b.act_out.data(),
                    w.down_w, F, C, l, BlockLinear::kMlpOut, b);
    if (s.mlp == MlpKind::kGeluTanh) {
      prof::Scope scope(prof::Op::kActivation);
      ops::gelu_backward_write_cpu(a.d_fc.data(), a.d_act.data(), b.fc_out.data(),
                             static_cast<size_t>(BT) * F);
    } else {
      prof::Scope scope(prof::Op::kActivation);
      ops::swiglu_backward_write_cpu(a.d_fc.data(), a.d_act.data(), b.fc_out.data(), BT, F);
    }
    linear_backward(a.d_ln.data(), gw.up_w, gw.up_b, a.d_fc.data(), b.ln2_out.data(), w.up_w, C, M,
                    l, BlockLinear::kMlpIn, b);
    norm_backward(s, a.d_res.data(), gw.norm2_w, gw.norm2_b, a.d_ln.data(), b.res1.data(),
                  w.norm2_w, b.ln2_mean.data(), b.ln2_rstd.data(), BT, C);

    // Attention branch: d_res now holds dL/dx1.
    linear_backward(a.d_att.data(), gw.o_w, gw.o_b, a.d_res.data(), b.att_out.data(), w.o_w, Q, C,
                    l, BlockLinear::kAttnOut, b);
    zero(a.d_qkv);
    {
      prof::Scope scope(prof::Op::kAttention);
      ops::attention_backward_cpu(a.d_qkv.data(), a.d_att.data(), b.qkv.data(), b.att_probs.data(),
                                  B, T, NH, NKV, HD);
    }
    if (s.positions == PositionKind::kRope) {
      prof::Scope scope(prof::Op::kRope);
      ops::rope_backward_cpu(a.d_qkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, NH, NKV, HD);
    }
    linear_backward(need_dx ? a.d_ln.data() : nullptr, gw.qkv_w, gw.qkv_b, a.d_qkv.data(),
                    b.ln1_out.data(), w.qkv_w, C, QKV, l, BlockLinear::kAttnIn, b);
    if (need_dx) {
      norm_backward(s, a.d_res.data(), gw.norm1_w, gw.norm1_b, a.d_ln.data(), x_in, w.norm1_w,
                    b.ln1_mean.data(), b.ln1_rstd.data(), BT, C);
    }
    // Block l's trainable gradients are final.
    if (full) {
      notify(layout_.layer_begin(l), layout_.layer_end(l));
    } else {
      notify(lora_layout_->layer_begin(l), lora_layout_->layer_end(l));
    }
  }
  if (full) {
    {
      prof::Scope scope(prof::Op::kEmbedding);
      ops::embedding_backward_cpu(g.wte, g.wpe, a.d_res.data(), a.tokens.data(), B, T, C, V);
    }
    notify(0, layout_.embeddings_end());
  }
}

}  // namespace lora
