// The device a run computes on, and the two things that follow from it (DESIGN.md section 5): the
// model placed on that device, and the communicator that all-reduces its gradients. The training
// loop asks neither question again: it drives the Model interface and a GradReducer.
//
//   device.backend  cpu | cuda | auto: cuda when this build has the CUDA backend and a usable
//                   device is present, cpu otherwise. cuda without a usable device is an error
//                   naming the reason.
//   gradients       on the CPU, the control communicator itself (MPI, or local for one process).
//                   On CUDA: NCCL on its own stream when comm.backend is nccl, or auto with more
//                   than one rank; one process with auto or local needs no all-reduce (local);
//                   comm.backend mpi is refused (our MPI path reduces host buffers). The NCCL
//                   communicator inherits the control communicator's timeout.
// Everything else that travels between ranks (stop agreement, metrics, checkpoint coordination,
// the initial broadcast of the trainable parameters through host copies) stays on the control
// communicator.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/grad_reducer.h"
#include "core/model/model.h"
#include "core/model/transformer.h"
#include "trainer/config.h"

namespace lora {

// Whether cfg computes on CUDA (auto resolved as above). Throws lora::Error when device.backend
// is cuda and no usable device exists (or the build has no CUDA backend).
bool uses_cuda(const Config& cfg);

// The model on cfg's device: `host` itself on the CPU; on CUDA a device copy of it (parameters
// uploaded once, on the current device), after which the host copy is freed.
std::unique_ptr<Model> place_model(std::unique_ptr<TransformerModel> host, const Config& cfg);

// "cpu", or "cuda:0 (NVIDIA H200)": the device a model computes on, for start-up lines.
std::string describe_device(const Model& model);

// The communicator of the gradient all-reduce and what it needs from the model's device.
class GradientComm {
 public:
  virtual ~GradientComm() = default;
  virtual comm::Communicator& comm() = 0;
  // Prepares a reducer over the model's gradient buffer (device ordering with NCCL).
  virtual void attach(comm::GradReducer& reducer) = 0;
};

// Collective over `control` when it creates an NCCL communicator. Throws lora::InputError when
// comm.backend cannot serve the model's device (nccl on the CPU, mpi with device gradients).
std::unique_ptr<GradientComm> make_gradient_comm(const Config& cfg, comm::Communicator& control,
                                                 Model& model);

}  // namespace lora
