// Checkpoints: everything needed to resume a run, in one HDF5 file per checkpoint (DESIGN.md s. 4).
//
// File layout (readable by h5py and h5dump; strings are variable-length UTF-8):
//   bytes 0-511               integrity block (an HDF5 user block, which HDF5 skips): the text
//                             "lora-checkpoint integrity block\n"
//                             "crc64-xz of bytes 512..end: <16 lowercase hex digits>\n"
//                             "file bytes: <decimal>\n", then zero bytes up to 512. The CRC-64/XZ
//                             (core/crc64.h) covers every byte after the block.
//   /                         attrs: format="lora-checkpoint", format_version=2, step, tokens_seen,
//                             world_size, base_fingerprint, arch, created_utc (ISO 8601), config_yaml,
//                             mode ("lora"|"full"), vocab_size, max_seq_len, n_layer, n_head, d_model,
//                             model_spec (the whole ModelSpec as JSON: n_kv_head, d_ff, norm, RoPE,
//                             MLP, biases, tied head, ...), checksum (hex hash of every field, params,
//                             moments and rng states), complete=1 (written last)
//   lora mode:
//   /adapters                 attrs: rank, alpha, dropout, rslora, targets ("attn.qkv,attn.proj"),
//                             init_a, init_b
//   /adapters/<module>/A      float32 [d_in, r]    <module> = the Hugging Face module path (LoraModule::name):
//                                                  h.{l}.attn.c_attn, model.layers.{l}.self_attn.q_proj
//   /adapters/<module>/B      float32 [r, d_out]   group attrs: rank, alpha, scaling
//   /optimizer/<module>/{A_m, A_v, B_m, B_v}       AdamW moments, same shapes as A and B
//   full mode (no /adapters):
//   /base/<tensor>            float32, Hugging Face name and shape (BaseLayout::tensors())
//   /optimizer/base/<tensor>/{m, v}
//   both:
//   /optimizer                attrs: step, beta1, beta2, eps, weight_decay
// Version 1 files (written before the model family existed) have no model_spec: they are GPT-2
// models, read with GPT-2's spec and the sizes of their attributes; their checksum covers what it
// always did.
//   /trainer                  attrs: data_seed, data_cursor, dropout_seed, lr, lr_warmup_steps,
//                             lr_total_steps; datasets: rng_states uint64 [n], metrics_jsonl (string)
//
// Writing is atomic: the HDF5 file is built in memory (peak memory: the state plus one file image),
// sealed with its integrity block, written as `<path>.tmp` with POSIX calls and fsync'd, renamed
// onto `<path>` and the directory fsync'd, so a reader sees either the previous file or the complete
// new one. A file killed mid-write is a `.tmp` that readers never look at.
//
// Reading loads the whole file with plain I/O (peak memory: the state plus one file image) and
// checks the integrity block (recorded size, CRC-64) before any HDF5 call: a damaged file is refused
// without libhdf5 ever parsing it. HDF5 then reads the verified bytes in memory, and everything is
// validated again (format, version, completion flag, every dataset's presence, dtype and shape
// against the layout the file declares, the per-field checksum). Every failure is a lora::InputError
// naming the file and the problem.
//
// Version-1 files (no integrity block; the HDF5 signature at byte 0) are still read, protected only
// by the per-field `checksum` attribute, which is checked after HDF5 has parsed the file: a damaged
// version-1 file is refused in almost every case, but one that damages HDF5's own metadata can crash
// libhdf5 before the check runs (3 in 1,000 random corruptions did). Rewriting a checkpoint with
// another HDF5 program (h5py in "r+" mode, h5repack) leaves its integrity block stale: such a file is
// refused as damaged.
// Not thread-safe (the serial HDF5 library is not): call from one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/model/lora_layout.h"
#include "core/model/spec.h"

namespace lora {

// The version written. Version 1 (no integrity block, no model_spec: GPT-2) is still read.
inline constexpr int kCheckpointFormatVersion = 2;

struct CheckpointState {
  long step = 0;  // optimizer steps completed
  uint64_t tokens_seen = 0;
  int world_size = 1;
  std::string base_fingerprint;  // see base_fingerprint()
  ModelSpec spec;  // arch and every size and variant
  TrainMode mode = TrainMode::kLora;
  LoraSpec lora;            // lora mode only: full-mode files store no adapters, and read back the default
  std::string config_yaml;  // the resolved config, as text
  std::string created_utc;  // set by write_checkpoint (the value passed in is ignored); filled on read
  int format_version = kCheckpointFormatVersion;  // ignored on write; on read, the file's version
  // AdamW
  long optimizer_step = 0;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  // lora mode: the adapter buffer in LoraLayout order (n = LoraLayout::n_params());
  // full mode: the base buffer in BaseLayout order (n = BaseLayout::n_params()).
  // adam_m and adam_v have the same size as params.
  std::vector<float> params, adam_m, adam_v;
  // trainer state
  uint64_t data_seed = 0;            // the seed of the data order
  long data_cursor = 0;              // next step whose batch will be drawn
  uint64_t dropout_seed = 0;
  std::vector<uint64_t> rng_states;  // any other generator states, may be empty
  float lr = 0.0f;                   // learning rate of the last step
  long lr_warmup_steps = 0, lr_total_steps = 0;
  std::string metrics_jsonl;         // metrics so far (JSON lines)
};

// Number of elements params/adam_m/adam_v must hold for this state's mode, shape and LoRA spec.
// Throws lora::InputError when the shape or spec is invalid.
size_t checkpoint_param_count(const CheckpointState& state);

// Writes atomically (see above); creates the parent directory when missing. Throws lora::Error
// naming the path and the reason (disk full, unwritable directory, inconsistent vector sizes),
// leaving any previous file at `path` untouched and no `.tmp` behind.
void write_checkpoint(const std::string& path, const CheckpointState& state);

// Opens and validates everything; throws lora::InputError naming the file and what is wrong (no such
// file, not HDF5, truncated, CRC-64 mismatch or damaged integrity block, not a checkpoint, newer
// format version, missing or misshapen dataset such as '/adapters/h.1.attn.c_attn/B', checksum
// mismatch, ...).
CheckpointState read_checkpoint(const std::string& path);

// nullopt when `path` holds a valid checkpoint, else the reason it does not.
std::optional<std::string> verify_checkpoint(const std::string& path);

// "ckpt-<step>.h5" (no zero padding: directory scans sort numerically).
std::string checkpoint_file_name(long step);
// The step of a file named "ckpt-<step>.h5" (directories stripped), or nullopt for any other name
// (including "ckpt-<step>.h5.tmp").
std::optional<long> checkpoint_step_from_name(const std::string& path);

struct CheckpointScan {
  std::optional<std::string> latest_valid;  // path of the newest valid checkpoint
  long latest_valid_step = -1;
  std::vector<std::pair<std::string, std::string>> skipped;  // (path, reason) of newer invalid files
};

// Scans `dir` for ckpt-<step>.h5 files, newest first, and returns the first that validates (its step
// attribute must also match its name). `.tmp` files and other names are ignored. A missing directory
// yields an empty scan.
CheckpointScan find_latest_checkpoint(const std::string& dir);

// Deletes every ckpt-<step>.h5 older than the `keep`-th newest valid checkpoint in `dir` (keep < 1
// counts as 1, so the newest valid one is never deleted). Invalid files newer than that are left for
// inspection; nothing is deleted when no file validates. Throws lora::Error if a deletion fails.
void prune_checkpoints(const std::string& dir, int keep);

// 16 hex digits: a 64-bit hash of the n floats' bytes and of n. Identifies the frozen base a LoRA
// checkpoint was trained on.
std::string base_fingerprint(const float* base, size_t n);

// Human-readable summary for `lora inspect`: step, tokens, world size, base fingerprint, arch and
// shape, mode, LoRA spec (rank, alpha, scaling, rslora, targets, init), each adapter's (or, in full
// mode, each tensor's) shape and Frobenius norm, optimizer and schedule state, the config.
// Throws lora::InputError like read_checkpoint.
std::string describe_checkpoint(const std::string& path);

}  // namespace lora
