// MPI communicator: the Communicator interface over an MPI communicator (CPU buffers).
//
// MpiRuntime initialises MPI for the life of one object (MPI_Init_thread asking for
// MPI_THREAD_FUNNELED: only the thread that initialised MPI calls it). It is constructed by the
// launcher only when the process was started by an MPI launcher (launched_under_mpi()) or when the
// config asks for the mpi backend explicitly; a plain single process uses LocalCommunicator and
// never initialises MPI. If MPI is already initialised the runtime neither re-initialises nor
// finalises it. A runtime destroyed while an exception unwinds calls MPI_Abort instead of
// MPI_Finalize: the other ranks may be blocked in a collective, and finalising would hang them.
// Before MPI_Init it asks Open MPI for the ring algorithm of its non-blocking all-reduce
// (OMPI_MCA_coll_libnbc_iallreduce_algorithm=1) unless that variable is already set: for in-place
// all-reduces Open MPI's default is a binomial tree, which makes rank 0's link carry log2(N)
// times the gradient each way, where a ring moves 2(N-1)/N times it over every link.
//
// MpiCommunicator duplicates MPI_COMM_WORLD (so its traffic never mixes with another library's)
// and sets MPI_ERRORS_RETURN on it (and on MPI_COMM_WORLD): every MPI error becomes a lora::Error
// naming the call, the rank and the host. Nothing waits without a bound: the duplicate is made
// with MPI_Comm_idup, the ranks' host names are exchanged with MPI_Iallgather, and every
// collective is non-blocking underneath (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier), each waited by
// polling MPI_Test with the communicator's timeout, so a dead, unreachable or diverged rank ends
// in an exception instead of a hang. When a wait times out, the rank pings every other rank on the
// same communicator (point-to-point, a reserved tag) and waits up to ping_window(timeout) (the
// wait's timeout, at most 5 s) for the answers;
// ranks blocked in any wait answer pings, so the error names the ranks (and hosts) that did not
// answer: the ones that died or that the network cannot reach. All-reduce is in place
// (MPI_IN_PLACE); kAverage is a sum divided by size() on completion (float32/float64 only). Counts
// above max_elems_per_request() (INT_MAX by default, since MPI counts are int) are split into
// several requests under one Work.
//
// Destroy every MpiCommunicator before the MpiRuntime.
#pragma once

// C bindings only: Open MPI's and MPICH's mpi.h otherwise pull in the removed C++ bindings, whose
// symbols live in a library we do not link.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace lora::comm {

class MpiRuntime {
 public:
  MpiRuntime();
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // True when an MPI launcher started this process: OMPI_COMM_WORLD_SIZE (Open MPI mpirun),
  // PMI_SIZE / PMI_RANK (MPICH hydra, Slurm PMI-2) or PMIX_RANK (PMIx: srun --mpi=pmix, prterun).
  static bool launched_under_mpi();

  int thread_level() const { return thread_level_; }  // MPI_THREAD_* level provided
  bool owns_init() const { return owns_init_; }       // false when MPI was already initialised

 private:
  bool owns_init_ = false;
  int thread_level_ = MPI_THREAD_SINGLE;
  int n_uncaught_at_init_ = 0;
};

class MpiCommunicator final : public Communicator {
 public:
  // The world: a duplicate of MPI_COMM_WORLD. MPI must be initialised (MpiRuntime). timeout bounds
  // the start-up collectives (duplicate, host-name exchange) and becomes timeout().
  explicit MpiCommunicator(std::chrono::milliseconds timeout = std::chrono::minutes(5));
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  const std::string& hostname() const { return hostname_; }
  const std::string& host_of(int rank) const { return hosts_.at(static_cast<size_t>(rank)); }
  MPI_Comm handle() const { return comm_; }

  using Communicator::all_reduce_async;  // keep the typed span overloads visible
  using Communicator::broadcast;
  std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType type,
                                         ReduceOp op) override;
  void broadcast(void* data, size_t count, DType type, int root) override;
  void barrier() override;
  // MPI_Comm_split; color must be >= 0. The new communicator inherits this one's timeout. The
  // ranks first exchange (color, key) with MPI_Iallgather under the timeout, so a rank that never
  // arrives is reported instead of blocking MPI_Comm_split, which starts once every rank is seen.
  std::unique_ptr<Communicator> split(int color, int key) override;
  // MPI_Abort on MPI_COMM_WORLD: ends every rank of the job, not only this communicator's. If
  // MPI_Abort has not ended this process after 10 s (an unreachable launcher), it exits by itself.
  [[noreturn]] void abort(int exit_code) override;

  // Largest element count of one MPI request; larger collectives use several requests.
  size_t max_elems_per_request() const { return max_elems_per_request_; }
  void set_max_elems_per_request(size_t n);

  // Liveness (see the header paragraph). answer_pings() answers the pings that have arrived (every
  // wait calls it while it polls). unanswered_peers(window) pings every other rank and returns,
  // after at most `window`, the ranks that did not answer, in rank order.
  void answer_pings();
  std::vector<int> unanswered_peers(std::chrono::milliseconds window);
  static std::chrono::milliseconds ping_window(std::chrono::milliseconds timeout);
  // "rank 2 (host node3), rank 5 (host node3)"; "" for none.
  std::string describe_ranks(const std::vector<int>& ranks) const;

 private:
  struct Adopt {};
  MpiCommunicator(Adopt, MPI_Comm owned, std::chrono::milliseconds timeout);  // split
  void init_from_handle();
  // Waits for a start-up request (duplicate, host names) with timeout(); throws naming `what`.
  void wait_startup(MPI_Request& req, const std::string& what);
  std::string where() const;  // "rank R (host H)"
  void send_liveness(int value, int dest, int tag);  // a ping or its answer, never waited for

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::string hostname_;
  std::vector<std::string> hosts_;  // host name of every rank of this communicator
  size_t max_elems_per_request_;
  int n_pings_sent_ = 0;            // nonce of this rank's pings (a stale answer is ignored)
  std::deque<int> liveness_buffers_;  // payloads of ping/answer sends that may still be in flight
};

}  // namespace lora::comm
