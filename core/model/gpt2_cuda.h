// GPT-2 with LoRA adapters on one GPU: the CPU model (core/model/transformer.h) composed from the CUDA
// ops instead of the CPU ones. Same math, same parameter and adapter layouts, same activation
// shapes, same dropout masks (row ids (seq id << 20) | t and the same seed derivation), same
// per-block gradient hand-off order; fp32 throughout.
//
// Parameters, gradients and activations live in device memory; every kernel and copy runs on the
// compute stream given at construction, in stream order. forward() synchronises once, to read the
// loss back; backward() never synchronises. Host-visible results (loss, logits_to_host,
// download_*) are explicit copies.
//
// In lora mode the base is frozen and no base gradient memory exists; in full mode every base
// parameter has a gradient and no adapters exist (as the CPU model). Only GPT-2 specs (LayerNorm,
// learned positions, GELU, no grouped-query attention) are implemented on the GPU so far: the
// constructor refuses any other.
//
// Gradient hand-off: backward(scale, ready) calls ready(offset, count, event) for each range of the
// trainable-gradient buffer once the kernels that write it have been enqueued, last block first.
// The model has recorded `event` on the compute stream right after the last of those kernels, so a
// communication stream can cudaStreamWaitEvent(comm, event) and reduce the range while the compute
// stream goes on with earlier blocks. The callee must not record or destroy the event; it stays
// valid until the next backward (the model owns a pool of them).
#pragma once

#ifdef LORA_WITH_CUDA

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"
#include "core/model/model.h"
#include "core/model/spec.h"

namespace lora {

class Gpt2CudaModel {
 public:
  using CudaGradReadyFn = std::function<void(size_t offset, size_t count, cudaEvent_t ready)>;

  // lora must be set in lora mode and empty in full mode. Allocates parameters (zero) and
  // gradients on the current device; `compute` is the stream everything runs on (it must outlive
  // the model). Upload the base with upload_base() and the adapters with upload_lora().
  Gpt2CudaModel(const ModelSpec& spec, TrainMode mode, const std::optional<LoraSpec>& lora,
                cudaStream_t compute);
  ~Gpt2CudaModel();
  Gpt2CudaModel(const Gpt2CudaModel&) = delete;
  Gpt2CudaModel& operator=(const Gpt2CudaModel&) = delete;

  const ModelSpec& spec() const { return layout_.spec(); }
  TrainMode mode() const { return mode_; }
  const BaseLayout& base_layout() const { return layout_; }
  const LoraLayout* lora_layout() const { return lora_layout_.get(); }
  cudaStream_t stream() const { return stream_; }

  size_t n_base_params() const { return base_.size(); }
  size_t n_lora_params() const { return lora_.size(); }
  // What the optimizer updates: the adapters in lora mode, the base in full mode.
  size_t n_trainable() const;

  // Host <-> device copies of whole buffers (n_base_params() / n_lora_params() floats), ordered on
  // the compute stream; they return when the copy is complete. upload_lora/download_lora on a
  // full-mode model are errors.
  void upload_base(const float* host);
  void upload_lora(const float* host);
  void download_base(float* host) const;
  void download_lora(float* host) const;

  // Device pointers, n_trainable() floats each.
  float* trainable_params();
  float* trainable_grads();
  // Enqueues a zero fill of the trainable gradients on the compute stream.
  void zero_grads();

  // tokens [n_batch, n_seq] and targets [n_batch, n_seq] (or null: no loss) are host arrays, copied
  // to the device (ids are range-checked on the host). Returns the mean loss over all
  // n_batch * n_seq positions, summed in double on the host as the CPU model does (0 when targets
  // is null). With targets, returns after the stream has finished the forward pass.
  float forward(const int32_t* tokens, const int32_t* targets, int n_batch, int n_seq,
                const ForwardOptions& opts = {});
  // Accumulates (+=) into trainable_grads() the gradient of loss_scale * (mean loss of the last
  // forward); enqueued on the compute stream, does not wait for it. See the file comment for
  // `ready`.
  void backward(float loss_scale = 1.0f, const CudaGradReadyFn& ready = nullptr);

  // [n_batch, n_seq, vocab] logits of the last forward into host memory (waits for the stream).
  // As in the CPU model, backward overwrites the logits with their gradient.
  void logits_to_host(float* host) const;

  // Device bytes allocated by the model: parameters + gradients + activations (including the
  // token, target and dropout-row-id buffers).
  size_t device_bytes() const;

 private:
  struct Activations;
  void ensure_activations(int n_batch, int n_seq);
  void copy_to_device(float* device, const float* host, size_t n) const;
  void copy_to_host(float* host, const float* device, size_t n) const;

  BaseLayout layout_;
  TrainMode mode_;
  std::unique_ptr<LoraLayout> lora_layout_;
  cudaStream_t stream_;
  cuda::DeviceBuffer<float> base_;
  cuda::DeviceBuffer<float> base_grads_;  // full mode only
  cuda::DeviceBuffer<float> lora_;
  cuda::DeviceBuffer<float> lora_grads_;  // lora mode only
  std::vector<cudaEvent_t> ready_events_;  // one per hand-off range: n_layer (+2 in full mode)
  std::unique_ptr<Activations> acts_;
};

}  // namespace lora

#endif  // LORA_WITH_CUDA
