// The model interface the trainer drives (STYLE.md 13): one decoder-only transformer of any family
// (core/model/spec.h) on one backend. The training loop, eval, generate, sweep and checkpoints go
// through this interface alone; the CPU model (core/model/transformer.h) implements it, and a GPU
// model implements the same.
//
// Contract:
//  - Parameters: a frozen (lora mode) or trained (full mode) base of base_layout() and, in lora
//    mode, one contiguous adapter buffer of lora_layout(). What the optimizer updates — the
//    adapters in lora mode, the base in full mode — is the trainable buffer; its gradients are one
//    more buffer of the same size. Both live on device(): host memory on the CPU.
//  - forward(tokens, targets) runs the model on n_batch sequences of n_seq tokens; a target < 0
//    masks its position (no loss, no gradient). It returns the mean loss over the unmasked
//    positions (0 when there are none or targets is null) and n_targets() tells how many there were.
//    On a GPU returning the loss means waiting for the device, once per forward. A caller that
//    needs the loss only now and then sets ForwardOptions::defer_loss and reads loss_sum() when
//    it needs it: every forward with targets adds (its mean loss) x (its unmasked targets) to that
//    sum, in double, whether deferred or not, until clear_loss_sum(). The CPU model computes and
//    returns the loss either way, and its loss_sum() is exactly the double sum of
//    double(forward's return) * n_targets() in call order.
//  - backward(loss_scale, ready) accumulates (+=) into the trainable gradients the gradient of
//    loss_scale * (that mean loss), and calls ready(offset, count) for each range of the trainable
//    buffer as soon as it is final (last block first), so a gradient reducer can start
//    communicating while earlier blocks are still being differentiated. On a GPU "final" means
//    that the kernels writing the range have been enqueued on the model's compute stream and an
//    event recorded after them; they may still be running. A consumer on another stream must order
//    itself after that point on the device (cudaStreamWaitEvent on an event recorded on the
//    compute stream, as the NCCL communicator does when given the model's stream), never read the
//    range from the host.
//  - make_optimizer() gives AdamW with clipping over the trainable buffer, on the same device; its
//    step reads nothing back to the host (the gradient norm is read only when asked for).
//  - logits() of the last forward, [n_batch, n_seq, vocab] in host memory, until the next backward
//    (which reuses the buffer). On a GPU the first call after a forward downloads them.
//  - Host copies (get/set_trainable, get_base, the optimizer's moments) are plain float arrays in
//    the layouts above on every backend, so a checkpoint written from one backend resumes on
//    another.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"
#include "core/model/spec.h"
#include "core/ops/adamw.h"

namespace lora {

struct ForwardOptions {
  bool training = false;      // enables LoRA dropout
  uint64_t dropout_seed = 0;  // masks are a function of (dropout_seed, step, seq id, position, module)
  uint64_t step = 0;
  const uint64_t* seq_ids = nullptr;  // [n_batch] global sequence indices; null: 0..n_batch-1
  // Do not wait for the loss: forward may return NaN (a GPU model does; the CPU model returns the
  // loss anyway); read it later with Model::loss_sum().
  bool defer_loss = false;
};

// Called with [offset, offset + count) of the trainable-gradient buffer once that range is final.
using GradReadyFn = std::function<void(size_t offset, size_t count)>;

enum class DeviceKind { kCpu, kCuda };

// AdamW over a model's trainable buffer with global-norm gradient clipping, its moments kept where
// the model keeps its parameters (host memory on the CPU, device memory on a GPU), so a step never
// moves parameters or gradients to the host. Made by Model::make_optimizer.
class TrainableOptimizer {
 public:
  virtual ~TrainableOptimizer() = default;
  // Scales the trainable gradients so their global L2 norm is at most max_norm (max_norm <= 0:
  // no clipping), then one AdamW update at learning rate lr (the update count goes up first).
  virtual void step(float lr, float max_norm) = 0;
  // The gradient norm before clipping at the last step (a GPU implementation may wait for it).
  virtual float last_grad_norm() = 0;
  virtual long steps() const = 0;
  virtual void set_steps(long steps) = 0;
  // Host copies of the first and second moments (n_trainable() floats each).
  virtual void get_moments(std::span<float> m, std::span<float> v) const = 0;
  virtual void set_moments(std::span<const float> m, std::span<const float> v) = 0;
};

class Model {
 public:
  virtual ~Model() = default;

  virtual const ModelSpec& spec() const = 0;
  virtual TrainMode mode() const = 0;
  virtual DeviceKind device() const = 0;
  virtual const BaseLayout& base_layout() const = 0;
  // null in full mode.
  virtual const LoraLayout* lora_layout() const = 0;

  virtual size_t n_base_params() const = 0;
  virtual size_t n_lora_params() const = 0;
  size_t n_trainable() const {
    return mode() == TrainMode::kLora ? n_lora_params() : n_base_params();
  }

  // The trainable buffer and its gradients, n_trainable() floats each, on device().
  virtual float* trainable_params() = 0;
  virtual float* trainable_grads() = 0;
  virtual void zero_grads() = 0;
  // The optimizer of the trainable buffer (hp.lr is replaced by step()'s lr).
  virtual std::unique_ptr<TrainableOptimizer> make_optimizer(const ops::AdamWParams& hp) = 0;

  // Host copies (n_trainable() / n_base_params() floats).
  virtual void get_trainable(std::span<float> out) const = 0;
  virtual void set_trainable(std::span<const float> in) = 0;
  virtual void get_base(std::span<float> out) const = 0;
  // 16 hex digits identifying the base weights (see trainer/checkpoint.h base_fingerprint).
  virtual const std::string& base_fingerprint() const = 0;

  virtual float forward(const int32_t* tokens, const int32_t* targets, int n_batch, int n_seq,
                        const ForwardOptions& opts = {}) = 0;
  virtual long n_targets() const = 0;
  // Sum of (mean loss) x (unmasked targets) over the forwards with targets since the last
  // clear_loss_sum() (see the file comment). On a GPU this waits for the device.
  virtual double loss_sum() = 0;
  virtual void clear_loss_sum() = 0;
  virtual void backward(float loss_scale = 1.0f, const GradReadyFn& ready = nullptr) = 0;
  virtual const float* logits() const = 0;

  // Bytes of activation + gradient working memory currently allocated (for reporting).
  virtual size_t workspace_bytes() const = 0;
  // Bytes of parameter-gradient memory: the adapters' in lora mode, every parameter's in full mode.
  virtual size_t grad_bytes() const = 0;
};

}  // namespace lora
