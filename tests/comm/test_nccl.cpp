// NcclCommunicator at world size 1 (bootstrapped through a LocalCommunicator): an all-reduce of a
// device buffer equals the buffer (sum and average of one rank), broadcast from root 0 keeps it,
// barrier and split work, stats count bytes like the other backends, and bad arguments throw; with
// a producer stream an all-reduce waits on the device for that stream's work, and order_before
// makes a consumer stream wait for the all-reduces (the chain the trainer's gradients take).
// Several ranks: mpi_test_nccl.cpp. Skips without a device (fails under LORA_REQUIRE_CUDA=1).
#include <gtest/gtest.h>

#include "tests/common/cuda_device.h"

#ifdef LORA_WITH_CUDA

#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/rng.h"

#ifdef LORA_WITH_NCCL
#include "comm/nccl.h"
#endif

namespace lora::comm {
namespace {

#ifdef LORA_WITH_NCCL

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    LORA_CUDA_DEVICE_OR_SKIP();
    cuda::select_device(0);
    LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    bootstrap_.set_timeout(std::chrono::seconds(60));
    comm_ = std::make_unique<NcclCommunicator>(bootstrap_, stream_);
  }
  void TearDown() override {
    comm_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  static std::vector<float> values(size_t n, uint64_t stream) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = normal01(7, stream, i);
    return v;
  }

  LocalCommunicator bootstrap_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(Nccl, WorldOfOne) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_EQ(comm_->name(), "nccl");
  EXPECT_EQ(comm_->stream(), stream_);
  EXPECT_EQ(comm_->timeout(), std::chrono::milliseconds(std::chrono::seconds(60)));
}

TEST_F(Nccl, AllReduceSumAndAverageOfOneRankIsIdentity) {
  const size_t n = 10007;
  const auto host = values(n, 1);
  cuda::DeviceBuffer<float> buf(n);
  for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kAverage, ReduceOp::kMax}) {
    buf.copy_from_host(host.data(), stream_);
    auto work = comm_->all_reduce_async(std::span<float>(buf.data(), n), op);
    comm_->wait(*work);
    EXPECT_TRUE(work->test());
    std::vector<float> back(n);
    buf.copy_to_host(back.data(), stream_);
    EXPECT_EQ(back, host) << "op " << static_cast<int>(op);
  }
  EXPECT_EQ(comm_->stats().all_reduce_calls, 3u);
  EXPECT_EQ(comm_->stats().all_reduce_bytes, 3u * n * sizeof(float));
  EXPECT_GE(comm_->stats().wait_seconds, 0.0);
}

TEST_F(Nccl, AllReduceInt64AndEmpty) {
  const std::vector<int64_t> host = {-3, 0, 1LL << 40, 17};
  cuda::DeviceBuffer<int64_t> buf(host.size());
  buf.copy_from_host(host.data(), stream_);
  comm_->all_reduce(std::span<int64_t>(buf.data(), host.size()), ReduceOp::kSum);
  std::vector<int64_t> back(host.size());
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, host);
  auto work = comm_->all_reduce_async(buf.data(), 0, DType::kInt64, ReduceOp::kSum);
  EXPECT_TRUE(work->test());
  EXPECT_EQ(comm_->stats().all_reduce_calls, 2u);
  EXPECT_EQ(comm_->stats().all_reduce_bytes, host.size() * sizeof(int64_t));
  // Average of integers is refused, as in the MPI backend.
  EXPECT_THROW(comm_->all_reduce_async(buf.data(), host.size(), DType::kInt64, ReduceOp::kAverage),
               Error);
  EXPECT_THROW(comm_->all_reduce_async(nullptr, 4, DType::kFloat32, ReduceOp::kSum), Error);
}

TEST_F(Nccl, BroadcastBarrierSplit) {
  const size_t n = 333;
  const auto host = values(n, 2);
  cuda::DeviceBuffer<float> buf(n);
  buf.copy_from_host(host.data(), stream_);
  comm_->broadcast(std::span<float>(buf.data(), n), 0);
  std::vector<float> back(n);
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, host);
  EXPECT_THROW(comm_->broadcast(buf.data(), n, DType::kFloat32, 1), Error);
  EXPECT_EQ(comm_->stats().all_reduce_calls, 0u);  // broadcast is not an all-reduce

  comm_->barrier();

  EXPECT_THROW(comm_->split(-1, 0), Error);
  auto sub = comm_->split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->name(), "nccl");
  sub->all_reduce(std::span<float>(buf.data(), n), ReduceOp::kSum);
  buf.copy_to_host(back.data(), stream_);
  EXPECT_EQ(back, host);
  EXPECT_EQ(sub->stats().all_reduce_calls, 1u);
  sub->barrier();
}

void CUDART_CB hold_stream(void* milliseconds) {
  std::this_thread::sleep_for(std::chrono::milliseconds(*static_cast<const int*>(milliseconds)));
}

// The producer stream is held, then fills the buffer; the all-reduce (identity at one rank) is
// enqueued right away, and a consumer stream ordered after it copies the buffer. The copy sees the
// fill only if the all-reduce waited for the producer and the consumer waited for the all-reduce;
// the host never waits until it reads the copy.
TEST_F(Nccl, ProducerAndConsumerStreamsAreOrderedOnTheDevice) {
  static const int kHoldMs = 300;
  const size_t n = size_t(1) << 20;
  cudaStream_t producer = nullptr, consumer = nullptr;
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking));
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking));
  {
    cuda::DeviceBuffer<float> buf(n), out(n);
    const std::vector<float> ones(n, 1.0f);
    buf.copy_from_host(ones.data(), stream_);
    out.copy_from_host(ones.data(), stream_);
    comm_->set_producer_stream(producer);
    LORA_CUDA_CHECK(cudaLaunchHostFunc(producer, hold_stream, const_cast<int*>(&kHoldMs)));
    LORA_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0x3f, buf.size_bytes(), producer));
    auto work = comm_->all_reduce_async(std::span<float>(buf.data(), n), ReduceOp::kSum);
    EXPECT_TRUE(comm_->order_before(consumer));
    LORA_CUDA_CHECK(cudaMemcpyAsync(out.data(), buf.data(), buf.size_bytes(),
                                    cudaMemcpyDeviceToDevice, consumer));
    std::vector<float> back(n);
    LORA_CUDA_CHECK(cudaMemcpyAsync(back.data(), out.data(), out.size_bytes(),
                                    cudaMemcpyDeviceToHost, consumer));
    LORA_CUDA_CHECK(cudaStreamSynchronize(consumer));
    float pattern = 0.0f;
    const uint32_t pattern_bits = 0x3f3f3f3fu;  // each float after cudaMemset with byte 0x3f
    std::memcpy(&pattern, &pattern_bits, sizeof(pattern));
    EXPECT_EQ(back, std::vector<float>(n, pattern))
        << "the consumer read the buffer before the producer's fill and the all-reduce";
    comm_->wait(*work);
    comm_->set_producer_stream(nullptr);
  }
  cudaStreamDestroy(consumer);
  cudaStreamDestroy(producer);
}

#else  // !LORA_WITH_NCCL

TEST(Nccl, BuiltWithoutNccl) {
  LORA_CUDA_SKIP_OR_FAIL("this build has no NCCL (libnccl not found at configure time)");
}

#endif  // LORA_WITH_NCCL

}  // namespace
}  // namespace lora::comm

#else  // !LORA_WITH_CUDA

TEST(Nccl, BuiltWithoutCuda) {
  LORA_CUDA_SKIP_OR_FAIL(lora::testing::cuda_not_built_reason());
}

#endif  // LORA_WITH_CUDA
