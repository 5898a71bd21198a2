// Launch environment detection from launcher variables (rules in launch/environment.h).
#include "launch/environment.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "core/error.h"

namespace lora {

namespace {

std::optional<std::string> env_value(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

// Parses a whole decimal number (no sign, no trailing text); nullopt otherwise.
std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// An int-valued launcher variable: -1 when unset, lora::Error when not a number.
int int_var(const char* name) {
  const auto v = env_value(name);
  if (!v) return -1;
  const auto n = parse_decimal(*v);
  if (!n || *n > static_cast<uint64_t>(INT32_MAX)) {
    throw Error(detail::concat("launcher variable ", name, "='", *v,
                               "' is not a non-negative integer"));
  }
  return static_cast<int>(*n);
}

int required_int_var(const char* name, const char* launcher) {
  const int v = int_var(name);
  if (v < 0) throw Error(detail::concat(launcher, " job without ", name, " in the environment"));
  return v;
}

std::string local_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

bool in_srun_step() {
  auto step = env_value("SLURM_STEP_ID");
  if (!step) step = env_value("SLURM_STEPID");
  if (!step) return false;
  const auto id = parse_decimal(*step);
  constexpr uint64_t kMaxNormalStepId = 0xFFFFFFF0u;
  return id && *id < kMaxNormalStepId;
}

void check_consistent(const LaunchEnv& env, const char* rank_var, const char* local_var) {
  if (env.world_size < 1 || env.world_rank >= env.world_size) {
    throw Error(detail::concat(launcher_name(env.launcher), " job with rank ", env.world_rank,
                               " (", rank_var, ") outside a world of size ", env.world_size));
  }
  if (env.local_rank >= 0 && env.local_size >= 0 && env.local_rank >= env.local_size) {
    throw Error(detail::concat(launcher_name(env.launcher), " job with local rank ",
                               env.local_rank, " (", local_var, ") outside a node of ",
                               env.local_size, " processes"));
  }
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

const char* launcher_name(LaunchEnv::Launcher launcher) {
  switch (launcher) {
    case LaunchEnv::Launcher::kSingle: return "single";
    case LaunchEnv::Launcher::kMpirun: return "mpirun";
    case LaunchEnv::Launcher::kSrun: return "srun";
  }
  return "unknown";
}

int slurm_tasks_on_node(const std::string& tasks_per_node, int node_id) {
  if (node_id < 0) return -1;
  // Comma-separated entries "N" or "N(xM)" (N tasks on each of M nodes).
  size_t pos = 0;
  int64_t node = 0;
  while (pos <= tasks_per_node.size()) {
    size_t comma = tasks_per_node.find(',', pos);
    if (comma == std::string::npos) comma = tasks_per_node.size();
    const std::string_view item(tasks_per_node.data() + pos, comma - pos);
    const size_t paren = item.find('(');
    const auto n_tasks = parse_decimal(item.substr(0, paren));
    uint64_t repeat = 1;
    if (paren != std::string_view::npos) {
      const std::string_view rest = item.substr(paren);
      if (rest.size() < 4 || rest.substr(0, 2) != "(x" || rest.back() != ')') return -1;
      const auto r = parse_decimal(rest.substr(2, rest.size() - 3));
      if (!r) return -1;
      repeat = *r;
    }
    if (!n_tasks || *n_tasks > static_cast<uint64_t>(INT32_MAX)) return -1;
    if (node_id < node + static_cast<int64_t>(repeat)) return static_cast<int>(*n_tasks);
    node += static_cast<int64_t>(repeat);
    pos = comma + 1;
  }
  return -1;
}

LaunchEnv detect_launch_env() {
  LaunchEnv env;
  env.hostname = local_hostname();

  if (env_value("OMPI_COMM_WORLD_SIZE") || env_value("OMPI_COMM_WORLD_RANK")) {
    env.launcher = LaunchEnv::Launcher::kMpirun;
    env.world_rank = required_int_var("OMPI_COMM_WORLD_RANK", "mpirun");
    env.world_size = required_int_var("OMPI_COMM_WORLD_SIZE", "mpirun");
    env.local_rank = int_var("OMPI_COMM_WORLD_LOCAL_RANK");
    env.local_size = int_var("OMPI_COMM_WORLD_LOCAL_SIZE");
    check_consistent(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK");
    return env;
  }

  if (in_srun_step()) {
    env.launcher = LaunchEnv::Launcher::kSrun;
    env.world_rank = required_int_var("SLURM_PROCID", "srun");
    env.world_size = int_var("SLURM_STEP_NUM_TASKS");
    if (env.world_size < 0) env.world_size = required_int_var("SLURM_NTASKS", "srun");
    env.local_rank = int_var("SLURM_LOCALID");
    env.local_size = -1;
    const auto step_tasks = env_value("SLURM_STEP_TASKS_PER_NODE");
    const int node_id = int_var("SLURM_NODEID");
    if (step_tasks && node_id >= 0) env.local_size = slurm_tasks_on_node(*step_tasks, node_id);
    if (env.local_size < 0) env.local_size = int_var("SLURM_NTASKS_PER_NODE");
    check_consistent(env, "SLURM_PROCID", "SLURM_LOCALID");
    return env;
  }

  if (env_value("PMI_RANK") || env_value("PMI_SIZE")) {
    env.launcher = LaunchEnv::Launcher::kMpirun;
    env.world_rank = required_int_var("PMI_RANK", "mpiexec (PMI)");
    env.world_size = required_int_var("PMI_SIZE", "mpiexec (PMI)");
    env.local_rank = int_var("MPI_LOCALRANKID");
    env.local_size = int_var("MPI_LOCALNRANKS");
    check_consistent(env, "PMI_RANK", "MPI_LOCALRANKID");
    return env;
  }

  return env;  // a single process: rank 0 of 1, local 0 of 1
}

int pick_local_device(const LaunchEnv& env, int n_devices) {
  LORA_CHECK(n_devices >= 0, "device count must be >= 0, got ", n_devices);
  if (n_devices == 0) return -1;
  if (env.local_rank >= 0) return env.local_rank % n_devices;
  const uint64_t h = fnv1a(env.hostname) + static_cast<uint64_t>(env.world_rank);
  return static_cast<int>(h % static_cast<uint64_t>(n_devices));
}

std::string describe(const LaunchEnv& env) {
  std::string s = detail::concat(launcher_name(env.launcher), " rank ", env.world_rank, "/",
                                 env.world_size, " (local ");
  s += env.local_rank >= 0 ? std::to_string(env.local_rank) : std::string("?");
  s += "/";
  s += env.local_size >= 0 ? std::to_string(env.local_size) : std::string("?");
  s += ") on " + env.hostname;
  return s;
}

}  // namespace lora
