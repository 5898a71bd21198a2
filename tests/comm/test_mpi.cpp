// MpiRuntime::launched_under_mpi() reads only launcher variables, so a plain process never needs
// MPI_Init. (Collectives are tested under mpirun in mpi_test_comm.cpp.)
#include "comm/mpi.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

namespace lora::comm {
namespace {

const char* const kLauncherVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"};

// Clears the launcher variables for one test and restores them afterwards.
class LauncherVarsCleared : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kLauncherVars) {
      if (const char* s = std::getenv(v)) saved_[v] = s;
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kLauncherVars) unsetenv(v);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }
  std::map<std::string, std::string> saved_;
};

TEST_F(LauncherVarsCleared, PlainProcessIsNotUnderMpi) {
  EXPECT_FALSE(MpiRuntime::launched_under_mpi());
}

TEST_F(LauncherVarsCleared, EachLauncherVariableIsRecognised) {
  for (const char* v : kLauncherVars) {
    setenv(v, "2", 1);
    EXPECT_TRUE(MpiRuntime::launched_under_mpi()) << v;
    unsetenv(v);
    EXPECT_FALSE(MpiRuntime::launched_under_mpi()) << v;
  }
}

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::kFloat32), "float32");
  EXPECT_STREQ(dtype_name(DType::kInt64), "int64");
  EXPECT_EQ(dtype_size(DType::kFloat64), 8u);
  EXPECT_EQ(dtype_size(DType::kUint8), 1u);
}

}  // namespace
}  // namespace lora::comm
