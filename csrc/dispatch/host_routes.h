// Composite ops that would take CUDA-only branches on an emulated device run on host tensors.
#pragma once

#include <c10/core/DeviceType.h>

namespace torchdevice::dispatch {

// Registers host routes for the ops that branch on is_cuda() (RNNs, SDPA, CTC loss).
template <c10::DeviceType kType>
void register_host_routes();

} // namespace torchdevice::dispatch
