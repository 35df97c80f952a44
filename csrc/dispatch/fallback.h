// The boxed fallback that runs any op on an emulated device with the CPU kernel.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace torchdevice::dispatch {

template <c10::DeviceType kType>
void emulated_fallback(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack);

} // namespace torchdevice::dispatch
