// The communicator: what the trainer needs from a collective library, and nothing more.
//
// Contract: every rank of a communicator calls the same collectives in the same order with the same
// counts and types (as MPI and NCCL require); a rank that skips or reorders one deadlocks the others
// until the timeout ends the job. Counts are element counts of the given type, never bytes.
//
// Implementations: LocalCommunicator (one process, no MPI needed), MpiCommunicator (comm/mpi.h),
// NcclCommunicator (device buffers, CUDA builds). Every all-reduce is counted in stats(): bytes
// sent into all-reduce, and time spent blocked in wait().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

// A CUDA stream (cudaStream_t), declared without the CUDA headers: comm/ builds without CUDA.
struct CUstream_st;

namespace lora::comm {

enum class DType { kFloat32, kFloat64, kInt32, kInt64, kUint8 };
enum class ReduceOp { kSum, kAverage, kMax, kMin };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "float64", "int32", "int64", "uint8"

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::kFloat32; }
template <>
constexpr DType dtype_of<double>() { return DType::kFloat64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::kInt32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::kInt64; }
template <>
constexpr DType dtype_of<uint8_t>() { return DType::kUint8; }

struct CommStats {
  uint64_t all_reduce_bytes = 0;   // payload bytes passed to all-reduce (count * sizeof(T))
  uint64_t all_reduce_calls = 0;
  double wait_seconds = 0.0;       // time callers spent blocked waiting on communication
};

// A pending collective. wait() blocks until it completes or the timeout passes; on timeout or
// error it throws lora::Error naming the operation (the launcher then ends the whole job).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  virtual bool test() = 0;  // true once complete (never blocks)
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "local", "mpi", "nccl"

  // In-place all-reduce of count elements. The returned Work must be waited before the buffer is
  // read or written again.
  virtual std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType type,
                                                 ReduceOp op) = 0;
  virtual void broadcast(void* data, size_t count, DType type, int root) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a new communicator, ordered by key (MPI_Comm_split semantics).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends every rank of the job (MPI_Abort or equivalent). Never returns.
  [[noreturn]] virtual void abort(int exit_code) = 0;
  // Device communicators (NCCL): makes `consumer` wait, on the device, for every collective
  // enqueued so far, without blocking the host, and returns true; the pending Work must still be
  // waited or tested later to see errors and timeouts. Host communicators return false: their
  // Work must be waited before the buffer is used.
  virtual bool order_before(CUstream_st* consumer) {
    (void)consumer;
    return false;
  }

  CommStats& stats() { return stats_; }
  const CommStats& stats() const { return stats_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  // Typed conveniences: element counts come from the span, never from byte sizes.
  template <typename T>
  std::unique_ptr<Work> all_reduce_async(std::span<T> data, ReduceOp op) {
    return all_reduce_async(data.data(), data.size(), dtype_of<T>(), op);
  }
  template <typename T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    auto work = all_reduce_async(data, op);
    wait(*work);
  }
  template <typename T>
  void broadcast(std::span<T> data, int root) {
    broadcast(data.data(), data.size(), dtype_of<T>(), root);
  }
  // Waits with this communicator's timeout and adds the blocked time to stats().wait_seconds.
  void wait(Work& work);

 protected:
  CommStats stats_;
  std::chrono::milliseconds timeout_{std::chrono::minutes(5)};
};

// One process: collectives are identities (sum of one rank is itself).
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  using Communicator::all_reduce_async;  // keep the typed span overloads visible
  using Communicator::broadcast;
  std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType type,
                                         ReduceOp op) override;
  void broadcast(void*, size_t, DType, int root) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(int exit_code) override;
};

}  // namespace lora::comm
