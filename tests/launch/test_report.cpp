// Run reports: the SVG writer (ticks, escaping, one polyline per series, log2 axis), metrics.jsonl
// parsing (values, malformed lines, a record cut short), the swept-key table of a hand-written
// sweep directory, and `lora report` on a real single run checked against its checkpoint and
// metrics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "launch/report.h"
#include "launch/svg_plot.h"
#include "tests/launch/harness.h"
#include "trainer/checkpoint.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::ScratchDir;
using testing::write_file;

using testing::count;
using testing::read_text;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// One CSV record (RFC 4180 quoting: "a,b" and "" for a quote inside).
std::vector<std::string> csv_row(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      out.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

TEST(SvgPlot, NiceTicksCoverTheRangeAtARoundStep) {
  const std::vector<std::pair<double, double>> ranges = {
      {0.0, 1.0}, {5.31, 5.44}, {-3.0, 7.0}, {0.0012, 0.0049}, {10.0, 400.0}, {2.5, 2.5}};
  for (const auto& [lo, hi] : ranges) {
    const auto t = nice_ticks(lo, hi, 6);
    ASSERT_GE(t.size(), 2u) << lo << " " << hi;
    EXPECT_LE(t.front(), lo + 1e-12) << lo;
    EXPECT_GE(t.back(), hi - 1e-12) << hi;
    EXPECT_LE(t.size(), 12u) << lo << " " << hi;
    const double step = t[1] - t[0];
    const double mantissa = step / std::pow(10.0, std::floor(std::log10(step)));
    bool round = false;
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) round |= std::fabs(mantissa - m) < 1e-6;
    EXPECT_TRUE(round) << "step " << step;
    for (size_t i = 1; i < t.size(); ++i) EXPECT_NEAR(t[i] - t[i - 1], step, step * 1e-6);
  }
  const auto unit = nice_ticks(0.0, 1.0, 6);
  ASSERT_EQ(unit.size(), 6u);
  EXPECT_NEAR(unit[1], 0.2, 1e-12);
}

TEST(SvgPlot, OnePolylinePerSeriesEscapedLabelsAndLegend) {
  PlotSpec spec;
  spec.title = "loss <by> step & \"rank\"";
  spec.x_label = "step";
  spec.y_label = "loss";
  std::vector<PlotSeries> series = {
      {"a<1>", {1, 2, 3}, {3.0, 2.5, 2.0}},
      {"b&c", {1, 2, 3}, {3.1, 2.9, NAN}},  // the NaN point is left out
      {"d", {0, 10}, {2.2, 2.1}},
  };
  const std::string svg = render_line_plot(spec, series);
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(count(svg, "<polyline"), 3u);
  EXPECT_EQ(count(svg, "<circle"), 7u);  // 3 + 2 + 2 finite points
  EXPECT_NE(svg.find("loss &lt;by&gt; step &amp; &quot;rank&quot;"), std::string::npos);
  EXPECT_NE(svg.find(">a&lt;1&gt;<"), std::string::npos);
  EXPECT_NE(svg.find(">b&amp;c<"), std::string::npos);
  EXPECT_EQ(svg.find("a<1>"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  // Every element opened is closed: as many '<' as '>' (the text has no raw ones).
  EXPECT_EQ(count(svg, "<"), count(svg, ">"));
  EXPECT_EQ(count(svg, "<g"), count(svg, "</g>"));
  EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
  // The second series has 2 finite points: "x,y x,y".
  const size_t second = svg.find("<polyline", svg.find("<polyline") + 1);
  const size_t pts = svg.find("points=\"", second) + 8;
  const std::string points = svg.substr(pts, svg.find('"', pts) - pts);
  EXPECT_EQ(split(points, ' ').size(), 2u) << points;
}

TEST(SvgPlot, Log2AxisTicksArePowersOfTwoAndPointsAreOrdered) {
  PlotSpec spec;
  spec.log2_x = true;
  spec.title = "rank";
  const std::string svg = render_line_plot(spec, {{"loss", {4, 8, 16, 32, 64}, {3, 2.5, 2.2, 2.1, 2.05}}});
  for (const char* tick : {">4<", ">8<", ">16<", ">32<", ">64<"})
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  // Equal ratios of x are equal distances on a log2 axis.
  const size_t pts = svg.find("points=\"") + 8;
  const auto points = split(svg.substr(pts, svg.find('"', pts) - pts), ' ');
  ASSERT_EQ(points.size(), 5u);
  std::vector<double> xs;
  for (const std::string& p : points) xs.push_back(std::stod(p.substr(0, p.find(','))));
  for (size_t i = 2; i < xs.size(); ++i) EXPECT_NEAR(xs[i] - xs[i - 1], xs[1] - xs[0], 0.15);
  EXPECT_GT(xs[1], xs[0]);

  const std::string empty = render_line_plot(spec, {});
  EXPECT_EQ(empty.rfind("<svg", 0), 0u);
  EXPECT_NE(empty.find("no data"), std::string::npos);
  EXPECT_EQ(count(empty, "<polyline"), 0u);
}

TEST(RunHistory, ReadsMetricsAndRejectsMalformedLines) {
  ScratchDir dir("report_history");
  const std::string path = dir / "metrics.jsonl";
  write_file(path,
             "{\"step\": 1, \"loss\": 5.5, \"tokens_per_s\": 100.0, \"comm_bytes_per_step\": 64}\n"
             "{\"step\": 2, \"loss\": 5.0, \"tokens_per_s\": 300.0, \"comm_bytes_per_step\": 64, \"val_loss\": 4.8}\n"
             "{\"step\": 3, \"loss\": 4.5, \"tokens_per_s\": 200.0, \"comm_bytes_per_step\": 64}\n"
             "{\"step\": 4, \"loss\": 4.0, \"tokens_per_s\": 500.0, \"comm_bytes_per_step\": 64, \"val_loss\": 4.9}\n"
             "{\"step\": 5, \"loss\": 3.9, \"tok");  // cut short by a killed run: skipped
  const RunHistory h = read_run_history(path);
  ASSERT_EQ(h.steps.size(), 4u);
  EXPECT_EQ(h.last_step(), 4);
  EXPECT_DOUBLE_EQ(h.final_train_loss(), 4.0);
  EXPECT_DOUBLE_EQ(h.final_val_loss(), 4.9);
  EXPECT_DOUBLE_EQ(h.best_val_loss(), 4.8);
  EXPECT_EQ(h.best_val_step(), 2);
  EXPECT_DOUBLE_EQ(h.median_tokens_per_s(), 300.0);  // of 300, 200, 500: the first step left out
  EXPECT_DOUBLE_EQ(h.comm_bytes_per_step, 64.0);

  write_file(path, "{\"step\": 1, \"loss\": 5.5}\n{\"step\": 2, \"loss\": }\n{\"step\": 3, \"loss\": 5.0}\n");
  try {
    read_run_history(path);
    FAIL() << "a malformed line must throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":2:"), std::string::npos) << e.what();
  }
  write_file(path, "{\"step\": 1, \"loss\": \"low\"}\n");
  EXPECT_THROW(read_run_history(path), InputError);
  EXPECT_TRUE(read_run_history(dir / "missing.jsonl").steps.empty());
}

// A sweep directory written by hand: 4 runs over rank x alpha, one without validation data.
TEST(Report, SweptKeysColumnsAndPlots) {
  ScratchDir dir("report_sweep");
  const int ranks[] = {4, 16, 4, 16};
  const int alphas[] = {8, 8, 32, 32};
  for (int i = 0; i < 4; ++i) {
    const std::string run = dir / ("00" + std::to_string(i) + "-run");
    fs::create_directories(run);
    std::ostringstream cfg;
    cfg << "run: {name: r" << i << ", output_dir: " << run << ", seed: 1}\n"
        << "model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}\n"
        << "lora: {rank: " << ranks[i] << ", alpha: " << alphas[i] << ", targets: [attn.qkv, mlp.fc]}\n"
        << "train: {mode: lora, steps: 4, lr: 0.01}\n"
        << "checkpoint: {dir: " << run << "/ck, every: 0}\n";
    write_file(run + "/config.yaml", cfg.str());
    std::ostringstream m;
    for (int s = 1; s <= 4; ++s) {
      m << "{\"step\": " << s << ", \"loss\": " << 5.0 - 0.1 * s - 0.01 * i
        << ", \"tokens_per_s\": 1000.0, \"comm_bytes_per_step\": 0";
      if (s % 2 == 0) m << ", \"val_loss\": " << 5.0 - 0.1 * s - 0.02 * i;
      m << "}\n";
    }
    write_file(run + "/metrics.jsonl", m.str());
  }
  fs::create_directories(dir / "not-a-run");  // ignored: no config.yaml

  const Report report = build_report(dir.path().string());
  ASSERT_EQ(report.runs.size(), 4u);
  EXPECT_EQ(report.swept_keys, (std::vector<std::string>{"lora.alpha", "lora.rank"}));
  EXPECT_EQ(report.runs[0].name, "000-run");

  const std::string csv = report_csv(report);
  const auto rows = split(csv, '\n');
  ASSERT_GE(rows.size(), 5u);
  const auto header = csv_row(rows[0]);
  const auto row3 = csv_row(rows[4]);
  ASSERT_EQ(header.size(), row3.size());
  auto col = [&](const std::string& name) {
    return std::find(header.begin(), header.end(), name) - header.begin();
  };
  EXPECT_EQ(row3[col("lora.rank")], "16");
  EXPECT_EQ(row3[col("lora.alpha")], "32");
  // rank 16 on attn.qkv and mlp.fc of 2 layers: A and B of (32 -> 96) and (32 -> 128).
  const long trainable = 2 * (16 * (32 + 96) + 16 * (32 + 128));
  EXPECT_EQ(row3[col("trainable_params")], std::to_string(trainable));
  EXPECT_EQ(row3[col("grad_bytes_per_step")], std::to_string(4 * trainable));
  EXPECT_EQ(row3[col("final_val_loss")], "4.540000");
  EXPECT_EQ(row3[col("best_val_loss")], "4.540000");
  EXPECT_EQ(row3[col("best_val_step")], "4");
  EXPECT_EQ(row3[col("steps")], "4");

  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("| run | lora.alpha | lora.rank |"), std::string::npos) << md;
  EXPECT_EQ(count(md, "\n"), 6u);  // header, rule, 4 rows

  const std::string val = val_loss_svg(report);
  EXPECT_EQ(count(val, "<polyline"), 4u);
  EXPECT_EQ(count(val, "<circle"), 8u);  // 2 evaluations per run
  const std::string by_rank = rank_vs_loss_svg(report);
  EXPECT_EQ(count(by_rank, "<polyline"), 2u);  // one line per alpha
  EXPECT_NE(by_rank.find(">lora.alpha=8<"), std::string::npos) << by_rank;
  EXPECT_NE(by_rank.find(">lora.alpha=32<"), std::string::npos) << by_rank;
  EXPECT_NE(by_rank.find(">16<"), std::string::npos);  // log2 ticks 4, 8, 16

  write_report(report);
  for (const char* f : {"report.csv", "report.md", "val_loss.svg", "rank_vs_loss.svg"})
    EXPECT_TRUE(fs::is_regular_file(dir.path() / f)) << f;
  EXPECT_EQ(read_text(dir / "report.csv"), csv);
  EXPECT_FALSE(fs::exists(dir.path() / "report.csv.tmp"));
}

TEST(Report, LoraReportOnASingleRunDirectory) {
  ScratchDir dir("report_single");
  write_file(dir / "train.txt", testing::small_corpus(600));
  write_file(dir / "val.txt", testing::small_corpus(120));
  write_file(dir / "tiny.yaml", testing::tiny_config(dir.path().string()));
  const std::string lora = testing::lora_bin();
  auto r = run_command(lora + " train " + (dir / "tiny.yaml") + " --set train.eval_every=2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string out = dir / "out";

  r = run_command(lora + " report " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = split(read_text(out + "/report.csv"), '\n');
  ASSERT_EQ(rows.size(), 3u);  // header, one run, the final newline
  const auto header = csv_row(rows[0]), row = csv_row(rows[1]);
  ASSERT_EQ(header.size(), row.size()) << rows[1];
  auto col = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    EXPECT_NE(it, header.end()) << name;
    return it - header.begin();
  };
  EXPECT_EQ(row[col("run")], "out");
  EXPECT_EQ(row[col("lora.rank")], "4");
  EXPECT_EQ(row[col("lora.alpha")], "8");
  EXPECT_EQ(row[col("lora.targets")], "[attn.qkv, attn.proj, mlp.fc, mlp.proj]");
  EXPECT_EQ(row[col("train.lr")], "0.01");
  EXPECT_EQ(row[col("steps")], "6");
  // The trainable count is the size of the adapters in the checkpoint.
  const CheckpointState c = read_checkpoint(out + "/checkpoints/ckpt-6.h5");
  EXPECT_EQ(row[col("trainable_params")], std::to_string(c.params.size()));
  const auto losses = testing::read_losses(out + "/metrics.jsonl");
  EXPECT_NEAR(std::stod(row[col("final_train_loss")]), losses.rbegin()->second, 1e-6);
  EXPECT_GT(std::stod(row[col("tokens_per_s")]), 0.0);
  EXPECT_EQ(row[col("best_val_step")].empty(), false);
  EXPECT_NE(row[col("final_val_loss")], "");

  EXPECT_NE(r.output.find("| run | lora.rank | lora.alpha | lora.targets | train.lr |"), std::string::npos)
      << r.output;
  const std::string svg = read_text(out + "/val_loss.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(count(svg, "<polyline"), 1u);
  EXPECT_EQ(count(svg, "<circle"), 3u);  // evaluations at steps 2, 4, 6
  EXPECT_TRUE(fs::is_regular_file(out + "/rank_vs_loss.svg"));
  EXPECT_TRUE(fs::is_regular_file(out + "/report.md"));

  r = run_command(lora + " report " + (dir / "train.txt"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("not a directory"), std::string::npos) << r.output;
  fs::create_directories(dir.path() / "empty");
  r = run_command(lora + " report " + (dir / "empty"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no runs found"), std::string::npos) << r.output;
  r = run_command(lora + " report");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace lora
