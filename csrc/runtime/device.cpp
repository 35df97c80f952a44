#include "runtime/device.h"

#include "runtime/runner.h"

#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <string>

namespace torchdevice {
namespace {

// Indexed by slot: 0 = CUDA, 1 = MPS.
int slot(c10::DeviceType type) {
  return type == c10::DeviceType::MPS ? 1 : 0;
}

std::array<std::atomic<int>, 2> g_device_count{};
thread_local std::array<c10::DeviceIndex, 2> t_current_device{};

} // namespace

int device_count(c10::DeviceType type) {
  return g_device_count[slot(type)].load(std::memory_order_relaxed);
}

void set_device_count(c10::DeviceType type, int count) {
  TORCH_CHECK(count >= 0 && count <= 64, "torchdevice: device count must be in [0, 64], got ", count);
  g_device_count[slot(type)].store(count, std::memory_order_relaxed);
}

// The type (torch.AcceleratorError) and text C10_CUDA_CHECK gives for a CUDA error `code`.
[[noreturn]] void raise_cuda_error(int code, const std::string& description) {
  throw c10::AcceleratorError(
      {__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, code,
      "CUDA error: " + description +
          "CUDA kernel errors might be asynchronously reported at some other API call, "
          "so the stacktrace below might be incorrect.\n"
          "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
          "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n");
}

void check_device_index(c10::DeviceType type, c10::DeviceIndex index) {
  if (C10_LIKELY(index >= 0 && index < device_count(type))) {
    return;
  }
  if (type == c10::DeviceType::CUDA) {
    if (device_count(type) == 0) {
      // What torch._C._cuda_init raises on a machine whose CUDA sees no device.
      TORCH_CHECK(false, "No CUDA GPUs are available");
    }
    raise_cuda_error(/*cudaErrorInvalidDevice=*/101,
                     "invalid device ordinal\nGPU device may be out of range, do you have enough GPUs?\n");
  }
  TORCH_CHECK_INDEX(false, "Invalid device index ", int(index), " for ", c10::DeviceTypeName(type, true),
                    ": ", device_count(type), " device(s) available");
}

c10::DeviceIndex current_device(c10::DeviceType type) {
  return t_current_device[slot(type)];
}

void set_current_device(c10::DeviceType type, c10::DeviceIndex index) {
  check_device_index(type, index);
  t_current_device[slot(type)] = index;
}

void check_dtype_supported(c10::DeviceType type, c10::ScalarType dtype) {
  // Emulated mps refuses what a Mac refuses; the mps runner (emulated cuda on Apple's GPU) has
  // the same limit, and its policy is MPS's error rather than silently computing in float32.
  const bool refused = type == c10::DeviceType::MPS ? dtype == c10::ScalarType::Double
                                                    : !runner_for(type).is_cpu() && !runner_for(type).supports_dtype(dtype);
  if (C10_UNLIKELY(refused)) {
    TORCH_CHECK_TYPE(false,
                     "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
                     "Please use float32 instead.");
  }
}

std::atomic<bool> g_poisoned_by_fork{false};

void poison_after_fork() {
  g_poisoned_by_fork.store(true, std::memory_order_relaxed);
}

void raise_forked_child_error() {
  raise_cuda_error(/*cudaErrorInitializationError=*/3, "initialization error\n");
}

c10::Device resolve_device(c10::Device device) {
  if (!device.has_index()) {
    return c10::Device(device.type(), current_device(device.type()));
  }
  check_device_index(device.type(), device.index());
  return device;
}

} // namespace torchdevice
