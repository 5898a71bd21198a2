// The shape of a GPT-2 style model, and the training mode.
#pragma once

#include <cstddef>

namespace lora {

struct ModelShape {
  int vocab_size = 256;
  int max_seq_len = 128;
  int n_layer = 4;
  int n_head = 4;
  int d_model = 256;
};

// lora: only the adapters train (base frozen, no base gradients allocated).
// full: every base parameter trains (the baseline, and the way to pretrain a small base).
enum class TrainMode { kLora, kFull };

}  // namespace lora
