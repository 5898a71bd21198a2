// Folding adapters into the base weights (merge.h): one sgemm per adapted module, in the family's
// weight orientation.
#include "core/model/merge.h"

#include <cblas.h>

#include "core/error.h"

namespace lora {

void merge_lora_into_base(const BaseLayout& base, float* base_params, const LoraLayout& lora,
                          const float* lora_params) {
  LORA_CHECK(base_params != nullptr && lora_params != nullptr, "null parameter buffer");
  const ModelSpec& spec = base.spec();
  const BaseParams p = base.bind(base_params);
  for (const LoraModule& m : lora.modules()) {
    LORA_CHECK(m.layer >= 0 && m.layer < spec.n_layer, "module ", m.name, " outside the model");
    const LayerParams& l = p.layers[static_cast<size_t>(m.layer)];
    float* w = nullptr;
    switch (m.linear) {
      case BlockLinear::kAttnIn: w = l.qkv_w; break;
      case BlockLinear::kAttnOut: w = l.o_w; break;
      case BlockLinear::kMlpIn: w = l.up_w; break;
      case BlockLinear::kMlpOut: w = l.down_w; break;
    }
    const float* a = lora_params + m.a_offset;  // [d_in, r]
    const float* b = lora_params + m.b_offset;  // [r, d_out]
    if (spec.conv1d) {
      // W [d_in, ld_out]: W[:, col_offset : col_offset + d_out] += s A B.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m.d_in, m.d_out, m.rank, m.scaling, a,
                  m.rank, b, m.d_out, 1.0f, w + m.col_offset, m.ld_out);
    } else {
      // W [ld_out, d_in]: W[col_offset : col_offset + d_out, :] += s (A B)^T = s B^T A^T.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, m.d_out, m.d_in, m.rank, m.scaling, b,
                  m.d_out, a, m.rank, 1.0f, w + static_cast<size_t>(m.col_offset) * m.d_in, m.d_in);
    }
  }
}

}  // namespace lora
