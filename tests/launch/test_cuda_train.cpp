// `lora train`, `eval` and `generate` on the GPU, end to end through the binary, against the same
// commands on the CPU:
//   - GPT-2 and a Llama with grouped-query attention: 12 steps with device.backend cuda track the
//     CPU run's losses within 1e-3 relative, with checkpoints every 6 steps;
//   - a checkpoint written on the GPU resumes on the CPU, and one written on the CPU resumes on
//     the GPU, each ending where the uninterrupted runs end (adapters within 1e-3 relative);
//   - eval gives the CPU's validation loss; greedy generate gives the CPU's text;
//   - two ranks sharing the one GPU, gradients over NCCL (comm.backend nccl, each rank with its
//     own NCCL_HOSTID and NCCL's socket transport over loopback, as tests/comm/mpi_test_nccl.cpp
//     explains), train like one rank with the same global batch.
// Also, on any machine, how the binary reports its device choice (and refuses the impossible ones).
// Without a usable device every GPU test skips with the reason (fails under
// LORA_REQUIRE_CUDA=1). On a GPU machine the binary and mpirun may live elsewhere than the build
// tree: LORA_TEST_BINARY and LORA_TEST_MPIRUN (a command that takes `-np N PROGRAM ...` next)
// override the built-in paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/common/cuda_device.h"
#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::read_losses;
using testing::run_command;
using testing::ScratchDir;

std::string lora_binary() {
  const char* v = std::getenv("LORA_TEST_BINARY");
  return v != nullptr && v[0] != '\0' ? v : testing::lora_bin();
}

std::string mpirun_np(int np) {
  const char* v = std::getenv("LORA_TEST_MPIRUN");
  const std::string prefix =
      v != nullptr && v[0] != '\0'
          ? std::string(v)
          : std::string(LORA_MPIEXEC) +
                " --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=1 -x "
                "OPENBLAS_NUM_THREADS=1";
  return prefix + " -np " + std::to_string(np);
}

std::string config(const std::string& dir, const std::string& arch) {
  std::ostringstream os;
  os << "run: {name: cuda-" << arch << ", output_dir: " << dir << "/out, seed: 5}\n";
  if (arch == "gpt2") {
    os << "model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 32, "
          "max_seq_len: 32}\n"
       << "lora: {rank: 4, alpha: 8, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}\n";
  } else {
    os << "model: {arch: llama, vocab_size: 256, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 32, "
          "d_ff: 48, max_seq_len: 32}\n"
       << "lora: {rank: 4, alpha: 8, targets: all-linear}\n";
  }
  os << "data: {train: " << dir << "/train.txt, val: " << dir
     << "/val.txt, format: text, seq_len: 32}\n"
     << "train: {micro_batch: 4, grad_accum: 2, steps: 12, lr: 0.003, warmup_steps: 2, "
        "eval_batches: 2, log_every: 1, grad_clip: 1.0}\n"
     << "checkpoint: {every: 6, keep: 5}\n"
     << "device: {backend: cpu, threads: 2}\n";
  return os.str();
}

double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - want[i];
    diff += d * d;
    norm += double(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

class CudaTrain : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LORA_CUDA_DEVICE_OR_SKIP();
    dir_ = std::make_unique<ScratchDir>("cuda_train_" + GetParam());
    testing::write_file(*dir_ / "train.txt", testing::small_corpus(600));
    testing::write_file(*dir_ / "val.txt", testing::small_corpus(80));
    testing::write_file(*dir_ / "cfg.yaml", config(dir_->path().string(), GetParam()));
  }
  std::string cmd(const std::string& sub, const std::string& device, const std::string& out,
                  const std::string& extra = "") const {
    return lora_binary() + " " + sub + " " + (*dir_ / "cfg.yaml") + " --set device.backend=" +
           device + " --set run.output_dir=" + out + " " + extra;
  }
  std::unique_ptr<ScratchDir> dir_;
};

INSTANTIATE_TEST_SUITE_P(Families, CudaTrain, ::testing::Values("gpt2", "llama"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST_P(CudaTrain, LossesTrackTheCpuAndCheckpointsResumeAcrossBackends) {
  const std::string cpu = *dir_ / "cpu", gpu = *dir_ / "gpu";
  auto r = run_command(cmd("train", "cpu", cpu));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(cmd("train", "cuda", gpu));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto cpu_losses = read_losses(cpu + "/metrics.jsonl");
  const auto gpu_losses = read_losses(gpu + "/metrics.jsonl");
  ASSERT_EQ(cpu_losses.size(), 12u);
  ASSERT_EQ(gpu_losses.size(), 12u);
  for (const auto& [step, loss] : cpu_losses) {
    EXPECT_NEAR(gpu_losses.at(step), loss, 1e-3 * std::fabs(loss)) << "step " << step;
  }
  EXPECT_LT(cpu_losses.at(12), cpu_losses.at(1)) << "the run does not learn";

  // Both backends write the same layout: same module names and sizes, same spec and step.
  const CheckpointState c6 = read_checkpoint(cpu + "/checkpoints/ckpt-6.h5");
  const CheckpointState g6 = read_checkpoint(gpu + "/checkpoints/ckpt-6.h5");
  EXPECT_EQ(c6.step, g6.step);
  EXPECT_EQ(c6.params.size(), g6.params.size());
  EXPECT_EQ(c6.adam_m.size(), g6.adam_m.size());
  EXPECT_EQ(c6.optimizer_step, g6.optimizer_step);
  EXPECT_EQ(c6.base_fingerprint, g6.base_fingerprint);
  EXPECT_LT(relative_l2(g6.params, c6.params), 1e-3);
  const std::vector<float> cpu_final = read_checkpoint(cpu + "/checkpoints/ckpt-12.h5").params;
  const std::vector<float> gpu_final = read_checkpoint(gpu + "/checkpoints/ckpt-12.h5").params;
  EXPECT_LT(relative_l2(gpu_final, cpu_final), 1e-3);

  // The GPU's step-6 checkpoint continues on the CPU, the CPU's on the GPU.
  const std::string gpu_then_cpu = *dir_ / "gpu_then_cpu", cpu_then_gpu = *dir_ / "cpu_then_gpu";
  r = run_command(cmd("train", "cpu", gpu_then_cpu, "--resume " + gpu + "/checkpoints/ckpt-6.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(cmd("train", "cuda", cpu_then_gpu, "--resume " + cpu + "/checkpoints/ckpt-6.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("device.backend: cpu -> cuda"), std::string::npos) << r.output;
  const std::vector<float> a = read_checkpoint(gpu_then_cpu + "/checkpoints/ckpt-12.h5").params;
  const std::vector<float> b = read_checkpoint(cpu_then_gpu + "/checkpoints/ckpt-12.h5").params;
  EXPECT_LT(relative_l2(a, cpu_final), 1e-3);
  EXPECT_LT(relative_l2(b, cpu_final), 1e-3);
  const auto resumed = read_losses(cpu_then_gpu + "/metrics.jsonl");
  ASSERT_EQ(resumed.size(), 12u);  // the checkpoint carries the first 6 lines
  for (long step = 7; step <= 12; ++step) {
    EXPECT_NEAR(resumed.at(step), cpu_losses.at(step), 1e-3 * cpu_losses.at(step)) << step;
  }
}

TEST_P(CudaTrain, EvalAndGenerateMatchTheCpu) {
  const std::string cpu = *dir_ / "cpu";
  auto r = run_command(cmd("train", "cpu", cpu, "--set train.steps=4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string adapter = "--adapter " + cpu + "/checkpoints/ckpt-4.h5";
  auto eval_value = [](const std::string& output) {
    const auto p = output.find("val loss ");
    return p == std::string::npos ? NAN : std::stod(output.substr(p + 9));
  };
  const auto cpu_eval = run_command(cmd("eval", "cpu", cpu, adapter));
  const auto gpu_eval = run_command(cmd("eval", "cuda", cpu, adapter));
  ASSERT_EQ(cpu_eval.exit_code, 0) << cpu_eval.output;
  ASSERT_EQ(gpu_eval.exit_code, 0) << gpu_eval.output;
  const double want = eval_value(cpu_eval.output);
  EXPECT_NEAR(eval_value(gpu_eval.output), want, 1e-3 * want) << gpu_eval.output;

  const std::string prompt = adapter + " --prompt 'the cat' --tokens 12 --temperature 0";
  const auto cpu_gen = run_command(cmd("generate", "cpu", cpu, prompt));
  const auto gpu_gen = run_command(cmd("generate", "cuda", cpu, prompt));
  ASSERT_EQ(cpu_gen.exit_code, 0) << cpu_gen.output;
  ASSERT_EQ(gpu_gen.exit_code, 0) << gpu_gen.output;
  EXPECT_EQ(gpu_gen.output, cpu_gen.output);
}

// Two ranks on one GPU: NCCL would refuse two ranks of a communicator on one device of one host,
// so each rank poses as its own host and NCCL connects them through sockets on loopback.
TEST_P(CudaTrain, TwoRanksSharingTheGpuOverNcclEqualOneRank) {
  const std::string one = *dir_ / "one", two = *dir_ / "two";
  auto r = run_command(cmd("train", "cuda", one, "--set train.steps=6"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Global batch 4 x 2 x world: the two-rank run halves the micro-batch.
  const std::string nccl_env =
      "NCCL_HOSTID=lora-test-rank$OMPI_COMM_WORLD_RANK NCCL_SHM_DISABLE=1 NCCL_P2P_DISABLE=1 "
      "NCCL_SOCKET_IFNAME=lo NCCL_NET=Socket NCCL_IB_DISABLE=1";
  r = run_command(mpirun_np(2) + " sh -c '" + nccl_env + " exec " +
                  cmd("train", "cuda", two,
                      "--set train.steps=6 --set train.micro_batch=2 --set comm.backend=nccl") +
                  "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("comm nccl"), std::string::npos) << r.output;
  const auto a = read_losses(one + "/metrics.jsonl"), b = read_losses(two + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5 * loss) << "step " << step;
  const CheckpointState sa = read_checkpoint(one + "/checkpoints/ckpt-6.h5");
  const CheckpointState sb = read_checkpoint(two + "/checkpoints/ckpt-6.h5");
  EXPECT_EQ(sb.world_size, 2);
  ASSERT_EQ(sa.params.size(), sb.params.size());
  double max_diff = 0.0;
  for (size_t i = 0; i < sa.params.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(sa.params[i] - sb.params[i])));
  }
  EXPECT_LT(max_diff, 1e-4);
  // The gradient all-reduce carried the whole adapter buffer each step, over NCCL.
  const std::string metrics = testing::read_text(two + "/metrics.jsonl");
  const std::string bytes = "\"comm_bytes_per_step\": " + std::to_string(sa.params.size() * 4);
  EXPECT_NE(metrics.find(bytes), std::string::npos) << metrics;
}

// On any machine: the device choice as the binary reports it. comm.backend nccl on the CPU is
// exit 2 naming the key; device.backend cuda is exit 1 naming the reason where no GPU is usable,
// and where one is, the start-up line names the device and the run trains.
TEST(CudaTrainChoice, TheBinaryReportsItsDevice) {
  ScratchDir dir("cuda_train_choice");
  testing::write_file(dir / "train.txt", testing::small_corpus(200));
  testing::write_file(dir / "val.txt", testing::small_corpus(40));
  testing::write_file(dir / "cfg.yaml", config(dir.path().string(), "gpt2"));
  const std::string base = lora_binary() + " train " + (dir / "cfg.yaml") + " --set train.steps=2";
  auto r = run_command(base + " --set comm.backend=nccl");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("comm.backend: nccl needs the CUDA backend"), std::string::npos)
      << r.output;
  r = run_command(base);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| device cpu | comm local"), std::string::npos) << r.output;
  r = run_command(base + " --set device.backend=cuda");
  if (testing::cuda_unusable_reason().empty()) {
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("| device cuda:"), std::string::npos) << r.output;
  } else {
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("device.backend: cuda, but no usable CUDA device"), std::string::npos)
        << r.output;
  }
}

}  // namespace
}  // namespace lora
