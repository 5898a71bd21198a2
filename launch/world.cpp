// World (launch/world.h): MPI start-up, the world communicator, the launcher watch, abort.
#include "launch/world.h"

#include <mpi.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "comm/mpi.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "trainer/device.h"

namespace lora {

namespace {

// Ends the process when its parent changes. Polls getppid() (a dead parent re-parents us to init or
// a subreaper); PR_SET_PDEATHSIG would fire when the forking *thread* of a multi-threaded launcher
// exits, which is not the launcher dying.
class LauncherWatch {
 public:
  explicit LauncherWatch(std::string label) : label_(std::move(label)), parent_(getppid()) {
    if (parent_ <= 1) return;  // started by init itself: nothing to watch
    thread_ = std::thread([this] { run(); });
  }
  ~LauncherWatch() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stop_; })) {
      if (getppid() == parent_) continue;
      std::fprintf(stderr,
                   "lora: %serror: the launcher (parent process %d) has exited: ending this rank\n",
                   label_.c_str(), static_cast<int>(parent_));
      std::fflush(stderr);
      std::_Exit(1);
    }
  }

  std::string label_;
  pid_t parent_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

struct World::Impl {
  std::unique_ptr<comm::MpiRuntime> mpi;
  std::unique_ptr<comm::Communicator> comm;
  CommBackend backend = CommBackend::kAuto;
  std::unique_ptr<LauncherWatch> watch;
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
  if (env_.world_size > 1) impl_->watch = std::make_unique<LauncherWatch>(label());
}

World::~World() {
  impl_->comm.reset();  // communicators before the runtime
  impl_->mpi.reset();
  impl_->watch.reset();
}

std::chrono::milliseconds World::timeout_of(double timeout_s) {
  return std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000.0));
}

std::string World::label() const {
  if (env_.world_size <= 1) return "";
  return "rank " + std::to_string(env_.world_rank) + " (" + env_.hostname + "): ";
}

comm::Communicator& World::communicator(CommBackend backend, std::chrono::milliseconds timeout) {
  if (impl_->comm) {
    LORA_CHECK(backend == impl_->backend, "the world communicator was already created");
    return *impl_->comm;
  }
  impl_->backend = backend;
  switch (backend) {
    case CommBackend::kAuto:
      if (env_.world_size > 1) impl_->comm = std::make_unique<comm::MpiCommunicator>(timeout);
      else impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
    case CommBackend::kLocal:
      LORA_INPUT_CHECK(env_.world_size == 1, "comm.backend: local serves one process, but this job has ",
                       env_.world_size, " ranks (use auto or mpi)");
      impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
    case CommBackend::kMpi:
      if (!impl_->mpi) impl_->mpi = std::make_unique<comm::MpiRuntime>();
      impl_->comm = std::make_unique<comm::MpiCommunicator>(timeout);
      break;
    case CommBackend::kNccl:
      // Control traffic; the trainer puts the gradients on NCCL over this communicator.
      if (env_.world_size > 1) impl_->comm = std::make_unique<comm::MpiCommunicator>(timeout);
      else impl_->comm = std::make_unique<comm::LocalCommunicator>();
      break;
  }
  impl_->comm->set_timeout(timeout);
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
  if (initialized && !finalized) {
    // MPI_Abort asks the launcher to end the job; if the launcher cannot be reached, it may never
    // return: end this process regardless after a grace period.
    std::thread([exit_code] {
      std::this_thread::sleep_for(std::chrono::seconds(kAbortGraceSeconds));
      std::_Exit(exit_code);
    }).detach();
    MPI_Abort(MPI_COMM_WORLD, exit_code);
  }
  std::_Exit(exit_code);
}

}  // namespace lora
