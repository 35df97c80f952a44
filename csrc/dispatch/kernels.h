// Explicit kernels of an emulated device: the ops that create, copy, resize or re-seat memory
// and so cannot be expressed as "run the CPU kernel on stand-ins".
#pragma once

#include <torch/library.h>

namespace torchdevice::dispatch {

template <c10::DeviceType kType>
void register_kernels(torch::Library& lib);

// Names (without the "aten::" namespace) of the ops register_kernels() implements.
const std::vector<std::string>& explicit_kernel_names();

} // namespace torchdevice::dispatch
