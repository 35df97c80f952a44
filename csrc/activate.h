// Public C++ entry point: turn a device type into an emulated one, run by a runner device
// (runtime/runner.h: cpu, or a real cuda/mps device).
#pragma once

#include <c10/core/DeviceType.h>

#include <string>

namespace torchdevice {

struct Activation {
  std::string hooks_route;     // "registry", "vtable" or "" (types without hooks)
  int fallback_registrations;  // ops whose device slot was given the fallback explicitly
};

// Registers guard, allocator, kernels, fallback and hooks. Idempotent per type; a later call
// only changes the device count (the runner is chosen by the first).
Activation activate(c10::DeviceType type, int device_count,
                    c10::DeviceType runner = c10::DeviceType::CPU);

} // namespace torchdevice
