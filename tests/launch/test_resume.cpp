// Checkpoint and resume through the `lora` binary:
//   - exact resume: 2 ranks, 30 steps straight vs killed with -9 after the step-10 checkpoint and
//     resumed: identical losses, adapter and optimizer bits;
//   - elastic resume: a checkpoint written by 2 ranks continues at 1 and at 4 ranks (same global
//     batch) and matches the uninterrupted run within 1e-5;
//   - SIGUSR1 to one rank only (then SIGTERM to all while they stop): all ranks stop, exit 75 with
//     a valid checkpoint, and the resumed run finishes identically;
//   - kill -9 at random moments while checkpointing every step: --resume auto always continues;
//   - refusals (other rank, other base) and reported safe overrides; an unwritable checkpoint dir;
//     a disk that fills up mid-run (exit 1, previous checkpoint intact).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mount.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::mpirun;
using testing::read_losses;
using testing::run_command;
using testing::ScratchDir;
using testing::Spawned;

// A config a little slower per step than tiny_config, so a kill can land between checkpoints.
std::string resume_config(const std::string& dir) {
  std::ostringstream os;
  os << "run: {name: resume, output_dir: " << dir << "/out, seed: 11}\n"
     << "model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 64, max_seq_len: 64}\n"
     << "lora: {rank: 4, alpha: 8, dropout: 0.1, targets: [attn.qkv, attn.proj, mlp.fc]}\n"
     << "data: {train: " << dir << "/train.txt, val: " << dir << "/val.txt, format: text, seq_len: 64}\n"
     << "train: {mode: lora, micro_batch: 4, grad_accum: 1, steps: 20, lr: 0.01, warmup_steps: 2, "
        "eval_every: 5, eval_batches: 2, log_every: 1}\n"
     << "checkpoint: {every: 10, keep: 5}\n"
     << "device: {threads: 1}\n";
  return os.str();
}

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<ScratchDir>(::testing::UnitTest::GetInstance()->current_test_info()->name());
    testing::write_file(*dir_ / "train.txt", testing::small_corpus(800));
    testing::write_file(*dir_ / "val.txt", testing::small_corpus(100));
    testing::write_file(*dir_ / "cfg.yaml", resume_config(dir_->path().string()));
  }
  std::string train_cmd(int np, const std::string& out, const std::string& extra = "") {
    return (np > 0 ? mpirun(np) + " " : "") + testing::lora_bin() + " train " + (*dir_ / "cfg.yaml") +
           " --set run.output_dir=" + out + " " + extra;
  }
  std::unique_ptr<ScratchDir> dir_;
};

std::vector<float> params_of(const std::string& path) { return read_checkpoint(path).params; }

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Every element within float rounding of the other run's: |a - b| <= 1e-5 |a| + 4e-6 max |a|.
// Returns an empty string when they agree, else the first element that does not.
std::string rounding_mismatch(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
  double amax = 0.0;
  for (float v : a) amax = std::max(amax, double(std::fabs(v)));
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= 1e-5 * std::fabs(a[i]) + 4e-6 * amax))
      return "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]);
  }
  return "";
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Kills every process whose command line mentions `tag` with SIGKILL.
void kill9(const std::string& tag) { run_command("pkill -9 -f -- '" + tag + "'"); }

void wait_for_file(const std::string& path, double timeout_s = 120) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(path)) {
    ASSERT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), timeout_s)
        << "timed out waiting for " << path;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST_F(Resume, KillNineAndResumeIsBitIdenticalToAnUninterruptedRun) {
  const std::string straight = *dir_ / "straight", broken = *dir_ / "broken";
  // 30 steps, checkpoints every 10: the kill must land between ckpt-10 and ckpt-30 (20 steps).
  const std::string steps = "--set train.steps=30";
  auto r = run_command(train_cmd(2, straight, steps));
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Same run, killed with SIGKILL (every rank) right after its step-10 checkpoint appears.
  Spawned run(train_cmd(2, broken, steps));
  wait_for_file(broken + "/checkpoints/ckpt-10.h5");
  kill9("run.output_dir=" + broken);
  EXPECT_NE(run.wait(), 0) << run.output();
  ASSERT_FALSE(fs::exists(broken + "/checkpoints/ckpt-30.h5")) << "the kill came too late";

  auto resumed = run_command(train_cmd(2, broken, steps + " --resume auto"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resume: from " + broken + "/checkpoints/ckpt-"), std::string::npos)
      << resumed.output;

  const auto a = read_losses(straight + "/metrics.jsonl"), b = read_losses(broken + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 30u);
  ASSERT_EQ(b.size(), 30u);
  for (const auto& [step, loss] : a) EXPECT_EQ(b.at(step), loss) << "step " << step;
  EXPECT_TRUE(bits_equal(params_of(straight + "/checkpoints/ckpt-30.h5"),
                         params_of(broken + "/checkpoints/ckpt-30.h5")));
  const CheckpointState sa = read_checkpoint(straight + "/checkpoints/ckpt-30.h5");
  const CheckpointState sb = read_checkpoint(broken + "/checkpoints/ckpt-30.h5");
  EXPECT_TRUE(bits_equal(sa.adam_m, sb.adam_m));
  EXPECT_TRUE(bits_equal(sa.adam_v, sb.adam_v));
  EXPECT_EQ(sa.tokens_seen, sb.tokens_seen);
}

// A checkpoint written before the model family existed (format version 1, by the lora binary of
// that time; tests/data/checkpoints/v1) resumes with this binary, and steps 4-6 land on the
// adapters and AdamW moments that binary wrote at step 6 (dropout and gradient accumulation on),
// so neither the model refactoring nor the masked-loss normalisation changed GPT-2's math. Within
// float rounding, not bit for bit: the bits depend on the CPU the fixture was written on (the
// vector width -march=native gives our reductions, the sgemm kernel OpenBLAS picks for the CPU);
// on one machine, resuming is bit-exact (the other tests here). A changed formula moves the
// moments by far more than rounding (a loss scaled by 2 scales m by 2 and v by 4).
TEST_F(Resume, VersionOneCheckpointResumesToTheSameMath) {
  const std::string data = std::string(LORA_TEST_DATA) + "/checkpoints/v1";
  const std::string out = *dir_ / "v1";
  fs::create_directories(out + "/checkpoints");
  fs::copy_file(data + "/ckpt-3.h5", out + "/checkpoints/ckpt-3.h5");
  auto r = run_command(testing::lora_bin() + " train " + data + "/config.yaml --set run.output_dir=" +
                       out + " --resume auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resume: from " + out + "/checkpoints/ckpt-3.h5 at step 3"),
            std::string::npos)
      << r.output;
  const CheckpointState want = read_checkpoint(data + "/ckpt-6.h5");
  const CheckpointState got = read_checkpoint(out + "/checkpoints/ckpt-6.h5");
  EXPECT_EQ(got.step, 6);
  EXPECT_EQ(rounding_mismatch(want.params, got.params), "") << "adapters";
  EXPECT_EQ(rounding_mismatch(want.adam_m, got.adam_m), "") << "AdamW m";
  EXPECT_EQ(rounding_mismatch(want.adam_v, got.adam_v), "") << "AdamW v";
  EXPECT_EQ(want.tokens_seen, got.tokens_seen);
}

// Exact resume on a Llama-family model under 2 ranks: 12 steps straight equal 6 steps, then a
// resume that continues to 12 (constant learning rate, so the shorter first run has the same
// schedule), bit for bit in adapters, moments and losses.
TEST_F(Resume, LlamaStopAndResumeIsBitIdentical) {
  const std::string llama =
      "--set model.arch=llama --set model.n_head=4 --set model.n_kv_head=2 --set model.d_ff=96"
      " --set lora.targets=all-linear --set train.schedule=constant --set train.warmup_steps=0"
      " --set checkpoint.every=6 ";
  const std::string straight = *dir_ / "llama_straight", split = *dir_ / "llama_split";
  auto r = run_command(train_cmd(2, straight, llama + "--set train.steps=12"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(train_cmd(2, split, llama + "--set train.steps=6"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(train_cmd(2, split, llama + "--set train.steps=12 --resume auto"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("at step 6"), std::string::npos) << r.output;
  const CheckpointState a = read_checkpoint(straight + "/checkpoints/ckpt-12.h5");
  const CheckpointState b = read_checkpoint(split + "/checkpoints/ckpt-12.h5");
  EXPECT_TRUE(bits_equal(a.params, b.params));
  EXPECT_TRUE(bits_equal(a.adam_m, b.adam_m));
  EXPECT_TRUE(bits_equal(a.adam_v, b.adam_v));
  const auto la = read_losses(straight + "/metrics.jsonl"), lb = read_losses(split + "/metrics.jsonl");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (const auto& [step, loss] : la) EXPECT_EQ(lb.at(step), loss) << "step " << step;
  // A checkpoint of the Llama model is refused by a GPT-2 config, saying why.
  auto refused = run_command(train_cmd(0, split, "--set train.steps=12 --resume " + split +
                                                     "/checkpoints/ckpt-12.h5"));
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("checkpoint model.arch is llama but the config gives gpt2"),
            std::string::npos)
      << refused.output;
}

TEST_F(Resume, ACheckpointFromTwoRanksContinuesAtOneAndFourRanks) {
  const std::string straight = *dir_ / "straight";
  auto r = run_command(train_cmd(2, straight, "--set train.micro_batch=2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto ref_losses = read_losses(straight + "/metrics.jsonl");
  const auto ref_params = params_of(straight + "/checkpoints/ckpt-20.h5");
  for (int np : {1, 4}) {
    SCOPED_TRACE(::testing::Message() << np << " ranks");
    const std::string out = *dir_ / ("elastic" + std::to_string(np));
    fs::create_directories(out + "/checkpoints");
    fs::copy_file(straight + "/checkpoints/ckpt-10.h5", out + "/checkpoints/ckpt-10.h5");
    const int micro = 4 / np;  // global batch 4 sequences, as the 2-rank run with micro-batch 2
    auto e = run_command(train_cmd(np == 1 ? 0 : np, out,
                                   "--resume auto --set train.micro_batch=" + std::to_string(micro)));
    ASSERT_EQ(e.exit_code, 0) << e.output;
    EXPECT_NE(e.output.find("written by a world of 2); continuing with a world of " + std::to_string(np)),
              std::string::npos) << e.output;
    EXPECT_NE(e.output.find("changed train.micro_batch"), std::string::npos) << e.output;
    const auto losses = read_losses(out + "/metrics.jsonl");
    ASSERT_EQ(losses.size(), 20u);
    for (const auto& [step, loss] : ref_losses) EXPECT_NEAR(losses.at(step), loss, 1e-5) << "step " << step;
    EXPECT_LT(max_abs_diff(params_of(out + "/checkpoints/ckpt-20.h5"), ref_params), 1e-5);
  }
}

TEST_F(Resume, SigUsr1ToOneRankStopsAllWithACheckpointAndExit75) {
  const std::string straight = *dir_ / "straight", stopped = *dir_ / "stopped";
  const std::string longer = "--set train.steps=60 --set checkpoint.every=0";
  auto r = run_command(train_cmd(2, straight, longer));
  ASSERT_EQ(r.exit_code, 0) << r.output;

  Spawned run(train_cmd(2, stopped, longer + " --log-all-ranks"));
  ASSERT_TRUE(run.read_until("step 5/60")) << run.output();
  // One rank only: the newest lora process of this run.
  const std::string pid = run_command("pgrep -n -f -- '^" + testing::lora_bin() + ".*run.output_dir=" + stopped + "'").output;
  ASSERT_FALSE(pid.empty());
  ASSERT_EQ(::kill(std::stoi(pid), SIGUSR1), 0);
  // More signals to every rank while they stop and rank 0 writes: nothing changes.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  run_command("pkill -TERM -f -- '^" + testing::lora_bin() + ".*run.output_dir=" + stopped + "'");
  EXPECT_EQ(run.wait(), 75) << run.output();
  const auto scan = find_latest_checkpoint(stopped + "/checkpoints");
  ASSERT_TRUE(scan.latest_valid.has_value()) << run.output();
  EXPECT_GE(scan.latest_valid_step, 5);
  EXPECT_LT(scan.latest_valid_step, 60);

  auto resumed = run_command(train_cmd(2, stopped, longer + " --resume auto"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto a = read_losses(straight + "/metrics.jsonl"), b = read_losses(stopped + "/metrics.jsonl");
  ASSERT_EQ(b.size(), 60u);
  for (const auto& [step, loss] : a) EXPECT_EQ(b.at(step), loss) << "step " << step;
  EXPECT_TRUE(bits_equal(params_of(straight + "/checkpoints/ckpt-60.h5"),
                         params_of(stopped + "/checkpoints/ckpt-60.h5")));
}

TEST_F(Resume, KillNineAtRandomMomentsAlwaysLeavesAResumableCheckpoint) {
  const std::string out = *dir_ / "chaos";
  const std::string args = "--set train.steps=400 --set checkpoint.every=1 --set checkpoint.keep=2";
  std::mt19937 rng(1234);
  long last_step = 0;
  for (int round = 0; round < 5; ++round) {
    Spawned run(train_cmd(0, out, args + " --resume auto"));
    ASSERT_TRUE(run.read_until("step ")) << run.output();
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 200));
    ::kill(run.pid(), SIGKILL);
    run.wait();
    const auto scan = find_latest_checkpoint(out + "/checkpoints");
    ASSERT_TRUE(scan.latest_valid.has_value()) << "round " << round;
    EXPECT_GE(scan.latest_valid_step, last_step) << "round " << round;
    last_step = scan.latest_valid_step;
  }
  auto done = run_command(train_cmd(0, out, "--set train.steps=400 --set checkpoint.every=50 --resume auto"));
  ASSERT_EQ(done.exit_code, 0) << done.output;
  EXPECT_NE(done.output.find("resume: from"), std::string::npos) << done.output;
  EXPECT_TRUE(fs::exists(out + "/checkpoints/ckpt-400.h5"));
}

TEST_F(Resume, MismatchesAreRefusedAndSafeOverridesReported) {
  const std::string out = *dir_ / "base";
  ASSERT_EQ(run_command(train_cmd(0, out, "--set train.steps=10")).exit_code, 0);
  const std::string ckpt = out + "/checkpoints/ckpt-10.h5";
  auto r = run_command(train_cmd(0, *dir_ / "x1", "--resume " + ckpt + " --set lora.rank=8"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("lora.rank"), std::string::npos) << r.output;
  r = run_command(train_cmd(0, *dir_ / "x2", "--resume " + ckpt + " --set lora.targets=[attn.qkv]"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("lora.targets"), std::string::npos) << r.output;
  // Another base: weights saved by a full-mode run of the same shape.
  ASSERT_EQ(run_command(train_cmd(0, *dir_ / "full", "--set train.mode=full --set train.steps=2")).exit_code, 0);
  r = run_command(train_cmd(0, *dir_ / "x3", "--resume " + ckpt + " --set model.weights=" + (*dir_ / "full/model.safetensors")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("fingerprint"), std::string::npos) << r.output;
  r = run_command(train_cmd(0, *dir_ / "x4", "--resume " + ckpt + " --set train.steps=12 --set train.eval_every=4"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("changed train.steps: 10 -> 12"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("changed train.eval_every: 5 -> 4"), std::string::npos) << r.output;
  // A newer invalid checkpoint is reported and skipped by --resume auto.
  testing::write_file(out + "/checkpoints/ckpt-99.h5", "garbage");
  r = run_command(train_cmd(0, out, "--set train.steps=12 --resume auto"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("skipping invalid checkpoint " + out + "/checkpoints/ckpt-99.h5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 10"), std::string::npos) << r.output;
}

TEST_F(Resume, UnwritableCheckpointDirIsAnInputError) {
  testing::write_file(*dir_ / "a-file", "x");
  auto r = run_command(train_cmd(0, *dir_ / "u", "--set checkpoint.dir=" + (*dir_ / "a-file/ckpts")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("checkpoint.dir"), std::string::npos) << r.output;
}

TEST_F(Resume, ADiskFullMidRunIsExitOneWithThePreviousCheckpointIntact) {
  const std::string mnt = *dir_ / "small";
  fs::create_directories(mnt);
  // A tiny filesystem: room for one checkpoint of this model (about 130 KB) but not for two.
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=200k") != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here: " << std::strerror(errno);
  auto r = run_command(train_cmd(0, *dir_ / "full-disk", "--set checkpoint.dir=" + mnt +
                                 " --set checkpoint.every=5 --set checkpoint.keep=3"));
  const auto scan = find_latest_checkpoint(mnt);
  std::vector<std::string> leftovers;
  for (const auto& e : fs::directory_iterator(mnt)) leftovers.push_back(e.path().filename().string());
  ::umount2(mnt.c_str(), MNT_DETACH);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  ASSERT_TRUE(scan.latest_valid.has_value()) << r.output;
  // The newest checkpoint on disk is the last one the run reported as written.
  const auto last = r.output.rfind("checkpoint " + mnt + "/ckpt-");
  ASSERT_NE(last, std::string::npos) << r.output;
  EXPECT_EQ(r.output.substr(last + 11, r.output.find(' ', last + 11) - last - 11), *scan.latest_valid);
  EXPECT_LT(scan.latest_valid_step, 20);
  for (const auto& name : leftovers) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

}  // namespace
}  // namespace lora
