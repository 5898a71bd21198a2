// The `lora` command line. Parses arguments, sets up the world (MPI when launched by mpirun/srun),
// runs the subcommand and turns exceptions into exit codes: 2 for invalid input, 1 for runtime
// failures, 75 (or 130 for Ctrl-C) after a signal-triggered checkpoint. In a multi-rank job a
// failing rank prints its rank, host and message and ends every rank (MPI_Abort), never a hang.
#include "launch/cli.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "launch/commands.h"
#include "launch/report.h"
#include "launch/sweep.h"
#include "launch/world.h"

namespace lora {

namespace {

const char* kMainHelp = R"(lora: LoRA fine-tuning of decoder-only transformers (GPT-2, Llama, Qwen2, Mistral
families, from Hugging Face model directories), data-parallel over MPI.

usage: lora <command> [options]

commands:
  train CONFIG.yaml [--set key.path=value]... [--resume auto|none|PATH] [--log-all-ranks]
                         train adapters (or the whole model with train.mode: full)
  eval CONFIG.yaml [--adapter CKPT.h5|PEFT_DIR] [--json] [--max-windows N] [--set ...]
                         loss and perplexity on every token of the validation data
  generate CONFIG.yaml --prompt TEXT [--chat] [--adapter CKPT.h5|PEFT_DIR] [--tokens N]
           [--temperature T]
                         continue a prompt (greedy, or sampled when T > 0)
  inspect CKPT.h5        what a checkpoint holds
  export CKPT.h5 --peft OUT_DIR
                         write a checkpoint's adapters as a PEFT adapter directory
  merge CONFIG.yaml --adapter CKPT.h5|PEFT_DIR --out MODEL_DIR
                         fold adapters into the base: a plain Hugging Face model directory
  sweep SWEEP.yaml [--ranks-per-run N] [--only I] [--list] [--emit-slurm FILE]
                         many runs of one base config (a LoRA rank sweep) in one job
  report DIR             tables and plots of a run or a sweep's runs
  tokenize --tokenizer TOKENIZER.json|MODEL_DIR [--decode] [FILE]
                         text to token ids (one line of ids per line), or ids back to text

Run `lora <command> --help` for a command's options.
Launch data-parallel runs with `mpirun -np N lora train ...` or `srun lora train ...`.
Exit codes: 0 done, 1 runtime failure, 2 invalid input, 75 stopped by a signal after a
checkpoint (a wrapper may requeue), 130 stopped by Ctrl-C after a checkpoint.
)";

const char* kTrainHelp = R"(usage: lora train CONFIG.yaml [options]

Trains per the config (see configs/ and the README for every key). Rank 0 prints a progress line
every train.log_every steps and writes run.output_dir/metrics.jsonl and config.yaml.

options:
  --set key.path=value   override a config value (parsed as YAML; repeatable),
                         e.g. --set lora.rank=16 --set lora.targets=[attn.qkv,mlp.fc]
  --resume auto|none|PATH
                         auto: continue from the newest valid checkpoint of the run, if any
                         none: start fresh (default); PATH: that checkpoint file
  --log-all-ranks        every rank also writes run.output_dir/rank-K.log
  -h, --help             this text

Signals: SIGTERM or SIGUSR1 stop all ranks at the next step boundary, write a checkpoint and
exit 75; Ctrl-C (SIGINT) does the same and exits 130.
)";

const char* kEvalHelp = R"(usage: lora eval CONFIG.yaml [options]

Prints the mean loss (6 decimals), the perplexity and the number of tokens on data.val: every
token once, in consecutive windows of data.seq_len tokens from the start (the last window
shorter), train.micro_batch windows per forward pass. Deterministic: the same numbers every time.
Without --adapter it evaluates the base model alone, and says so.

options:
  --adapter PATH         a checkpoint (its adapters, or a full-mode checkpoint's whole model) or a
                         PEFT adapter directory; the LoRA settings (rank, alpha, rsLoRA, targets,
                         per-module ranks) come from it, and a config that gives other values for
                         them is an error
  --json                 print one JSON object instead: {"loss", "perplexity", "tokens",
                         "windows", "seq_len", "adapter"}
  --max-windows N        only the first N windows
  --set key.path=value   override a config value (repeatable)
  -h, --help             this text
)";

const char* kGenerateHelp = R"(usage: lora generate CONFIG.yaml --prompt TEXT [options]

Continues TEXT with the model of the config. With a tokenizer (data.tokenizer, or model.path's
tokenizer.json) the prompt is tokenized, the output decoded, and generation stops at EOS; without
one, byte-level text models take and print bytes, and token-format models take a comma-separated
list of token ids and print token ids.

options:
  --prompt TEXT          the text to continue (required)
  --adapter PATH         use the adapters of a checkpoint or a PEFT adapter directory (or a
                         full-mode checkpoint's weights); without it, the base model alone
  --tokens N             how many tokens to generate (default 200)
  --temperature T        0 for greedy decoding (default), > 0 to sample from softmax(logits / T)
  --seed S               sampling seed (default 0)
  --chat                 TEXT is a user message: render it with data.template (chatml, llama3,
                         or none) as training does, generate the assistant's reply until EOS or
                         the template's end of turn, and print the reply alone
  --set key.path=value   override a config value (repeatable)
  -h, --help             this text
)";

const char* kInspectHelp = R"(usage: lora inspect CKPT.h5

Prints the checkpoint's step, tokens seen, world size, base-weights fingerprint, model shape,
LoRA settings, each adapter's shape and norm, the optimizer state and the config it was trained
with.
)";

const char* kExportHelp = R"(usage: lora export CKPT.h5 --peft OUT_DIR

Writes the checkpoint's adapters as a PEFT adapter directory: adapter_config.json and
adapter_model.safetensors (base_model.model.<module>.lora_A.weight [r, d_in], lora_B.weight
[d_out, r]), which PEFT's PeftModel.from_pretrained and vLLM's --lora-modules load next to the
base model. base_model_name_or_path is the run's model.path. Written atomically (OUT_DIR.tmp, then
renamed); an existing PEFT directory at OUT_DIR is replaced, anything else there is refused.
A full-mode checkpoint, or adapters holding NaN or infinity, are refused (exit 2).
)";

const char* kMergeHelp = R"(usage: lora merge CONFIG.yaml --adapter CKPT.h5|PEFT_DIR --out MODEL_DIR

Folds the adapters into the config's base model (W + s A B on every adapted linear) and writes
a plain Hugging Face model directory: the base's config.json and tokenizer files copied, every
tensor in the base's dtype (F32, F16 or BF16) and in the same shards. Written atomically.

options:
  --adapter PATH         a lora-mode checkpoint or a PEFT adapter directory (required)
  --out MODEL_DIR        the directory to write (required)
  --set key.path=value   override a config value (repeatable)
  -h, --help             this text
)";

const char* kSweepHelp = R"(usage: lora sweep SWEEP.yaml [options]

Trains every point of a sweep file: a base config, overrides for every run (set:), a grid of
config values (cartesian product) and/or a list of explicit points. Example:

  base: ../configs/demo-lora.yaml     # relative to the sweep file
  output_dir: runs/sweep-rank         # run k goes to <output_dir>/<name k>
  ranks_per_run: 1                    # data-parallel ranks per run
  set: {train.steps: 100}
  grid: {lora.rank: [4, 8, 16, 32, 64], lora.alpha: [16]}
  list: [{lora.rank: 8, lora.targets: [attn.qkv, mlp.fc]}]   # crossed with the grid

Every point's config is checked before anything trains. Under mpirun/srun the ranks split into
groups of ranks_per_run; group g trains points g, g+G, g+2G, ... one after another. A run that
finished (its done.json) is skipped when the sweep runs again; an unfinished one resumes from its
newest checkpoint. When all runs have finished, the report (see lora report) goes to output_dir.

options:
  --ranks-per-run N      ranks per run (replaces the file's ranks_per_run)
  --only I               train only point I, on all ranks of the job (one Slurm array task)
  --list                 print "I<TAB>run dir<TAB>key=value ..." per point and exit
  --emit-slurm FILE      write an sbatch job-array script for this sweep (one task per point,
                         requeued after preemption) and exit
  --max-parallel K       with --emit-slurm: at most K array tasks at once (default: all)
  -h, --help             this text

Signals: SIGTERM or SIGUSR1 stop the current runs after a checkpoint and exit 75 (Ctrl-C: 130).
)";

const char* kReportHelp = R"(usage: lora report DIR

DIR is a sweep's output directory (runs in subdirectories) or one run's directory (config.yaml
and metrics.jsonl). Writes DIR/report.csv and DIR/report.md (one row per run: the config keys
that differ between runs, trainable parameters, gradient and communicated bytes per step,
tokens/s, final train and val loss, best val loss and its step), DIR/val_loss.svg (val loss
against step, one line per run) and DIR/rank_vs_loss.svg (final val loss against lora.rank),
and prints the table.
)";

const char* kTokenizeHelp = R"(usage: lora tokenize --tokenizer TOKENIZER.json|MODEL_DIR [--decode] [FILE]

Reads FILE (standard input when absent) line by line and prints, for each line, the token ids of
its text (without the line break, without BOS/EOS) separated by spaces, one line per input line.
With --decode each input line holds such ids and the decoded text is printed instead. The
tokenizer is a Hugging Face tokenizer.json or a model directory holding one.

options:
  --tokenizer PATH       tokenizer.json or model directory (required)
  --decode               ids to text
  -h, --help             this text

Invalid UTF-8, a non-numeric id or an id outside the vocabulary is exit 2 with FILE:LINE.
)";

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  int expected = 0;
  g_stop_signal.compare_exchange_strong(expected, sig);
}

void install_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

struct Args {
  std::string command;
  std::string config;
  std::vector<std::string> overrides;
  std::string resume = "none";
  std::string adapter;
  std::string peft;  // export --peft
  std::string out;   // merge --out
  bool json = false;
  long max_windows = 0;
  std::string prompt;
  bool has_prompt = false;
  bool chat = false;
  int tokens = 200;
  float temperature = 0.0f;
  uint64_t seed = 0;
  bool log_all_ranks = false;
  int ranks_per_run = 0;
  long only = -1;
  bool list = false;
  std::string emit_slurm;
  int max_parallel = 0;
  std::string tokenizer;
  bool decode = false;
  bool help = false;
};

long parse_long(const std::string& flag, const std::string& v) {
  try {
    size_t pos = 0;
    long x = std::stol(v, &pos);
    if (pos == v.size()) return x;
  } catch (...) {
  }
  throw InputError(flag + ": expected an integer, got '" + v + "'");
}

float parse_float(const std::string& flag, const std::string& v) {
  try {
    size_t pos = 0;
    float x = std::stof(v, &pos);
    if (pos == v.size() && std::isfinite(x)) return x;
  } catch (...) {
  }
  throw InputError(flag + ": expected a number, got '" + v + "'");
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> v(argv + 1, argv + argc);
  if (v.empty()) {
    a.help = true;
    return a;
  }
  a.command = v[0];
  if (a.command == "-h" || a.command == "--help" || a.command == "help") {
    a.command.clear();
    a.help = true;
    return a;
  }
  for (size_t i = 1; i < v.size(); ++i) {
    const std::string& s = v[i];
    auto value = [&](const std::string& flag) -> std::string {
      const std::string prefix = flag + "=";
      if (s.rfind(prefix, 0) == 0) return s.substr(prefix.size());
      if (i + 1 >= v.size()) throw InputError(flag + ": expected a value");
      return v[++i];
    };
    auto is = [&](const char* flag) {
      return s == flag || s.rfind(std::string(flag) + "=", 0) == 0;
    };
    if (s == "-h" || s == "--help") a.help = true;
    else if (is("--set")) a.overrides.push_back(value("--set"));
    else if (is("--resume")) a.resume = value("--resume");
    else if (is("--adapter")) a.adapter = value("--adapter");
    else if (is("--peft")) a.peft = value("--peft");
    else if (is("--out")) a.out = value("--out");
    else if (s == "--json") a.json = true;
    else if (is("--max-windows")) {
      a.max_windows = parse_long("--max-windows", value("--max-windows"));
      if (a.max_windows < 1) throw InputError("--max-windows: expected an integer >= 1, got " + std::to_string(a.max_windows));
    }
    else if (is("--prompt")) { a.prompt = value("--prompt"); a.has_prompt = true; }
    else if (s == "--chat") a.chat = true;
    else if (is("--tokens")) a.tokens = static_cast<int>(parse_long("--tokens", value("--tokens")));
    else if (is("--temperature")) a.temperature = parse_float("--temperature", value("--temperature"));
    else if (is("--seed")) a.seed = static_cast<uint64_t>(parse_long("--seed", value("--seed")));
    else if (s == "--log-all-ranks") a.log_all_ranks = true;
    else if (is("--ranks-per-run")) {
      const long n = parse_long("--ranks-per-run", value("--ranks-per-run"));
      if (n < 1) throw InputError("--ranks-per-run: expected an integer >= 1, got " + std::to_string(n));
      a.ranks_per_run = static_cast<int>(n);
    }
    else if (is("--only")) {
      a.only = parse_long("--only", value("--only"));
      if (a.only < 0) throw InputError("--only: expected a point index >= 0, got " + std::to_string(a.only));
    }
    else if (s == "--list") a.list = true;
    else if (is("--tokenizer")) a.tokenizer = value("--tokenizer");
    else if (s == "--decode") a.decode = true;
    else if (is("--emit-slurm")) a.emit_slurm = value("--emit-slurm");
    else if (is("--max-parallel")) {
      const long n = parse_long("--max-parallel", value("--max-parallel"));
      if (n < 1) throw InputError("--max-parallel: expected an integer >= 1, got " + std::to_string(n));
      a.max_parallel = static_cast<int>(n);
    }
    else if (!s.empty() && s[0] == '-') throw InputError("unknown option '" + s + "' for `lora " + a.command + "` (see lora " + a.command + " --help)");
    else if (a.config.empty()) a.config = s;
    else throw InputError("unexpected argument '" + s + "' (" +
                          (a.command == "tokenize" ? std::string("one input file expected")
                                                   : std::string("one config/checkpoint file expected")) + ")");
  }
  return a;
}

const char* help_for(const std::string& command) {
  if (command == "train") return kTrainHelp;
  if (command == "eval") return kEvalHelp;
  if (command == "generate") return kGenerateHelp;
  if (command == "inspect") return kInspectHelp;
  if (command == "sweep") return kSweepHelp;
  if (command == "report") return kReportHelp;
  if (command == "export") return kExportHelp;
  if (command == "merge") return kMergeHelp;
  if (command == "tokenize") return kTokenizeHelp;
  return kMainHelp;
}

}  // namespace

int cli_main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const InputError& e) {
    std::fprintf(stderr, "lora: error: %s\n", e.what());
    return 2;
  }
  const bool known = args.command.empty() || help_for(args.command) != kMainHelp;
  if (!known) {
    std::fprintf(stderr, "lora: error: unknown command '%s'\n\n%s", args.command.c_str(), kMainHelp);
    return 2;
  }
  if (args.help) {
    std::fputs(help_for(args.command), stdout);
    return 0;
  }
  if (args.command == "tokenize") {
    if (args.tokenizer.empty()) {
      std::fprintf(stderr, "lora: error: `lora tokenize` needs --tokenizer TOKENIZER.json|MODEL_DIR\n\n%s",
                   kTokenizeHelp);
      return 2;
    }
    try {
      return run_tokenize(TokenizeArgs{args.tokenizer, args.config, args.decode});
    } catch (const InputError& e) {
      std::fprintf(stderr, "lora: error: %s\n", e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lora: error: %s\n", e.what());
      return 1;
    }
  }
  if (args.config.empty()) {
    const char* what = args.command == "inspect" || args.command == "export" ? "a checkpoint file"
                       : args.command == "sweep" ? "a sweep file"
                       : args.command == "report" ? "a run or sweep directory"
                       : "a config file";
    std::fprintf(stderr, "lora: error: `lora %s` needs %s\n\n%s", args.command.c_str(), what,
                 help_for(args.command));
    return 2;
  }
  SweepArgs sa{args.config, args.ranks_per_run, args.only, args.list, args.emit_slurm,
                args.max_parallel, &g_stop_signal};
  // Single-process commands: no MPI world needed.
  const bool single = args.command == "inspect" || args.command == "report" ||
                      args.command == "export" || args.command == "merge" ||
                      (args.command == "sweep" && (args.list || !args.emit_slurm.empty()));
  if (single) {
    try {
      if (args.command == "report") return run_report(args.config);
      if (args.command == "export") return run_export(args.config, args.peft);
      if (args.command == "merge")
        return run_merge(MergeArgs{args.config, args.overrides, args.adapter, args.out});
      if (args.command == "sweep") return args.list ? run_sweep_list(sa) : run_sweep_emit_slurm(sa);
      return run_inspect(args.config);
    } catch (const InputError& e) {
      std::fprintf(stderr, "lora: error: %s\n", e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lora: error: %s\n", e.what());
      return 1;
    }
  }

  std::unique_ptr<World> world;
  try {
    world = std::make_unique<World>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lora: error: cannot start: %s\n", e.what());
    return 1;
  }
  // From here on a failure on any rank must end every rank.
  auto fail = [&](int code, const char* what) -> int {
    std::fprintf(stderr, "lora: %serror: %s\n", world->label().c_str(), what);
    std::fflush(stderr);
    if (world->size() > 1) world->abort(code);
    return code;
  };
  try {
    if (args.command == "train") {
      install_signal_handlers();
      TrainArgs ta{args.config, args.overrides, args.resume, args.log_all_ranks, &g_stop_signal};
      return run_train(*world, ta);
    }
    if (args.command == "sweep") {
      install_signal_handlers();
      return run_sweep(*world, sa);
    }
    if (args.command == "eval")
      return run_eval(*world, EvalArgs{args.config, args.overrides, args.adapter, args.json,
                                       args.max_windows});
    if (!args.has_prompt) throw InputError("lora generate: --prompt TEXT is required");
    GenerateArgs ga{args.config, args.overrides, args.adapter, args.prompt, args.tokens,
                    args.temperature, args.seed, args.chat};
    return run_generate(*world, ga);
  } catch (const InputError& e) {
    return fail(2, e.what());
  } catch (const std::exception& e) {
    return fail(1, e.what());
  }
}

}  // namespace lora
