// GradReducer bucketing in one process: a recording communicator notes each all-reduce's
// [offset, offset+count) within the gradient buffer and "reduces" by doubling the elements when the
// work is waited (a sum over two identical ranks), so each element must end up doubled exactly once.
// Also the device-ordered mode (a consumer stream and a communicator that orders device streams,
// as NCCL does): finish() does not block but leaves the all-reduces in flight, tested without
// waiting; the next begin_step() and wait_all() wait for them.
#include "comm/grad_reducer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lora::comm {
namespace {

using Bucket = std::pair<size_t, size_t>;  // (offset, count)

class RecordingWork final : public Work {
 public:
  RecordingWork(float* data, size_t count, int* n_waits) : data_(data), count_(count), n_waits_(n_waits) {}
  void wait(std::chrono::milliseconds) override { complete(); }
  bool test() override {
    complete();
    return true;
  }

 private:
  void complete() {
    if (done_) return;
    done_ = true;
    *n_waits_ += 1;
    for (size_t i = 0; i < count_; ++i) data_[i] *= 2.0f;
  }
  float* data_;
  size_t count_;
  int* n_waits_;
  bool done_ = false;
};

class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(const float* base) : base_(base) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "recording"; }
  std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType type, ReduceOp op) override {
    EXPECT_EQ(type, DType::kFloat32);
    EXPECT_EQ(op, ReduceOp::kSum);
    stats_.all_reduce_bytes += count * dtype_size(type);
    stats_.all_reduce_calls += 1;
    buckets.emplace_back(static_cast<size_t>(static_cast<float*>(data) - base_), count);
    return std::make_unique<RecordingWork>(static_cast<float*>(data), count, &n_waits);
  }
  void broadcast(void*, size_t, DType, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return nullptr; }
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

  std::vector<Bucket> buckets;
  int n_waits = 0;

 private:
  const float* base_;
};

std::vector<float> iota_buffer(size_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 1.0f);
  return v;
}

// Every element doubled exactly once.
void expect_reduced_once(const std::vector<float>& g) {
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(g[i], 2.0f * static_cast<float>(i + 1)) << "element " << i;
  }
}

// Ranges of 137 from the top of a 1000-element buffer down (the last one 41), bucket 300.
void mark_descending_137(GradReducer& reducer) {
  size_t end = 1000;
  while (end > 0) {
    const size_t begin = end >= 137 ? end - 137 : 0;
    reducer.mark_ready(begin, end - begin);
    end = begin;
  }
}

TEST(GradReducer, DescendingRangesCoalesceIntoBucketsWithOverlap) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  reducer.begin_step();
  reducer.mark_ready(863, 137);
  reducer.mark_ready(726, 137);
  EXPECT_TRUE(comm.buckets.empty());  // 274 < 300: still filling
  reducer.mark_ready(589, 137);       // 411 >= 300: launched during backward
  ASSERT_EQ(comm.buckets.size(), 1u);
  EXPECT_EQ(comm.buckets[0], Bucket(589, 411));
  size_t end = 589;
  while (end > 0) {
    const size_t begin = end >= 137 ? end - 137 : 0;
    reducer.mark_ready(begin, end - begin);
    end = begin;
  }
  reducer.finish();
  // Worked by hand: 137+137+137 = 411 >= 300; again 411; then 137 + 41 = 178 left for finish().
  const std::vector<Bucket> expected = {{589, 411}, {178, 411}, {0, 178}};
  EXPECT_EQ(comm.buckets, expected);
  EXPECT_EQ(reducer.n_buckets_last_step(), 3u);
  EXPECT_EQ(comm.n_waits, 3);
  EXPECT_EQ(comm.stats().all_reduce_bytes, 4u * 1000u);
  expect_reduced_once(g);
}

TEST(GradReducer, WithoutOverlapPlansTheSameBucketsButStartsThemInFinish) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/false);
  reducer.begin_step();
  mark_descending_137(reducer);
  EXPECT_TRUE(comm.buckets.empty());
  EXPECT_EQ(g[999], 1000.0f);  // untouched until finish()
  reducer.finish();
  const std::vector<Bucket> expected = {{589, 411}, {178, 411}, {0, 178}};
  EXPECT_EQ(comm.buckets, expected);
  EXPECT_EQ(reducer.n_buckets_last_step(), 3u);
  expect_reduced_once(g);
}

TEST(GradReducer, AscendingRangesAlsoCoalesce) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  reducer.begin_step();
  for (size_t begin = 0; begin < 1000; begin += 137) reducer.mark_ready(begin, std::min<size_t>(137, 1000 - begin));
  reducer.finish();
  const std::vector<Bucket> expected = {{0, 411}, {411, 411}, {822, 178}};
  EXPECT_EQ(comm.buckets, expected);
  expect_reduced_once(g);
}

TEST(GradReducer, GapsNeverMarkedAreReducedInFinish) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  reducer.begin_step();
  reducer.mark_ready(800, 200);
  reducer.mark_ready(300, 200);  // not adjacent: [800, 1000) is launched as it is
  ASSERT_EQ(comm.buckets.size(), 1u);
  EXPECT_EQ(comm.buckets[0], Bucket(800, 200));
  reducer.finish();
  // Gap [500, 800) joins [300, 500); gap [0, 300) is a bucket of its own.
  const std::vector<Bucket> expected = {{800, 200}, {300, 500}, {0, 300}};
  EXPECT_EQ(comm.buckets, expected);
  EXPECT_EQ(comm.stats().all_reduce_bytes, 4u * 1000u);
  expect_reduced_once(g);
}

TEST(GradReducer, NothingMarkedReducesTheWholeBuffer) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  reducer.finish();  // no begin_step, no mark_ready
  // 1000 >= 2*300: cut into buckets of 300 from the top, remainder 100.
  const std::vector<Bucket> expected = {{700, 300}, {400, 300}, {100, 300}, {0, 100}};
  EXPECT_EQ(comm.buckets, expected);
  EXPECT_EQ(reducer.n_buckets_last_step(), 4u);
  expect_reduced_once(g);
}

TEST(GradReducer, MarksOutsideAStepAreIgnored) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 100, /*overlap=*/true);
  reducer.mark_ready(0, 1000);  // an earlier micro-step: gradients not final
  EXPECT_TRUE(comm.buckets.empty());
  reducer.begin_step();
  reducer.mark_ready(500, 500);
  reducer.finish();
  expect_reduced_once(g);
  EXPECT_EQ(comm.stats().all_reduce_bytes, 4u * 1000u);
}

TEST(GradReducer, RangeOfSeveralBucketsIsSplitAfterToppingUpTheBucket) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 100, /*overlap=*/true);
  reducer.begin_step();
  reducer.mark_ready(950, 50);   // filling: [950, 1000)
  reducer.mark_ready(600, 350);  // >= 2 buckets: split
  const std::vector<Bucket> after_split = {{900, 100}, {800, 100}, {700, 100}, {600, 100}};
  EXPECT_EQ(comm.buckets, after_split);
  reducer.mark_ready(430, 170);  // < 2 buckets: never split, launched whole (170 >= 100)
  EXPECT_EQ(comm.buckets.back(), Bucket(430, 170));
  reducer.mark_ready(0, 430);    // split from the top: 330, 230, 130, remainder [0, 30)
  reducer.finish();
  const std::vector<Bucket> expected = {{900, 100}, {800, 100}, {700, 100}, {600, 100},
                                        {430, 170}, {330, 100}, {230, 100}, {130, 100},
                                        {30, 100},  {0, 30}};
  EXPECT_EQ(comm.buckets, expected);
  expect_reduced_once(g);
}

TEST(GradReducer, RejectsOverlappingAndOutOfRangeMarks) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/false);
  reducer.begin_step();
  reducer.mark_ready(500, 100);
  EXPECT_THROW(reducer.mark_ready(500, 100), Error);
  EXPECT_THROW(reducer.mark_ready(450, 51), Error);
  EXPECT_THROW(reducer.mark_ready(599, 10), Error);
  EXPECT_THROW(reducer.mark_ready(990, 11), Error);
  reducer.mark_ready(400, 100);  // adjacent is fine
  reducer.finish();
  expect_reduced_once(g);
}

TEST(GradReducer, BeginStepWithUnfinishedWorkThrows) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 100, /*overlap=*/true);
  reducer.begin_step();
  reducer.mark_ready(800, 200);
  ASSERT_FALSE(comm.buckets.empty());
  EXPECT_THROW(reducer.begin_step(), Error);
  reducer.finish();
  expect_reduced_once(g);
}

TEST(GradReducer, ConsecutiveStepsCountTheirOwnBuckets) {
  auto g = iota_buffer(1000);
  RecordingCommunicator comm(g.data());
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  reducer.begin_step();
  mark_descending_137(reducer);
  reducer.finish();
  EXPECT_EQ(reducer.n_buckets_last_step(), 3u);
  reducer.begin_step();
  reducer.mark_ready(0, 1000);
  reducer.finish();
  EXPECT_EQ(reducer.n_buckets_last_step(), 4u);  // 300, 300, 300, 100
  EXPECT_EQ(comm.stats().all_reduce_bytes, 2u * 4u * 1000u);
  for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], 4.0f * static_cast<float>(i + 1));
}


// A communicator that orders device streams: order_before() notes the consumer and says yes; its
// work completes only when waited (test() reports "not yet").
class DeviceOrderedCommunicator final : public Communicator {
 public:
  struct Counts {
    int tests = 0, waits = 0;
  };
  class PendingWork final : public Work {
   public:
    explicit PendingWork(Counts* counts) : counts_(counts) {}
    void wait(std::chrono::milliseconds) override {
      if (!done_) counts_->waits += 1;
      done_ = true;
    }
    bool test() override {
      counts_->tests += 1;
      return done_;
    }

   private:
    Counts* counts_;
    bool done_ = false;
  };

  explicit DeviceOrderedCommunicator(bool orders) : orders_(orders) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "device-ordered"; }
  std::unique_ptr<Work> all_reduce_async(void*, size_t, DType, ReduceOp) override {
    n_calls += 1;
    return std::make_unique<PendingWork>(&counts);
  }
  void broadcast(void*, size_t, DType, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return nullptr; }
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
  bool order_before(CUstream_st* consumer) override {
    ordered.push_back(consumer);
    return orders_;
  }

  Counts counts;
  int n_calls = 0;
  std::vector<CUstream_st*> ordered;

 private:
  bool orders_;
};

TEST(GradReducer, DeviceOrderedFinishLeavesTheReductionsInFlightUntilTheNextStep) {
  std::vector<float> g(1000, 1.0f);
  DeviceOrderedCommunicator comm(/*orders=*/true);
  GradReducer reducer(comm, g, 300, /*overlap=*/true);
  auto* stream = reinterpret_cast<CUstream_st*>(static_cast<uintptr_t>(0x1000));
  reducer.set_consumer_stream(stream);
  reducer.begin_step();
  mark_descending_137(reducer);
  reducer.finish();
  EXPECT_EQ(comm.n_calls, 3);
  EXPECT_EQ(comm.ordered, std::vector<CUstream_st*>{stream});
  EXPECT_EQ(comm.counts.waits, 0) << "finish() blocked on a device-ordered all-reduce";
  EXPECT_EQ(comm.counts.tests, 3) << "each bucket is tested once, without waiting";
  reducer.begin_step();  // waits for the previous step's buckets
  EXPECT_EQ(comm.counts.waits, 3);
  reducer.mark_ready(0, 1000);
  reducer.finish();
  EXPECT_EQ(comm.counts.waits, 3);
  reducer.wait_all();
  EXPECT_EQ(comm.counts.waits, 7);  // 300, 300, 300, 100
  reducer.wait_all();               // nothing left
  EXPECT_EQ(comm.counts.waits, 7);
}

TEST(GradReducer, HostCommunicatorsAndNoConsumerStillWaitInFinish) {
  std::vector<float> g(1000, 1.0f);
  for (const bool with_consumer : {true, false}) {
    SCOPED_TRACE(with_consumer ? "host communicator with a consumer stream" : "no consumer stream");
    DeviceOrderedCommunicator comm(/*orders=*/!with_consumer);
    GradReducer reducer(comm, g, 300, /*overlap=*/true);
    if (with_consumer) {
      reducer.set_consumer_stream(reinterpret_cast<CUstream_st*>(static_cast<uintptr_t>(0x1000)));
    }
    reducer.begin_step();
    mark_descending_137(reducer);
    reducer.finish();
    EXPECT_EQ(comm.counts.waits, 3);
    EXPECT_EQ(comm.ordered.size(), with_consumer ? 1u : 0u);
  }
}

}  // namespace
}  // namespace lora::comm
