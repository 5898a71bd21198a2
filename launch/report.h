// Run reports: `lora report DIR` and the report `lora sweep` writes when every run has finished.
//
// DIR is a sweep's output directory (subdirectories holding config.yaml and metrics.jsonl, taken in
// name order) or one run's directory. For each run the report reads config.yaml (yaml-cpp,
// flattened to dotted leaf keys) and metrics.jsonl (one JSON object per logged step), plus
// done.json when the run was part of a sweep. It writes into DIR:
//   report.csv      one row per run (columns below), numbers in full precision, empty when unknown
//   report.md       the same table in Markdown (also printed by `lora report`)
//   val_loss.svg    validation loss against step, one polyline per run (train loss for runs
//                   without validation data)
//   rank_vs_loss.svg final validation loss against lora.rank on a log2 axis, one line per
//                   combination of the other swept keys
// Columns: run, then the swept keys (config keys whose values differ between runs, apart from
// run.name, run.output_dir and checkpoint.dir; for a single run lora.rank, lora.alpha,
// lora.targets and train.lr), then steps, train_steps, trainable_params, grad_bytes_per_step
// (fp32 gradient bytes a data-parallel step all-reduces), comm_bytes_per_step (measured; 0 on one
// rank), tokens_per_s (median over logged steps), final_train_loss, final_val_loss,
// best_val_loss, best_val_step.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace lora {

// What metrics.jsonl says about a run.
struct RunHistory {
  std::vector<long> steps;           // every logged step
  std::vector<double> train_loss;    // per logged step
  std::vector<long> val_steps;       // steps with a validation loss
  std::vector<double> val_loss;
  std::vector<double> tokens_per_s;  // per logged step
  double comm_bytes_per_step = 0.0;  // of the last logged step
  long last_step() const { return steps.empty() ? 0 : steps.back(); }
  double final_train_loss() const;
  double final_val_loss() const;
  double best_val_loss() const;
  long best_val_step() const;        // -1 without validation
  double median_tokens_per_s() const;  // the first logged step (warm-up) left out when others exist
};

// Reads metrics.jsonl with lora::json::parse per line. A malformed line throws lora::InputError
// naming PATH:LINE; a malformed last line without its newline (a run killed mid-write) is skipped.
// A missing file gives an empty history.
RunHistory read_run_history(const std::string& metrics_path);

struct RunRecord {
  std::string name;  // the directory's name
  std::string dir;
  std::map<std::string, std::string> config;  // "lora.rank" -> "8" (YAML flow text)
  RunHistory history;
  long train_steps = 0;  // train.steps of the config
  long n_trainable = -1;  // -1: unknown
};

struct Report {
  std::string dir;
  std::vector<std::string> swept_keys;
  std::vector<RunRecord> runs;
};

// Reads every run under dir. Throws lora::InputError when dir holds no run.
Report build_report(const std::string& dir);
// Reads the given run directories (in this order); the report goes into dir.
Report build_report(const std::string& dir, const std::vector<std::string>& run_dirs);

std::string report_csv(const Report& report);
std::string report_markdown(const Report& report);
std::string val_loss_svg(const Report& report);
std::string rank_vs_loss_svg(const Report& report);

// Writes report.csv, report.md, val_loss.svg and rank_vs_loss.svg into report.dir (each atomically:
// a temporary file renamed into place).
void write_report(const Report& report);

// Flattens a YAML config text into dotted leaf keys with their YAML flow text.
std::map<std::string, std::string> flatten_config_yaml(const std::string& yaml_text,
                                                       const std::string& source_name);

// Writes text to path through path.tmp and a rename, so readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& text);

// `lora report DIR`: builds and writes the report, prints the Markdown table. Returns 0.
int run_report(const std::string& dir);

}  // namespace lora
