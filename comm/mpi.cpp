// MPI communicator (see comm/mpi.h): non-blocking MPI collectives waited by polling, so that a
// timeout can end a collective that another rank never joins.
#include "comm/mpi.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iomanip>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"

namespace lora::comm {

namespace {

std::string local_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

// Throws lora::Error naming the MPI call, the rank and the host when rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* call, const std::string& where) {
  if (rc != MPI_SUCCESS) {
    throw Error(detail::concat(call, " failed on ", where, ": ", mpi_error_string(rc)));
  }
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::kFloat32: return MPI_FLOAT;
    case DType::kFloat64: return MPI_DOUBLE;
    case DType::kInt32: return MPI_INT32_T;
    case DType::kInt64: return MPI_INT64_T;
    case DType::kUint8: return MPI_UINT8_T;
  }
  throw Error("unknown DType in MPI collective");
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  throw Error("unknown ReduceOp in MPI collective");
}

// Reserved point-to-point tags of the liveness ping (within MPI's guaranteed tag range, 0..32767).
constexpr int kPingTag = 32001;
constexpr int kPongTag = 32002;
constexpr size_t kHostNameBytes = 64;

std::string seconds_text(std::chrono::milliseconds t) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << std::chrono::duration<double>(t).count() << " s";
  return os.str();
}

// One collective: one or more MPI requests, completed together. on_complete runs once, on the
// thread that observes completion (the kAverage division). The owner answers pings while wait()
// polls and names the silent ranks after a timeout; it must outlive the work (a communicator
// outlives the collectives it started).
class MpiWork final : public Work {
 public:
  MpiWork(MpiCommunicator& owner, std::vector<MPI_Request> requests, std::string what,
          std::string where, std::function<void()> on_complete)
      : owner_(owner),
        requests_(std::move(requests)),
        what_(std::move(what)),
        where_(std::move(where)),
        on_complete_(std::move(on_complete)) {}

  bool test() override {
    if (done_) return true;
    int flag = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag,
                          MPI_STATUSES_IGNORE),
              "MPI_Testall", where_ + " (" + what_ + ")");
    if (flag == 0) return false;
    done_ = true;
    if (on_complete_) on_complete_();
    return true;
  }

  void wait(std::chrono::milliseconds timeout) override {
    // Spin briefly (small collectives finish in microseconds), then poll every 50 us so a long
    // wait does not burn a core that the rest of the process may need. Every 20 ms, answer the
    // pings of ranks that timed out elsewhere.
    constexpr int kSpins = 64;
    constexpr auto kPingPoll = std::chrono::milliseconds(20);
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + timeout;
    auto next_ping_poll = start + kPingPoll;
    for (int i = 0;; ++i) {
      if (test()) return;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) throw Error(timeout_message(timeout));
      if (now >= next_ping_poll) {
        owner_.answer_pings();
        next_ping_poll = now + kPingPoll;
      }
      if (i >= kSpins) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  std::string timeout_message(std::chrono::milliseconds timeout) {
    std::string msg = detail::concat(what_, " timed out after ", seconds_text(timeout), " on ", where_);
    if (owner_.size() < 2) return msg;
    const auto window = MpiCommunicator::ping_window(timeout);
    const std::vector<int> silent = owner_.unanswered_peers(window);
    if (silent.empty()) {
      return msg + detail::concat("; every other rank answered a ping within ", seconds_text(window),
                                  ", so none is dead or unreachable: the ranks called different "
                                  "collectives, or one is slower than comm.timeout_s");
    }
    return msg + detail::concat("; could not reach ", owner_.describe_ranks(silent),
                                " (no answer to a ping within ", seconds_text(window),
                                "): dead, or cut off by the network");
  }

  MpiCommunicator& owner_;
  std::vector<MPI_Request> requests_;
  std::string what_;
  std::string where_;
  std::function<void()> on_complete_;
  bool done_ = false;
};

class DoneWork final : public Work {
 public:
  void wait(std::chrono::milliseconds) override {}
  bool test() override { return true; }
};

template <typename T>
void divide_in_place(void* data, size_t count, int n) {
  T* p = static_cast<T*>(data);
  const T scale = T(1) / static_cast<T>(n);
  for (size_t i = 0; i < count; ++i) p[i] *= scale;
}

// MPI_Abort asks the launcher to end the job; when the launcher cannot be reached it may never
// return. A detached thread ends this process regardless after a grace period.
[[noreturn]] void abort_within_grace(int exit_code) {
  constexpr auto kGrace = std::chrono::seconds(10);
  std::thread([exit_code, kGrace] {
    std::this_thread::sleep_for(kGrace);
    std::_Exit(exit_code);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort should not return; never let this one
}

}  // namespace

// ---- MpiRuntime ----

MpiRuntime::MpiRuntime() : n_uncaught_at_init_(std::uncaught_exceptions()) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&thread_level_);
    return;
  }
  LORA_CHECK(!mpi_finalized(), "MPI cannot be initialised again after MPI_Finalize");
  // Open MPI: the ring all-reduce unless the user chose (see comm/mpi.h); other MPIs ignore it.
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", /*overwrite=*/0);
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &thread_level_);
  if (rc != MPI_SUCCESS) throw Error("MPI_Init_thread failed: " + mpi_error_string(rc));
  owns_init_ = true;
}

MpiRuntime::~MpiRuntime() {
  if (!owns_init_ || mpi_finalized()) return;
  if (std::uncaught_exceptions() > n_uncaught_at_init_) {
    std::fprintf(stderr, "lora: error on this rank while MPI is running: aborting the job\n");
    std::fflush(stderr);
    abort_within_grace(1);
  }
  MPI_Finalize();
}

bool MpiRuntime::launched_under_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

// ---- MpiCommunicator ----

MpiCommunicator::MpiCommunicator(std::chrono::milliseconds timeout)
    : max_elems_per_request_(INT_MAX) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  LORA_CHECK(initialized && !mpi_finalized(),
             "MpiCommunicator needs MPI to be initialised (construct an MpiRuntime first)");
  LORA_CHECK(timeout.count() > 0, "communicator timeout must be > 0 ms, got ", timeout.count());
  timeout_ = timeout;
  hostname_ = local_hostname();
  // Errors on the world's duplicate must return too: set the handler before duplicating.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  // MPI_Comm_dup blocks until every rank calls it: a rank that never starts would hang the rest.
  MPI_Request req = MPI_REQUEST_NULL;
  const std::string world_where = detail::concat("rank ", rank_, " (host ", hostname_, ")");
  check_mpi(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &req), "MPI_Comm_idup", world_where);
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    int flag = 0;
    check_mpi(MPI_Test(&req, &flag, MPI_STATUS_IGNORE), "MPI_Test (MPI_Comm_idup)", world_where);
    if (flag) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      throw Error(detail::concat("duplicating MPI_COMM_WORLD timed out after ", seconds_text(timeout_),
                                 " on ", world_where, ": not every rank of the job started"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  init_from_handle();
}

MpiCommunicator::MpiCommunicator(Adopt, MPI_Comm owned, std::chrono::milliseconds timeout)
    : comm_(owned), hostname_(local_hostname()), max_elems_per_request_(INT_MAX) {
  timeout_ = timeout;
  init_from_handle();
}

void MpiCommunicator::init_from_handle() {
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
            "host " + hostname_);
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank", "host " + hostname_);
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size", "host " + hostname_);
  // Every rank's host name, so that errors can say where an unreachable rank runs.
  std::vector<char> mine(kHostNameBytes, '\0');
  std::copy_n(hostname_.c_str(), std::min(hostname_.size(), kHostNameBytes - 1), mine.begin());
  std::vector<char> all(kHostNameBytes * static_cast<size_t>(size_), '\0');
  MPI_Request req = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallgather(mine.data(), static_cast<int>(kHostNameBytes), MPI_CHAR, all.data(),
                           static_cast<int>(kHostNameBytes), MPI_CHAR, comm_, &req),
            "MPI_Iallgather", where());
  wait_startup(req, "exchanging host names");
  hosts_.clear();
  for (int r = 0; r < size_; ++r) {
    const char* name = all.data() + kHostNameBytes * static_cast<size_t>(r);
    hosts_.emplace_back(name, strnlen(name, kHostNameBytes));
  }
}

void MpiCommunicator::wait_startup(MPI_Request& req, const std::string& what) {
  MpiWork work(*this, {req}, what, where(), nullptr);
  req = MPI_REQUEST_NULL;
  work.wait(timeout_);
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && !mpi_finalized()) MPI_Comm_free(&comm_);
  // A ping to a dead rank may never leave: its buffer must outlive this object (a few ints).
  if (!liveness_buffers_.empty()) new std::deque<int>(std::move(liveness_buffers_));
}

std::string MpiCommunicator::where() const {
  return detail::concat("rank ", rank_, " (host ", hostname_, ")");
}

std::string MpiCommunicator::describe_ranks(const std::vector<int>& ranks) const {
  std::string out;
  for (int r : ranks) {
    if (!out.empty()) out += ", ";
    const std::string host =
        r >= 0 && static_cast<size_t>(r) < hosts_.size() ? hosts_[static_cast<size_t>(r)] : "?";
    out += detail::concat("rank ", r, " (host ", host, ")");
  }
  return out;
}

std::chrono::milliseconds MpiCommunicator::ping_window(std::chrono::milliseconds timeout) {
  return std::min<std::chrono::milliseconds>(timeout, std::chrono::seconds(5));
}

void MpiCommunicator::send_liveness(int value, int dest, int tag) {
  // Nobody waits for these sends (a dead peer never takes them): the request is freed at once and
  // the buffer stays in liveness_buffers_, whose elements never move.
  liveness_buffers_.push_back(value);
  MPI_Request req = MPI_REQUEST_NULL;
  if (MPI_Isend(&liveness_buffers_.back(), 1, MPI_INT, dest, tag, comm_, &req) == MPI_SUCCESS)
    MPI_Request_free(&req);
}

void MpiCommunicator::answer_pings() {
  // Errors are ignored here: this runs inside a wait that reports its own failure.
  for (int n = 0; n < size_; ++n) {
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kPingTag, comm_, &flag, &status) != MPI_SUCCESS || !flag) return;
    int nonce = 0;
    if (MPI_Recv(&nonce, 1, MPI_INT, status.MPI_SOURCE, kPingTag, comm_, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS)
      return;
    send_liveness(nonce, status.MPI_SOURCE, kPongTag);
  }
}

std::vector<int> MpiCommunicator::unanswered_peers(std::chrono::milliseconds window) {
  const int nonce = ++n_pings_sent_;
  std::vector<int> answers(static_cast<size_t>(size_), 0);
  std::vector<MPI_Request> recvs(static_cast<size_t>(size_), MPI_REQUEST_NULL);
  std::vector<bool> answered(static_cast<size_t>(size_), false);
  answered[static_cast<size_t>(rank_)] = true;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    MPI_Irecv(&answers[static_cast<size_t>(r)], 1, MPI_INT, r, kPongTag, comm_,
              &recvs[static_cast<size_t>(r)]);
    send_liveness(nonce, r, kPingTag);
  }
  const auto deadline = std::chrono::steady_clock::now() + window;
  for (;;) {
    bool all = true;
    for (int r = 0; r < size_; ++r) {
      const size_t i = static_cast<size_t>(r);
      if (answered[i]) continue;
      int flag = 0;
      if (recvs[i] != MPI_REQUEST_NULL && MPI_Test(&recvs[i], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS &&
          flag) {
        if (answers[i] == nonce) {
          answered[i] = true;
          continue;
        }
        // An answer to an earlier round of pings: wait for this round's.
        MPI_Irecv(&answers[i], 1, MPI_INT, r, kPongTag, comm_, &recvs[i]);
      }
      all = false;
    }
    if (all || std::chrono::steady_clock::now() >= deadline) break;
    answer_pings();  // another rank may be asking at the same time
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::vector<int> silent;
  for (int r = 0; r < size_; ++r) {
    const size_t i = static_cast<size_t>(r);
    if (answered[i]) continue;
    silent.push_back(r);
    if (recvs[i] != MPI_REQUEST_NULL) {
      MPI_Cancel(&recvs[i]);
      MPI_Request_free(&recvs[i]);
    }
  }
  return silent;
}

void MpiCommunicator::set_max_elems_per_request(size_t n) {
  LORA_CHECK(n >= 1 && n <= static_cast<size_t>(INT_MAX),
             "elements per MPI request must be in [1, INT_MAX], got ", n);
  max_elems_per_request_ = n;
}

std::unique_ptr<Work> MpiCommunicator::all_reduce_async(void* data, size_t count, DType type,
                                                        ReduceOp op) {
  LORA_CHECK(data != nullptr || count == 0, "all-reduce of ", count, " elements from a null buffer");
  const bool is_float = type == DType::kFloat32 || type == DType::kFloat64;
  LORA_CHECK(op != ReduceOp::kAverage || is_float, "average all-reduce needs float32 or float64, got ",
             dtype_name(type));
  stats_.all_reduce_bytes += count * dtype_size(type);
  stats_.all_reduce_calls += 1;
  // Every rank passes the same count (the communicator's contract), so every rank skips MPI here.
  if (count == 0) return std::make_unique<DoneWork>();

  const MPI_Datatype mtype = mpi_type(type);
  const MPI_Op mop = mpi_op(op);
  const size_t elem_bytes = dtype_size(type);
  std::vector<MPI_Request> requests;
  for (size_t begin = 0; begin < count; begin += max_elems_per_request_) {
    const size_t n = std::min(max_elems_per_request_, count - begin);
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(data) + begin * elem_bytes,
                             static_cast<int>(n), mtype, mop, comm_, &req),
              "MPI_Iallreduce", where());
    requests.push_back(req);
  }

  std::function<void()> on_complete;
  if (op == ReduceOp::kAverage && size_ > 1) {
    const int n_ranks = size_;
    if (type == DType::kFloat32) {
      on_complete = [data, count, n_ranks] { divide_in_place<float>(data, count, n_ranks); };
    } else {
      on_complete = [data, count, n_ranks] { divide_in_place<double>(data, count, n_ranks); };
    }
  }
  return std::make_unique<MpiWork>(*this, std::move(requests),
                                   detail::concat("all-reduce of ", count, " ", dtype_name(type)),
                                   where(), std::move(on_complete));
}

void MpiCommunicator::broadcast(void* data, size_t count, DType type, int root) {
  LORA_CHECK(root >= 0 && root < size_, "broadcast root ", root, " outside a communicator of size ",
             size_);
  LORA_CHECK(data != nullptr || count == 0, "broadcast of ", count, " elements from a null buffer");
  if (count == 0) return;
  const MPI_Datatype mtype = mpi_type(type);
  const size_t elem_bytes = dtype_size(type);
  std::vector<MPI_Request> requests;
  for (size_t begin = 0; begin < count; begin += max_elems_per_request_) {
    const size_t n = std::min(max_elems_per_request_, count - begin);
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Ibcast(static_cast<char*>(data) + begin * elem_bytes, static_cast<int>(n), mtype,
                         root, comm_, &req),
              "MPI_Ibcast", where());
    requests.push_back(req);
  }
  MpiWork work(*this, std::move(requests),
               detail::concat("broadcast of ", count, " ", dtype_name(type), " from root ", root),
               where(), nullptr);
  wait(work);
}

void MpiCommunicator::barrier() {
  MPI_Request req = MPI_REQUEST_NULL;
  check_mpi(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier", where());
  MpiWork work(*this, {req}, "barrier", where(), nullptr);
  wait(work);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  LORA_CHECK(color >= 0, "split color must be >= 0, got ", color);
  // MPI_Comm_split blocks until every rank calls it: first see every rank arrive, with a timeout.
  int mine[2] = {color, key};
  std::vector<int> all(2 * static_cast<size_t>(size_));
  MPI_Request req = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, comm_, &req), "MPI_Iallgather",
            where());
  wait_startup(req, detail::concat("split (color ", color, ", key ", key, ")"));
  MPI_Comm sub = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split", where());
  auto result = std::unique_ptr<MpiCommunicator>(new MpiCommunicator(Adopt{}, sub, timeout()));
  result->max_elems_per_request_ = max_elems_per_request_;
  return result;
}

void MpiCommunicator::abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  abort_within_grace(exit_code);
}

}  // namespace lora::comm
