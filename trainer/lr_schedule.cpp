#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace lora {

float lr_at(long step, const TrainConfig& t) {
  if (t.warmup_steps > 0 && step < t.warmup_steps) {
    return t.lr * static_cast<float>(step + 1) / static_cast<float>(t.warmup_steps);
  }
  if (t.schedule == LrSchedule::kConstant) return t.lr;
  const long decay_steps = std::max(1L, t.steps - t.warmup_steps);
  const double progress =
      std::clamp(static_cast<double>(step - t.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(t.min_lr + (t.lr - t.min_lr) * cosine);
}

}  // namespace lora
