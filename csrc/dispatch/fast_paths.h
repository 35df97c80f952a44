// Unboxed kernels for the hottest ops: the boxed fallback's work (stand-ins, the CPU kernel,
// output mapping) without boxing the arguments into a stack and walking the schema.
#pragma once

#include <torch/library.h>

namespace torchdevice::dispatch {

// Registers the fast paths on the device's dispatch key. Call after the fallback mirror: the
// last registration for a key wins.
template <c10::DeviceType kType>
void register_fast_paths();

} // namespace torchdevice::dispatch
