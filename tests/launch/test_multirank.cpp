// Data-parallel training under mpirun, end to end through the `lora` binary:
//   - N ranks with micro-batch m give the same losses and final adapters (within 1e-5) as one rank
//     with micro-batch N*m, for N = 2 and 4, grad_accum 1 and 2, overlap on and off;
//   - every rank ends with bit-identical adapters;
//   - the bytes all-reduced per step are exactly 4 x the trainable parameter count (adapters in
//     lora mode, every parameter in full mode);
//   - a fault on one rank ends the whole job non-zero, quickly, with that rank's message.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <set>

#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"
#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

using testing::mpirun;
using testing::read_losses;
using testing::run_command;
using testing::ScratchDir;

class MultiRank : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("multirank");
    testing::write_file(*dir_ / "train.txt", testing::small_corpus(600));
    testing::write_file(*dir_ / "val.txt", testing::small_corpus(100));
    testing::write_file(*dir_ / "tiny.yaml", testing::tiny_config(dir_->path().string()));
  }
  static void TearDownTestSuite() { delete dir_; }

  // Runs `lora train` with n ranks (0: no mpirun) and returns the output directory.
  static std::string train(const std::string& tag, int n, const std::string& sets) {
    const std::string out = *dir_ / tag;
    const std::string launcher = n > 0 ? mpirun(n) + " " : "";
    auto r = run_command(launcher + testing::lora_bin() + " train " + (*dir_ / "tiny.yaml") +
                         " --log-all-ranks --set run.output_dir=" + out + " " + sets);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
  }
  static ScratchDir* dir_;
};
ScratchDir* MultiRank::dir_ = nullptr;

std::vector<float> final_params(const std::string& out, long steps) {
  return read_checkpoint(out + "/checkpoints/ckpt-" + std::to_string(steps) + ".h5").params;
}

TEST_F(MultiRank, NRanksEqualOneRankWithTheSameGlobalBatch) {
  const int m = 2;
  for (int accum : {1, 2}) {
    for (int n : {2, 4}) {
      const std::string common = " --set train.grad_accum=" + std::to_string(accum) +
                                 " --set lora.dropout=0.1";
      const std::string ref = train("ref_n" + std::to_string(n) + "_a" + std::to_string(accum), 0,
                                    common + " --set train.micro_batch=" + std::to_string(n * m));
      const auto ref_losses = read_losses(ref + "/metrics.jsonl");
      const auto ref_params = final_params(ref, 6);
      ASSERT_EQ(ref_losses.size(), 6u);
      for (const char* overlap : {"true", "false"}) {
        SCOPED_TRACE(::testing::Message() << "N=" << n << " accum=" << accum << " overlap=" << overlap);
        const std::string dp = train("dp_n" + std::to_string(n) + "_a" + std::to_string(accum) + "_" + overlap, n,
                                     common + " --set train.micro_batch=" + std::to_string(m) +
                                         " --set comm.overlap=" + overlap + " --set comm.bucket_mb=0.002");
        const auto losses = read_losses(dp + "/metrics.jsonl");
        ASSERT_EQ(losses.size(), ref_losses.size());
        for (const auto& [step, loss] : ref_losses)
          EXPECT_NEAR(losses.at(step), loss, 1e-5 * std::max(1.0, std::fabs(loss))) << "step " << step;
        const auto params = final_params(dp, 6);
        ASSERT_EQ(params.size(), ref_params.size());
        double max_diff = 0;
        for (size_t i = 0; i < params.size(); ++i)
          max_diff = std::max(max_diff, double(std::fabs(params[i] - ref_params[i])));
        EXPECT_LT(max_diff, 1e-5);
        // Every rank holds bit-identical adapters at the end.
        std::set<std::string> fingerprints;
        for (int r = 0; r < n; ++r) {
          std::ifstream log(dp + "/rank-" + std::to_string(r) + ".log");
          std::string line, last;
          while (std::getline(log, line))
            if (line.find("fingerprint") != std::string::npos) last = line;
          ASSERT_FALSE(last.empty()) << "rank " << r << " log has no fingerprint line";
          fingerprints.insert(last);
        }
        EXPECT_EQ(fingerprints.size(), 1u);
      }
    }
  }
}

// The same on a Llama-family model (grouped-query attention, RoPE, SwiGLU, untied head) with every
// linear adapted, LoRA dropout on and two micro-steps.
TEST_F(MultiRank, LlamaNRanksEqualOneRankWithTheSameGlobalBatch) {
  const std::string llama =
      " --set model.arch=llama --set model.n_head=4 --set model.n_kv_head=2 --set model.d_ff=48"
      " --set lora.targets=all-linear --set lora.dropout=0.1 --set train.grad_accum=2";
  const std::string ref = train("llama_ref", 0, llama + " --set train.micro_batch=4");
  const std::string dp = train("llama_dp", 2, llama + " --set train.micro_batch=2 --set comm.bucket_mb=0.002");
  const auto ref_losses = read_losses(ref + "/metrics.jsonl"), losses = read_losses(dp + "/metrics.jsonl");
  ASSERT_EQ(ref_losses.size(), 6u);
  ASSERT_EQ(losses.size(), 6u);
  for (const auto& [step, loss] : ref_losses)
    EXPECT_NEAR(losses.at(step), loss, 1e-5 * std::max(1.0, std::fabs(loss))) << "step " << step;
  const auto a = final_params(ref, 6), b = final_params(dp, 6);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(a[i] - b[i])));
  EXPECT_LT(max_diff, 1e-5);
  EXPECT_EQ(read_checkpoint(dp + "/checkpoints/ckpt-6.h5").spec.arch, "llama");
}

double comm_bytes_per_step(const std::string& metrics) {
  std::ifstream f(metrics);
  std::string line;
  std::getline(f, line);
  const auto p = line.find("\"comm_bytes_per_step\": ");
  return p == std::string::npos ? -1 : std::stod(line.substr(p + 23));
}

TEST_F(MultiRank, BytesPerStepAreFourTimesTheTrainableParameters) {
  const ModelSpec shape = gpt2_spec(256, 32, 2, 2, 32);
  LoraSpec spec;
  spec.rank = 4;
  spec.targets = {LoraTarget::kAttnQkv, LoraTarget::kAttnProj, LoraTarget::kMlpFc, LoraTarget::kMlpProj};
  const std::string lora_run = train("bytes_lora", 2, "--set train.steps=2");
  EXPECT_EQ(comm_bytes_per_step(lora_run + "/metrics.jsonl"), 4.0 * LoraLayout(shape, spec).n_params());
  const std::string full_run = train("bytes_full", 2, "--set train.steps=2 --set train.mode=full");
  EXPECT_EQ(comm_bytes_per_step(full_run + "/metrics.jsonl"), 4.0 * BaseLayout(shape).n_params());
}

TEST_F(MultiRank, AFaultOnOneRankEndsTheJobQuickly) {
  // Rank 1 gets a data path it cannot read; rank 0 would otherwise wait for it forever.
  const std::string cmd =
      mpirun(2) + " sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec " + testing::lora_bin() +
      " train " + (*dir_ / "tiny.yaml") + " --set data.train=/nonexistent/rank1.txt --set run.output_dir=" +
      (*dir_ / "fault") + "; else exec " + testing::lora_bin() + " train " + (*dir_ / "tiny.yaml") +
      " --set train.steps=100000 --set run.output_dir=" + (*dir_ / "fault") + "; fi'";
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_command("timeout 60 " + cmd);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "the job hung until timeout killed it:\n" << r.output;
  EXPECT_LT(seconds, 30.0) << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/rank1.txt"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace lora
