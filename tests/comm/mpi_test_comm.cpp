// MpiCommunicator and GradReducer under mpirun (2 and 4 ranks). Expected values are worked out by
// hand: the sum over ranks of the rank is size*(size-1)/2. Rank 0 prints gtest's output; other
// ranks print only their failures, prefixed with the rank; every rank exits with the same code.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "comm/grad_reducer.h"
#include "comm/mpi.h"
#include "core/error.h"
#include "tests/common/rank_printer.h"

namespace lora::comm {
namespace {

MpiCommunicator* g_world = nullptr;

MpiCommunicator& world() { return *g_world; }

int64_t rank_sum(int n) { return int64_t(n) * (n - 1) / 2; }

template <typename T>
class AllReduceSum : public ::testing::Test {};
using SumTypes = ::testing::Types<float, double, int32_t, int64_t>;
TYPED_TEST_SUITE(AllReduceSum, SumTypes);

TYPED_TEST(AllReduceSum, SumOfRanks) {
  using T = TypeParam;
  auto& comm = world();
  const int r = comm.rank(), n = comm.size();
  std::vector<T> v(7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(r + 10 * static_cast<int>(i));
  comm.all_reduce(std::span<T>(v), ReduceOp::kSum);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(v[i], static_cast<T>(rank_sum(n) + int64_t(n) * 10 * static_cast<int64_t>(i)))
        << "element " << i;
  }
}

TEST(AllReduce, Int64KeepsValuesBeyond32Bits) {
  auto& comm = world();
  std::vector<int64_t> v = {int64_t(comm.rank()) << 40, -(int64_t(1) << 40)};
  comm.all_reduce(std::span<int64_t>(v), ReduceOp::kSum);
  EXPECT_EQ(v[0], rank_sum(comm.size()) << 40);
  EXPECT_EQ(v[1], -(int64_t(comm.size()) << 40));
}

TEST(AllReduce, AverageOfRanks) {
  auto& comm = world();
  std::vector<float> f = {float(comm.rank()), 2.0f * float(comm.rank())};
  std::vector<double> d = {double(comm.rank())};
  comm.all_reduce(std::span<float>(f), ReduceOp::kAverage);
  comm.all_reduce(std::span<double>(d), ReduceOp::kAverage);
  const double mean = (comm.size() - 1) / 2.0;
  EXPECT_FLOAT_EQ(f[0], float(mean));
  EXPECT_FLOAT_EQ(f[1], float(2 * mean));
  EXPECT_DOUBLE_EQ(d[0], mean);
}

TEST(AllReduce, AverageOfIntegersIsRejected) {
  std::vector<int32_t> v = {1};
  EXPECT_THROW(world().all_reduce_async(std::span<int32_t>(v), ReduceOp::kAverage), Error);
}

TEST(AllReduce, MaxAndMin) {
  auto& comm = world();
  const int r = comm.rank(), n = comm.size();
  std::vector<int32_t> mx = {r, -r, 5};
  std::vector<float> mn = {float(r), -float(r), 5.0f};
  comm.all_reduce(std::span<int32_t>(mx), ReduceOp::kMax);
  comm.all_reduce(std::span<float>(mn), ReduceOp::kMin);
  EXPECT_EQ(mx[0], n - 1);
  EXPECT_EQ(mx[1], 0);
  EXPECT_EQ(mx[2], 5);
  EXPECT_EQ(mn[0], 0.0f);
  EXPECT_EQ(mn[1], -float(n - 1));
  EXPECT_EQ(mn[2], 5.0f);
}

TEST(AllReduce, EmptySpanCompletesAtOnceAndIsCounted) {
  auto& comm = world();
  const CommStats before = comm.stats();
  auto work = comm.all_reduce_async(std::span<float>(), ReduceOp::kSum);
  EXPECT_TRUE(work->test());
  comm.wait(*work);
  EXPECT_EQ(comm.stats().all_reduce_calls, before.all_reduce_calls + 1);
  EXPECT_EQ(comm.stats().all_reduce_bytes, before.all_reduce_bytes);
  // The next collective still matches on every rank.
  std::vector<int32_t> one = {1};
  comm.all_reduce(std::span<int32_t>(one), ReduceOp::kSum);
  EXPECT_EQ(one[0], comm.size());
}

TEST(AllReduce, LargeCountNotAMultipleOfAnything) {
  auto& comm = world();
  const size_t count = 1'000'003;
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = float(comm.rank()) + float(i % 1000);
  comm.all_reduce(std::span<float>(v), ReduceOp::kSum);
  const float base = float(rank_sum(comm.size()));
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(v[i], base + float(comm.size()) * float(i % 1000)) << "element " << i;
  }
}

TEST(AllReduce, CountsAboveTheRequestLimitAreChunked) {
  auto& comm = world();
  auto sub = comm.split(0, comm.rank());  // a private communicator to change the limit on
  auto& mpi_sub = dynamic_cast<MpiCommunicator&>(*sub);
  mpi_sub.set_max_elems_per_request(1000);
  EXPECT_THROW(mpi_sub.set_max_elems_per_request(0), Error);
  std::vector<double> v(2500);
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(comm.rank()) * double(i);
  sub->all_reduce(std::span<double>(v), ReduceOp::kAverage);
  const double mean = (comm.size() - 1) / 2.0;
  for (size_t i = 0; i < v.size(); ++i) ASSERT_DOUBLE_EQ(v[i], mean * double(i)) << i;
  EXPECT_EQ(sub->stats().all_reduce_calls, 1u);
  EXPECT_EQ(sub->stats().all_reduce_bytes, 8u * 2500u);
}

TEST(AllReduce, StatsCountFourBytesPerFloat) {
  auto& comm = world();
  const CommStats before = comm.stats();
  std::vector<float> a(1234, 1.0f), b(77, 1.0f);
  comm.all_reduce(std::span<float>(a), ReduceOp::kSum);
  comm.all_reduce(std::span<float>(b), ReduceOp::kSum);
  EXPECT_EQ(comm.stats().all_reduce_bytes - before.all_reduce_bytes, 4u * (1234u + 77u));
  EXPECT_EQ(comm.stats().all_reduce_calls - before.all_reduce_calls, 2u);
  EXPECT_GT(comm.stats().wait_seconds, before.wait_seconds);
  EXPECT_EQ(a[0], float(comm.size()));
}

TEST(Broadcast, FromFirstAndLastRank) {
  auto& comm = world();
  const int n = comm.size();
  for (int root : {0, n - 1}) {
    std::vector<int64_t> v(5);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 100 * comm.rank() + int64_t(i);
    comm.broadcast(std::span<int64_t>(v), root);
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i], 100 * root + int64_t(i)) << "root " << root;
    std::vector<float> f(3, float(comm.rank()));
    comm.broadcast(std::span<float>(f), root);
    for (float x : f) EXPECT_EQ(x, float(root));
  }
  std::vector<float> f(1);
  EXPECT_THROW(comm.broadcast(std::span<float>(f), n), Error);
  EXPECT_THROW(comm.broadcast(std::span<float>(f), -1), Error);
}

TEST(Barrier, NoRankLeavesBeforeTheLastArrives) {
  auto& comm = world();
  comm.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  if (comm.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(400));
  comm.barrier();
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(waited, 0.2) << "rank " << comm.rank() << " left the barrier before rank 0 entered";
}

TEST(Split, EvenAndOddRanks) {
  auto& comm = world();
  const int r = comm.rank(), n = comm.size();
  const int color = r % 2;
  auto sub = comm.split(color, r);
  ASSERT_NE(sub, nullptr);
  const int expected_size = color == 0 ? (n + 1) / 2 : n / 2;
  EXPECT_EQ(sub->size(), expected_size);
  EXPECT_EQ(sub->rank(), r / 2);
  EXPECT_EQ(sub->name(), "mpi");
  EXPECT_EQ(sub->timeout(), comm.timeout());
  int32_t expected_sum = 0;
  for (int q = color; q < n; q += 2) expected_sum += q;
  std::vector<int32_t> v = {r};
  sub->all_reduce(std::span<int32_t>(v), ReduceOp::kSum);
  EXPECT_EQ(v[0], expected_sum);
  // Key orders the ranks: reversed keys reverse the order.
  auto reversed = comm.split(color, -r);
  EXPECT_EQ(reversed->rank(), expected_size - 1 - r / 2);
  EXPECT_THROW(comm.split(-1, r), Error);
}

// Each rank's gradient element i is rank*1000 + i: the sum is exact in float.
std::vector<float> rank_grads(int rank, size_t n) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = float(rank * 1000 + int(i));
  return g;
}

void expect_summed(const std::vector<float>& g, int n_ranks) {
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(g[i], float(rank_sum(n_ranks) * 1000 + int64_t(n_ranks) * int64_t(i)))
        << "element " << i;
  }
}

class GradReducerMpi : public ::testing::TestWithParam<bool> {};

TEST_P(GradReducerMpi, RangesOf137InBucketsOf300) {
  const bool overlap = GetParam();
  auto& comm = world();
  auto g = rank_grads(comm.rank(), 1000);
  const CommStats before = comm.stats();
  GradReducer reducer(comm, g, 300, overlap);
  reducer.begin_step();
  size_t end = 1000;
  while (end > 0) {
    const size_t begin = end >= 137 ? end - 137 : 0;
    reducer.mark_ready(begin, end - begin);
    end = begin;
  }
  reducer.finish();
  expect_summed(g, comm.size());
  EXPECT_EQ(reducer.n_buckets_last_step(), 3u);
  EXPECT_EQ(comm.stats().all_reduce_bytes - before.all_reduce_bytes, 4u * 1000u);
  EXPECT_EQ(comm.stats().all_reduce_calls - before.all_reduce_calls, 3u);
}

TEST_P(GradReducerMpi, GapsNeverMarked) {
  const bool overlap = GetParam();
  auto& comm = world();
  auto g = rank_grads(comm.rank(), 1000);
  const CommStats before = comm.stats();
  GradReducer reducer(comm, g, 300, overlap);
  reducer.begin_step();
  reducer.mark_ready(863, 137);
  reducer.mark_ready(452, 137);
  reducer.mark_ready(100, 50);
  reducer.finish();
  expect_summed(g, comm.size());
  EXPECT_EQ(comm.stats().all_reduce_bytes - before.all_reduce_bytes, 4u * 1000u);
  // Never marked at all: the whole buffer, one step after another.
  auto h = rank_grads(comm.rank(), 1000);
  GradReducer plain(comm, h, 300, overlap);
  plain.finish();
  expect_summed(h, comm.size());
}

INSTANTIATE_TEST_SUITE_P(OverlapOnAndOff, GradReducerMpi, ::testing::Bool());

TEST(Timeout, WaitThrowsWhileAnotherRankIsLateThenCompletes) {
  auto& comm = world();
  std::vector<float> v = {1.0f, float(comm.rank())};
  if (comm.rank() == 0) {
    auto work = comm.all_reduce_async(std::span<float>(v), ReduceOp::kSum);
    try {
      work->wait(std::chrono::milliseconds(300));
      ADD_FAILURE() << "wait returned although the other ranks had not joined";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("all-reduce of 2 float32 timed out after 0.3 s on rank 0"),
                std::string::npos)
          << what;
      EXPECT_NE(what.find(comm.hostname()), std::string::npos) << what;
    }
    EXPECT_FALSE(work->test());
    work->wait(std::chrono::seconds(60));  // the late ranks join: it completes
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    comm.all_reduce(std::span<float>(v), ReduceOp::kSum);
  }
  EXPECT_EQ(v[0], float(comm.size()));
  EXPECT_EQ(v[1], float(rank_sum(comm.size())));
}

// After a timeout the error names the ranks that do not answer a ping (the last rank, busy outside
// MPI here), not those that wait in the same collective (they answer while they poll).
TEST(Timeout, NamesTheRankThatDoesNotAnswer) {
  auto& comm = world();
  const int last = comm.size() - 1;
  std::vector<float> v = {1.0f};
  if (comm.rank() == 0) {
    auto work = comm.all_reduce_async(std::span<float>(v), ReduceOp::kSum);
    try {
      work->wait(std::chrono::milliseconds(300));
      ADD_FAILURE() << "wait returned although the last rank had not joined";
    } catch (const Error& e) {
      const std::string what = e.what();
      const std::string silent = "could not reach rank " + std::to_string(last) + " (host " +
                                 comm.host_of(last) + ") (no answer to a ping within 0.3 s)";
      EXPECT_NE(what.find(silent), std::string::npos) << what;
      for (int r = 1; r < last; ++r)
        EXPECT_EQ(what.find("rank " + std::to_string(r) + " (host"), std::string::npos) << what;
    }
    work->wait(std::chrono::seconds(60));
  } else if (comm.rank() == last) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    comm.all_reduce(std::span<float>(v), ReduceOp::kSum);
  } else {
    comm.all_reduce(std::span<float>(v), ReduceOp::kSum);
  }
  EXPECT_EQ(v[0], float(comm.size()));
}

TEST(Hosts, EveryRankKnowsEveryHostName) {
  auto& comm = world();
  EXPECT_EQ(comm.host_of(comm.rank()), comm.hostname());
  for (int r = 0; r < comm.size(); ++r) EXPECT_FALSE(comm.host_of(r).empty()) << r;
}

}  // namespace
}  // namespace lora::comm

int main(int argc, char** argv) {
  lora::comm::MpiRuntime runtime;
  ::testing::InitGoogleTest(&argc, argv);
  int any_failed = 0;
  {
    lora::comm::MpiCommunicator world;
    world.set_timeout(std::chrono::seconds(60));
    lora::comm::g_world = &world;
    lora::testing::print_failures_only_unless_rank_zero(world.rank());
    int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    lora::comm::g_world = nullptr;
  }
  return any_failed;
}
