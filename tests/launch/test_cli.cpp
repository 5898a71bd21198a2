// The `lora` binary end to end on a tiny config: help texts, train/eval/generate, full-mode
// weights reloaded as a base, loss falling on real text, Ctrl-C, and bad input giving exit 2 with a
// message that names the problem.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <thread>

#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

using testing::read_losses;
using testing::run_command;
using testing::ScratchDir;
using testing::tiny_config;
using testing::write_file;

std::string lora_cmd(const std::string& args) { return testing::lora_bin() + " " + args; }

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<ScratchDir>(::testing::UnitTest::GetInstance()->current_test_info()->name());
    write_file(*dir_ / "train.txt", testing::small_corpus(600));
    write_file(*dir_ / "val.txt", testing::small_corpus(120));
    write_file(*dir_ / "tiny.yaml", tiny_config(dir_->path().string()));
    write_file(*dir_ / "tiny-full.yaml", tiny_config(dir_->path().string(), "full"));
  }
  std::string cfg(const char* name = "tiny.yaml") { return *dir_ / name; }
  std::unique_ptr<ScratchDir> dir_;
};

TEST_F(Cli, HelpForEveryCommand) {
  auto r = run_command(lora_cmd("--help"));
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"train", "eval", "generate", "inspect"}) {
    EXPECT_NE(r.output.find(c), std::string::npos) << c;
    auto sub = run_command(lora_cmd(std::string(c) + " --help"));
    EXPECT_EQ(sub.exit_code, 0) << c;
    EXPECT_NE(sub.output.find(std::string("usage: lora ") + c), std::string::npos) << sub.output;
  }
  EXPECT_EQ(run_command(lora_cmd("")).exit_code, 0);  // no arguments: the help
}

TEST_F(Cli, UnknownCommandAndOptionAreInputErrors) {
  auto r = run_command(lora_cmd("frobnicate x.yaml"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
  r = run_command(lora_cmd("frobnicate --help"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
  r = run_command(lora_cmd("train " + cfg() + " --bogus"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown option '--bogus'"), std::string::npos) << r.output;
  r = run_command(lora_cmd("train"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("needs a config file"), std::string::npos) << r.output;
}

TEST_F(Cli, TrainEvalGenerateEndToEnd) {
  auto r = run_command(lora_cmd("train " + cfg()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("params trainable"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("all-reduce per step"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 6/6"), std::string::npos) << r.output;
  const std::string out = *dir_ / "out";
  EXPECT_EQ(read_losses(out + "/metrics.jsonl").size(), 6u);
  EXPECT_TRUE(std::filesystem::exists(out + "/config.yaml"));
  const std::string ckpt = out + "/checkpoints/ckpt-6.h5";
  ASSERT_TRUE(std::filesystem::exists(ckpt)) << r.output;
  EXPECT_EQ(read_checkpoint(ckpt).step, 6);

  // The resolved config is itself a valid config.
  EXPECT_EQ(run_command(lora_cmd("eval " + out + "/config.yaml")).exit_code, 0);

  auto before = run_command(lora_cmd("eval " + cfg()));
  auto after = run_command(lora_cmd("eval " + cfg() + " --adapter " + ckpt));
  ASSERT_EQ(before.exit_code, 0) << before.output;
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_NE(before.output.find("val loss"), std::string::npos);
  EXPECT_NE(before.output, after.output);  // the adapter changes the loss

  auto g1 = run_command(lora_cmd("generate " + cfg() + " --adapter " + ckpt + " --prompt 'the cat' --tokens 20"));
  auto g2 = run_command(lora_cmd("generate " + cfg() + " --adapter " + ckpt + " --prompt 'the cat' --tokens 20"));
  ASSERT_EQ(g1.exit_code, 0) << g1.output;
  EXPECT_EQ(g1.output, g2.output);  // greedy is deterministic
  EXPECT_EQ(g1.output.rfind("the cat", 0), 0u) << g1.output;
  EXPECT_EQ(g1.output.size(), std::string("the cat").size() + 20 + 1) << g1.output;
  auto s1 = run_command(lora_cmd("generate " + cfg() + " --prompt 'the' --tokens 40 --temperature 1.5 --seed 1"));
  auto s2 = run_command(lora_cmd("generate " + cfg() + " --prompt 'the' --tokens 40 --temperature 1.5 --seed 2"));
  ASSERT_EQ(s1.exit_code, 0) << s1.output;
  EXPECT_NE(s1.output, s2.output);  // sampling depends on the seed

  auto inspect = run_command(lora_cmd("inspect " + ckpt));
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("h.1.mlp.c_proj"), std::string::npos) << inspect.output;
}

TEST_F(Cli, FullModeWeightsLoadAsABase) {
  auto r = run_command(lora_cmd("train " + cfg("tiny-full.yaml") + " --set run.output_dir=" + (*dir_ / "full")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string weights = *dir_ / "full/model.safetensors";
  ASSERT_TRUE(std::filesystem::exists(weights));
  // Evaluating the base through model.weights gives exactly what the full run's final
  // checkpoint gives.
  auto losses = run_command(lora_cmd("eval " + cfg() + " --set model.weights=" + weights));
  ASSERT_EQ(losses.exit_code, 0) << losses.output;
  const auto scan = find_latest_checkpoint(*dir_ / "full/checkpoints");
  ASSERT_TRUE(scan.latest_valid.has_value());
  auto from_ckpt = run_command(lora_cmd("eval " + cfg("tiny-full.yaml") + " --adapter " + *scan.latest_valid));
  ASSERT_EQ(from_ckpt.exit_code, 0) << from_ckpt.output;
  const auto p = from_ckpt.output.find("val loss ");
  const auto q = losses.output.find("val loss ");
  ASSERT_NE(p, std::string::npos) << from_ckpt.output;
  ASSERT_NE(q, std::string::npos) << losses.output;
  EXPECT_NEAR(std::stod(losses.output.substr(q + 9)), std::stod(from_ckpt.output.substr(p + 9)), 1e-6);
  auto lr = run_command(lora_cmd("train " + cfg() + " --set model.weights=" + weights +
                                 " --set run.output_dir=" + (*dir_ / "on-base")));
  EXPECT_EQ(lr.exit_code, 0) << lr.output;
}

TEST_F(Cli, LossFallsOnRealText) {
  const std::string corpus = "/usr/share/games/fortunes/science";
  if (!std::filesystem::exists(corpus)) GTEST_SKIP() << corpus << " not installed (package fortunes)";
  auto r = run_command(lora_cmd("train " + cfg("tiny-full.yaml") + " --set data.train=" + corpus +
                                " --set data.val=" + corpus + " --set train.steps=40 --set train.lr=0.01" +
                                " --set run.output_dir=" + (*dir_ / "real")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto losses = read_losses(*dir_ / "real/metrics.jsonl");
  ASSERT_EQ(losses.size(), 40u);
  const double first = losses.begin()->second, last = losses.rbegin()->second;
  EXPECT_GT(first, 5.0);         // about log(256) = 5.55 at random init
  EXPECT_LT(last, first - 1.5);  // byte statistics of English are learnt within a few dozen steps
}

TEST_F(Cli, CtrlCStopsAtAStepBoundaryWithACheckpoint) {
  const std::string out = *dir_ / "sigint";
  testing::Spawned run(lora_cmd("train " + cfg() + " --set train.steps=100000 --set run.output_dir=" + out));
  ASSERT_TRUE(run.read_until("step 3/")) << run.output();
  ::kill(run.pid(), SIGINT);
  EXPECT_EQ(run.wait(), 130) << run.output();
  const std::string& output = run.output();
  const auto scan = find_latest_checkpoint(out + "/checkpoints");
  ASSERT_TRUE(scan.latest_valid.has_value()) << output;
  EXPECT_GE(scan.latest_valid_step, 3);
  EXPECT_NE(output.find("stopped by signal"), std::string::npos) << output;
}

struct BadCase {
  const char* name;
  std::string args;     // appended to `lora train CONFIG`
  const char* expect;   // fragment of the message
};

TEST_F(Cli, BadInputIsExitTwoWithAMessage) {
  write_file(*dir_ / "garbage.safetensors", "this is not a safetensors file");
  write_file(*dir_ / "short.safetensors", std::string("\x10\x00\x00\x00\x00\x00\x00\x00{}", 10));
  write_file(*dir_ / "not.h5", "not hdf5 at all");
  write_file(*dir_ / "bad.yaml", "run: {name: x\n  output_dir: [\n");
  const std::vector<BadCase> cases = {
      {"unknown key", " --set train.stepz=5", "train.stepz"},
      {"wrong type", " --set train.steps=abc", "train.steps"},
      {"rank too large", " --set lora.rank=1000", "lora.rank"},
      {"rank zero", " --set lora.rank=0", "lora.rank"},
      {"seq_len too long", " --set data.seq_len=64", "data.seq_len"},
      {"n_head", " --set model.n_head=5", "n_head"},
      {"missing data", " --set data.train=/nonexistent/train.txt", "/nonexistent/train.txt"},
      {"garbage weights", " --set model.weights=" + (*dir_ / "garbage.safetensors"), "garbage.safetensors"},
      {"truncated weights", " --set model.weights=" + (*dir_ / "short.safetensors"), "short.safetensors"},
      {"resume not hdf5", " --resume " + (*dir_ / "not.h5"), "not.h5"},
      {"missing resume file", " --resume " + (*dir_ / "none.h5"), "none.h5"},
  };
  for (const BadCase& c : cases) {
    auto r = run_command(lora_cmd("train " + cfg() + c.args));
    EXPECT_EQ(r.exit_code, 2) << c.name << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.name << ": " << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << c.name << ": " << r.output;
  }
  auto r = run_command(lora_cmd("train " + (*dir_ / "bad.yaml")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.yaml"), std::string::npos) << r.output;
  r = run_command(lora_cmd("inspect " + (*dir_ / "not.h5")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_command(lora_cmd("generate " + cfg()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--prompt"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace lora
