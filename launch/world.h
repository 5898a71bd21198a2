// The process's place in the job: detects how it was launched (mpirun, srun or a plain process),
// starts MPI when there is more than one rank, and hands out the communicator the config asks for
// (comm.backend: auto picks MPI when the world has more than one rank, local otherwise). With
// comm.backend nccl this is the control communicator (MPI, or local for one process); the trainer
// builds the NCCL gradient communicator on top of it (trainer/device.h). Also picks this rank's
// GPU when the config computes on CUDA.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "launch/environment.h"
#include "trainer/config.h"

namespace lora {

class World {
 public:
  World();
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return env_.world_rank; }
  int size() const { return env_.world_size; }
  const LaunchEnv& env() const { return env_; }
  // "rank 3 (node07): " in a multi-rank job, "" for a single process.
  std::string label() const;

  // The world communicator for the configured backend. Throws lora::InputError when the backend
  // cannot serve this job (local with several ranks).
  comm::Communicator& communicator(CommBackend backend);

  // When cfg computes on CUDA (trainer/device.h uses_cuda), makes this rank's GPU current: the
  // device of its node-local rank (pick_local_device). Returns that device, or -1 on the CPU.
  // Call at start-up, before the model is built.
  int select_device(const Config& cfg) const;

  // Ends every rank of the job with this exit code.
  [[noreturn]] void abort(int exit_code);

 private:
  struct Impl;
  LaunchEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lora
