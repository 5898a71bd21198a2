// NcclCommunicator across ranks under mpirun, bootstrapped through the MPI world (the path the
// trainer takes): all-reduce of device buffers (sum of ranks worked out by hand: size*(size-1)/2,
// average, max, min; float, double, int32, int64; 4 Mi floats in one call), broadcast from the
// last rank, barrier, split by rank parity, and a collective that waits on an event from another
// stream (cudaStreamWaitEvent, never a host wait) and so sees the data that stream wrote.
//
// Each rank uses the device pick_local_device gives it. When the node has fewer GPUs than ranks
// (two ranks on a one-GPU machine), ranks share a device; NCCL refuses two ranks of one
// communicator on one GPU of one host ("Duplicate GPU detected"), so each rank then gets its own
// NCCL_HOSTID and NCCL's shared-memory and peer-to-peer transports are turned off: NCCL takes the
// ranks for separate hosts and connects them through its socket transport on the loopback
// interface. Those variables are set before the first NCCL call (any already set are left alone).
//
// All ranks agree (an MPI all-reduce) on whether every rank has a usable device before NCCL is
// touched: without one every test skips with the reason, or fails under LORA_REQUIRE_CUDA=1.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "launch/environment.h"
#include "tests/common/cuda_device.h"
#include "tests/common/rank_printer.h"

#ifdef LORA_WITH_NCCL
#include "comm/nccl.h"
#endif

namespace lora::comm {
namespace {

#ifdef LORA_WITH_NCCL

std::string g_no_device;   // why the tests cannot run here (empty when they can)
std::string g_init_error;  // NCCL initialisation failed with a device present
NcclCommunicator* g_nccl = nullptr;
cudaStream_t g_stream = nullptr;

class NcclRanks : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_init_error.empty()) GTEST_FAIL() << g_init_error;
    if (g_nccl == nullptr) LORA_CUDA_SKIP_OR_FAIL(g_no_device);
  }
  NcclCommunicator& comm() { return *g_nccl; }

  template <typename T>
  static cuda::DeviceBuffer<T> upload(const std::vector<T>& host) {
    cuda::DeviceBuffer<T> d(host.size());
    d.copy_from_host(host.data(), g_stream);
    return d;
  }
  template <typename T>
  static std::vector<T> download(const cuda::DeviceBuffer<T>& d) {
    std::vector<T> host(d.size());
    d.copy_to_host(host.data(), g_stream);
    return host;
  }
};

int64_t rank_sum(int n) { return int64_t(n) * (n - 1) / 2; }

template <typename T>
class NcclAllReduceSum : public NcclRanks {};
using SumTypes = ::testing::Types<float, double, int32_t, int64_t>;
TYPED_TEST_SUITE(NcclAllReduceSum, SumTypes);

TYPED_TEST(NcclAllReduceSum, SumOfRanks) {
  using T = TypeParam;
  auto& comm = this->comm();
  const int r = comm.rank(), n = comm.size();
  std::vector<T> v(1001);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(r + 10 * static_cast<int>(i));
  auto d = this->upload(v);
  comm.all_reduce(std::span<T>(d.data(), d.size()), ReduceOp::kSum);
  const auto back = this->download(d);
  for (size_t i = 0; i < back.size(); ++i) {
    ASSERT_EQ(back[i], static_cast<T>(rank_sum(n) + int64_t(n) * 10 * static_cast<int64_t>(i)))
        << "element " << i;
  }
}

TEST_F(NcclRanks, AverageMaxMin) {
  auto& c = comm();
  const int r = c.rank(), n = c.size();
  auto avg = upload(std::vector<float>{float(r), 2.0f * float(r)});
  auto mx = upload(std::vector<int32_t>{r, -r, 5});
  auto mn = upload(std::vector<double>{double(r), -double(r)});
  c.all_reduce(std::span<float>(avg.data(), avg.size()), ReduceOp::kAverage);
  c.all_reduce(std::span<int32_t>(mx.data(), mx.size()), ReduceOp::kMax);
  c.all_reduce(std::span<double>(mn.data(), mn.size()), ReduceOp::kMin);
  const double mean = (n - 1) / 2.0;
  const auto a = download(avg);
  EXPECT_FLOAT_EQ(a[0], float(mean));
  EXPECT_FLOAT_EQ(a[1], float(2 * mean));
  EXPECT_EQ(download(mx), (std::vector<int32_t>{n - 1, 0, 5}));
  EXPECT_EQ(download(mn), (std::vector<double>{0.0, -double(n - 1)}));
}

// 4 Mi floats (16 MiB) in one call; values are small integers times the rank, exact in float.
TEST_F(NcclRanks, LargeAllReduce) {
  auto& c = comm();
  const size_t count = size_t(1) << 22;
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = float(c.rank() + 1) * float(i % 4096);
  auto d = upload(v);
  const CommStats before = c.stats();
  c.all_reduce(std::span<float>(d.data(), count), ReduceOp::kSum);
  EXPECT_EQ(c.stats().all_reduce_bytes - before.all_reduce_bytes, count * sizeof(float));
  const auto back = download(d);
  const float ranks = float(rank_sum(c.size() + 1));  // 1 + 2 + ... + size
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(back[i], ranks * float(i % 4096)) << "element " << i;
  }
}

TEST_F(NcclRanks, BroadcastFromTheLastRankAndBarrier) {
  auto& c = comm();
  const int root = c.size() - 1;
  std::vector<int64_t> v(333);
  for (size_t i = 0; i < v.size(); ++i) v[i] = (int64_t(c.rank()) << 40) + int64_t(i);
  auto d = upload(v);
  c.broadcast(std::span<int64_t>(d.data(), d.size()), root);
  const auto back = download(d);
  for (size_t i = 0; i < back.size(); ++i) {
    ASSERT_EQ(back[i], (int64_t(root) << 40) + int64_t(i)) << "element " << i;
  }
  c.barrier();
  c.barrier();
}

TEST_F(NcclRanks, SplitByParity) {
  auto& c = comm();
  const int color = c.rank() % 2;
  auto sub = c.split(color, c.rank());
  ASSERT_NE(sub, nullptr);
  int expected_size = 0;
  int64_t expected_sum = 0;
  for (int q = 0; q < c.size(); ++q) {
    if (q % 2 == color) {
      ++expected_size;
      expected_sum += q;
    }
  }
  EXPECT_EQ(sub->size(), expected_size);
  EXPECT_EQ(sub->rank(), c.rank() / 2);
  auto d = upload(std::vector<int64_t>{c.rank()});
  sub->all_reduce(std::span<int64_t>(d.data(), 1), ReduceOp::kSum);
  EXPECT_EQ(download(d)[0], expected_sum);
  sub->barrier();
}

// Holds a stream for a while (a host function queued on it).
void CUDART_CB hold_stream(void* milliseconds) {
  std::this_thread::sleep_for(std::chrono::milliseconds(*static_cast<const int*>(milliseconds)));
}

// The trainer's pattern: gradients are written on the compute stream, which records an event; the
// communication stream waits on that event (no host wait) and all-reduces. The compute stream is
// held before its (asynchronous) fill, so a collective that did not wait would reduce the old
// values and the fill would land afterwards.
TEST_F(NcclRanks, AllReduceWaitsForAnEventFromTheComputeStream) {
  static const int kHoldMs = 200;
  auto& c = comm();
  cudaStream_t compute = nullptr;
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  cudaEvent_t ready = nullptr;
  LORA_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  const size_t count = 1 << 16;
  auto d = upload(std::vector<int32_t>(count, -1000));
  LORA_CUDA_CHECK(cudaLaunchHostFunc(compute, hold_stream, const_cast<int*>(&kHoldMs)));
  // Every byte rank + 1: each int32 is (rank + 1) * 0x01010101.
  LORA_CUDA_CHECK(cudaMemsetAsync(d.data(), c.rank() + 1, count * sizeof(int32_t), compute));
  LORA_CUDA_CHECK(cudaEventRecord(ready, compute));
  LORA_CUDA_CHECK(cudaStreamWaitEvent(c.stream(), ready, 0));
  auto work = c.all_reduce_async(std::span<int32_t>(d.data(), count), ReduceOp::kSum);
  c.wait(*work);
  const auto back = download(d);
  const auto expected = int32_t(rank_sum(c.size() + 1) * 0x01010101);
  EXPECT_EQ(back, std::vector<int32_t>(count, expected));
  LORA_CUDA_CHECK(cudaStreamSynchronize(compute));
  cudaEventDestroy(ready);
  cudaStreamDestroy(compute);
}

// Ranks share GPUs: see the file comment. Returns a line for the log, or "" when nothing was set.
std::string share_devices_through_sockets(const LaunchEnv& env, int n_devices) {
  if (env.local_size <= n_devices) return "";
  const std::string host_id = env.hostname + "-rank" + std::to_string(env.world_rank);
  setenv("NCCL_HOSTID", host_id.c_str(), 0);
  setenv("NCCL_SHM_DISABLE", "1", 0);
  setenv("NCCL_P2P_DISABLE", "1", 0);
  setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  setenv("NCCL_NET", "Socket", 0);
  setenv("NCCL_IB_DISABLE", "1", 0);
  return "ranks share " + std::to_string(n_devices) +
         " GPU(s): NCCL_HOSTID per rank, sockets over the loopback interface";
}

#endif  // LORA_WITH_NCCL

TEST(NcclBuild, HasNccl) {
#ifndef LORA_WITH_NCCL
  LORA_CUDA_SKIP_OR_FAIL("this build has no NCCL (libnccl not found at configure time)");
#endif
}

}  // namespace
}  // namespace lora::comm

int main(int argc, char** argv) {
  using namespace lora;
  comm::MpiRuntime runtime;
  ::testing::InitGoogleTest(&argc, argv);
  int any_failed = 0;
  {
    comm::MpiCommunicator world;
    world.set_timeout(std::chrono::seconds(60));
    lora::testing::print_failures_only_unless_rank_zero(world.rank());
#ifdef LORA_WITH_NCCL
    const LaunchEnv env = detect_launch_env();
    std::string why;
    if (cuda_device_available(&why)) {
      const int n_devices = cuda::device_count();
      cuda::set_device(pick_local_device(env, n_devices));
      why = lora::testing::cuda_unusable_reason();
      if (why.empty()) {
        const std::string shared = comm::share_devices_through_sockets(env, n_devices);
        if (!shared.empty() && world.rank() == 0) {
          std::printf("mpi_test_nccl: %s\n", shared.c_str());
        }
      }
    }
    // Every rank or none: a rank alone in NCCL initialisation would wait for the others.
    int32_t usable = why.empty() ? 1 : 0;
    world.all_reduce(std::span<int32_t>(&usable, 1), comm::ReduceOp::kMin);
    if (usable == 0 && why.empty()) why = "another rank of the job has no usable CUDA device";
    std::unique_ptr<comm::NcclCommunicator> nccl;
    if (usable != 0) {
      LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&comm::g_stream, cudaStreamNonBlocking));
      try {
        nccl = std::make_unique<comm::NcclCommunicator>(world, comm::g_stream);
        comm::g_nccl = nccl.get();
      } catch (const std::exception& e) {
        comm::g_init_error = std::string("NCCL initialisation failed: ") + e.what();
      }
    } else {
      comm::g_no_device = why;
    }
#endif
    const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#ifdef LORA_WITH_NCCL
    comm::g_nccl = nullptr;
    nccl.reset();
    if (comm::g_stream != nullptr) cudaStreamDestroy(comm::g_stream);
#endif
  }
  return any_failed;
}
