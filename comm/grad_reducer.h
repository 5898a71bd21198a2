// Gradient reducer: sums the trainable-gradient buffer over all ranks, overlapping communication
// with backward.
//
// Backward calls mark_ready(offset, count) each time a range of the buffer is final (the model hands
// off each block's range, last block first). The reducer coalesces ready ranges into buckets of at
// least bucket_elems elements and starts a non-blocking all-reduce per bucket right away, so
// communication of later blocks overlaps the backward of earlier ones. finish() reduces what is left
// and waits for every bucket (with the communicator's timeout) before the optimizer may read the
// gradients. With overlap off, mark_ready only records and finish() does everything.
// After finish(), every element of the buffer holds the sum over ranks.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "comm/communicator.h"

namespace lora::comm {

class GradReducer {
 public:
  GradReducer(Communicator& comm, std::span<float> grads, size_t bucket_elems, bool overlap);

  // Call once per optimizer step before backward of the last micro-step.
  void begin_step();
  void mark_ready(size_t offset, size_t count);
  void finish();

  size_t n_buckets_last_step() const { return n_buckets_last_step_; }

 private:
  Communicator& comm_;
  std::span<float> grads_;
  size_t bucket_elems_;
  bool overlap_;
  // ...implementation state lives in grad_reducer.cpp's members below
  std::vector<std::unique_ptr<Work>> pending_;
  std::vector<std::pair<size_t, size_t>> ready_;  // [begin, end) ranges not yet launched
  size_t n_buckets_last_step_ = 0;
};

}  // namespace lora::comm
