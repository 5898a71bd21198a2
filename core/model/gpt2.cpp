// GPT-2 forward and backward on the CPU, composed from the ops in core/ops/.
//
// Per block (pre-LayerNorm, as GPT-2):
//   a   = ln_1(x)                 qkv = a Wqkv + bqkv [+ s (drop(a) Aqkv) Bqkv]
//   o   = attention(qkv)          p   = o Wproj + bproj [+ lora]
//   x1  = x + p
//   m   = ln_2(x1)                f   = m Wfc + bfc [+ lora];  g = gelu(f)
//   q   = g Wfcproj + bfcproj [+ lora]
//   x2  = x1 + q
// then ln_f and the tied LM head, and the fused softmax cross-entropy.
// Backward keeps one residual-stream gradient buffer that every branch accumulates into.
#include "core/model/gpt2.h"

#include <algorithm>
#include <cstring>

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

using Buf = std::vector<float>;
using BlockActs = BlockActivations<Buf>;
using LoraActs = LoraActivations<Buf>;

void zero(Buf& b) { std::fill(b.begin(), b.end(), 0.0f); }

}  // namespace

// The float buffers (core/model/activations.h), plus the host-side inputs of the last forward.
struct Gpt2Model::Activations : ActivationBuffers<Buf> {
  int n_batch = 0, n_seq = 0;
  size_t n_bytes = 0;                    // bytes of the float buffers
  std::vector<int32_t> tokens, targets;  // [BT]
  std::vector<uint64_t> row_ids;         // [BT] dropout row ids
  bool has_targets = false;
  ForwardOptions opts;
  uint64_t dropout_seed = 0;
};

Gpt2Model::Gpt2Model(const ModelShape& shape, TrainMode mode, const std::optional<LoraSpec>& lora)
    : layout_(shape), mode_(mode) {
  base_.assign(layout_.n_params(), 0.0f);
  if (mode == TrainMode::kLora) {
    LORA_CHECK(lora.has_value(), "lora mode needs a LoraSpec");
    lora_layout_ = std::make_unique<LoraLayout>(shape, *lora);
    lora_.assign(lora_layout_->n_params(), 0.0f);
    lora_grads_.assign(lora_layout_->n_params(), 0.0f);
  } else {
    LORA_CHECK(!lora.has_value(), "full mode takes no LoraSpec");
    base_grads_.assign(layout_.n_params(), 0.0f);
  }
}

Gpt2Model::~Gpt2Model() = default;

float* Gpt2Model::trainable_params() {
  return mode_ == TrainMode::kLora ? lora_.data() : base_.data();
}
float* Gpt2Model::trainable_grads() {
  return mode_ == TrainMode::kLora ? lora_grads_.data() : base_grads_.data();
}
size_t Gpt2Model::n_trainable() const {
  return mode_ == TrainMode::kLora ? lora_.size() : base_.size();
}
void Gpt2Model::zero_grads() {
  std::fill(lora_grads_.begin(), lora_grads_.end(), 0.0f);
  std::fill(base_grads_.begin(), base_grads_.end(), 0.0f);
}

void Gpt2Model::init_base_random(uint64_t seed) { init_gpt2_params(layout_, base_.data(), seed); }

void Gpt2Model::init_lora(uint64_t seed) {
  if (lora_layout_) init_lora_params(*lora_layout_, lora_.data(), seed);
}

const float* Gpt2Model::logits() const { return acts_ ? acts_->logits.data() : nullptr; }
const float* Gpt2Model::losses() const { return acts_ ? acts_->losses.data() : nullptr; }
size_t Gpt2Model::workspace_bytes() const { return acts_ ? acts_->n_bytes : 0; }

void Gpt2Model::ensure_activations(int B, int T) {
  if (acts_ && acts_->n_batch == B && acts_->n_seq == T) return;
  acts_ = std::make_unique<Activations>();
  auto& a = *acts_;
  const size_t BT = static_cast<size_t>(B) * T;
  a.n_batch = B;
  a.n_seq = T;
  make_activation_buffers(a, shape(), lora_layout_.get(), B, T, [&a](Buf& buf, size_t n_elems) {
    buf.resize(n_elems);
    a.n_bytes += n_elems * sizeof(float);
  });
  a.tokens.resize(BT);
  a.targets.resize(BT);
  a.row_ids.resize(BT);
}

float Gpt2Model::forward(const int32_t* tokens, const int32_t* targets, int B, int T,
                         const ForwardOptions& opts) {
  const ModelShape& s = shape();
  LORA_CHECK(tokens != nullptr, "tokens is null");
  LORA_CHECK(B > 0 && T > 0, "batch ", B, " x seq ", T, " must be positive");
  LORA_CHECK(T <= s.max_seq_len, "sequence length ", T, " exceeds max_seq_len ", s.max_seq_len);
  ensure_activations(B, T);
  auto& a = *acts_;
  const int BT = B * T, C = s.d_model, V = s.vocab_size, NH = s.n_head;
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

  const Gpt2Params p = layout_.bind(base_.data());
  const LoraSpec* spec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = opts.training && spec && spec->dropout > 0.0f;
  const float scaling = spec ? spec->scaling() : 0.0f;

  // One linear with its optional adapter: y = x W + b [+ s (drop(x) A) B].
  auto linear = [&](float* y, const float* x, const float* w, const float* bias, int d_in,
                    int d_out, int layer, LoraTarget target, LoraActs& la) {
    ops::matmul_forward_cpu(y, x, w, bias, BT, d_in, d_out);
    const LoraModule* m = lora_layout_ ? lora_layout_->find(layer, target) : nullptr;
    if (!m) return;
    const float* x_in = x;
    if (dropout) {
      ops::dropout_forward_cpu(la.x_drop.data(), x, a.row_ids.data(), spec->dropout,
                               a.dropout_seed, layer * kNumLoraTargets + static_cast<int>(target),
                               BT, d_in);
      x_in = la.x_drop.data();
    }
    ops::lora_forward_cpu(y, la.h.data(), x_in, lora_.data() + m->a_offset,
                          lora_.data() + m->b_offset, scaling, BT, d_in, m->rank, d_out);
  };

  ops::embedding_forward_cpu(a.encoded.data(), a.tokens.data(), p.wte, p.wpe, B, T, C, V);
  const float* x = a.encoded.data();
  for (int l = 0; l < s.n_layer; ++l) {
    BlockActs& b = a.blocks[l];
    const LayerParams& w = p.layers[l];
    ops::layernorm_forward_cpu(b.ln1_out.data(), b.ln1_mean.data(), b.ln1_rstd.data(), x, w.ln1_w,
                               w.ln1_b, BT, C);
    linear(b.qkv.data(), b.ln1_out.data(), w.qkv_w, w.qkv_b, C, 3 * C, l, LoraTarget::kAttnQkv,
           b.lora[0]);
    ops::attention_forward_cpu(b.att_out.data(), b.att_probs.data(), b.qkv.data(), B, T, C, NH);
    linear(a.scratch.data(), b.att_out.data(), w.proj_w, w.proj_b, C, C, l, LoraTarget::kAttnProj,
           b.lora[1]);
    ops::residual_forward_cpu(b.res1.data(), x, a.scratch.data(), static_cast<size_t>(BT) * C);
    ops::layernorm_forward_cpu(b.ln2_out.data(), b.ln2_mean.data(), b.ln2_rstd.data(),
                               b.res1.data(), w.ln2_w, w.ln2_b, BT, C);
    linear(b.fc_out.data(), b.ln2_out.data(), w.fc_w, w.fc_b, C, 4 * C, l, LoraTarget::kMlpFc,
           b.lora[2]);
    ops::gelu_forward_cpu(b.gelu_out.data(), b.fc_out.data(), static_cast<size_t>(BT) * 4 * C);
    linear(a.scratch.data(), b.gelu_out.data(), w.fcproj_w, w.fcproj_b, 4 * C, C, l,
           LoraTarget::kMlpProj, b.lora[3]);
    ops::residual_forward_cpu(b.res2.data(), b.res1.data(), a.scratch.data(),
                              static_cast<size_t>(BT) * C);
    x = b.res2.data();
  }
  ops::layernorm_forward_cpu(a.lnf_out.data(), a.lnf_mean.data(), a.lnf_rstd.data(), x, p.lnf_w,
                             p.lnf_b, BT, C);
  ops::lm_head_forward_cpu(a.logits.data(), a.lnf_out.data(), p.wte, BT, C, V);
  if (!targets) return 0.0f;
  ops::cross_entropy_forward_cpu(a.losses.data(), a.logits.data(), a.targets.data(), BT, V);
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) sum += a.losses[i];
  return static_cast<float>(sum / BT);
}

void Gpt2Model::backward(float loss_scale, const GradReadyFn& ready) {
  LORA_CHECK(acts_ && acts_->has_targets, "backward needs a forward with targets first");
  auto& a = *acts_;
  const ModelShape& s = shape();
  const int B = a.n_batch, T = a.n_seq, BT = B * T, C = s.d_model, V = s.vocab_size,
            NH = s.n_head;
  const bool full = mode_ == TrainMode::kFull;
  const Gpt2Params p = layout_.bind(base_.data());
  Gpt2Params g{};
  if (full) g = layout_.bind(base_grads_.data());
  const LoraSpec* spec = lora_layout_ ? &lora_layout_->spec() : nullptr;
  const bool dropout = a.opts.training && spec && spec->dropout > 0.0f;
  const float scaling = spec ? spec->scaling() : 0.0f;
  auto notify = [&](size_t begin, size_t end) {
    if (ready && end > begin) ready(begin, end - begin);
  };

  // Backward of one linear with its adapter. dy: gradient of y; dx (may be null): += input grad.
  auto linear_backward = [&](float* dx, float* dw, float* dbias, const float* dy, const float* x,
                             const float* w, int d_in, int d_out, int layer, LoraTarget target,
                             LoraActs& la) {
    ops::matmul_backward_cpu(dx, dw, dbias, dy, x, w, BT, d_in, d_out);
    const LoraModule* m = lora_layout_ ? lora_layout_->find(layer, target) : nullptr;
    if (!m) return;
    const float* a_w = lora_.data() + m->a_offset;
    const float* b_w = lora_.data() + m->b_offset;
    float* da = lora_grads_.data() + m->a_offset;
    float* db = lora_grads_.data() + m->b_offset;
    if (dropout) {
      float* dxd = dx ? a.d_xdrop.data() : nullptr;
      if (dxd) std::fill(dxd, dxd + static_cast<size_t>(BT) * d_in, 0.0f);
      ops::lora_backward_cpu(dxd, da, db, a.d_h.data(), dy, la.x_drop.data(), la.h.data(), a_w,
                             b_w, scaling, BT, d_in, m->rank, d_out);
      if (dx)
        ops::dropout_backward_cpu(dx, dxd, a.row_ids.data(), spec->dropout, a.dropout_seed,
                                  layer * kNumLoraTargets + static_cast<int>(target), BT, d_in);
    } else {
      ops::lora_backward_cpu(dx, da, db, a.d_h.data(), dy, x, la.h.data(), a_w, b_w, scaling, BT,
                             d_in, m->rank, d_out);
    }
  };

  // Loss: mean over BT positions, times loss_scale. dlogits overwrite the logits in place.
  ops::cross_entropy_backward_cpu(a.logits.data(), a.logits.data(), a.targets.data(),
                                  loss_scale / static_cast<float>(BT), BT, V);
  zero(a.d_ln);
  ops::lm_head_backward_cpu(a.d_ln.data(), full ? g.wte : nullptr, a.logits.data(),
                            a.lnf_out.data(), p.wte, BT, C, V);
  zero(a.d_res);
  const float* x_last = a.blocks[s.n_layer - 1].res2.data();
  ops::layernorm_backward_cpu(a.d_res.data(), full ? g.lnf_w : nullptr, full ? g.lnf_b : nullptr,
                              a.d_ln.data(), x_last, p.lnf_w, a.lnf_mean.data(), a.lnf_rstd.data(),
                              BT, C);
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
    zero(a.d_gelu);
    linear_backward(a.d_gelu.data(), gw.fcproj_w, gw.fcproj_b, a.d_res.data(), b.gelu_out.data(),
                    w.fcproj_w, 4 * C, C, l, LoraTarget::kMlpProj, b.lora[3]);
    zero(a.d_fc);
    ops::gelu_backward_cpu(a.d_fc.data(), a.d_gelu.data(), b.fc_out.data(),
                           static_cast<size_t>(BT) * 4 * C);
    zero(a.d_ln);
    linear_backward(a.d_ln.data(), gw.fc_w, gw.fc_b, a.d_fc.data(), b.ln2_out.data(), w.fc_w, C,
                    4 * C, l, LoraTarget::kMlpFc, b.lora[2]);
    ops::layernorm_backward_cpu(a.d_res.data(), gw.ln2_w, gw.ln2_b, a.d_ln.data(), b.res1.data(),
                                w.ln2_w, b.ln2_mean.data(), b.ln2_rstd.data(), BT, C);

    // Attention branch: d_res now holds dL/dx1.
    zero(a.d_att);
    linear_backward(a.d_att.data(), gw.proj_w, gw.proj_b, a.d_res.data(), b.att_out.data(),
                    w.proj_w, C, C, l, LoraTarget::kAttnProj, b.lora[1]);
    zero(a.d_qkv);
    ops::attention_backward_cpu(a.d_qkv.data(), a.d_att.data(), b.qkv.data(), b.att_probs.data(),
                                B, T, C, NH);
    if (need_dx) zero(a.d_ln);
    linear_backward(need_dx ? a.d_ln.data() : nullptr, gw.qkv_w, gw.qkv_b, a.d_qkv.data(),
                    b.ln1_out.data(), w.qkv_w, C, 3 * C, l, LoraTarget::kAttnQkv, b.lora[0]);
    if (need_dx) {
      ops::layernorm_backward_cpu(a.d_res.data(), gw.ln1_w, gw.ln1_b, a.d_ln.data(), x_in,
                                  w.ln1_w, b.ln1_mean.data(), b.ln1_rstd.data(), BT, C);
    }
    // Block l's trainable gradients are final.
    if (full) {
      notify(layout_.layer_begin(l), layout_.layer_end(l));
    } else {
      notify(lora_layout_->layer_begin(l), lora_layout_->layer_end(l));
    }
  }
  if (full) {
    ops::embedding_backward_cpu(g.wte, g.wpe, a.d_res.data(), a.tokens.data(), B, T, C, V);
    notify(0, layout_.embeddings_end());
  }
}

}  // namespace lora
