// DistributedDataParallel's timer for the emulated device types.
#pragma once

#include <c10/core/DeviceType.h>

namespace torchdevice {

// DDP's reducer times every iteration (forward, backward compute, communication) with the Timer
// that c10d::TimerRegistry holds for the parameters' device type. A CUDA build of torch
// registers one for CUDA that records cudaEvents, which fail without a driver ("CUDA driver
// version is insufficient"); a CPU build registers none for CUDA, and DDP's logger then asserts
// on the missing timer at its sampling iterations. Kernels on the emulated device run
// synchronously on the host, so the host clock times them exactly: this registers such a timer
// for `type`, above torch's own. Idempotent; a no-op in a torch built without distributed.
void register_ddp_timer(c10::DeviceType type);

} // namespace torchdevice
