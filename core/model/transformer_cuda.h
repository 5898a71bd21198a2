// A decoder-only transformer of any family (core/model/spec.h) with LoRA adapters on one GPU,
// implementing the Model interface: the CPU model (core/model/transformer.h) composed from the
// CUDA ops instead of the CPU ones, op for op. Same parameter and adapter layouts, same activation
// shapes, same dropout masks (row ids (seq id << 20) | t and the same seed derivation), same
// per-block gradient hand-off order; fp32 throughout (cuBLAS in pedantic math: no TF32).
//
// Parameters, gradients, optimizer moments and activations live in device memory; every kernel
// and copy runs on the model's compute stream, in stream order. The host waits for the device
// only where a result comes back to it: forward() without ForwardOptions::defer_loss (the loss),
// loss_sum(), logits(), the optimizer's last_grad_norm(), and the host copies (get/set_trainable,
// get_base, get/set_moments, upload/download). A training step with defer_loss set enqueues its
// work and returns; the tokens, targets and dropout row ids go up through two pinned staging
// slots, so the host waits only for the upload of the forward before last to have run.
//
// Gradient hand-off: backward(scale, ready) records an event on the compute stream after the
// kernels that write each range of the trainable-gradient buffer, then calls ready for the range
// (last block first). backward_with_events passes the event, so a communication stream can
// cudaStreamWaitEvent on it; the Model's backward passes the range alone, and a communicator given
// the model's stream (comm/nccl.h set_producer_stream) orders itself after the same point. The
// events belong to the model and stay valid until the next backward.
#pragma once

#ifdef LORA_WITH_CUDA

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/model/model.h"

namespace lora {

class TransformerModel;

class CudaTransformerModel final : public Model {
 public:
  using CudaGradReadyFn = std::function<void(size_t offset, size_t count, cudaEvent_t ready)>;

  // lora must be set in lora mode and empty in full mode. Allocates parameters (zero), gradients
  // and the RoPE tables on the current device. `stream` is the compute stream (it must outlive the
  // model); null: the model creates and owns a non-blocking stream. Upload the base and adapters
  // with upload_base() / upload_lora() or set_trainable().
  CudaTransformerModel(const ModelSpec& spec, TrainMode mode, const std::optional<LoraSpec>& lora,
                       cudaStream_t stream = nullptr);
  // The same model as `host` (spec, mode, adapters, base weights and fingerprint), uploaded once.
  static std::unique_ptr<CudaTransformerModel> from_host(const TransformerModel& host,
                                                         cudaStream_t stream = nullptr);
  ~CudaTransformerModel() override;
  CudaTransformerModel(const CudaTransformerModel&) = delete;
  CudaTransformerModel& operator=(const CudaTransformerModel&) = delete;

  const ModelSpec& spec() const override { return layout_.spec(); }
  TrainMode mode() const override { return mode_; }
  DeviceKind device() const override { return DeviceKind::kCuda; }
  const BaseLayout& base_layout() const override { return layout_; }
  const LoraLayout* lora_layout() const override { return lora_layout_.get(); }
  cudaStream_t stream() const { return stream_; }
  int device_index() const { return device_; }

  size_t n_base_params() const override { return base_.size(); }
  size_t n_lora_params() const override { return lora_.size(); }

  // Device pointers, n_trainable() floats each.
  float* trainable_params() override;
  float* trainable_grads() override;
  // Enqueues a zero fill of the trainable gradients.
  void zero_grads() override;
  std::unique_ptr<TrainableOptimizer> make_optimizer(const ops::AdamWParams& hp) override;

  // Host copies; they return when the copy is complete.
  void get_trainable(std::span<float> out) const override;
  void set_trainable(std::span<const float> in) override;
  void get_base(std::span<float> out) const override;
  void upload_base(const float* host);  // n_base_params() floats; refreshes the fingerprint
  void upload_lora(const float* host);  // n_lora_params() floats (lora mode only)
  void download_base(float* host) const;
  void download_lora(float* host) const;
  // Empty until a base is uploaded (upload_base, set_trainable in full mode, from_host).
  const std::string& base_fingerprint() const override { return fingerprint_; }

  // tokens and targets are host arrays, range-checked on the host (a negative target masks).
  float forward(const int32_t* tokens, const int32_t* targets, int n_batch, int n_seq,
                const ForwardOptions& opts = {}) override;
  long n_targets() const override { return n_targets_; }
  double loss_sum() override;
  void clear_loss_sum() override;
  void backward(float loss_scale = 1.0f, const GradReadyFn& ready = nullptr) override;
  // backward() whose hand-off also passes each range's event.
  void backward_with_events(float loss_scale, const CudaGradReadyFn& ready);
  const float* logits() const override;
  // [n_batch, n_seq, vocab] logits and [n_batch, n_seq] per-position losses (0 where masked) of
  // the last forward into host memory (wait for the device). Backward overwrites the logits.
  void logits_to_host(float* host) const;
  void losses_to_host(float* host) const;

  size_t workspace_bytes() const override;
  size_t grad_bytes() const override;
  // Device bytes of parameters, gradients, RoPE tables and activations (inputs included).
  size_t device_bytes() const;

 private:
  struct Activations;
  void ensure_activations(int n_batch, int n_seq);
  void run_backward(float loss_scale, const CudaGradReadyFn& ready);
  void copy_to_device(float* device, const float* host, size_t n) const;
  void copy_to_host(float* host, const float* device, size_t n) const;

  BaseLayout layout_;
  TrainMode mode_;
  std::unique_ptr<LoraLayout> lora_layout_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  cuda::DeviceBuffer<float> base_;
  cuda::DeviceBuffer<float> base_grads_;  // full mode only
  cuda::DeviceBuffer<float> lora_;
  cuda::DeviceBuffer<float> lora_grads_;  // lora mode only
  cuda::DeviceBuffer<float> rope_cos_, rope_sin_;  // [max_seq_len, head_dim / 2], RoPE only
  cuda::DeviceBuffer<double> loss_sum_;             // [1] running sum (see Model::loss_sum)
  cuda::DeviceBuffer<float> loss_mean_;             // [1] mean loss of the last forward
  std::vector<cudaEvent_t> ready_events_;  // one per hand-off range: n_layer (+2 in full mode)
  std::string fingerprint_;
  long n_targets_ = 0;
  std::unique_ptr<Activations> acts_;
  mutable std::vector<float> logits_host_;  // logits() cache
  mutable bool logits_host_valid_ = false;
};

}  // namespace lora

#endif  // LORA_WITH_CUDA
