// CUDA hooks for the emulated device.
//
// ATen asks "is CUDA there?" through at::getCUDAHooks() — autograd (to run backward),
// torch.Generator('cuda'), pin_memory, torch.accelerator. torch creates that object once,
// from its hooks registry, the first time anything asks. Two ways in:
//   1. register_cuda_hooks_in_registry(): before torch first asks (torchdevice loaded before
//      `import torch`, e.g. by the launcher or the activation .pth). PyTorch's own mechanism.
//   2. install_cuda_hooks(): after torch created its default object (`import torch` ran first):
//      that object is given our vtable (runtime/internals.cpp).
#pragma once

namespace torchdevice {

// Safe to call before torch's Python module is imported; returns false if the registry
// already created the hooks object (too late for this route).
extern "C" bool torchdevice_register_cuda_hooks();

// Makes at::getCUDAHooks() answer for the emulated device, by whichever route works.
// Returns "registry" or "vtable" (how it was done).
const char* install_cuda_hooks();

// For a process that emulates MPS: makes at::getCUDAHooks() answer as a torch build without
// CUDA does (isBuilt/hasCUDA false, no devices), so MPS is the only accelerator, as on a Mac.
// On the cuda runner the real GPU keeps running the kernels (the runner initialized it first).
// On a CUDA build of torch the real CUDA hooks would otherwise claim an accelerator
// ("Cannot have both MPS and cuda"). Returns "vtable" (the live object is always taken over).
const char* install_disabled_cuda_hooks();

// The same for MPS (at::detail::getMPSHooks(): torch.mps and torch._C._mps_* go through it).
extern "C" bool torchdevice_register_mps_hooks();
const char* install_mps_hooks();

// For emulated cuda on the mps runner: MPS answers as absent, so emulated cuda is the only
// accelerator; the real device keeps running the kernels (the runner initialized it).
const char* install_disabled_mps_hooks();

} // namespace torchdevice
