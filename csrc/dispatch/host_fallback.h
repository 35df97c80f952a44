// Ops the runner has no kernel for run on the CPU, explicitly and counted (Runner::census).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace torchdevice::dispatch {

// Emulated arguments are copied to host tensors, the op's CPU kernel runs, written arguments are
// copied back, and results are copied to the emulated device (fresh memory: an op that returns
// a view of its input returns a copy here).
template <c10::DeviceType kType>
void run_on_host(const c10::OperatorHandle& op, torch::jit::Stack* stack);

} // namespace torchdevice::dispatch
