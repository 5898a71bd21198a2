// GoogleTest output for multi-rank tests (tests/<folder>/mpi_test_*.cpp): rank 0 keeps gtest's
// normal printer; every other rank prints only its failed assertions, prefixed with its rank, so
// a job's output reads like one test run and still names the rank that failed.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>

namespace lora::testing {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

// Call after InitGoogleTest: on ranks other than 0, replaces the default printer.
inline void print_failures_only_unless_rank_zero(int rank) {
  if (rank == 0) return;
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankFailurePrinter(rank));
}

}  // namespace lora::testing
