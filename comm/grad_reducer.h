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
//
// mark_ready is acted on only between begin_step() and finish() (calls during earlier micro-steps,
// whose gradients are not final, are ignored). Ranges never marked are reduced by finish(), so a
// caller that never marks anything still gets the full reduction. Bucket boundaries depend only on
// the marked ranges, their order and bucket_elems (the same on every rank), and are the same with
// overlap on or off; comm/grad_reducer.cpp states the rule.
//
// Device buffers: with set_consumer_stream(stream) and a communicator that orders device streams
// (NCCL, Communicator::order_before), finish() does not block the host: `stream` (the one the
// optimizer runs on) waits for the reductions on the device, and the collectives stay in flight.
// They are tested without blocking right away (errors already known surface there), waited with
// the communicator's timeout by the next begin_step() (so at most one step's reductions are ever
// in flight) and by wait_all(), which a caller runs before it reads anything the consumer stream
// computes: a stalled or failed peer then ends in lora::Error instead of a host wait that never
// returns.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <utility>
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
  // See the file comment. Null: finish() waits on the host (the default).
  void set_consumer_stream(CUstream_st* stream) { consumer_ = stream; }
  // Waits for every collective still in flight (device ordering only; otherwise nothing is).
  void wait_all();

  size_t n_buckets_last_step() const { return n_buckets_last_step_; }

 private:
  Communicator& comm_;
  std::span<float> grads_;
  size_t bucket_elems_;
  bool overlap_;
  using Range = std::pair<size_t, size_t>;  // [begin, end) element offsets into grads_

  void add_range(Range r);     // bucketing: feeds filling_, launches full buckets
  void launch(Range bucket);   // overlap: starts the all-reduce now; else queues it
  void flush_filling();        // launches the bucket being filled, if any

  std::vector<std::unique_ptr<Work>> pending_;  // all-reduces started, not yet waited
  std::vector<std::unique_ptr<Work>> in_flight_;  // device-ordered by finish(), not yet waited
  CUstream_st* consumer_ = nullptr;
  std::vector<Range> queued_;    // overlap off: buckets planned by mark_ready, started by finish()
  std::map<size_t, size_t> marked_;  // begin -> end of every range marked this step
  Range filling_{0, 0};          // the bucket being filled (one contiguous interval)
  bool in_step_ = false;         // between begin_step() and finish()
  size_t n_buckets_ = 0;         // buckets of the current step
  size_t n_buckets_last_step_ = 0;
};

}  // namespace lora::comm
