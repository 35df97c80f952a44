// MPS hooks for the emulated mps device: torch.mps.* and torch._C._mps_* call these.
// Same two installation routes as the CUDA hooks (see hooks.h).
#include "runtime/hooks.h"

#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/pinned_memory.h"
#include "runtime/generator.h"
#include "runtime/internals.h"
#include "runtime/runner.h"

#include <ATen/detail/MPSHooksInterface.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <optional>
#include <mutex>
#include <unordered_map>

namespace torchdevice {
namespace {

constexpr auto kMPS = c10::DeviceType::MPS;

// torch.mps.Event ids -> the host time each was recorded (kernels run synchronously).
struct EventTable {
  std::mutex mutex;
  uint32_t next_id = 1;
  std::unordered_map<uint32_t, std::optional<std::chrono::steady_clock::time_point>> recorded;
};
EventTable& events() {
  static auto* table = new EventTable();
  return *table;
}

// No data members: the vtable route needs MPSHooksInterface's layout.
struct EmulatedMPSHooks final : at::MPSHooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return device_count(kMPS) > 0; }
  bool hasMPS() const override { return device_count(kMPS) > 0; }
  bool isOnMacOSorNewer(unsigned /*major*/, unsigned /*minor*/) const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex /*device_index*/) const override { return true; }
  void init() const override {}
  c10::DeviceIndex deviceCount() const override { return static_cast<c10::DeviceIndex>(device_count(kMPS)); }
  c10::DeviceIndex getCurrentDevice() const override { return current_device(kMPS); }
  void setCurrentDevice(c10::DeviceIndex device) const override { set_current_device(kMPS, device); }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex device) const override {
    const auto old = current_device(kMPS);
    if (device >= 0 && device != old) set_current_device(kMPS, device);
    return old;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex device) const override { return exchangeDevice(device); }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex device_index) const override {
    return default_generator(kMPS, device_index < 0 ? 0 : device_index);
  }
  at::Generator getNewGenerator(c10::DeviceIndex device_index) const override {
    return new_generator(kMPS, device_index < 0 ? 0 : device_index);
  }
  c10::Allocator* getMPSDeviceAllocator() const override { return &allocator_for(kMPS); }
  bool isPinnedPtr(const void* data) const override { return is_pinned_ptr(data); }
  c10::Allocator* getPinnedMemoryAllocator() const override { return pinned_allocator(); }
  c10::Device getDeviceFromPtr(void* /*data*/) const override { return c10::Device(kMPS, 0); }

  // Synchronous execution: there is never queued work to wait for or commit.
  void deviceSynchronize() const override { runner_for(c10::DeviceType::MPS).synchronize(0); }
  void commitStream() const override {}
  void* getCommandBuffer() const override { return nullptr; }
  void* getDispatchQueue() const override { return nullptr; }
  void emptyCache() const override {}
  size_t getCurrentAllocatedMemory() const override {
    return static_cast<size_t>(allocator_for(kMPS).getDeviceStats(0).allocated_bytes[0].current);
  }
  size_t getDriverAllocatedMemory() const override {
    return static_cast<size_t>(allocator_for(kMPS).getDeviceStats(0).reserved_bytes[0].current);
  }
  size_t getRecommendedMaxMemory() const override { return allocator_for(kMPS).total_memory(); }
  size_t getMaxBufferLength() const override { return allocator_for(kMPS).total_memory(); }
  void setMemoryFraction(double ratio) const override {
    // MPS semantics: a ratio of the recommended maximum in [0, 2], 0 meaning no limit.
    TORCH_CHECK(ratio >= 0 && ratio <= 2, "invalid high watermark ratio ", ratio);
    allocator_for(kMPS).set_limit_ratio(ratio == 0 ? std::numeric_limits<double>::infinity() : ratio, 0);
  }
  void profilerStartTrace(const std::string& /*mode*/, bool /*waitUntilCompleted*/) const override {}
  void profilerStopTrace() const override {}

  uint32_t acquireEvent(bool /*enable_timing*/) const override {
    auto& t = events();
    std::lock_guard<std::mutex> lock(t.mutex);
    const uint32_t id = t.next_id++;
    t.recorded[id] = std::nullopt;
    return id;
  }
  void releaseEvent(uint32_t event_id) const override {
    auto& t = events();
    std::lock_guard<std::mutex> lock(t.mutex);
    t.recorded.erase(event_id);
  }
  void recordEvent(uint32_t event_id) const override {
    auto& t = events();
    std::lock_guard<std::mutex> lock(t.mutex);
    t.recorded[event_id] = std::chrono::steady_clock::now();
  }
  void waitForEvent(uint32_t /*event_id*/) const override {}
  void synchronizeEvent(uint32_t /*event_id*/) const override {}
  bool queryEvent(uint32_t /*event_id*/) const override { return true; }
  double elapsedTimeOfEvents(uint32_t start_event_id, uint32_t end_event_id) const override {
    auto& t = events();
    std::lock_guard<std::mutex> lock(t.mutex);
    const auto start = t.recorded.find(start_event_id);
    const auto end = t.recorded.find(end_event_id);
    TORCH_CHECK(start != t.recorded.end() && end != t.recorded.end() && start->second && end->second,
                "Both events must be recorded before calculating elapsed time.");
    return std::chrono::duration<double, std::milli>(*end->second - *start->second).count();
  }
};
static_assert(sizeof(EmulatedMPSHooks) == sizeof(at::MPSHooksInterface),
              "EmulatedMPSHooks must stay data-free (see internals::adopt_hooks_vtable)");

// MPS switched off, for a process whose accelerator is emulated cuda on the mps runner: one
// accelerator type per process (at::accelerator::getAccelerator(), which backward() asks too).
// MPS kernels keep working: they reach the device directly, not through these hooks, and the
// runner initialized it before the switch (Runner::prepare).
struct DisabledMPSHooks final : at::MPSHooksInterface {
  bool isBuilt() const override { return false; }
  bool isAvailable() const override { return false; }
  bool hasMPS() const override { return false; }
  c10::DeviceIndex deviceCount() const override { return 0; }
};
static_assert(sizeof(DisabledMPSHooks) == sizeof(at::MPSHooksInterface),
              "DisabledMPSHooks must stay data-free (see internals::adopt_hooks_vtable)");

std::atomic<bool> g_registered{false};

bool is_ours(const at::MPSHooksInterface& hooks) {
  return dynamic_cast<const EmulatedMPSHooks*>(&hooks) != nullptr;
}

} // namespace

extern "C" bool torchdevice_register_mps_hooks() {
  if (!g_registered.exchange(true)) {
    at::MPSHooksRegistry()->Register(
        "MPSHooks", []() -> std::unique_ptr<at::MPSHooksInterface> { return std::make_unique<EmulatedMPSHooks>(); },
        c10::REGISTRY_PREFERRED);
  }
  return true;
}

const char* install_disabled_mps_hooks() {
  const auto& live = at::detail::getMPSHooks();
  TORCH_CHECK(!is_ours(live), "torchdevice: mps is emulated in this process; it cannot also be switched off");
  if (dynamic_cast<const DisabledMPSHooks*>(&live) == nullptr) {
    static const DisabledMPSHooks replacement;
    internals::adopt_hooks_vtable(live, replacement);
  }
  TORCH_CHECK(!at::detail::getMPSHooks().hasMPS(), "torchdevice: could not switch off this torch build's MPS hooks");
  return "vtable";
}

const char* install_mps_hooks() {
  torchdevice_register_mps_hooks();
  const auto& live = at::detail::getMPSHooks();
  if (is_ours(live)) {
    return "registry";
  }
  static const EmulatedMPSHooks replacement;
  internals::adopt_hooks_vtable(live, replacement);
  TORCH_CHECK(is_ours(at::detail::getMPSHooks()), "torchdevice: could not install MPS hooks into this torch build");
  return "vtable";
}

} // namespace torchdevice
