// Public C++ entry point: turn a device type into an emulated one backed by host memory.
#pragma once

#include <c10/core/DeviceType.h>

#include <string>

namespace torchdevice {

struct Activation {
  std::string hooks_route;     // "registry", "vtable" or "" (types without hooks)
  int fallback_registrations;  // ops whose device slot was given the fallback explicitly
};

// Registers guard, allocator, kernels, fallback and (for CUDA) hooks. Idempotent per type;
// a later call only changes the device count.
Activation activate(c10::DeviceType type, int device_count);

} // namespace torchdevice
