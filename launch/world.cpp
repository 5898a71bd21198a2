#include "launch/world.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "comm/mpi.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "trainer/device.h"

namespace lora {

struct World::Impl {
  std::unique_ptr<comm::MpiRuntime> mpi;
  std::unique_ptr<comm::Communicator> comm;
  CommBackend backend = CommBackend::kAuto;
};

World::World() : env_(detect_launch_env()), impl_(std::make_unique<Impl>()) {
  // Several ranks: start MPI now, so that even a config error on one rank can end the whole job.
  if (env_.world_size > 1 || comm::MpiRuntime::launched_under_mpi()) {
    impl_->mpi = std::make_unique<comm::MpiRuntime>();
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    env_.world_rank = rank;
    env_.world_size = size;
  }
}

World::~World() {
  impl_->comm.reset();  // communicators before the runtime
  impl_->mpi.reset();
}

std::string World::label() const {
  if (env_.world_size <= 1) return "";
  return "rank " + std::to_string(env_.world_rank) + " (" + env_.hostname + "): ";
}

comm::Communicator& World::communicator(CommBackend backend) {
  if (impl_->comm) {
    LORA_CHECK(backend == impl_->backend, "the world communicator was already created");
    return *impl_->comm;
  }
  impl_->backend = backend;
  switch (backend) {
    case CommBackend::kAuto:
      if (env_.world_size > 1) impl_->comm = std::make_unique<comm::MpiCommunicator>();
      else impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
    case CommBackend::kLocal:
      LORA_INPUT_CHECK(env_.world_size == 1, "comm.backend: local serves one process, but this job has ",
                       env_.world_size, " ranks (use auto or mpi)");
      impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
    case CommBackend::kMpi:
      if (!impl_->mpi) impl_->mpi = std::make_unique<comm::MpiRuntime>();
      impl_->comm = std::make_unique<comm::MpiCommunicator>();
      break;
    case CommBackend::kNccl:
      // Control traffic; the trainer puts the gradients on NCCL over this communicator.
      if (env_.world_size > 1) impl_->comm = std::make_unique<comm::MpiCommunicator>();
      else impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
  }
  return *impl_->comm;
}

int World::select_device(const Config& cfg) const {
  if (!uses_cuda(cfg)) return -1;
#ifdef LORA_WITH_CUDA
  const int device = pick_local_device(env_, cuda::device_count());
  cuda::set_device(device);
  return device;
#else
  return -1;  // uses_cuda() is false in a build without the CUDA backend
#endif
}

void World::abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace lora
