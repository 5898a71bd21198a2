// `lora sweep SWEEP.yaml`: many training runs of one base config in one job.
//
// Sweep file (YAML; unknown keys, wrong types and empty grids are lora::InputError with FILE:LINE):
//   base: ../configs/demo-lora.yaml   the base config, relative to the sweep file (required)
//   output_dir: runs/sweep-rank       run k trains in <output_dir>/<name k>, relative to the working
//                                     directory like run.output_dir (default runs/<sweep file stem>)
//   ranks_per_run: 1                  data-parallel ranks per run (default 1)
//   set: {train.steps: 100}           overrides applied to every run (optional)
//   grid:                             cartesian product over config keys (optional); the
//     lora.rank: [4, 8, 16]           last key varies fastest
//     lora.alpha: [16]
//   list:                             explicit points (optional), each a mapping of config keys
//     - {lora.rank: 8, lora.targets: [attn.qkv, mlp.fc]}
// With both grid and list, every list entry is combined with every grid point (list entry outer,
// grid inner), so `list` can couple keys (rank with alpha) while `grid` crosses them with others;
// a key may not be in both. A point's own values replace those of `set`. With neither grid nor
// list, the sweep has one point: base + set.
//
// A point's config is load_config(base, overrides) with the overrides, in order: `set`, the
// point's values, then run.name=<name>, run.output_dir=<output_dir>/<name>, checkpoint.dir=null
// (checkpoints in <run dir>/checkpoints). Every point is validated before anything trains; a
// bad value is reported at its line in the sweep file. run.name, run.output_dir and
// checkpoint.dir belong to the sweep and may not be set by it.
//
// Run names: "<index>-<key><value>-..." over the point's values, the key without its section
// ("lora.rank" -> "rank", "lora.init.a" -> "init.a"), the value's YAML text with every run of
// characters outside [A-Za-z0-9._-] turned into '_': "000-rank4-alpha16",
// "003-rank8-targets_attn.qkv_mlp.fc". The index has at least 3 digits.
//
// A run is finished when its directory holds done.json (written atomically at the end of the run)
// whose "steps" equals the point's train.steps; re-running a sweep skips finished runs and resumes
// the others from their newest checkpoint (--resume auto). done.json fields: run, steps,
// train_steps, final_train_loss, final_val_loss, best_val_loss, best_val_step, tokens_per_s,
// grad_bytes_per_step, n_trainable, n_total, world_size, finished_utc (null for unknown numbers).
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "launch/world.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace lora {

struct SweepValue {
  std::string key;    // config key, "lora.rank"
  std::string text;   // the value as YAML flow text, "8", "[attn.qkv, mlp.fc]"
  std::string where;  // "SWEEP:LINE" of the value
};

struct SweepPoint {
  int index = 0;
  std::string name;                    // "000-rank4-alpha16"
  std::string run_dir;                 // <output_dir>/<name>
  std::vector<SweepValue> values;      // this point's grid and list values
  std::vector<std::string> overrides;  // every "key=value" applied to the base config
  Config config;                       // validated
};

struct Sweep {
  std::string path;        // the sweep file
  std::string base;        // the base config path (resolved against the sweep file's directory)
  std::string output_dir;
  int ranks_per_run = 1;
  std::string ranks_per_run_where;  // "SWEEP:LINE", "--ranks-per-run" or the file for the default
  std::vector<SweepValue> set;
  std::vector<SweepPoint> points;
};

// Parses the sweep file, builds every point and validates its config. ranks_per_run > 0 replaces
// the file's value. Throws lora::InputError naming FILE:LINE and the key.
Sweep load_sweep(const std::string& path, int ranks_per_run = 0);

// "000-rank4-alpha16" (see above).
std::string sweep_run_name(int index, size_t n_points, const std::vector<SweepValue>& values);

// True when point's run directory holds a done.json for all of its train.steps.
bool sweep_run_finished(const SweepPoint& point);

// Writes <run dir>/done.json atomically from the summary of the run (numbers the summary lacks
// after a resume, such as the best validation loss before it, come from metrics.jsonl).
void write_done_json(const SweepPoint& point, const TrainSummary& summary, int world_size);

// An sbatch job-array script: task I runs `lora sweep SWEEP --only I` under srun on ranks_per_run
// tasks, at most max_parallel tasks at once, and requeues itself when lora exits 75.
std::string slurm_array_script(const Sweep& sweep, const std::string& lora_binary,
                               const std::string& workdir, int max_parallel);

struct SweepArgs {
  std::string sweep_file;
  int ranks_per_run = 0;   // > 0: replaces the file's ranks_per_run
  long only = -1;          // >= 0: train only this point, on the whole world
  bool list = false;       // print the points and exit
  std::string emit_slurm;  // write an sbatch array script here and exit
  int max_parallel = 0;    // the script's array throttle (%K); 0: every point at once
  const std::atomic<int>* stop_signal = nullptr;
};

// Trains the sweep: the world splits into groups of ranks_per_run ranks, group g trains points
// g, g+G, g+2G, ... one after another; when every point has finished, world rank 0 writes the
// report into output_dir. Returns 0, or 75 (130 for SIGINT) when a signal stopped a run after its
// checkpoint.
int run_sweep(World& world, const SweepArgs& args);
// `--list`: "I<TAB>run dir<TAB>key=value ..." per point.
int run_sweep_list(const SweepArgs& args);
// `--emit-slurm FILE`.
int run_sweep_emit_slurm(const SweepArgs& args);

}  // namespace lora
