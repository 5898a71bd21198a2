// Run reports (see report.h): read each run's config.yaml, metrics.jsonl and done.json, find the
// keys that differ between runs, and write a CSV table, a Markdown table and two SVG plots.
#include "launch/report.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/json.h"
#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"
#include "launch/svg_plot.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Keys that name a run rather than describe it: never "swept".
bool is_identity_key(const std::string& key) {
  return key == "run.name" || key == "run.output_dir" || key == "checkpoint.dir";
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string flow_text(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsScalar()) return node.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << node;
  return e.c_str();
}

void flatten(const YAML::Node& node, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      flatten(it->second, prefix.empty() ? key : prefix + "." + key, out);
    }
    return;
  }
  out[prefix] = flow_text(node);
}

// Trainable parameters implied by a flattened resolved config; -1 when it cannot be worked out.
long trainable_from_config(const std::map<std::string, std::string>& c) {
  try {
    auto get = [&](const char* key) -> const std::string& {
      auto it = c.find(key);
      if (it == c.end()) throw InputError(std::string("missing ") + key);
      return it->second;
    };
    auto get_or = [&](const char* key, int fallback) {
      auto it = c.find(key);
      return it == c.end() ? fallback : std::stoi(it->second);
    };
    ModelSpec sizes;
    sizes.vocab_size = std::stoi(get("model.vocab_size"));
    sizes.n_layer = std::stoi(get("model.n_layer"));
    sizes.n_head = std::stoi(get("model.n_head"));
    sizes.n_kv_head = get_or("model.n_kv_head", 0);
    sizes.d_model = std::stoi(get("model.d_model"));
    sizes.d_ff = get_or("model.d_ff", 0);
    sizes.max_seq_len = std::stoi(get("model.max_seq_len"));
    auto arch_it = c.find("model.arch");
    ModelSpec shape = family_spec(arch_it == c.end() ? "gpt2" : arch_it->second, sizes);
    auto tie_it = c.find("model.tie_embeddings");
    if (tie_it != c.end()) shape.tied_embeddings = tie_it->second == "true";
    if (get("train.mode") == "full") return static_cast<long>(BaseLayout(shape).n_params());
    LoraSpec spec;
    spec.rank = std::stoi(get("lora.rank"));
    spec.targets.clear();
    const YAML::Node targets = YAML::Load(get("lora.targets"));
    for (const YAML::Node& t : targets) {
      auto target = parse_lora_target(t.as<std::string>(), shape);
      if (!target) return -1;
      spec.targets.push_back(*target);
    }
    return static_cast<long>(LoraLayout(shape, spec).n_params());
  } catch (const std::exception&) {
    return -1;
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string md_field(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

std::string fmt(const char* format, double v) {
  if (!std::isfinite(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string fmt_long(long v) { return v < 0 ? "" : std::to_string(v); }

// The table both formats share: header and one row of cells per run; `precise` picks the CSV's
// full-precision numbers over the Markdown's rounded ones.
std::vector<std::vector<std::string>> table(const Report& r, bool precise) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header{"run"};
  for (const std::string& k : r.swept_keys) header.push_back(k);
  for (const char* c : {"steps", "train_steps", "trainable_params", "grad_bytes_per_step",
                        "comm_bytes_per_step", "tokens_per_s", "final_train_loss", "final_val_loss",
                        "best_val_loss", "best_val_step"})
    header.push_back(c);
  rows.push_back(header);
  const char* loss_fmt = precise ? "%.6f" : "%.4f";
  for (const RunRecord& run : r.runs) {
    std::vector<std::string> row{run.name};
    for (const std::string& k : r.swept_keys) {
      auto it = run.config.find(k);
      row.push_back(it == run.config.end() ? "" : it->second);
    }
    const RunHistory& h = run.history;
    row.push_back(std::to_string(h.last_step()));
    row.push_back(std::to_string(run.train_steps));
    row.push_back(fmt_long(run.n_trainable));
    row.push_back(run.n_trainable < 0 ? "" : std::to_string(run.n_trainable * 4));
    row.push_back(fmt("%.0f", h.steps.empty() ? kNaN : h.comm_bytes_per_step));
    row.push_back(fmt(precise ? "%.1f" : "%.0f", h.median_tokens_per_s()));
    row.push_back(fmt(loss_fmt, h.final_train_loss()));
    row.push_back(fmt(loss_fmt, h.final_val_loss()));
    row.push_back(fmt(loss_fmt, h.best_val_loss()));
    row.push_back(fmt_long(h.best_val_step()));
    rows.push_back(row);
  }
  return rows;
}

bool has_val(const Report& r) {
  return std::any_of(r.runs.begin(), r.runs.end(),
                     [](const RunRecord& run) { return !run.history.val_loss.empty(); });
}

}  // namespace

double RunHistory::final_train_loss() const { return train_loss.empty() ? kNaN : train_loss.back(); }

double RunHistory::final_val_loss() const { return val_loss.empty() ? kNaN : val_loss.back(); }

double RunHistory::best_val_loss() const {
  return val_loss.empty() ? kNaN : *std::min_element(val_loss.begin(), val_loss.end());
}

long RunHistory::best_val_step() const {
  if (val_loss.empty()) return -1;
  return val_steps[std::min_element(val_loss.begin(), val_loss.end()) - val_loss.begin()];
}

double RunHistory::median_tokens_per_s() const {
  std::vector<double> v(tokens_per_s.begin() + (tokens_per_s.size() > 1 ? 1 : 0), tokens_per_s.end());
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

RunHistory read_run_history(const std::string& metrics_path) {
  RunHistory h;
  std::ifstream in(metrics_path, std::ios::binary);
  if (!in) return h;
  const std::string text = read_text(metrics_path);
  size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    ++line_no;
    size_t end = text.find('\n', pos);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    json::Value v;
    try {
      v = json::parse(line);
      LORA_INPUT_CHECK(v.is_object(), "expected a JSON object per line");
    } catch (const InputError& e) {
      if (!complete) break;  // a record cut short by a killed run
      throw InputError(detail::concat(metrics_path, ":", line_no, ": ", e.what()));
    }
    auto number = [&](const char* key) -> double {
      const json::Value* f = v.find(key);
      if (!f || f->is_null()) return kNaN;
      LORA_INPUT_CHECK(f->is_number(), metrics_path, ":", line_no, ": '", key,
                       "': expected a number, got ", json::type_name(f->type()));
      return f->as_double();
    };
    const double step = number("step");
    LORA_INPUT_CHECK(std::isfinite(step), metrics_path, ":", line_no, ": 'step': expected a number");
    h.steps.push_back(static_cast<long>(step));
    h.train_loss.push_back(number("loss"));
    h.tokens_per_s.push_back(number("tokens_per_s"));
    const double bytes = number("comm_bytes_per_step");
    if (std::isfinite(bytes)) h.comm_bytes_per_step = bytes;
    const double val = number("val_loss");
    if (std::isfinite(val)) {
      h.val_steps.push_back(static_cast<long>(step));
      h.val_loss.push_back(val);
    }
  }
  return h;
}

std::map<std::string, std::string> flatten_config_yaml(const std::string& yaml_text,
                                                       const std::string& source_name) {
  std::map<std::string, std::string> out;
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    LORA_INPUT_CHECK(root.IsMap(), source_name, ": expected a mapping of config sections");
    flatten(root, "", out);
  } catch (const YAML::Exception& e) {
    throw InputError(detail::concat(source_name, ":", e.mark.line + 1, ": invalid YAML: ", e.msg));
  }
  return out;
}

Report build_report(const std::string& dir) {
  LORA_INPUT_CHECK(fs::is_directory(dir), dir, ": not a directory (expected a run or sweep output directory)");
  auto is_run = [](const fs::path& p) {
    return fs::is_regular_file(p / "config.yaml") && fs::is_regular_file(p / "metrics.jsonl");
  };
  std::vector<fs::path> run_dirs;
  if (is_run(dir)) {
    run_dirs.push_back(dir);
  } else {
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.is_directory() && is_run(entry.path())) run_dirs.push_back(entry.path());
    std::sort(run_dirs.begin(), run_dirs.end());
  }
  LORA_INPUT_CHECK(!run_dirs.empty(), dir,
                   ": no runs found (expected config.yaml and metrics.jsonl in it or in its "
                   "subdirectories)");
  std::vector<std::string> names;
  for (const fs::path& p : run_dirs) names.push_back(p.string());
  return build_report(dir, names);
}

Report build_report(const std::string& dir, const std::vector<std::string>& run_dirs) {
  Report report;
  report.dir = dir;
  for (const fs::path p : run_dirs) {
    LORA_INPUT_CHECK(fs::is_regular_file(p / "config.yaml") && fs::is_regular_file(p / "metrics.jsonl"),
                     p.string(), ": not a run directory (expected config.yaml and metrics.jsonl)");
    RunRecord run;
    run.dir = p.string();
    run.name = fs::absolute(p).lexically_normal().filename().string();
    if (run.name.empty()) run.name = fs::absolute(p).lexically_normal().parent_path().filename().string();
    run.config = flatten_config_yaml(read_text(p / "config.yaml"), (p / "config.yaml").string());
    run.history = read_run_history((p / "metrics.jsonl").string());
    if (auto it = run.config.find("train.steps"); it != run.config.end()) {
      try {
        run.train_steps = std::stol(it->second);
      } catch (const std::exception&) {
      }
    }
    run.n_trainable = trainable_from_config(run.config);
    if (fs::is_regular_file(p / "done.json")) {
      try {
        const json::Value done = json::parse(read_text(p / "done.json"));
        if (const json::Value* n = done.find("n_trainable"); n && n->is_number())
          run.n_trainable = static_cast<long>(n->as_int64());
      } catch (const InputError& e) {
        throw InputError(detail::concat((p / "done.json").string(), ": ", e.what()));
      }
    }
    report.runs.push_back(std::move(run));
  }

  if (report.runs.size() == 1) {
    report.swept_keys = {"lora.rank", "lora.alpha", "lora.targets", "train.lr"};
  } else {
    std::set<std::string> keys;
    for (const RunRecord& run : report.runs)
      for (const auto& kv : run.config) keys.insert(kv.first);
    for (const std::string& k : keys) {
      if (is_identity_key(k)) continue;
      std::set<std::string> values;
      for (const RunRecord& run : report.runs) {
        auto it = run.config.find(k);
        values.insert(it == run.config.end() ? "\x01missing" : it->second);
      }
      if (values.size() > 1) report.swept_keys.push_back(k);
    }
  }
  return report;
}

std::string report_csv(const Report& report) {
  std::string out;
  for (const auto& row : table(report, true)) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (i) out += ',';
      out += csv_field(row[i]);
    }
    out += "\n";
  }
  return out;
}

std::string report_markdown(const Report& report) {
  const auto rows = table(report, false);
  std::string out = "| ";
  for (size_t i = 0; i < rows[0].size(); ++i) out += (i ? " | " : "") + md_field(rows[0][i]);
  out += " |\n|";
  for (size_t i = 0; i < rows[0].size(); ++i) out += i == 0 ? ":---|" : "---:|";
  out += "\n";
  for (size_t r = 1; r < rows.size(); ++r) {
    out += "| ";
    for (size_t i = 0; i < rows[r].size(); ++i)
      out += (i ? " | " : "") + (rows[r][i].empty() ? std::string("-") : md_field(rows[r][i]));
    out += " |\n";
  }
  return out;
}

std::string val_loss_svg(const Report& report) {
  const bool any_val = has_val(report);
  std::vector<PlotSeries> series;
  for (const RunRecord& run : report.runs) {
    const RunHistory& h = run.history;
    PlotSeries s;
    if (!h.val_loss.empty()) {
      s.label = run.name;
      s.x.assign(h.val_steps.begin(), h.val_steps.end());
      s.y = h.val_loss;
    } else {
      s.label = any_val ? run.name + " (train)" : run.name;
      s.x.assign(h.steps.begin(), h.steps.end());
      s.y = h.train_loss;
    }
    series.push_back(std::move(s));
  }
  PlotSpec spec;
  spec.title = any_val ? "Validation loss" : "Training loss (no validation data)";
  spec.x_label = "step";
  spec.y_label = any_val ? "val loss" : "train loss";
  spec.x_from_zero = true;
  return render_line_plot(spec, series);
}

std::string rank_vs_loss_svg(const Report& report) {
  const bool any_val = has_val(report);
  // One series per combination of the swept keys other than the rank.
  std::vector<std::string> others;
  for (const std::string& k : report.swept_keys)
    if (k != "lora.rank") others.push_back(k);
  std::map<std::string, std::vector<std::pair<double, double>>> groups;
  std::vector<std::string> order;
  for (const RunRecord& run : report.runs) {
    auto rank_it = run.config.find("lora.rank");
    auto mode_it = run.config.find("train.mode");
    if (rank_it == run.config.end() || (mode_it != run.config.end() && mode_it->second == "full"))
      continue;
    double rank = kNaN;
    try {
      rank = std::stod(rank_it->second);
    } catch (const std::exception&) {
      continue;
    }
    std::string label;
    for (const std::string& k : others) {
      auto it = run.config.find(k);
      label += (label.empty() ? "" : ", ") + k + "=" + (it == run.config.end() ? "-" : it->second);
    }
    if (label.empty()) label = any_val ? "final val loss" : "final train loss";
    if (!groups.count(label)) order.push_back(label);
    const double loss = any_val ? run.history.final_val_loss() : run.history.final_train_loss();
    groups[label].emplace_back(rank, loss);
  }
  std::vector<PlotSeries> series;
  for (const std::string& label : order) {
    auto points = groups[label];
    std::sort(points.begin(), points.end());
    PlotSeries s;
    s.label = label;
    for (const auto& [x, y] : points) {
      s.x.push_back(x);
      s.y.push_back(y);
    }
    series.push_back(std::move(s));
  }
  PlotSpec spec;
  spec.title = any_val ? "Final validation loss by LoRA rank" : "Final training loss by LoRA rank";
  spec.x_label = "lora.rank (log2 scale)";
  spec.y_label = any_val ? "final val loss" : "final train loss";
  spec.log2_x = true;
  return render_line_plot(spec, series);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error(detail::concat(tmp, ": cannot create: ", std::strerror(errno)));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw Error(detail::concat(tmp, ": write failed: ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!synced) throw Error(detail::concat(tmp, ": fsync failed: ", std::strerror(err)));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error(detail::concat(path, ": rename failed: ", std::strerror(errno)));
}

void write_report(const Report& report) {
  const fs::path dir(report.dir);
  write_file_atomic((dir / "report.csv").string(), report_csv(report));
  std::string md = "# Runs in " + report.dir + "\n\n" + report_markdown(report) +
                   "\n![validation loss](val_loss.svg)\n\n![final loss by rank](rank_vs_loss.svg)\n";
  write_file_atomic((dir / "report.md").string(), md);
  write_file_atomic((dir / "val_loss.svg").string(), val_loss_svg(report));
  write_file_atomic((dir / "rank_vs_loss.svg").string(), rank_vs_loss_svg(report));
}

int run_report(const std::string& dir) {
  const Report report = build_report(dir);
  write_report(report);
  std::cout << report_markdown(report);
  const fs::path d(dir);
  std::cout << "lora: report: wrote " << (d / "report.csv").string() << ", report.md, val_loss.svg, "
            << "rank_vs_loss.svg (" << report.runs.size() << " run" << (report.runs.size() == 1 ? "" : "s")
            << ")" << std::endl;
  return 0;
}

}  // namespace lora
