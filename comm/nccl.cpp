// NcclCommunicator (see comm/nccl.h): NCCL collectives on device buffers, enqueued on one
// communication stream, each waited by polling an event and the communicator's async error with
// a timeout, so a failed or missing peer ends in lora::Error (and an aborted NCCL communicator)
// rather than a hang. Host code only: it compiles as C++20 with the other comm sources, and to an
// empty unit in builds without NCCL.
#include "comm/nccl.h"

#ifdef LORA_WITH_NCCL

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <utility>

#include "core/cuda_runtime.h"
#include "core/error.h"

namespace lora::comm {

using Clock = std::chrono::steady_clock;

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  int rank = 0;
  int size = 1;
  std::string host;
  bool aborted = false;
  int32_t* barrier_value = nullptr;  // one int32 in device memory
  cudaStream_t producer = nullptr;   // collectives wait for this stream's work (may be null)
  cudaEvent_t producer_done = nullptr;  // recorded on `producer` before each collective
  cudaEvent_t comm_done = nullptr;      // recorded on `stream` by order_before
  std::chrono::milliseconds finalize_timeout{std::chrono::minutes(1)};

  std::string where() const { return detail::concat("rank ", rank, " of ", size, " (host ", host, ")"); }

  // Aborts the NCCL communicator once; later calls do nothing.
  void abort_comm() noexcept {
    if (comm != nullptr && !aborted) ncclCommAbort(comm);
    aborted = true;
  }

  ~State() {
    if (comm != nullptr && !aborted) {
      // Flush outstanding work (bounded), then free; abort instead if that fails or stalls.
      ncclResult_t r = ncclCommFinalize(comm);
      const auto deadline = Clock::now() + finalize_timeout;
      while (r == ncclSuccess || r == ncclInProgress) {
        ncclResult_t async = ncclSuccess;
        r = ncclCommGetAsyncError(comm, &async);
        if (r != ncclSuccess) break;
        r = async;
        if (async != ncclInProgress || Clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      if (r == ncclSuccess) {
        ncclCommDestroy(comm);
      } else {
        ncclCommAbort(comm);
      }
    }
    if (barrier_value != nullptr) cudaFree(barrier_value);
    if (producer_done != nullptr) cudaEventDestroy(producer_done);
    if (comm_done != nullptr) cudaEventDestroy(comm_done);
  }
};

namespace {

using State = NcclCommunicator::State;

std::string local_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat64: return ncclFloat64;
    case DType::kInt32: return ncclInt32;
    case DType::kInt64: return ncclInt64;
    case DType::kUint8: return ncclUint8;
  }
  throw Error(detail::concat("NCCL: unknown dtype ", static_cast<int>(t)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAverage: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  throw Error(detail::concat("NCCL: unknown reduce op ", static_cast<int>(op)));
}

// Aborts the communicator and throws lora::Error naming the operation, the rank and the host.
[[noreturn]] void fail(State& s, const std::string& what, const std::string& why) {
  s.abort_comm();
  throw Error(detail::concat("NCCL ", what, " on ", s.where(), " failed: ", why,
                             "; the NCCL communicator was aborted"));
}

std::string nccl_error_text(const State& s, ncclResult_t r) {
  const char* last = s.comm != nullptr ? ncclGetLastError(s.comm) : nullptr;
  return detail::concat(ncclGetErrorString(r), " (", static_cast<int>(r), ")",
                        (last != nullptr && last[0] != '\0') ? std::string(": ") + last : std::string());
}

// Polls the communicator's async state until it leaves ncclInProgress (non-blocking
// communicators finish initialisation, split and enqueueing in the background).
void wait_ready(State& s, ncclComm_t comm, std::chrono::milliseconds timeout, const std::string& what) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &async);
    if (r != ncclSuccess) fail(s, what, "ncclCommGetAsyncError: " + nccl_error_text(s, r));
    if (async == ncclSuccess) return;
    if (async != ncclInProgress) fail(s, what, nccl_error_text(s, async));
    if (Clock::now() > deadline) {
      fail(s, what, detail::concat("not ready after ", timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// The result of an NCCL call on a non-blocking communicator: in progress is waited, any other
// failure aborts and throws.
void check_enqueue(State& s, ncclResult_t r, std::chrono::milliseconds timeout,
                   const std::string& what) {
  if (r == ncclSuccess) return;
  if (r == ncclInProgress) {
    wait_ready(s, s.comm, timeout, what);
    return;
  }
  fail(s, what, nccl_error_text(s, r));
}

void check_usable(const State& s, const char* what) {
  if (s.aborted) {
    throw Error(detail::concat("NCCL ", what, " on ", s.where(),
                               ": the communicator was aborted by an earlier failure"));
  }
  int device = -1;
  LORA_CUDA_CHECK(cudaGetDevice(&device));
  LORA_CHECK(device == s.device, "NCCL ", what, " on ", s.where(), ": current CUDA device ", device,
             " is not the communicator's device ", s.device);
}

class DoneWork final : public Work {
 public:
  void wait(std::chrono::milliseconds) override {}
  bool test() override { return true; }
};

// A collective enqueued on the communication stream, followed by `event`.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<State> state, cudaEvent_t event, std::string what)
      : state_(std::move(state)), event_(event), what_(std::move(what)) {}
  ~NcclWork() override {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;

  bool test() override { return poll(); }

  void wait(std::chrono::milliseconds timeout) override {
    const auto deadline = Clock::now() + timeout;
    while (!poll()) {
      if (Clock::now() > deadline) {
        fail(*state_, what_, detail::concat("timed out after ", timeout.count(), " ms"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

 private:
  bool poll() {
    if (done_) return true;
    State& s = *state_;
    if (s.aborted) {
      throw Error(detail::concat("NCCL ", what_, " on ", s.where(),
                                 ": the communicator was aborted before it completed"));
    }
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaSuccess) {
      done_ = true;
      return true;
    }
    if (e != cudaErrorNotReady) {
      fail(s, what_, detail::concat("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
    }
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(s.comm, &async);
    if (r != ncclSuccess) fail(s, what_, "ncclCommGetAsyncError: " + nccl_error_text(s, r));
    if (async != ncclSuccess && async != ncclInProgress) fail(s, what_, nccl_error_text(s, async));
    return false;
  }

  std::shared_ptr<State> state_;
  cudaEvent_t event_ = nullptr;
  std::string what_;
  bool done_ = false;
};

// Orders the communication stream after the producer stream's work so far (no host wait). An
// event re-recorded for every collective is safe: cudaStreamWaitEvent waits for the record that
// precedes it.
void wait_for_producer(State& s, const std::string& what) {
  if (s.producer == nullptr) return;
  cudaError_t e = cudaEventRecord(s.producer_done, s.producer);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(s.stream, s.producer_done, 0);
  if (e != cudaSuccess) {
    fail(s, what, detail::concat("ordering after the producer stream: ", cudaGetErrorName(e)));
  }
}

// Records an event on the communication stream after the enqueued collective.
std::unique_ptr<NcclWork> track(const std::shared_ptr<State>& state, std::string what) {
  cudaEvent_t event = nullptr;
  LORA_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t e = cudaEventRecord(event, state->stream);
  if (e != cudaSuccess) {
    cudaEventDestroy(event);
    fail(*state, what, detail::concat("cudaEventRecord: ", cudaGetErrorName(e)));
  }
  return std::make_unique<NcclWork>(state, event, std::move(what));
}

// The int32 the barrier all-reduces, in device memory, set to zero on the communication stream
// before any collective can read it (a sum of zeros stays zero, so it never needs resetting).
void alloc_barrier_word(State& s) {
  LORA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&s.barrier_value), sizeof(int32_t)));
  LORA_CUDA_CHECK(cudaMemsetAsync(s.barrier_value, 0, sizeof(int32_t), s.stream));
}

std::shared_ptr<State> new_state(ncclComm_t comm, cudaStream_t stream, std::string host) {
  auto s = std::make_shared<State>();
  s->comm = comm;
  s->stream = stream;
  s->host = std::move(host);
  LORA_CUDA_CHECK(cudaGetDevice(&s->device));
  return s;
}

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, cudaStream_t stream)
    : bootstrap_(&bootstrap) {
  set_timeout(bootstrap.timeout());
  state_ = new_state(nullptr, stream, local_hostname());
  State& s = *state_;
  s.rank = bootstrap.rank();
  s.size = bootstrap.size();
  s.finalize_timeout = timeout();

  ncclUniqueId id{};
  if (s.rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
      throw Error(detail::concat("NCCL ncclGetUniqueId on ", s.where(), " failed: ",
                                 ncclGetErrorString(r)));
    }
  }
  bootstrap.broadcast(&id, sizeof(id), DType::kUint8, 0);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = ncclCommInitRankConfig(&s.comm, s.size, id, s.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) fail(s, "initialisation", nccl_error_text(s, r));
  wait_ready(s, s.comm, timeout(), "initialisation");
  alloc_barrier_word(s);
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<State> state, Communicator* bootstrap)
    : state_(std::move(state)), bootstrap_(bootstrap) {}

NcclCommunicator::~NcclCommunicator() {
  if (state_ != nullptr) state_->finalize_timeout = timeout();
}

int NcclCommunicator::rank() const { return state_->rank; }
int NcclCommunicator::size() const { return state_->size; }
cudaStream_t NcclCommunicator::stream() const { return state_->stream; }
ncclComm_t NcclCommunicator::handle() const { return state_->comm; }

std::unique_ptr<Work> NcclCommunicator::all_reduce_async(void* data, size_t count, DType type,
                                                         ReduceOp op) {
  LORA_CHECK(data != nullptr || count == 0, "all-reduce of ", count, " elements from a null buffer");
  const bool is_float = type == DType::kFloat32 || type == DType::kFloat64;
  LORA_CHECK(op != ReduceOp::kAverage || is_float,
             "average all-reduce needs float32 or float64, got ", dtype_name(type));
  State& s = *state_;
  check_usable(s, "all-reduce");
  stats_.all_reduce_bytes += count * dtype_size(type);
  stats_.all_reduce_calls += 1;
  // Every rank passes the same count (the communicator's contract), so every rank skips NCCL.
  if (count == 0) return std::make_unique<DoneWork>();
  std::string what = detail::concat("all-reduce of ", count, " ", dtype_name(type));
  wait_for_producer(s, what);
  check_enqueue(s, ncclAllReduce(data, data, count, nccl_type(type), nccl_op(op), s.comm, s.stream),
                timeout(), what);
  return track(state_, std::move(what));
}

void NcclCommunicator::broadcast(void* data, size_t count, DType type, int root) {
  LORA_CHECK(root >= 0 && root < state_->size, "broadcast root ", root,
             " outside a communicator of size ", state_->size);
  LORA_CHECK(data != nullptr || count == 0, "broadcast of ", count, " elements from a null buffer");
  State& s = *state_;
  check_usable(s, "broadcast");
  if (count == 0) return;
  std::string what = detail::concat("broadcast of ", count, " ", dtype_name(type), " from root ", root);
  wait_for_producer(s, what);
  check_enqueue(s, ncclBroadcast(data, data, count, nccl_type(type), root, s.comm, s.stream),
                timeout(), what);
  auto work = track(state_, std::move(what));
  wait(*work);
}

void NcclCommunicator::barrier() {
  State& s = *state_;
  check_usable(s, "barrier");
  check_enqueue(s, ncclAllReduce(s.barrier_value, s.barrier_value, 1, ncclInt32, ncclSum, s.comm,
                                 s.stream),
                timeout(), "barrier");
  auto work = track(state_, "barrier");
  wait(*work);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  LORA_CHECK(color >= 0, "split color must be >= 0, got ", color);
  State& s = *state_;
  check_usable(s, "split");
  ncclComm_t sub = nullptr;
  const ncclResult_t r = ncclCommSplit(s.comm, color, key, &sub, nullptr);  // inherits the config
  if (r != ncclSuccess && r != ncclInProgress) fail(s, "split", nccl_error_text(s, r));
  auto child = new_state(sub, s.stream, s.host);
  child->rank = s.rank;  // for messages until the real values are known
  child->size = s.size;
  wait_ready(*child, sub, timeout(), "split");
  int sub_rank = 0;
  int sub_size = 0;
  check_enqueue(*child, ncclCommUserRank(sub, &sub_rank), timeout(), "split (rank)");
  check_enqueue(*child, ncclCommCount(sub, &sub_size), timeout(), "split (size)");
  child->rank = sub_rank;
  child->size = sub_size;
  child->finalize_timeout = timeout();
  alloc_barrier_word(*child);
  auto result = std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(child), bootstrap_));
  result->set_timeout(timeout());
  return result;
}

void NcclCommunicator::set_producer_stream(cudaStream_t producer) {
  State& s = *state_;
  check_usable(s, "set_producer_stream");
  if (producer != nullptr && s.producer_done == nullptr) {
    LORA_CUDA_CHECK(cudaEventCreateWithFlags(&s.producer_done, cudaEventDisableTiming));
  }
  s.producer = producer;
}

bool NcclCommunicator::order_before(CUstream_st* consumer) {
  LORA_CHECK(consumer != nullptr, "order_before needs a stream");
  State& s = *state_;
  check_usable(s, "order_before");
  if (s.comm_done == nullptr) {
    LORA_CUDA_CHECK(cudaEventCreateWithFlags(&s.comm_done, cudaEventDisableTiming));
  }
  cudaError_t e = cudaEventRecord(s.comm_done, s.stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(consumer, s.comm_done, 0);
  if (e != cudaSuccess) {
    fail(s, "order_before", detail::concat("ordering the consumer stream: ", cudaGetErrorName(e)));
  }
  return true;
}

void NcclCommunicator::abort(int exit_code) {
  state_->abort_comm();
  bootstrap_->abort(exit_code);
  std::_Exit(exit_code);  // abort() does not return; never let this one
}

}  // namespace lora::comm

#endif  // LORA_WITH_NCCL
