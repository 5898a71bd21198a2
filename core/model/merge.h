// Folding LoRA adapters into the base weights: W' = W + s * A B on every adapted linear, so that the
// plain model computes what the base with adapters computes (`lora merge`).
//
// A [d_in, r] and B [r, d_out] (lora_layout.h) give a [d_in, d_out] update that lands in the
// adapter's output columns [col_offset, col_offset + d_out) of its linear:
//   GPT-2 Conv1D weights [d_in, width]: columns col_offset.. of every row (c_attn's q|k|v ranges
//     are columns 0, C and 2C of one [C, 3C] matrix);
//   Llama-family nn.Linear weights [out, in] (q/k/v_proj and gate/up_proj stacked, base_layout.h):
//     rows col_offset.. of the stacked matrix, each row receiving a column of s * A B.
// The products run in float32 through OpenBLAS sgemm (C += s * A B), like the forward pass.
#pragma once

#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"

namespace lora {

// Adds s * A B of every module of `lora` (parameters in `lora_params`, LoraLayout order) into
// `base_params` (BaseLayout order). Both layouts must describe the same model spec.
void merge_lora_into_base(const BaseLayout& base, float* base_params, const LoraLayout& lora,
                          const float* lora_params);

}  // namespace lora
