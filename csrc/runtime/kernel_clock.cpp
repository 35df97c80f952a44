#include "runtime/kernel_clock.h"

#include <array>
#include <mutex>

namespace torchdevice::kernel_clock {
namespace detail {
std::atomic<bool> g_timing{false};
thread_local Inside t_inside;
} // namespace detail

namespace {

// One device's busy time. The lock is taken only while timing (a profiler is running).
struct DeviceClock {
  std::mutex mutex;
  int running = 0;         // kernels running now (nested or on other threads)
  Clock::time_point since;  // when `running` last went from 0 to 1
  Clock::duration busy{0};  // up to `since` when running, else up to the last finish
};

// c10's device indices are int8: every ordinal has a slot, leaked for exit paths.
constexpr size_t kSlots = 128;
DeviceClock& clock_of(c10::DeviceIndex device) {
  static auto* clocks = new std::array<DeviceClock, kSlots>();
  return (*clocks)[static_cast<size_t>(device) % kSlots];
}

} // namespace

void set_timing(bool on) { detail::g_timing.store(on, std::memory_order_relaxed); }

int64_t detail::started(c10::DeviceIndex device) {
  auto& c = clock_of(device);
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto now = Clock::now();
  const auto busy = c.running > 0 ? c.busy + (now - c.since) : c.busy;
  if (c.running++ == 0) c.since = now;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(busy).count();
}

void detail::finished(c10::DeviceIndex device) {
  auto& c = clock_of(device);
  std::lock_guard<std::mutex> lock(c.mutex);
  if (--c.running == 0) c.busy += Clock::now() - c.since;
}

int64_t busy_ns(c10::DeviceIndex device) {
  auto& c = clock_of(device);
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto busy = c.running > 0 ? c.busy + (Clock::now() - c.since) : c.busy;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(busy).count();
}

int64_t event_reading(c10::DeviceIndex device) {
  const detail::Inside& inside = detail::t_inside;
  return inside.device == device ? inside.busy_ns : busy_ns(device);
}

void add_queued(c10::DeviceIndex device, Clock::duration duration) {
  auto& c = clock_of(device);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.busy += duration;
}

} // namespace torchdevice::kernel_clock
