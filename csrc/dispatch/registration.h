// Puts the fallback and the explicit kernels into the dispatcher for an emulated device type.
#pragma once

#include <ATen/core/operator_name.h>
#include <c10/core/DeviceType.h>

#include <vector>

namespace torchdevice::dispatch {

// Idempotent. Returns how many ops were given the fallback explicitly.
int register_dispatch(c10::DeviceType type);

// Kernels a library registered on the device key after register_dispatch (torchvision's CUDA
// kernels, a custom-op library's): each op named gets the fallback instead, as at activation.
// Returns how many were replaced (ops that already have the fallback are skipped).
int adopt_device_kernels(c10::DeviceType type, const std::vector<c10::OperatorName>& names);

} // namespace torchdevice::dispatch
