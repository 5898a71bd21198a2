// Launch environment: which launcher started this process, and where it sits in the job.
//
// detect_launch_env() reads only environment variables, in this order:
//   1. Open MPI mpirun: OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE.
//      (mpirun inside an sbatch allocation also sees SLURM_* variables: mpirun wins.)
//   2. Slurm srun step: SLURM_STEP_ID (or the older SLURM_STEPID) set to an ordinary job step
//      number, i.e. a decimal below 4294967280 (0xFFFFFFF0, Slurm's largest normal step id).
//      sbatch batch scripts set SLURM_PROCID=0 and SLURM_NTASKS=N for the batch step too, but
//      there the step id is absent, a name ("batch", "extern", "interactive") or one of Slurm's
//      reserved numbers at or above 0xFFFFFFF0 (batch is 4294967291 since Slurm 20.11 and
//      4294967294 before), so a batch script itself is a single process. Rank SLURM_PROCID; size
//      SLURM_STEP_NUM_TASKS (else SLURM_NTASKS); local rank SLURM_LOCALID; local size from
//      SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID (e.g. "4(x2),3"), else SLURM_NTASKS_PER_NODE.
//   3. MPICH hydra / PMI: PMI_RANK / PMI_SIZE, local MPI_LOCALRANKID / MPI_LOCALNRANKS
//      (reported as kMpirun: the job is an MPI job either way).
//   4. Otherwise a single process: rank 0 of 1, local 0 of 1.
// A local rank or size the launcher does not give is -1. A malformed or inconsistent value
// (rank >= size, not a number) throws lora::Error naming the variable.
#pragma once

#include <string>

namespace lora {

struct LaunchEnv {
  enum class Launcher { kSingle, kMpirun, kSrun };
  Launcher launcher = Launcher::kSingle;
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;   // rank among the processes of this node; -1 when unknown
  int local_size = 1;   // processes of this job on this node; -1 when unknown
  std::string hostname;
};

LaunchEnv detect_launch_env();

// The accelerator this rank should use out of n_devices visible ones: local_rank % n_devices.
// When the local rank is unknown: (hash(hostname) + world_rank) % n_devices, which gives ranks
// numbered consecutively on a node distinct devices. Returns -1 when n_devices is 0 (CPU only).
int pick_local_device(const LaunchEnv& env, int n_devices);

// One line for the start-up log, e.g. "srun rank 3/8 (local 1/4) on node07".
std::string describe(const LaunchEnv& env);

const char* launcher_name(LaunchEnv::Launcher launcher);  // "single", "mpirun", "srun"

// Tasks on node node_id from a Slurm tasks-per-node list such as "4(x2),3" (= 4,4,3);
// -1 when the list is malformed or shorter than node_id + 1.
int slurm_tasks_on_node(const std::string& tasks_per_node, int node_id);

}  // namespace lora
