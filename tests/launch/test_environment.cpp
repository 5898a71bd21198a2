// Launch environment detection: each launcher's variables set with setenv, the rest cleared.
#include "launch/environment.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <set>
#include <string>

#include "core/error.h"

namespace lora {
namespace {

const char* const kVars[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
    "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_STEP_ID", "SLURM_STEPID", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"};

class Environment : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      if (const char* s = std::getenv(v)) saved_[v] = s;
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }
  static void set(const char* name, const char* value) { setenv(name, value, 1); }
  // What sbatch exports to the batch script of a 2-node, 8-task job.
  static void set_sbatch_batch_step() {
    set("SLURM_PROCID", "0");
    set("SLURM_NTASKS", "8");
    set("SLURM_LOCALID", "0");
    set("SLURM_NODEID", "0");
    set("SLURM_NTASKS_PER_NODE", "4");
  }
  std::map<std::string, std::string> saved_;
};

TEST_F(Environment, PlainProcessIsSingle) {
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kSingle);
  EXPECT_EQ(env.world_rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_size, 1);
  EXPECT_FALSE(env.hostname.empty());
}

TEST_F(Environment, OpenMpiMpirun) {
  set("OMPI_COMM_WORLD_RANK", "5");
  set("OMPI_COMM_WORLD_SIZE", "8");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kMpirun);
  EXPECT_EQ(env.world_rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_size, 4);
}

TEST_F(Environment, MpirunInsideAnSbatchAllocationIsMpirun) {
  set_sbatch_batch_step();
  set("SLURM_STEP_ID", "0");  // even inside an srun step, mpirun's own variables win
  set("OMPI_COMM_WORLD_RANK", "3");
  set("OMPI_COMM_WORLD_SIZE", "4");
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kMpirun);
  EXPECT_EQ(env.world_rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, -1);  // not given by this mpirun
  EXPECT_EQ(env.local_size, -1);
}

TEST_F(Environment, SbatchBatchScriptIsSingle) {
  set_sbatch_batch_step();
  EXPECT_EQ(detect_launch_env().launcher, LaunchEnv::Launcher::kSingle);
  for (const char* batch_id : {"batch", "extern", "interactive", "4294967291", "4294967294",
                               "4294967295", "4294967290", ""}) {
    set("SLURM_STEP_ID", batch_id);
    const LaunchEnv env = detect_launch_env();
    EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kSingle) << "SLURM_STEP_ID=" << batch_id;
    EXPECT_EQ(env.world_size, 1) << "SLURM_STEP_ID=" << batch_id;
  }
}

TEST_F(Environment, SrunStep) {
  set_sbatch_batch_step();  // the allocation's values, overridden by the step's below
  set("SLURM_STEP_ID", "2");
  set("SLURM_PROCID", "6");
  set("SLURM_STEP_NUM_TASKS", "7");
  set("SLURM_LOCALID", "2");
  set("SLURM_NODEID", "1");
  set("SLURM_STEP_TASKS_PER_NODE", "4,3");
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kSrun);
  EXPECT_EQ(env.world_rank, 6);
  EXPECT_EQ(env.world_size, 7);
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_EQ(env.local_size, 3);
}

TEST_F(Environment, SrunStepWithOlderVariables) {
  set("SLURM_STEPID", "0");
  set("SLURM_PROCID", "1");
  set("SLURM_NTASKS", "2");
  set("SLURM_LOCALID", "1");
  set("SLURM_NTASKS_PER_NODE", "2");
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kSrun);
  EXPECT_EQ(env.world_rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_size, 2);
}

TEST_F(Environment, HydraPmi) {
  set("PMI_RANK", "2");
  set("PMI_SIZE", "3");
  set("MPI_LOCALRANKID", "0");
  set("MPI_LOCALNRANKS", "1");
  const LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, LaunchEnv::Launcher::kMpirun);
  EXPECT_EQ(env.world_rank, 2);
  EXPECT_EQ(env.world_size, 3);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_size, 1);
}

TEST_F(Environment, MalformedOrInconsistentValuesThrow) {
  set("OMPI_COMM_WORLD_RANK", "abc");
  set("OMPI_COMM_WORLD_SIZE", "4");
  EXPECT_THROW(detect_launch_env(), Error);
  set("OMPI_COMM_WORLD_RANK", "4");  // rank >= size
  EXPECT_THROW(detect_launch_env(), Error);
  set("OMPI_COMM_WORLD_RANK", "-1");
  EXPECT_THROW(detect_launch_env(), Error);
  unsetenv("OMPI_COMM_WORLD_RANK");  // size without rank
  EXPECT_THROW(detect_launch_env(), Error);
  try {
    detect_launch_env();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("OMPI_COMM_WORLD_RANK"), std::string::npos) << e.what();
  }
}

TEST(SlurmTasksPerNode, ExpandsRepeatCounts) {
  EXPECT_EQ(slurm_tasks_on_node("4", 0), 4);
  EXPECT_EQ(slurm_tasks_on_node("4", 1), -1);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 0), 4);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 1), 4);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 2), 3);
  EXPECT_EQ(slurm_tasks_on_node("4(x2),3", 3), -1);
  EXPECT_EQ(slurm_tasks_on_node("2,1(x3),5", 4), 5);
  EXPECT_EQ(slurm_tasks_on_node("4(2)", 0), -1);
  EXPECT_EQ(slurm_tasks_on_node("", 0), -1);
  EXPECT_EQ(slurm_tasks_on_node("x", 0), -1);
}

TEST(PickLocalDevice, UsesTheLocalRank) {
  LaunchEnv env;
  env.local_rank = 5;
  env.local_size = 8;
  env.world_rank = 13;
  EXPECT_EQ(pick_local_device(env, 8), 5);
  EXPECT_EQ(pick_local_device(env, 4), 1);
  EXPECT_EQ(pick_local_device(env, 0), -1);
  EXPECT_THROW(pick_local_device(env, -1), Error);
}

TEST(PickLocalDevice, HostnameFallbackGivesConsecutiveRanksDistinctDevices) {
  LaunchEnv env;
  env.local_rank = -1;
  env.local_size = -1;
  env.hostname = "node042";
  std::set<int> devices;
  for (int r = 8; r < 12; ++r) {
    env.world_rank = r;
    const int d = pick_local_device(env, 4);
    EXPECT_GE(d, 0);
    EXPECT_LT(d, 4);
    devices.insert(d);
    EXPECT_EQ(pick_local_device(env, 4), d);  // deterministic
  }
  EXPECT_EQ(devices.size(), 4u);
}

TEST(Describe, NamesLauncherRanksAndHost) {
  LaunchEnv env;
  env.launcher = LaunchEnv::Launcher::kSrun;
  env.world_rank = 3;
  env.world_size = 8;
  env.local_rank = 1;
  env.local_size = 4;
  env.hostname = "node07";
  EXPECT_EQ(describe(env), "srun rank 3/8 (local 1/4) on node07");
  env.local_rank = -1;
  env.local_size = -1;
  env.launcher = LaunchEnv::Launcher::kMpirun;
  EXPECT_EQ(describe(env), "mpirun rank 3/8 (local ?/?) on node07");
}

}  // namespace
}  // namespace lora
