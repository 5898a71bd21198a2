// Device resolution, model placement and the gradient communicator (see trainer/device.h).
#include "trainer/device.h"

#include "core/cuda_runtime.h"
#include "core/error.h"

#ifdef LORA_WITH_CUDA
#include "core/model/transformer_cuda.h"
#endif
#ifdef LORA_WITH_NCCL
#include "comm/nccl.h"
#endif

namespace lora {

bool uses_cuda(const Config& cfg) {
  if (cfg.device.backend == DeviceBackend::kCpu) return false;
  std::string why;
  const bool available = cuda_device_available(&why);
  if (cfg.device.backend == DeviceBackend::kAuto) return available;
  if (!available) {
    throw Error(detail::concat(cfg.source_path,
                               ": device.backend: cuda, but no usable CUDA device: ", why,
                               " (use device.backend: cpu or auto)"));
  }
  return true;
}

std::unique_ptr<Model> place_model(std::unique_ptr<TransformerModel> host, const Config& cfg) {
  if (!uses_cuda(cfg)) return host;
#ifdef LORA_WITH_CUDA
  return CudaTransformerModel::from_host(*host);
#else
  throw Error("this build has no CUDA backend");  // uses_cuda() has already said so
#endif
}

std::string describe_device(const Model& model) {
#ifdef LORA_WITH_CUDA
  if (const auto* m = dynamic_cast<const CudaTransformerModel*>(&model)) {
    return detail::concat("cuda:", m->device_index(), " (", cuda::device_name(m->device_index()),
                          ")");
  }
#endif
  return model.device() == DeviceKind::kCuda ? "cuda" : "cpu";
}

namespace {

// The control communicator carries the gradients too (host buffers, or one process).
class SharedGradientComm final : public GradientComm {
 public:
  explicit SharedGradientComm(comm::Communicator& c) : comm_(c) {}
  comm::Communicator& comm() override { return comm_; }
  void attach(comm::GradReducer&) override {}

 private:
  comm::Communicator& comm_;
};

#if defined(LORA_WITH_CUDA) && defined(LORA_WITH_NCCL)

// NCCL on its own stream: every all-reduce waits on the device for the model's compute stream at
// the moment it is started (the reducer starts it when backward hands a block's range over), and
// the compute stream waits on the device for the reductions before the optimizer runs.
class NcclGradientComm final : public GradientComm {
 public:
  NcclGradientComm(comm::Communicator& control, CudaTransformerModel& model)
      : compute_(model.stream()) {
    LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      nccl_ = std::make_unique<comm::NcclCommunicator>(control, stream_);
      nccl_->set_producer_stream(compute_);
    } catch (...) {
      cudaStreamDestroy(stream_);
      throw;
    }
  }
  ~NcclGradientComm() override {
    nccl_.reset();  // finalises (bounded by the timeout) before its stream goes
    cudaStreamDestroy(stream_);
  }
  NcclGradientComm(const NcclGradientComm&) = delete;
  NcclGradientComm& operator=(const NcclGradientComm&) = delete;

  comm::Communicator& comm() override { return *nccl_; }
  void attach(comm::GradReducer& reducer) override { reducer.set_consumer_stream(compute_); }

 private:
  cudaStream_t compute_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<comm::NcclCommunicator> nccl_;
};

#endif

}  // namespace

std::unique_ptr<GradientComm> make_gradient_comm(const Config& cfg, comm::Communicator& control,
                                                 Model& model) {
  const CommBackend backend = cfg.comm.backend;
  if (model.device() == DeviceKind::kCpu) {
    LORA_INPUT_CHECK(backend != CommBackend::kNccl, cfg.source_path,
                     ": comm.backend: nccl needs the CUDA backend (device.backend: cuda, or auto "
                     "on a machine with a GPU); this run computes on the CPU (use auto or mpi)");
    return std::make_unique<SharedGradientComm>(control);
  }
  LORA_INPUT_CHECK(backend != CommBackend::kMpi, cfg.source_path,
                   ": comm.backend: mpi reduces host buffers, but the gradients of "
                   "device.backend: cuda live on the GPU (use nccl or auto)");
  const bool nccl = backend == CommBackend::kNccl ||
                    (backend == CommBackend::kAuto && control.size() > 1);
  if (!nccl) return std::make_unique<SharedGradientComm>(control);
#if defined(LORA_WITH_CUDA) && defined(LORA_WITH_NCCL)
  auto* cuda_model = dynamic_cast<CudaTransformerModel*>(&model);
  LORA_CHECK(cuda_model != nullptr, "a CUDA model that is not a CudaTransformerModel");
  return std::make_unique<NcclGradientComm>(control, *cuda_model);
#else
  throw InputError(detail::concat(cfg.source_path,
                                  ": comm.backend: this build has no NCCL (libnccl was not found "
                                  "at configure time); use a build with NCCL"));
#endif
}

}  // namespace lora
