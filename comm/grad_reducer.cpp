// Gradient reducer (see comm/grad_reducer.h): in-place sum over ranks of a float buffer of
// grads_.size() elements, in buckets started while backward still runs.
//
// Bucketing rule (B = bucket_elems; identical on every rank because it depends only on the marked
// ranges, their order and B):
//   - The bucket being filled is one contiguous interval. A marked range adjacent to it (its end is
//     the bucket's begin, as backward marks last block first, or its begin is the bucket's end)
//     joins it; a range that is not adjacent first launches the bucket as it is.
//   - A range shorter than 2B is never split: it joins the bucket, and once the bucket holds at
//     least B elements it is launched whole (so a bucket has fewer than 3B elements).
//   - A range of at least 2B elements is cut into buckets of exactly B elements, starting from the
//     end away from the range (so the first bucket is the old bucket topped up to B); the
//     remainder (< B elements, at the end where the next range will be adjacent) stays filling.
//   - finish() feeds every gap that was never marked through the same rule, highest offset first,
//     then launches what is left and waits for every bucket with the communicator's timeout (or,
//     with a consumer stream and a device communicator, orders that stream after them and leaves
//     them in flight until the next begin_step() or wait_all()).
// With overlap off mark_ready plans the same buckets but only finish() starts them.
#include "comm/grad_reducer.h"

#include <iterator>

#include "core/error.h"

namespace lora::comm {

namespace {
size_t length(const std::pair<size_t, size_t>& r) { return r.second - r.first; }
}  // namespace

GradReducer::GradReducer(Communicator& comm, std::span<float> grads, size_t bucket_elems,
                         bool overlap)
    : comm_(comm), grads_(grads), bucket_elems_(bucket_elems), overlap_(overlap) {
  LORA_CHECK(bucket_elems_ >= 1, "gradient bucket must hold at least one element");
}

void GradReducer::begin_step() {
  LORA_CHECK(pending_.empty() && queued_.empty(), "begin_step() while ",
             pending_.size() + queued_.size(),
             " gradient all-reduces of the previous step are unfinished: call finish() first");
  wait_all();
  marked_.clear();
  filling_ = {0, 0};
  n_buckets_ = 0;
  in_step_ = true;
}

void GradReducer::mark_ready(size_t offset, size_t count) {
  LORA_CHECK(offset <= grads_.size() && count <= grads_.size() - offset, "gradient range [",
             offset, ", ", offset + count, ") outside a buffer of ", grads_.size(), " elements");
  if (!in_step_ || count == 0) return;
  const size_t end = offset + count;
  // A range marked twice would be summed twice: reject any overlap with a marked range.
  auto next = marked_.lower_bound(offset);
  LORA_CHECK(next == marked_.end() || next->first >= end, "gradient range [", offset, ", ", end,
             ") overlaps the range [", next->first, ", ", next->second, ") already marked ready");
  if (next != marked_.begin()) {
    auto prev = std::prev(next);
    LORA_CHECK(prev->second <= offset, "gradient range [", offset, ", ", end,
               ") overlaps the range [", prev->first, ", ", prev->second,
               ") already marked ready");
  }
  marked_.emplace(offset, end);
  add_range({offset, end});
}

void GradReducer::add_range(Range r) {
  const size_t n_range = length(r);
  Range merged = r;
  bool range_at_high_end = false;  // the new range is the high end of merged
  if (length(filling_) == 0) {
    merged = r;
  } else if (r.second == filling_.first) {
    merged = {r.first, filling_.second};
  } else if (r.first == filling_.second) {
    merged = {filling_.first, r.second};
    range_at_high_end = true;
  } else {
    flush_filling();
  }
  filling_ = {0, 0};

  if (n_range >= 2 * bucket_elems_) {
    if (range_at_high_end) {
      while (length(merged) >= bucket_elems_) {
        launch({merged.first, merged.first + bucket_elems_});
        merged.first += bucket_elems_;
      }
    } else {
      while (length(merged) >= bucket_elems_) {
        launch({merged.second - bucket_elems_, merged.second});
        merged.second -= bucket_elems_;
      }
    }
    if (length(merged) > 0) filling_ = merged;
    return;
  }
  if (length(merged) >= bucket_elems_) {
    launch(merged);
  } else {
    filling_ = merged;
  }
}

void GradReducer::flush_filling() {
  if (length(filling_) > 0) launch(filling_);
  filling_ = {0, 0};
}

void GradReducer::launch(Range bucket) {
  n_buckets_ += 1;
  if (!overlap_) {
    queued_.push_back(bucket);
    return;
  }
  pending_.push_back(comm_.all_reduce_async(grads_.subspan(bucket.first, length(bucket)),
                                            ReduceOp::kSum));
}

void GradReducer::finish() {
  if (!in_step_) {  // nothing marked this step: reduce the whole buffer
    marked_.clear();
    filling_ = {0, 0};
    n_buckets_ = 0;
  }
  // Gaps never marked, highest offset first (the order backward marks in).
  size_t cursor = grads_.size();
  for (auto it = marked_.rbegin(); it != marked_.rend(); ++it) {
    if (it->second < cursor) add_range({it->second, cursor});
    cursor = it->first;
  }
  if (cursor > 0) add_range({0, cursor});
  flush_filling();

  for (const Range& bucket : queued_) {
    pending_.push_back(comm_.all_reduce_async(grads_.subspan(bucket.first, length(bucket)),
                                              ReduceOp::kSum));
  }
  queued_.clear();
  if (consumer_ != nullptr && comm_.order_before(consumer_)) {
    for (auto& work : pending_) {
      work->test();  // never blocks; throws on an error the communicator already knows of
      in_flight_.push_back(std::move(work));
    }
  } else {
    for (auto& work : pending_) comm_.wait(*work);
  }
  pending_.clear();

  n_buckets_last_step_ = n_buckets_;
  n_buckets_ = 0;
  marked_.clear();
  in_step_ = false;
}

void GradReducer::wait_all() {
  for (auto& work : in_flight_) comm_.wait(*work);
  in_flight_.clear();
}

}  // namespace lora::comm
