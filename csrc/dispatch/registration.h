// Puts the fallback and the explicit kernels into the dispatcher for an emulated device type.
#pragma once

#include <c10/core/DeviceType.h>

namespace torchdevice::dispatch {

// Idempotent. Returns how many ops were given the fallback explicitly.
int register_dispatch(c10::DeviceType type);

} // namespace torchdevice::dispatch
