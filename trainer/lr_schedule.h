// Learning-rate schedule: linear warmup from 0 to lr over warmup_steps, then cosine decay to min_lr
// at total_steps (or constant lr). A pure function of the step, so it needs no saved state beyond
// the step itself. step counts from 0 (the first optimizer step uses lr_at(0)).
#pragma once

#include "trainer/config.h"

namespace lora {

float lr_at(long step, const TrainConfig& train);

}  // namespace lora
