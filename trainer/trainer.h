// The training loop (DESIGN.md section 3): each rank draws its slice of the global batch, runs
// forward and backward, hands each block's trainable gradients to the gradient reducer as soon as
// they are final, waits for the all-reduce, clips, steps AdamW, logs, evaluates and checkpoints.
//
// Also the pieces `lora eval` and `lora generate` share with training: building the model from a
// config (random or safetensors base, LoRA init) and evaluating the validation loss.
#pragma once

#include <atomic>
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/model/model.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/peft.h"

namespace lora {

enum class ResumeMode { kNone, kAuto, kPath };

struct TrainOptions {
  ResumeMode resume = ResumeMode::kNone;
  std::string resume_path;
  std::vector<std::string> overrides;           // the --set arguments, reported on resume
  const std::atomic<int>* stop_signal = nullptr;  // non-zero: stop at the next step boundary
  bool log_all_ranks = false;                   // every rank writes output_dir/rank-K.log
  std::ostream* out = nullptr;                  // rank 0 progress (default std::cout)
};

struct TrainSummary {
  long start_step = 0;
  long steps_done = 0;  // optimizer steps completed in total (including before a resume)
  uint64_t tokens_trained = 0;  // unmasked targets trained on in this run (since a resume)
  double final_train_loss = std::numeric_limits<double>::quiet_NaN();
  double final_val_loss = std::numeric_limits<double>::quiet_NaN();
  double best_val_loss = std::numeric_limits<double>::quiet_NaN();
  long best_val_step = -1;
  double tokens_per_s = 0.0;
  uint64_t grad_bytes_per_step = 0;  // bytes this rank passed to the gradient all-reduce per step
  size_t n_trainable = 0;
  size_t n_total = 0;
  int stop_signal = 0;  // the signal that stopped training early, 0 when it ran to the end
  std::string last_checkpoint;
};

// Sets OpenMP and OpenBLAS threads from device.threads (0: all cores). Returns the count used.
int configure_threads(int threads);

// Builds the model of a config: base from model.path (a Hugging Face model directory),
// model.weights (one safetensors file) or random from run.seed; in lora mode the adapters
// initialised from the seed per lora.init.
std::unique_ptr<Model> build_model(const Config& cfg);

// The model of cfg with an adapter's parameters: LoRA settings from the adapter
// (config_for_adapter, which throws on a contradicting config), its parameters loaded; a
// checkpoint's must also come from the same base (fingerprint, see check_checkpoint_fits).
// `effective`, when given, receives the config the model was built from.
std::unique_ptr<Model> build_model_with_adapter(const Config& cfg, const Adapter& adapter,
                                                const std::string& what, Config* effective = nullptr);

// Bytes one data-parallel step all-reduces (fp32 gradients of every trainable parameter).
uint64_t lora_grad_bytes(const ModelSpec& spec, const LoraSpec& lora);
uint64_t full_grad_bytes(const ModelSpec& spec);

// Mean validation loss over the unmasked targets of eval_batches * micro_batch fixed sequences of
// `val`, spread over the ranks of comm (the same sequences whatever the world size).
// This is the trainer's periodic validation (a fixed random sample); `lora eval` uses
// evaluate_windows.
double evaluate(Model& model, const TokenStream& val, const Config& cfg, comm::Communicator& comm);

struct WindowEval {
  double loss = 0.0;  // mean cross-entropy over the targets (NaN when there are none)
  long tokens = 0;    // targets evaluated (unmasked)
  long windows = 0;
};
// Every target of `val` once: consecutive windows of seq_len inputs starting at token 0, seq_len,
// 2 seq_len, ... (window w predicts tokens w seq_len + 1 .. (w + 1) seq_len), the last window
// shorter when the stream does not divide evenly, so n_tokens - 1 targets in all (masked targets,
// such as prompt tokens of instruction data, are not counted). With one example per sequence
// (JSONL without packing) each example is one window. Only the first
// max_windows windows when max_windows > 0. Windows run micro_batch at a time; window w goes to
// rank w mod world, and the sums are all-reduced, so every rank returns the same result.
WindowEval evaluate_windows(Model& model, const TokenStream& val, int seq_len, int micro_batch,
                            long max_windows, comm::Communicator& comm);

TrainSummary train(const Config& cfg, comm::Communicator& comm, const TrainOptions& opts);

// Checks that a checkpoint fits the model built from cfg: same arch and spec, mode, base weights
// (fingerprint) and, in lora mode, the same rank, alpha, rsLoRA and targets. Throws
// lora::InputError naming the checkpoint and the mismatch.
void check_checkpoint_fits(const CheckpointState& ckpt, const std::string& path, const Model& model,
                           const Config& cfg);
// check_checkpoint_fits, then copies the checkpoint's trainable parameters into the model.
void load_checkpoint_weights(Model& model, const Config& cfg, const std::string& path);

// Config keys whose values differ between a checkpoint's config and cfg, as "key: old -> new".
// Keys that must not change on resume (model shape, LoRA structure, mode, seed, data format and
// sequence length) throw lora::InputError instead.
std::vector<std::string> resume_config_changes(const std::string& ckpt_config_yaml,
                                               const Config& cfg, const std::string& path);

}  // namespace lora
