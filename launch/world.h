// The process's place in the job: detects how it was launched (mpirun, srun or a plain process),
// starts MPI when there is more than one rank, and hands out the communicator the config asks for
// (comm.backend: auto picks MPI when the world has more than one rank, local otherwise).
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
  // cannot serve this job (local with several ranks, nccl without CUDA).
  comm::Communicator& communicator(CommBackend backend);

  // Ends every rank of the job with this exit code.
  [[noreturn]] void abort(int exit_code);

 private:
  struct Impl;
  LaunchEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lora
