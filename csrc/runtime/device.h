// Emulated devices: how many there are and which one is current on this thread.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>

#include <atomic>
#include <string>

namespace torchdevice {

// The device types torchdevice can emulate on host memory.
inline bool is_emulated_type(c10::DeviceType t) {
  return t == c10::DeviceType::CUDA || t == c10::DeviceType::MPS;
}

// Number of emulated devices of `type` (0 while that type is not emulated).
int device_count(c10::DeviceType type);
void set_device_count(c10::DeviceType type, int count);

// Raises what C10_CUDA_CHECK raises for CUDA error `code` (torch.AcceleratorError), whose text
// starts "CUDA error: <description>" and ends with CUDA's debugging hints.
[[noreturn]] void raise_cuda_error(int code, const std::string& description);

// Raises the error real CUDA raises for an ordinal past the device count.
void check_device_index(c10::DeviceType type, c10::DeviceIndex index);

// Thread-local current device, as cudaSetDevice keeps it per host thread.
c10::DeviceIndex current_device(c10::DeviceType type);
void set_current_device(c10::DeviceType type, c10::DeviceIndex index);

// Apple's MPS has no float64: emulated mps tensors (and emulated cuda tensors on the mps runner)
// refuse it with MPS's own error (a TypeError), so code that passes here passes on a Mac.
void check_dtype_supported(c10::DeviceType type, c10::ScalarType dtype);

// CUDA's context does not survive fork(): in a child of a process that had initialized CUDA,
// every CUDA call fails. poison_after_fork() marks this (forked) process so; from then on
// check_not_forked() raises CUDA's "initialization error" for every op on emulated cuda tensors.
void poison_after_fork();
[[noreturn]] void raise_forked_child_error();
extern std::atomic<bool> g_poisoned_by_fork;
inline void check_not_forked() {
  if (C10_UNLIKELY(g_poisoned_by_fork.load(std::memory_order_relaxed))) raise_forked_child_error();
}

// Resolves -1 / no index to the current device and validates the ordinal.
c10::Device resolve_device(c10::Device device);

} // namespace torchdevice
