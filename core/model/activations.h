// The activation and gradient scratch buffers of one transformer forward/backward pass, and their
// sizes, shared by the CPU model (core/model/transformer.cpp, Buf = std::vector<float>) and the
// GPU model (core/model/transformer_cuda.cpp, Buf = cuda::DeviceBuffer<float>).
// Shapes (BT = n_batch * n_seq, C = d_model, V = vocab, NH = n_head, QKV = (NH + 2 NKV) head_dim,
// Q = NH head_dim, F = d_ff, M = F (GELU) or 2F (SwiGLU's gate|up), r = LoRA rank):
//   per block: the two norm outputs [BT, C] with mean (LayerNorm only) and rstd [BT], qkv [BT, QKV]
//   (after RoPE), attention output [BT, Q] and probabilities [B, NH, T, T], the MLP input product
//   [BT, M] and its activation [BT, F], the two residual-stream outputs [BT, C]; per adapter
//   h [BT, r] and, with dropout, the dropped-out input [BT, d_in]. Once: the embedding output
//   [BT, C], the final norm [BT, C] with its statistics, logits [BT, V], per-position losses [BT],
//   and the backward scratch the blocks share.
// Token, target and dropout row-id buffers differ by backend (the GPU stages them through pinned
// host memory) and stay with each model.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/model/lora_layout.h"
#include "core/model/spec.h"

namespace lora {

// The saved state of one adapted linear: the LoRA input after dropout (only when dropout > 0)
// and h = x A.
template <typename Buf>
struct LoraActivations {
  Buf x_drop;  // [BT, d_in]
  Buf h;       // [BT, r]
};

template <typename Buf>
struct BlockActivations {
  Buf ln1_out, ln1_mean, ln1_rstd;  // [BT, C], [BT], [BT]
  Buf qkv;                          // [BT, QKV]
  Buf att_out;                      // [BT, Q]
  Buf att_probs;                    // [B, NH, T, T]
  Buf res1;                         // [BT, C]
  Buf ln2_out, ln2_mean, ln2_rstd;  // [BT, C], [BT], [BT]
  Buf fc_out;                       // [BT, M] (pre-activation)
  Buf act_out;                      // [BT, F]
  Buf res2;                         // [BT, C]
  LoraActivations<Buf> lora[kNumLoraTargets];  // indexed by LoraTarget
};

template <typename Buf>
struct ActivationBuffers {
  Buf encoded;                      // [BT, C] embedding output = residual stream into block 0
  std::vector<BlockActivations<Buf>> blocks;
  Buf lnf_out, lnf_mean, lnf_rstd;  // [BT, C], [BT], [BT]
  Buf logits;                       // [BT, V] (dlogits in place after backward)
  Buf losses;                       // [BT]
  // scratch shared by all blocks
  Buf scratch;                      // [BT, C] branch output before the residual add
  Buf d_res;                        // [BT, C] gradient of the residual stream
  Buf d_ln;                         // [BT, C]
  Buf d_qkv;                        // [BT, QKV]
  Buf d_att;                        // [BT, Q]
  Buf d_fc;                         // [BT, M]
  Buf d_act;                        // [BT, F]
  Buf d_h;                          // [BT, max r]
  Buf d_xdrop;                      // [BT, max d_in]
};

// Sizes the buffers of `a` for n_batch sequences of n_seq tokens by calling make(buf, n_elems)
// on each buffer the model uses: the norm means only for LayerNorm, the adapter buffers only with
// a LoraLayout (null in full mode), the dropped-out inputs only when its dropout is > 0. The
// other buffers are left empty.
template <typename Buf, typename Make>
void make_activation_buffers(ActivationBuffers<Buf>& a, const ModelSpec& s, const LoraLayout* lora,
                             int n_batch, int n_seq, Make&& make) {
  const size_t BT = static_cast<size_t>(n_batch) * n_seq, C = s.d_model, V = s.vocab_size;
  const size_t QKV = s.qkv_dim(), Q = s.q_dim(), F = s.ff(), M = s.mlp_in_dim();
  const bool layer_norm = s.norm == NormKind::kLayerNorm;
  const bool dropout = lora != nullptr && lora->spec().dropout > 0.0f;
  make(a.encoded, BT * C);
  a.blocks.resize(s.n_layer);
  for (int l = 0; l < s.n_layer; ++l) {
    BlockActivations<Buf>& b = a.blocks[l];
    make(b.ln1_out, BT * C);
    if (layer_norm) make(b.ln1_mean, BT);
    make(b.ln1_rstd, BT);
    make(b.qkv, BT * QKV);
    make(b.att_out, BT * Q);
    make(b.att_probs, static_cast<size_t>(n_batch) * s.n_head * n_seq * n_seq);
    make(b.res1, BT * C);
    make(b.ln2_out, BT * C);
    if (layer_norm) make(b.ln2_mean, BT);
    make(b.ln2_rstd, BT);
    make(b.fc_out, BT * M);
    make(b.act_out, BT * F);
    make(b.res2, BT * C);
    if (lora == nullptr) continue;
    for (int t = 0; t < kNumLoraTargets; ++t) {
      const LoraModule* m = lora->find(l, static_cast<LoraTarget>(t));
      if (!m) continue;
      make(b.lora[t].h, BT * m->rank);
      if (dropout) make(b.lora[t].x_drop, BT * m->d_in);
    }
  }
  make(a.lnf_out, BT * C);
  if (layer_norm) make(a.lnf_mean, BT);
  make(a.lnf_rstd, BT);
  make(a.logits, BT * V);
  make(a.losses, BT);
  make(a.scratch, BT * C);
  make(a.d_res, BT * C);
  make(a.d_ln, BT * C);
  make(a.d_qkv, BT * QKV);
  make(a.d_att, BT * Q);
  make(a.d_fc, BT * M);
  make(a.d_act, BT * F);
  if (lora != nullptr) {
    make(a.d_h, BT * static_cast<size_t>(lora->max_rank()));
    if (dropout) make(a.d_xdrop, BT * std::max({C, Q, F}));
  }
}

}  // namespace lora
