// The device a run computes on and its gradient communicator (trainer/device.h), on any machine:
// device.backend cpu never asks for a GPU, auto follows whether one is usable, cuda without one is
// an error naming the reason; on the CPU the control communicator carries the gradients and
// comm.backend nccl is refused naming the key; a CPU model stays the host model itself. Where a
// GPU is usable (the GPU kit), the CUDA side of the same choices: the model placed on the device
// equals the host one, comm.backend mpi is refused for device gradients.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/model/transformer.h"
#include "tests/common/cuda_device.h"
#include "trainer/device.h"

namespace lora {
namespace {

Config small_config(DeviceBackend device, CommBackend comm) {
  Config cfg;
  cfg.source_path = "cfg.yaml";
  ModelSpec sizes;
  sizes.vocab_size = 16;
  sizes.max_seq_len = 8;
  sizes.n_layer = 1;
  sizes.n_head = 2;
  sizes.d_model = 8;
  cfg.model.spec = family_spec("gpt2", sizes);
  cfg.lora.targets = {LoraTarget::kAttnQkv};
  cfg.lora.rank = 2;
  cfg.device.backend = device;
  cfg.comm.backend = comm;
  return cfg;
}

std::unique_ptr<TransformerModel> host_model(const Config& cfg) {
  auto m = std::make_unique<TransformerModel>(cfg.model.spec, TrainMode::kLora, cfg.lora);
  m->init_base_random(1);
  m->init_lora(2);
  return m;
}

TEST(Device, CpuNeverAsksAutoFollowsTheMachineCudaNeedsADevice) {
  const bool available = cuda_device_available(nullptr);
  EXPECT_FALSE(uses_cuda(small_config(DeviceBackend::kCpu, CommBackend::kAuto)));
  EXPECT_EQ(uses_cuda(small_config(DeviceBackend::kAuto, CommBackend::kAuto)), available);
  const Config cuda = small_config(DeviceBackend::kCuda, CommBackend::kAuto);
  if (available) {
    EXPECT_TRUE(uses_cuda(cuda));
    return;
  }
  try {
    uses_cuda(cuda);
    ADD_FAILURE() << "device.backend: cuda without a usable device did not throw";
  } catch (const InputError& e) {
    ADD_FAILURE() << "an environment problem, not an input error: " << e.what();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cfg.yaml: device.backend: cuda, but no usable CUDA device: "),
              std::string::npos)
        << what;
  }
}

TEST(Device, OnTheCpuTheControlCommunicatorCarriesTheGradients) {
  comm::LocalCommunicator control;
  const Config cfg = small_config(DeviceBackend::kCpu, CommBackend::kAuto);
  auto host = host_model(cfg);
  TransformerModel* raw = host.get();
  std::unique_ptr<Model> model = place_model(std::move(host), cfg);
  EXPECT_EQ(model.get(), raw) << "a CPU run must keep the host model itself";
  EXPECT_EQ(model->device(), DeviceKind::kCpu);
  EXPECT_EQ(describe_device(*model), "cpu");
  for (CommBackend b : {CommBackend::kAuto, CommBackend::kLocal, CommBackend::kMpi}) {
    auto grads = make_gradient_comm(small_config(DeviceBackend::kCpu, b), control, *model);
    EXPECT_EQ(&grads->comm(), &control);
  }
  try {
    make_gradient_comm(small_config(DeviceBackend::kCpu, CommBackend::kNccl), control, *model);
    ADD_FAILURE() << "comm.backend: nccl on the CPU was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.yaml: comm.backend: nccl needs the CUDA backend"),
              std::string::npos)
        << e.what();
  }
}

// Needs a GPU: skips here with the reason, fails under LORA_REQUIRE_CUDA=1 without one.
TEST(Device, OnAGpuTheModelIsPlacedThereAndMpiCannotReduceItsGradients) {
  LORA_CUDA_DEVICE_OR_SKIP();
  comm::LocalCommunicator control;
  const Config cfg = small_config(DeviceBackend::kCuda, CommBackend::kAuto);
  auto host = host_model(cfg);
  std::vector<float> want(host->n_trainable());
  host->get_trainable(want);
  const std::string fingerprint = host->base_fingerprint();
  std::unique_ptr<Model> model = place_model(std::move(host), cfg);
  EXPECT_EQ(model->device(), DeviceKind::kCuda);
  EXPECT_EQ(describe_device(*model).rfind("cuda:", 0), 0u) << describe_device(*model);
  EXPECT_EQ(model->base_fingerprint(), fingerprint);
  std::vector<float> got(model->n_trainable());
  model->get_trainable(got);
  EXPECT_EQ(got, want);
  // One process: no all-reduce needed (local), whatever auto or local says.
  auto grads = make_gradient_comm(cfg, control, *model);
  EXPECT_EQ(&grads->comm(), &control);
  EXPECT_THROW(make_gradient_comm(small_config(DeviceBackend::kCuda, CommBackend::kMpi), control,
                                  *model),
               InputError);
}

}  // namespace
}  // namespace lora
