#include "activate.h"

#include "dispatch/registration.h"
#include "runtime/allocator.h"
#include "runtime/ddp_timer.h"
#include "runtime/device.h"
#include "runtime/guard.h"
#include "runtime/hooks.h"
#include "runtime/profiler_stubs.h"
#include "runtime/runner.h"

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

namespace torchdevice {

Activation activate(c10::DeviceType type, int count, c10::DeviceType runner) {
  TORCH_CHECK(is_emulated_type(type), "torchdevice can emulate cuda or mps, not ", type);
  set_runner(type, runner);  // first: generators, allocator and registration ask for it
  set_device_count(type, count);
  register_guard(type);
  // Highest priority: on a CUDA wheel this replaces the CUDA caching allocator.
  c10::SetAllocator(type, &allocator_for(type), /*priority=*/UINT8_MAX);
  Activation result;
  result.fallback_registrations = dispatch::register_dispatch(type);
  register_ddp_timer(type);
  if (type == c10::DeviceType::CUDA) {
    result.hooks_route = install_cuda_hooks();
    install_cuda_profiler_stubs();
    // One accelerator per process: emulated cuda, as on an NVIDIA machine.
    if (runner == c10::DeviceType::MPS) install_disabled_mps_hooks();
    register_mps_hint_guard();
  } else {
    result.hooks_route = install_mps_hooks();
    // One accelerator per process: MPS, as on a Mac (a CUDA build's real hooks would claim CUDA
    // too). The cuda runner initialized its GPU before this (Runner::prepare in set_runner).
    install_disabled_cuda_hooks();
  }
  return result;
}

} // namespace torchdevice
