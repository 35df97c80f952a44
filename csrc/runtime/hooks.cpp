#include "runtime/hooks.h"

#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/pinned_memory.h"
#include "runtime/generator.h"
#include "runtime/internals.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Registry.h>

#include <atomic>

namespace torchdevice {
namespace {

constexpr auto kCUDA = c10::DeviceType::CUDA;

// Answers as a CUDA build of PyTorch with a working GPU but without cuDNN, MAGMA, cuSOLVER
// or cuBLASLt: library code then takes its generic CUDA paths, which run our CPU kernels.
// No data members: the vtable route needs the same object layout as CUDAHooksInterface.
struct EmulatedCUDAHooks final : at::CUDAHooksInterface {
  EmulatedCUDAHooks() = default;
  explicit EmulatedCUDAHooks(at::CUDAHooksArgs /*unused*/) {}

  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return device_count(kCUDA) > 0; }
  bool hasPrimaryContext(c10::DeviceIndex /*device_index*/) const override { return true; }
  void init() const override {}
  c10::DeviceIndex deviceCount() const override { return static_cast<c10::DeviceIndex>(device_count(kCUDA)); }
  void setCurrentDevice(c10::DeviceIndex device) const override { set_current_device(kCUDA, device); }
  c10::DeviceIndex getCurrentDevice() const override { return torchdevice::current_device(kCUDA); }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex device) const override {
    const auto old = torchdevice::current_device(kCUDA);
    if (device >= 0 && device != old) set_current_device(kCUDA, device);
    return old;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex device) const override { return exchangeDevice(device); }
  bool isPinnedPtr(const void* data) const override { return is_pinned_ptr(data); }
  c10::Allocator* getPinnedMemoryAllocator() const override { return pinned_allocator(); }
  c10::Device getDeviceFromPtr(void* /*data*/) const override {
    // Host memory carries no device; the current device is what CUDA's unified addressing
    // would most often answer for memory this process allocated.
    return c10::Device(kCUDA, torchdevice::current_device(kCUDA));
  }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex device_index) const override {
    return default_generator(kCUDA, device_index);
  }
  at::Generator getNewGenerator(c10::DeviceIndex device_index) const override {
    return new_generator(kCUDA, device_index);
  }

  bool hasCUDA() const override { return device_count(kCUDA) > 0; }
  bool hasCUDART() const override { return true; }
  bool hasMAGMA() const override { return false; }
  bool hasCuDNN() const override { return false; }
  bool hasCuSOLVER() const override { return false; }
  bool hasCuBLASLt() const override { return false; }
  bool hasROCM() const override { return false; }
  c10::DeviceIndex current_device() const override { return torchdevice::current_device(kCUDA); }
  c10::Allocator* getCUDADeviceAllocator() const override { return &allocator_for(kCUDA); }
  bool compiledWithCuDNN() const override { return false; }
  bool compiledWithMIOpen() const override { return false; }
  bool supportsDilatedConvolutionWithCuDNN() const override { return false; }
  bool supportsDepthwiseConvolutionWithCuDNN() const override { return false; }
  bool supportsBFloat16ConvolutionWithCuDNNv8() const override { return false; }
  bool supportsBFloat16RNNWithCuDNN() const override { return false; }
  long versionCuDNN() const override { return 0; }
  long versionRuntimeCuDNN() const override { return 0; }
  long versionCuDNNFrontend() const override { return 0; }
  long versionCUDART() const override { return 0; }
  std::string showConfig() const override { return "  - CUDA emulated on the host CPU by torchdevice\n"; }
  double batchnormMinEpsilonCuDNN() const override { return 1e-5; }
  int64_t cuFFTGetPlanCacheMaxSize(c10::DeviceIndex /*device_index*/) const override { return 0; }
  void cuFFTSetPlanCacheMaxSize(c10::DeviceIndex /*device_index*/, int64_t /*max_size*/) const override {}
  int64_t cuFFTGetPlanCacheSize(c10::DeviceIndex /*device_index*/) const override { return 0; }
  void cuFFTClearPlanCache(c10::DeviceIndex /*device_index*/) const override {}
  int getNumGPUs() const override { return device_count(kCUDA); }
  void deviceSynchronize(c10::DeviceIndex /*device_index*/) const override {}
};
static_assert(sizeof(EmulatedCUDAHooks) == sizeof(at::CUDAHooksInterface),
              "EmulatedCUDAHooks must stay data-free (see internals::adopt_hooks_vtable)");

// CUDA switched off, for a process whose accelerator is the emulated MPS: PyTorch allows one
// accelerator type per process (at::accelerator::getAccelerator() refuses two hooks objects
// that say isBuilt()), and on a Mac, where MPS code runs, torch has no CUDA. Every answer is
// the interface's own default, i.e. what a build without CUDA gives (asking for CUDA
// features raises "... without ATen_cuda library"); the availability queries are spelled out.
struct DisabledCUDAHooks final : at::CUDAHooksInterface {
  bool isBuilt() const override { return false; }
  bool isAvailable() const override { return false; }
  c10::DeviceIndex deviceCount() const override { return 0; }
  bool hasCUDA() const override { return false; }
  bool hasCUDART() const override { return false; }
  bool hasCuDNN() const override { return false; }
  bool compiledWithCuDNN() const override { return false; }
  int getNumGPUs() const override { return 0; }
};
static_assert(sizeof(DisabledCUDAHooks) == sizeof(at::CUDAHooksInterface),
              "DisabledCUDAHooks must stay data-free (see internals::adopt_hooks_vtable)");

std::atomic<bool> g_registered{false};

bool is_ours(const at::CUDAHooksInterface& hooks) {
  return dynamic_cast<const EmulatedCUDAHooks*>(&hooks) != nullptr;
}

} // namespace

extern "C" bool torchdevice_register_cuda_hooks() {
  if (!g_registered.exchange(true)) {
    // Preferred priority: wins over the real CUDAHooks of a CUDA wheel, whichever loads first.
    at::CUDAHooksRegistry()->Register(
        "CUDAHooks",
        [](at::CUDAHooksArgs args) -> std::unique_ptr<at::CUDAHooksInterface> {
          return std::make_unique<EmulatedCUDAHooks>(args);
        },
        c10::REGISTRY_PREFERRED);
  }
  return true;
}

const char* install_cuda_hooks() {
  torchdevice_register_cuda_hooks();
  const auto& live = at::detail::getCUDAHooks();
  if (is_ours(live)) {
    return "registry";
  }
  static const EmulatedCUDAHooks replacement;
  internals::adopt_hooks_vtable(live, replacement);
  TORCH_CHECK(is_ours(at::detail::getCUDAHooks()),
              "torchdevice: could not install CUDA hooks into this torch build; "
              "start Python with `python -m torchdevice run ...` so they load before torch");
  return "vtable";
}

const char* install_disabled_cuda_hooks() {
  const auto& live = at::detail::getCUDAHooks();
  TORCH_CHECK(!is_ours(live), "torchdevice: cuda is emulated in this process; it cannot also be switched off");
  if (dynamic_cast<const DisabledCUDAHooks*>(&live) == nullptr) {
    static const DisabledCUDAHooks replacement;
    internals::adopt_hooks_vtable(live, replacement);
  }
  TORCH_CHECK(!at::detail::getCUDAHooks().isBuilt(), "torchdevice: could not switch off this torch build's CUDA hooks");
  return "vtable";
}

} // namespace torchdevice
