// `lora sweep` end to end on a tiny config: a rank sweep under mpirun (one group of 2 ranks, and
// two groups of 2 ranks giving the same results), a sweep stopped by a signal mid-run and resumed
// (finished runs untouched, the interrupted one continuing from its checkpoint), --list, --only,
// --emit-slurm, and malformed sweep files (tests/data/sweeps) giving exit 2 with FILE:LINE and key.
#include <gtest/gtest.h>

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/json.h"
#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::read_losses;
using testing::run_command;
using testing::ScratchDir;
using testing::write_file;

std::string lora_cmd(const std::string& args) { return testing::lora_bin() + " " + args; }

using testing::count;
using testing::read_text;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream is(text);
  for (std::string line; std::getline(is, line);) out.push_back(line);
  return out;
}

json::Value done_json(const std::string& run_dir) {
  return json::parse(read_text(run_dir + "/done.json"));
}

class Sweep : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<ScratchDir>(
        std::string("sweep_") + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    write_file(*dir_ / "train.txt", testing::small_corpus(600));
    write_file(*dir_ / "val.txt", testing::small_corpus(120));
    write_file(*dir_ / "tiny.yaml", testing::tiny_config(dir_->path().string()));
  }
  // A sweep file next to tiny.yaml whose runs go to <scratch>/<out>.
  std::string sweep_file(const std::string& name, const std::string& out, const std::string& body) {
    write_file(*dir_ / name, "base: tiny.yaml\noutput_dir: " + (*dir_ / out) + "\n" + body);
    return *dir_ / name;
  }
  std::unique_ptr<ScratchDir> dir_;
};

constexpr const char* kRankSweep =
    "ranks_per_run: 2\n"
    "set: {train.steps: 6, train.eval_every: 3}\n"
    "grid:\n"
    "  lora.rank: [2, 4, 8]\n";

TEST_F(Sweep, RankSweepTrainsEveryPointAndWritesTheReport) {
  const std::string file = sweep_file("ranks.yaml", "one-group", kRankSweep);
  auto r = run_command(testing::mpirun(2) + " " + lora_cmd("sweep " + file));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string out = *dir_ / "one-group";
  const std::vector<std::string> names = {"000-rank2", "001-rank4", "002-rank8"};
  const int ranks[] = {2, 4, 8};
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string run = out + "/" + names[i];
    const CheckpointState c = read_checkpoint(run + "/checkpoints/ckpt-6.h5");
    EXPECT_EQ(c.step, 6) << names[i];
    EXPECT_EQ(c.lora.rank, ranks[i]) << names[i];
    EXPECT_EQ(c.world_size, 2) << names[i];  // each run is data-parallel over its group
    const json::Value done = done_json(run);
    EXPECT_EQ(done.find("steps")->as_int64(), 6);
    EXPECT_EQ(static_cast<size_t>(done.find("n_trainable")->as_int64()), c.params.size());
    EXPECT_EQ(read_losses(run + "/metrics.jsonl").size(), 6u);
    // Only the group's rank 0 prints, each line prefixed with the run name.
    EXPECT_EQ(count(r.output, "[" + names[i] + "] step 6/6"), 1u) << r.output;
  }

  const auto csv = lines_of(read_text(out + "/report.csv"));
  ASSERT_EQ(csv.size(), 4u) << read_text(out + "/report.csv");
  EXPECT_EQ(csv[0].rfind("run,lora.rank,", 0), 0u) << csv[0];  // the swept key is a column
  EXPECT_EQ(csv[1].rfind("000-rank2,2,", 0), 0u) << csv[1];
  EXPECT_EQ(csv[3].rfind("002-rank8,8,", 0), 0u) << csv[3];
  EXPECT_NE(r.output.find("| 001-rank4 | 4 |"), std::string::npos) << r.output;  // printed table
  EXPECT_TRUE(fs::exists(out + "/report.md"));

  const std::string val_svg = read_text(out + "/val_loss.svg");
  EXPECT_EQ(val_svg.rfind("<svg", 0), 0u);
  EXPECT_NE(val_svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(val_svg, "<polyline"), 3u);  // one line per run
  for (const std::string& n : names) EXPECT_NE(val_svg.find(">" + n + "<"), std::string::npos) << n;
  const std::string rank_svg = read_text(out + "/rank_vs_loss.svg");
  EXPECT_EQ(rank_svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(count(rank_svg, "<polyline"), 1u);
  EXPECT_EQ(count(rank_svg, "<circle"), 3u);  // a point per rank
  EXPECT_NE(rank_svg.find("lora.rank"), std::string::npos);
}

TEST_F(Sweep, TwoGroupsGiveTheSameRunsAsOne) {
  const std::string one = sweep_file("one.yaml", "g1", kRankSweep);
  const std::string two = sweep_file("two.yaml", "g2", kRankSweep);
  auto r1 = run_command(testing::mpirun(2) + " " + lora_cmd("sweep " + one));
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  auto r2 = run_command(testing::mpirun(4) + " " + lora_cmd("sweep " + two));
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(r2.output.find("2 groups of 2 ranks"), std::string::npos) << r2.output;
  for (const char* name : {"000-rank2", "001-rank4", "002-rank8"}) {
    const auto a = read_losses(*dir_ / ("g1/" + std::string(name) + "/metrics.jsonl"));
    const auto b = read_losses(*dir_ / ("g2/" + std::string(name) + "/metrics.jsonl"));
    ASSERT_EQ(a.size(), 6u) << name;
    ASSERT_EQ(b.size(), 6u) << name;
    for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5) << name << " step " << step;
  }
  EXPECT_EQ(lines_of(read_text(*dir_ / "g2/report.csv")).size(), 4u);
}

TEST_F(Sweep, StoppedSweepResumesOnlyTheUnfinishedRuns) {
  // The middle point trains long enough to be stopped while it runs.
  const std::string file = sweep_file("stop.yaml", "stop",
                                      "ranks_per_run: 2\n"
                                      "set: {train.steps: 6}\n"
                                      "list:\n"
                                      "  - {lora.rank: 2}\n"
                                      "  - {lora.rank: 4, train.steps: 300}\n"
                                      "  - {lora.rank: 8}\n");
  const std::string out = *dir_ / "stop";
  const std::string first = out + "/000-rank2", second = out + "/001-rank4-steps300",
                    third = out + "/002-rank8";
  {
    testing::Spawned run(testing::mpirun(2) + " " + lora_cmd("sweep " + file));
    ASSERT_TRUE(run.read_until("[001-rank4-steps300] step 3/300")) << run.output();
    // mpirun forwards SIGUSR1 to every rank (SIGTERM to mpirun itself kills the ranks after a
    // short grace period); lora treats both the same: checkpoint, exit 75.
    ::kill(run.pid(), SIGUSR1);
    EXPECT_EQ(run.wait(), 75) << run.output();
    EXPECT_NE(run.output().find("[001-rank4-steps300] lora: stopped by signal"), std::string::npos)
        << run.output();
  }
  ASSERT_TRUE(fs::exists(first + "/done.json"));
  EXPECT_FALSE(fs::exists(second + "/done.json"));
  EXPECT_FALSE(fs::exists(third));
  EXPECT_FALSE(fs::exists(out + "/report.csv"));
  const auto stopped_at = find_latest_checkpoint(second + "/checkpoints");
  ASSERT_TRUE(stopped_at.latest_valid.has_value());
  ASSERT_GE(stopped_at.latest_valid_step, 3);
  ASSERT_LT(stopped_at.latest_valid_step, 300);

  const auto done_time = fs::last_write_time(first + "/done.json");
  const auto metrics_time = fs::last_write_time(first + "/metrics.jsonl");
  const std::string done_text = read_text(first + "/done.json");
  const std::string metrics_text = read_text(first + "/metrics.jsonl");

  auto r = run_command(testing::mpirun(2) + " " + lora_cmd("sweep " + file));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[000-rank2] lora: finished earlier"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[000-rank2] step"), std::string::npos) << r.output;
  const std::string resumed = "[001-rank4-steps300] lora: resume: from " + *stopped_at.latest_valid +
                              " at step " + std::to_string(stopped_at.latest_valid_step);
  EXPECT_NE(r.output.find(resumed), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[002-rank8] lora: resume: no valid checkpoint"), std::string::npos) << r.output;

  EXPECT_EQ(fs::last_write_time(first + "/done.json"), done_time);
  EXPECT_EQ(fs::last_write_time(first + "/metrics.jsonl"), metrics_time);
  EXPECT_EQ(read_text(first + "/done.json"), done_text);
  EXPECT_EQ(read_text(first + "/metrics.jsonl"), metrics_text);
  // The resumed run's history is whole: every step once, before and after the stop.
  const auto losses = read_losses(second + "/metrics.jsonl");
  EXPECT_EQ(losses.size(), 300u);
  EXPECT_EQ(losses.begin()->first, 1);
  EXPECT_EQ(losses.rbegin()->first, 300);
  EXPECT_EQ(done_json(second).find("steps")->as_int64(), 300);
  EXPECT_EQ(done_json(third).find("steps")->as_int64(), 6);
  EXPECT_EQ(lines_of(read_text(out + "/report.csv")).size(), 4u);

  // A third run has nothing left to train.
  r = run_command(testing::mpirun(2) + " " + lora_cmd("sweep " + file));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, "finished earlier"), 3u) << r.output;
  EXPECT_EQ(r.output.find(" step "), std::string::npos) << r.output;
}

TEST_F(Sweep, ListOnlyAndEmitSlurm) {
  const std::string file = sweep_file("grid.yaml", "grid",
                                      "ranks_per_run: 2\n"
                                      "set: {train.steps: 4}\n"
                                      "grid:\n"
                                      "  lora.rank: [2, 4]\n"
                                      "  lora.alpha: [8, 16]\n"
                                      "list:\n"
                                      "  - {lora.targets: [attn.qkv, mlp.fc]}\n");
  const std::string out = *dir_ / "grid";
  auto r = run_command(lora_cmd("sweep " + file + " --list"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto lines = lines_of(r.output);
  ASSERT_EQ(lines.size(), 4u) << r.output;  // 1 list entry x 2 ranks x 2 alphas
  EXPECT_EQ(lines[0], "0\t" + out + "/000-targets_attn.qkv_mlp.fc-rank2-alpha8\t"
                      "lora.targets=[attn.qkv, mlp.fc] lora.rank=2 lora.alpha=8");
  EXPECT_EQ(lines[3], "3\t" + out + "/003-targets_attn.qkv_mlp.fc-rank4-alpha16\t"
                      "lora.targets=[attn.qkv, mlp.fc] lora.rank=4 lora.alpha=16");
  EXPECT_FALSE(fs::exists(out)) << "--list trains nothing";

  // --only I: that point alone, on the whole (here single-process) job.
  r = run_command(lora_cmd("sweep " + file + " --only 2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string run = out + "/002-targets_attn.qkv_mlp.fc-rank4-alpha8";
  const CheckpointState c = read_checkpoint(run + "/checkpoints/ckpt-4.h5");
  EXPECT_EQ(c.lora.rank, 4);
  EXPECT_FLOAT_EQ(c.lora.alpha, 8.0f);
  EXPECT_EQ(c.lora.targets.size(), 2u);
  EXPECT_EQ(c.world_size, 1);
  size_t n_dirs = 0;
  for (const auto& e : fs::directory_iterator(out)) n_dirs += e.is_directory() ? 1 : 0;
  EXPECT_EQ(n_dirs, 1u);
  EXPECT_FALSE(fs::exists(out + "/report.csv")) << "the report waits for every point";
  EXPECT_NE(r.output.find("1 of 4 runs finished"), std::string::npos) << r.output;

  r = run_command(lora_cmd("sweep " + file + " --only 4"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--only 4"), std::string::npos) << r.output;

  const std::string script = *dir_ / "sweep.sbatch";
  r = run_command(lora_cmd("sweep " + file + " --emit-slurm " + script + " --max-parallel 2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string text = read_text(script);
  EXPECT_EQ(text.rfind("#!/bin/bash\n", 0), 0u);
  EXPECT_NE(text.find("\n#SBATCH --array=0-3%2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\n#SBATCH --ntasks=2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("srun --ntasks=2"), std::string::npos) << text;
  EXPECT_NE(text.find("sweep '" + file + "' --only \"$SLURM_ARRAY_TASK_ID\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"$rc\" -eq 75"), std::string::npos) << text;
  EXPECT_NE(text.find("scontrol requeue"), std::string::npos) << text;
  EXPECT_EQ(run_command("bash -n " + script).exit_code, 0) << "the script is valid bash";
  EXPECT_TRUE(fs::is_directory(out)) << "slurm's --output directory must exist before the job starts";
}

TEST_F(Sweep, BadSweepFilesAreExitTwoNamingFileLineAndKey) {
  size_t n_files = 0;
  for (const auto& entry : fs::directory_iterator(std::string(LORA_TEST_DATA) + "/sweeps")) {
    if (entry.path().extension() != ".yaml") continue;
    ++n_files;
    const std::string name = entry.path().filename().string();
    const std::string text = read_text(entry.path().string());
    ASSERT_EQ(text.rfind("# expect: ", 0), 0u) << name << " lacks its # expect: line";
    const std::string expect = text.substr(10, text.find('\n') - 10);
    // Copied next to tiny.yaml, which the files use as their base.
    write_file(*dir_ / name, text);
    auto r = run_command("cd " + dir_->path().string() + " && " + lora_cmd("sweep " + name));
    EXPECT_EQ(r.exit_code, 2) << name << ":\n" << r.output;
    EXPECT_NE(r.output.find(name + expect), std::string::npos)
        << name << ": expected '" << name + expect << "' in:\n" << r.output;
    EXPECT_FALSE(fs::exists(dir_->path() / "runs")) << name << ": nothing may train";
  }
  EXPECT_GE(n_files, 10u);

  // ranks_per_run must divide the job's ranks.
  const std::string file = sweep_file("rpr.yaml", "rpr", "ranks_per_run: 2\ngrid: {lora.rank: [2, 4]}\n");
  auto r = run_command(testing::mpirun(3) + " " + lora_cmd("sweep " + file));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("rpr.yaml:3: ranks_per_run: 2 does not divide the job's 3 ranks"),
            std::string::npos) << r.output;
  r = run_command(lora_cmd("sweep " + file));  // one process, two ranks per run
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("ranks_per_run: 2 does not divide the job's 1 rank"), std::string::npos)
      << r.output;
  r = run_command(lora_cmd("sweep " + file + " --ranks-per-run 0"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--ranks-per-run"), std::string::npos) << r.output;
  r = run_command(lora_cmd("sweep " + *dir_ / "nonexistent.yaml"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("nonexistent.yaml: sweep file does not exist"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(*dir_ / "rpr"));
}

TEST_F(Sweep, HelpTexts) {
  auto r = run_command(lora_cmd("sweep --help"));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("usage: lora sweep SWEEP.yaml"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--emit-slurm"), std::string::npos) << r.output;
  r = run_command(lora_cmd("report --help"));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("usage: lora report DIR"), std::string::npos) << r.output;
  r = run_command(lora_cmd("--help"));
  EXPECT_NE(r.output.find("sweep SWEEP.yaml"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("report DIR"), std::string::npos) << r.output;
  r = run_command(lora_cmd("sweep"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("needs a sweep file"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace lora
