// The process's place in the job: detects how it was launched (mpirun, srun or a plain process),
// starts MPI when there is more than one rank, and hands out the communicator the config asks for
// (comm.backend: auto picks MPI when the world has more than one rank, local otherwise). With
// comm.backend nccl this is the control communicator (MPI, or local for one process); the trainer
// builds the NCCL gradient communicator on top of it (trainer/device.h). Also picks this rank's
// GPU when the config computes on CUDA.
//
// A rank never outlives its launcher: in a multi-rank job a watch thread checks the parent process
// (mpirun, Open MPI's orted, Slurm's slurmstepd) twice a second, and when the parent is gone (the
// process was re-parented) it prints so and ends this rank with exit code 1. Without it, a rank
// whose mpirun was killed would wait in its next collective until comm.timeout_s.
// abort() never hangs: if MPI_Abort has not ended the process after kAbortGraceSeconds (its
// launcher may be unreachable), the process exits by itself.
#pragma once

#include <chrono>
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

  // The world communicator for the configured backend; timeout bounds its start-up collectives
  // and becomes its timeout(). Throws lora::InputError when the backend cannot serve this job
  // (local with several ranks).
  comm::Communicator& communicator(CommBackend backend,
                                   std::chrono::milliseconds timeout = std::chrono::minutes(5));
  // comm.timeout_s as the communicator's timeout.
  static std::chrono::milliseconds timeout_of(double timeout_s);

  static constexpr int kAbortGraceSeconds = 10;

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
