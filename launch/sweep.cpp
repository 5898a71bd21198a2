// Sweeps (see sweep.h): sweep file -> points (validated configs) -> groups of ranks training their
// points one after another -> done.json per run -> the report.
#include "launch/sweep.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <streambuf>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/json.h"
#include "launch/report.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

constexpr int kExitSignal = 75;        // stopped by SIGTERM/SIGUSR1 after a checkpoint
constexpr int kExitInterrupted = 130;  // stopped by Ctrl-C after a checkpoint
constexpr const char* kSweepKeys = "base, output_dir, ranks_per_run, set, grid, list";

std::string where(const std::string& path, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return path;
  return path + ":" + std::to_string(mark.line + 1);
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "an undefined value";
  }
}

// Emits a node in flow style, keeping quoted scalars quoted (so "5" stays a string).
void emit_flow(YAML::Emitter& e, const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence:
      e << YAML::Flow << YAML::BeginSeq;
      for (const YAML::Node& item : node) emit_flow(e, item);
      e << YAML::EndSeq;
      break;
    case YAML::NodeType::Map:
      e << YAML::Flow << YAML::BeginMap;
      for (auto it = node.begin(); it != node.end(); ++it) {
        e << YAML::Key;
        emit_flow(e, it->first);
        e << YAML::Value;
        emit_flow(e, it->second);
      }
      e << YAML::EndMap;
      break;
    case YAML::NodeType::Scalar:
      if (node.Tag() == "!") e << YAML::DoubleQuoted << node.Scalar();
      else e << node.Scalar();
      break;
    default: e << YAML::Null;
  }
}

std::string flow_text(const YAML::Node& node) {
  if (node.IsScalar() && node.Tag() != "!") return node.Scalar();
  YAML::Emitter e;
  emit_flow(e, node);
  return e.c_str();
}

std::string yaml_quoted(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}

// A plain scalar key of a sweep mapping.
std::string key_of(const YAML::Node& key, const std::string& path) {
  if (!key.IsScalar() || key.Scalar().empty())
    throw InputError(where(path, key.Mark()) + ": expected a config key like lora.rank, got " + describe(key));
  return key.Scalar();
}

// The keys the sweep itself sets on every run.
bool is_reserved(const std::string& key) {
  return key == "run.name" || key == "run.output_dir" || key == "checkpoint.dir";
}

// Rejects a key (or a section mapping such as `run: {name: x}`) that sets a reserved key.
void check_not_reserved(const std::string& key, const YAML::Node& value, const std::string& at) {
  std::vector<std::string> leaves{key};
  if (value.IsMap()) {
    for (auto it = value.begin(); it != value.end(); ++it)
      if (it->first.IsScalar()) leaves.push_back(key + "." + it->first.Scalar());
  }
  for (const std::string& k : leaves) {
    if (is_reserved(k))
      throw InputError(at + ": " + k + ": the sweep sets run.name, run.output_dir and checkpoint.dir "
                       "of each run itself (use output_dir: for where the runs go)");
  }
}

// "key: value" pairs of a mapping in file order, with duplicate keys rejected.
std::vector<std::pair<YAML::Node, YAML::Node>> map_items(const YAML::Node& map, const std::string& path,
                                                         const std::string& what) {
  if (!map.IsMap())
    throw InputError(where(path, map.Mark()) + ": " + what + ": expected a mapping of config keys, got " +
                     describe(map));
  std::vector<std::pair<YAML::Node, YAML::Node>> items;
  std::map<std::string, int> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first, value = it->second;
    const std::string name = key_of(key, path);
    auto [pos, inserted] = seen.emplace(name, key.Mark().line + 1);
    if (!inserted)
      throw InputError(detail::concat(where(path, key.Mark()), ": ", what, ": duplicate key '", name,
                                      "' (first given at line ", pos->second, ")"));
    items.emplace_back(key, value);
  }
  return items;
}

SweepValue value_of(const std::string& key, const YAML::Node& value, const YAML::Node& key_node,
                    const std::string& path) {
  const YAML::Mark& mark = value.IsNull() ? key_node.Mark() : value.Mark();
  return SweepValue{key, flow_text(value), where(path, mark)};
}

std::string sanitize(const std::string& text) {
  std::string out;
  bool gap = false;
  for (char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (ok) {
      if (gap && !out.empty()) out += '_';
      out += c;
      gap = false;
    } else {
      gap = true;
    }
  }
  return out;
}

// Where an override of a point came from: its sweep file line and "set" or "point NAME".
struct OverrideOrigin {
  std::string override_text;
  std::string where;
  std::string part;
};

// The config error of a point, told at the sweep file line of the value that caused it.
[[noreturn]] void rethrow_for_point(const InputError& e, const Sweep& sweep, const SweepPoint& p,
                                    const std::vector<OverrideOrigin>& origins) {
  const std::string msg = e.what();
  for (const OverrideOrigin& o : origins) {
    const std::string prefix = "--set " + o.override_text + ": ";
    if (msg.rfind(prefix, 0) == 0)
      throw InputError(o.where + ": " + msg.substr(prefix.size()) + " (" + o.part + ")");
  }
  throw InputError(sweep.path + ": point " + p.name + ": " + msg);
}

// std::ostream whose lines go to `out` each with a prefix, one write per line.
class PrefixedLines : public std::streambuf {
 public:
  PrefixedLines(std::ostream& out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}
  ~PrefixedLines() override { emit(); }

 protected:
  int overflow(int c) override {
    if (c == traits_type::eof()) return traits_type::not_eof(c);
    line_ += static_cast<char>(c);
    if (c == '\n') emit();
    return c;
  }
  int sync() override {
    if (!line_.empty() && line_.back() == '\n') emit();
    out_.flush();
    return 0;
  }

 private:
  void emit() {
    if (line_.empty()) return;
    if (line_.back() != '\n') line_ += '\n';
    out_ << prefix_ + line_ << std::flush;
    line_.clear();
  }
  std::ostream& out_;
  std::string prefix_;
  std::string line_;
};

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string self_executable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("lora") : p.string();
}

// Waits for a world-wide collective while other groups may still be training for hours: polls
// without a timeout (a failing rank ends the whole job through abort) and sleeps between polls.
void wait_patiently(comm::Work& work) {
  while (!work.test()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

}  // namespace

std::string sweep_run_name(int index, size_t n_points, const std::vector<SweepValue>& values) {
  const int width = std::max<int>(3, static_cast<int>(std::to_string(n_points ? n_points - 1 : 0).size()));
  std::string name = std::to_string(index);
  name.insert(0, static_cast<size_t>(std::max<int>(0, width - static_cast<int>(name.size()))), '0');
  std::set<std::string> shorts;
  bool clash = false;
  for (const SweepValue& v : values) clash |= !shorts.insert(v.key.substr(v.key.find('.') + 1)).second;
  for (const SweepValue& v : values) {
    const std::string key = clash ? v.key : v.key.substr(v.key.find('.') + 1);
    name += '-';
    name += sanitize(key + v.text);  // "rank4", "targets_attn.qkv_mlp.fc"
  }
  constexpr size_t kMaxName = 120;
  if (name.size() > kMaxName) name.resize(kMaxName);
  return name;
}

Sweep load_sweep(const std::string& path, int ranks_per_run) {
  std::error_code ec;
  LORA_INPUT_CHECK(fs::is_regular_file(path, ec), path, ": sweep file does not exist");
  std::ifstream in(path, std::ios::binary);
  LORA_INPUT_CHECK(in, path, ": sweep file cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    throw InputError(where(path, e.mark) + ": invalid YAML: " + e.msg);
  }
  LORA_INPUT_CHECK(root.IsMap(), path, ":1: expected a mapping with keys ", kSweepKeys,
                   " (base is required), got ", describe(root));

  Sweep sweep;
  sweep.path = path;
  sweep.output_dir = "runs/" + fs::path(path).stem().string();
  sweep.ranks_per_run_where = path + " (ranks_per_run, default 1)";
  YAML::Node grid, list;
  bool has_grid = false, has_list = false;
  std::string base_where;
  for (const auto& [key, value] : map_items(root, path, "sweep")) {
    const std::string k = key.Scalar();
    const std::string at = where(path, value.IsNull() ? key.Mark() : value.Mark());
    auto string_value = [&]() {
      LORA_INPUT_CHECK(value.IsScalar() && !value.Scalar().empty(), at, ": ", k,
                       ": expected a path, got ", describe(value));
      return value.Scalar();
    };
    if (k == "base") {
      sweep.base = string_value();
      base_where = at;
    } else if (k == "output_dir") {
      sweep.output_dir = string_value();
    } else if (k == "ranks_per_run") {
      long n = 0;
      const std::string s = value.IsScalar() ? value.Scalar() : std::string();
      const auto r = std::from_chars(s.data(), s.data() + s.size(), n);
      LORA_INPUT_CHECK(value.IsScalar() && value.Tag() != "!" && r.ec == std::errc() &&
                           r.ptr == s.data() + s.size() && n >= 1 && n <= 1 << 20,
                       at, ": ranks_per_run: expected an integer >= 1, got ", describe(value));
      sweep.ranks_per_run = static_cast<int>(n);
      sweep.ranks_per_run_where = at;
    } else if (k == "set") {
      if (value.IsNull()) continue;
      for (const auto& [sk, sv] : map_items(value, path, "set")) {
        check_not_reserved(sk.Scalar(), sv, where(path, sk.Mark()));
        sweep.set.push_back(value_of(sk.Scalar(), sv, sk, path));
      }
    } else if (k == "grid") {
      LORA_INPUT_CHECK(value.IsMap() && value.size() > 0, at,
                       ": grid: expected a mapping of config keys to lists of values, got ",
                       value.IsMap() ? std::string("an empty mapping") : describe(value));
      grid = value;
      has_grid = true;
    } else if (k == "list") {
      LORA_INPUT_CHECK(value.IsSequence() && value.size() > 0, at,
                       ": list: expected a non-empty list of mappings of config keys, got ",
                       value.IsSequence() ? std::string("an empty list") : describe(value));
      list = value;
      has_list = true;
    } else {
      throw InputError(where(path, key.Mark()) + ": unknown key '" + k + "' (expected one of: " +
                       kSweepKeys + ")");
    }
  }
  LORA_INPUT_CHECK(!sweep.base.empty(), path, ": base: required (the config every run starts from)");
  if (ranks_per_run > 0) {
    sweep.ranks_per_run = ranks_per_run;
    sweep.ranks_per_run_where = "--ranks-per-run " + std::to_string(ranks_per_run);
  }
  const fs::path base = fs::path(sweep.base).is_absolute()
                            ? fs::path(sweep.base)
                            : (fs::path(path).parent_path() / sweep.base).lexically_normal();
  sweep.base = base.string();
  LORA_INPUT_CHECK(fs::is_regular_file(base, ec), base_where, ": base: config file '", sweep.base,
                   "' does not exist (relative paths are taken from the sweep file's directory)");

  // Grid axes: key -> values, in file order.
  std::vector<std::vector<SweepValue>> axes;
  if (has_grid) {
    for (const auto& [gk, gv] : map_items(grid, path, "grid")) {
      const std::string k = gk.Scalar();
      const std::string at = where(path, gv.IsNull() ? gk.Mark() : gv.Mark());
      check_not_reserved(k, YAML::Node(), where(path, gk.Mark()));
      LORA_INPUT_CHECK(gv.IsSequence() && gv.size() > 0, at, ": grid: ", k,
                       ": expected a non-empty list of values, like [4, 8, 16], got ",
                       gv.IsSequence() ? std::string("an empty list") : describe(gv));
      std::vector<SweepValue> axis;
      for (const YAML::Node& item : gv) axis.push_back(value_of(k, item, gk, path));
      axes.push_back(std::move(axis));
    }
  }
  std::vector<std::vector<SweepValue>> entries;
  if (has_list) {
    for (const YAML::Node& entry : list) {
      LORA_INPUT_CHECK(entry.IsMap() && entry.size() > 0, where(path, entry.Mark()),
                       ": list: expected a non-empty mapping of config keys, like {lora.rank: 8}, got ",
                       entry.IsMap() ? std::string("an empty mapping") : describe(entry));
      std::vector<SweepValue> values;
      for (const auto& [lk, lv] : map_items(entry, path, "list")) {
        const std::string k = lk.Scalar();
        check_not_reserved(k, lv, where(path, lk.Mark()));
        for (const auto& axis : axes)
          LORA_INPUT_CHECK(axis[0].key != k, where(path, lk.Mark()), ": list: ", k,
                           " is also a grid key (a key goes in one place)");
        values.push_back(value_of(k, lv, lk, path));
      }
      entries.push_back(std::move(values));
    }
  }
  if (entries.empty()) entries.emplace_back();

  // Points: every list entry with every grid point (the last grid key varying fastest).
  std::vector<std::vector<SweepValue>> combos;
  for (const auto& entry : entries) {
    std::vector<size_t> at(axes.size(), 0);
    while (true) {
      std::vector<SweepValue> values = entry;
      for (size_t a = 0; a < axes.size(); ++a) values.push_back(axes[a][at[a]]);
      combos.push_back(std::move(values));
      size_t a = axes.size();
      while (a > 0 && ++at[a - 1] == axes[a - 1].size()) at[--a] = 0;
      if (a == 0) break;
    }
  }

  for (size_t i = 0; i < combos.size(); ++i) {
    SweepPoint p;
    p.index = static_cast<int>(i);
    p.values = std::move(combos[i]);
    p.name = sweep_run_name(p.index, combos.size(), p.values);
    p.run_dir = (fs::path(sweep.output_dir) / p.name).string();
    std::vector<OverrideOrigin> origins;
    for (const SweepValue& v : sweep.set) {
      p.overrides.push_back(v.key + "=" + v.text);
      origins.push_back({p.overrides.back(), v.where, "set"});
    }
    for (const SweepValue& v : p.values) {
      p.overrides.push_back(v.key + "=" + v.text);
      origins.push_back({p.overrides.back(), v.where, "point " + p.name});
    }
    p.overrides.push_back("run.name=" + yaml_quoted(p.name));
    p.overrides.push_back("run.output_dir=" + yaml_quoted(p.run_dir));
    p.overrides.push_back("checkpoint.dir=null");
    try {
      p.config = load_config(sweep.base, p.overrides);
    } catch (const InputError& e) {
      rethrow_for_point(e, sweep, p, origins);
    }
    sweep.points.push_back(std::move(p));
  }
  return sweep;
}

bool sweep_run_finished(const SweepPoint& point) {
  const fs::path done = fs::path(point.run_dir) / "done.json";
  std::ifstream in(done, std::ios::binary);
  if (!in) return false;
  std::ostringstream text;
  text << in.rdbuf();
  try {
    const json::Value v = json::parse(text.str());
    const json::Value* steps = v.find("steps");
    return steps && steps->is_number() && steps->as_int64() == point.config.train.steps;
  } catch (const std::exception&) {
    return false;  // unreadable: train again (resuming from the checkpoint)
  }
}

void write_done_json(const SweepPoint& point, const TrainSummary& s, int world_size) {
  const RunHistory h = read_run_history((fs::path(point.run_dir) / "metrics.jsonl").string());
  auto either = [](double a, double b) { return std::isfinite(a) ? a : b; };
  json::Value v = json::Value::object();
  v.set("run", point.name);
  v.set("steps", s.steps_done);
  v.set("train_steps", point.config.train.steps);
  v.set("final_train_loss", either(s.final_train_loss, h.final_train_loss()));
  v.set("final_val_loss", either(s.final_val_loss, h.final_val_loss()));
  // The history covers the whole run, the summary only the part since the last resume.
  v.set("best_val_loss", h.val_loss.empty() ? s.best_val_loss : h.best_val_loss());
  v.set("best_val_step", h.val_loss.empty() ? s.best_val_step : h.best_val_step());
  v.set("tokens_per_s", s.tokens_per_s > 0 ? s.tokens_per_s : h.median_tokens_per_s());
  v.set("grad_bytes_per_step", s.grad_bytes_per_step);
  v.set("n_trainable", s.n_trainable);
  v.set("n_total", s.n_total);
  v.set("world_size", world_size);
  v.set("finished_utc", utc_now());
  write_file_atomic((fs::path(point.run_dir) / "done.json").string(), json::dump(v) + "\n");
}

std::string slurm_array_script(const Sweep& sweep, const std::string& lora_binary,
                               const std::string& workdir, int max_parallel) {
  const size_t n = sweep.points.size();
  const int r = sweep.ranks_per_run;
  const size_t k = max_parallel > 0 ? std::min<size_t>(max_parallel, n) : n;
  const fs::path out_dir = fs::path(sweep.output_dir).is_absolute()
                               ? fs::path(sweep.output_dir)
                               : fs::path(workdir) / sweep.output_dir;
  const std::string sweep_file = fs::absolute(sweep.path).lexically_normal().string();
  std::ostringstream s;
  s << "#!/bin/bash\n"
    << "# Slurm job array for the sweep " << sweep_file << " (" << n << " run" << (n == 1 ? "" : "s")
    << "): array task I trains point I\n"
    << "# with `lora sweep SWEEP --only I` on " << r << " rank" << (r == 1 ? "" : "s")
    << " (`lora sweep SWEEP --list` shows the points).\n"
    << "# A task stopped by preemption or by its time limit (SIGTERM, or SIGUSR1 two minutes\n"
    << "# before it) writes a checkpoint, exits 75 and is requeued; the requeued task resumes from\n"
    << "# the checkpoint, and finished points are skipped. When the last point finishes, its task\n"
    << "# writes the report into the output directory. Add your site's options (--partition,\n"
    << "# --time, --gres, --cpus-per-task) below.\n"
    << "#SBATCH --job-name=lora-sweep-" << sanitize(fs::path(sweep.path).stem().string()) << "\n"
    << "#SBATCH --array=0-" << (n - 1) << "%" << k << "\n"
    << "#SBATCH --ntasks=" << r << "\n"
    << "#SBATCH --output=" << (out_dir / "slurm-%A_%a.out").string() << "\n"
    << "#SBATCH --open-mode=append\n"
    << "#SBATCH --requeue\n"
    << "#SBATCH --signal=USR1@120\n"
    << "set -u\n"
    << "LORA=\"${LORA:-" << lora_binary << "}\"\n"
    << "cd " << shell_quote(workdir) << " || exit 1\n"
    << "\n"
    << "# Keep this shell alive through SIGTERM/SIGUSR1 until lora has written its checkpoint.\n"
    << "trap 'echo \"lora-sweep: stop signal received, waiting for the checkpoint\"' TERM USR1\n"
    << "srun --ntasks=" << r << " --kill-on-bad-exit=1 \"$LORA\" sweep " << shell_quote(sweep_file)
    << " --only \"$SLURM_ARRAY_TASK_ID\" &\n"
    << "pid=$!\n"
    << "while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; done\n"
    << "wait \"$pid\"\n"
    << "rc=$?\n"
    << "\n"
    << "# Exit 75: stopped after a consistent checkpoint; run this array task again.\n"
    << "if [ \"$rc\" -eq 75 ]; then\n"
    << "  echo \"lora-sweep: point $SLURM_ARRAY_TASK_ID stopped after a checkpoint; requeueing "
       "job $SLURM_JOB_ID\"\n"
    << "  scontrol requeue \"$SLURM_JOB_ID\" && exit 0\n"
    << "fi\n"
    << "exit \"$rc\"\n";
  return s.str();
}

int run_sweep_list(const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep_file, args.ranks_per_run);
  for (const SweepPoint& p : sweep.points) {
    std::cout << p.index << "\t" << p.run_dir << "\t";
    for (size_t i = 0; i < p.values.size(); ++i)
      std::cout << (i ? " " : "") << p.values[i].key << "=" << p.values[i].text;
    std::cout << "\n";
  }
  std::cout << std::flush;
  return 0;
}

int run_sweep_emit_slurm(const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep_file, args.ranks_per_run);
  LORA_INPUT_CHECK(args.max_parallel >= 0, "--max-parallel: expected an integer >= 1, got ",
                   args.max_parallel);
  const std::string workdir = fs::current_path().string();
  // Slurm opens the --output file before the script runs: its directory must exist.
  fs::create_directories(sweep.output_dir);
  write_file_atomic(args.emit_slurm,
                    slurm_array_script(sweep, self_executable(), workdir, args.max_parallel));
  fs::permissions(args.emit_slurm, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  std::cout << "lora: sweep: wrote " << args.emit_slurm << " (" << sweep.points.size()
            << " array tasks of " << sweep.ranks_per_run << " rank" << (sweep.ranks_per_run == 1 ? "" : "s")
            << "); submit it with sbatch " << args.emit_slurm << std::endl;
  return 0;
}

int run_sweep(World& world, const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep_file, args.ranks_per_run);
  const int n_points = static_cast<int>(sweep.points.size());
  LORA_INPUT_CHECK(args.only < n_points, "--only ", args.only, ": the sweep ", sweep.path, " has ",
                   n_points, " points (0 to ", n_points - 1, ")");
  // --only trains one point with the whole world; otherwise groups of ranks_per_run ranks.
  const int per_run = args.only >= 0 ? world.size() : sweep.ranks_per_run;
  LORA_INPUT_CHECK(world.size() % per_run == 0, sweep.ranks_per_run_where, ": ranks_per_run: ",
                   per_run, " does not divide the job's ", world.size(), " rank",
                   world.size() == 1 ? "" : "s", " (launch a multiple of ranks_per_run ranks)");
  const int n_groups = world.size() / per_run, group = world.rank() / per_run;

  const CommConfig& first_comm = sweep.points[0].config.comm;
  comm::Communicator& world_comm =
      world.communicator(first_comm.backend, World::timeout_of(first_comm.timeout_s));
  const std::unique_ptr<comm::Communicator> group_comm = world_comm.split(group, world.rank());
  const bool lead = group_comm->rank() == 0;

  std::vector<int> mine;
  if (args.only >= 0) {
    mine.push_back(static_cast<int>(args.only));
  } else {
    for (int i = group; i < n_points; i += n_groups) mine.push_back(i);
  }
  if (world.rank() == 0) {
    std::cout << "lora: sweep " << sweep.path << ": " << n_points << " run" << (n_points == 1 ? "" : "s")
              << " of " << sweep.base << " into " << sweep.output_dir << " | ";
    if (args.only >= 0) std::cout << "only point " << args.only << " on " << world.size() << " ranks";
    else std::cout << n_groups << " group" << (n_groups == 1 ? "" : "s") << " of " << per_run << " rank"
                   << (per_run == 1 ? "" : "s");
    std::cout << std::endl;
  }

  int32_t stopped = 0;
  for (int i : mine) {
    const SweepPoint& p = sweep.points[i];
    PrefixedLines prefixed_buf(std::cout, "[" + p.name + "] ");
    std::ostream out(&prefixed_buf);
    int32_t finished = lead && sweep_run_finished(p) ? 1 : 0;
    group_comm->broadcast(&finished, 1, comm::DType::kInt32, 0);
    if (finished) {
      if (lead) out << "lora: finished earlier (" << p.run_dir << "/done.json), skipping" << std::endl;
      continue;
    }
    // The whole group agrees whether a signal came before this run starts.
    int32_t sig = args.stop_signal ? args.stop_signal->load() : 0;
    if (group_comm->size() > 1) group_comm->all_reduce(std::span<int32_t>(&sig, 1), comm::ReduceOp::kMax);
    if (sig != 0) {
      stopped = sig;
      break;
    }
    if (lead) {
      std::error_code ec;
      fs::remove(fs::path(p.run_dir) / "done.json", ec);  // stale: fewer steps than train.steps
      out << "lora: point " << p.index << " of " << n_points << ":";
      for (const SweepValue& v : p.values) out << " " << v.key << "=" << v.text;
      out << " -> " << p.run_dir << std::endl;
    }
    TrainOptions opts;
    opts.resume = ResumeMode::kAuto;
    opts.overrides = p.overrides;
    opts.stop_signal = args.stop_signal;
    opts.out = &out;
    const TrainSummary s = train(p.config, *group_comm, opts);
    if (s.stop_signal != 0) {
      if (lead) out << "lora: stopped by signal " << s.stop_signal << " at step " << s.steps_done
                    << " after a checkpoint; run the sweep again to continue" << std::endl;
      stopped = s.stop_signal;
      break;
    }
    if (lead) {
      write_done_json(p, s, group_comm->size());
      char line[256];
      std::snprintf(line, sizeof line, "lora: done at step %ld | train loss %.4f", s.steps_done,
                    s.final_train_loss);
      out << line;
      if (!std::isnan(s.final_val_loss)) {
        std::snprintf(line, sizeof line, " | val loss %.4f", s.final_val_loss);
        out << line;
      }
      out << std::endl;
    }
  }

  // Every group has finished (or stopped): agree on the outcome, then report.
  if (world.size() > 1) {
    auto work = world_comm.all_reduce_async(std::span<int32_t>(&stopped, 1), comm::ReduceOp::kMax);
    wait_patiently(*work);
  }
  if (stopped != 0) {
    if (world.rank() == 0)
      std::cout << "lora: sweep stopped by signal " << stopped
                << "; run it again to resume the unfinished runs" << std::endl;
    return stopped == SIGINT ? kExitInterrupted : kExitSignal;
  }
  if (world.rank() == 0) {
    int n_finished = 0;
    for (const SweepPoint& p : sweep.points) n_finished += sweep_run_finished(p) ? 1 : 0;
    if (n_finished == n_points) {
      std::vector<std::string> run_dirs;
      for (const SweepPoint& p : sweep.points) run_dirs.push_back(p.run_dir);
      const Report report = build_report(sweep.output_dir, run_dirs);
      write_report(report);
      std::cout << report_markdown(report);
      std::cout << "lora: sweep: all " << n_points << " runs finished; report in "
                << (fs::path(sweep.output_dir) / "report.md").string() << std::endl;
    } else {
      std::cout << "lora: sweep: " << n_finished << " of " << n_points
                << " runs finished; the report is written when all are" << std::endl;
    }
  }
  return 0;
}

}  // namespace lora
