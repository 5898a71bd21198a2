// Fault probe: a two-rank job in which rank 1 fails before an all-reduce that rank 0 waits in
// (timeout 2 s). Run by tests/comm/run_fault_probe.sh under mpirun -np 2: the job must end with a
// non-zero exit code, promptly, in every mode (never a hang).
//   abort  rank 1 calls Communicator::abort(3)
//   throw  rank 1 throws; the exception unwinds past the MpiRuntime, which aborts the job
//   skip   rank 1 skips the all-reduce and finalises; rank 0 times out, reports and aborts
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/mpi.h"
#include "core/error.h"

namespace {

int run(const std::string& mode) {
  lora::comm::MpiRuntime runtime;
  lora::comm::MpiCommunicator comm;
  comm.set_timeout(std::chrono::seconds(2));
  try {
    if (comm.rank() == 1) {
      if (mode == "abort") comm.abort(3);
      if (mode == "throw") throw std::runtime_error("rank 1 failed before the all-reduce");
      if (mode == "skip") return 0;
    }
    std::vector<float> v = {1.0f};
    comm.all_reduce(std::span<float>(v), lora::comm::ReduceOp::kSum);
    std::printf("rank %d: all-reduce completed (%g)\n", comm.rank(), v[0]);
    return 0;
  } catch (const lora::Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", comm.rank(), e.what());
    comm.abort(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s abort|throw|skip\n", argv[0]);
    return 2;
  }
  try {
    return run(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
