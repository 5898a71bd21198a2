// NCCL communicator: the Communicator interface on device buffers (CUDA builds with NCCL only).
//
// Construction is collective over a bootstrap communicator (usually the MPI world, but any
// Communicator works, LocalCommunicator included): rank 0 creates the NCCL unique id and
// broadcasts it as kUint8 bytes through the bootstrap's own broadcast(); every rank then joins
// with the bootstrap's rank and size. The calling thread's current CUDA device must already be
// the one this rank uses (cuda::select_device). The bootstrap must outlive this communicator:
// abort() ends the job through it.
//
// Every collective is enqueued on the communication stream given at construction (not owned),
// in place on device memory. all_reduce_async records an event after the collective; its Work
// polls that event and ncclCommGetAsyncError, and on an NCCL error or when the timeout passes it
// aborts the NCCL communicator (so the other ranks' collectives fail instead of hanging) and
// throws lora::Error naming the operation, the rank and the host. The communicator is created
// non-blocking, so initialisation, split and finalisation are polled with the same timeout.
// kAverage uses ncclAvg (float32/float64 only, as the MPI backend). broadcast() and barrier()
// block the calling thread until done (barrier is an all-reduce of one int32). After an abort
// every further call throws.
//
// Streams: with set_producer_stream(compute), every collective is ordered after the work enqueued
// on `compute` when it is called (an event recorded there, cudaStreamWaitEvent on the
// communication stream: the host never waits for it), so a reducer may start an all-reduce of
// gradients whose kernels are still running. order_before(consumer) is the other direction: the
// consumer stream (the optimizer's) waits on the device for every collective enqueued so far.
#pragma once

#ifdef LORA_WITH_NCCL

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace lora::comm {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`; inherits its timeout. `stream` carries every collective.
  NcclCommunicator(Communicator& bootstrap, cudaStream_t stream);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  std::string name() const override { return "nccl"; }
  cudaStream_t stream() const;
  ncclComm_t handle() const;

  using Communicator::all_reduce_async;  // keep the typed span overloads visible
  using Communicator::broadcast;
  std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType type,
                                         ReduceOp op) override;
  void broadcast(void* data, size_t count, DType type, int root) override;
  void barrier() override;
  // ncclCommSplit; color must be >= 0. The new communicator shares this one's stream, timeout
  // and bootstrap.
  std::unique_ptr<Communicator> split(int color, int key) override;
  // Orders later collectives after the work enqueued on `producer` at their call (null: none).
  void set_producer_stream(cudaStream_t producer);
  bool order_before(CUstream_st* consumer) override;
  // Aborts the NCCL communicator, then ends the job through the bootstrap's abort().
  [[noreturn]] void abort(int exit_code) override;

  struct State;  // shared with pending Work handles, which may outlive the communicator

 private:
  NcclCommunicator(std::shared_ptr<State> state, Communicator* bootstrap);
  std::shared_ptr<State> state_;
  Communicator* bootstrap_;
};

}  // namespace lora::comm

#endif  // LORA_WITH_NCCL
