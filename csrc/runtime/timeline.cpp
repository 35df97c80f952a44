#include "runtime/timeline.h"

#include "runtime/kernel_clock.h"

#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

namespace torchdevice::timeline {
namespace {

using Key = std::tuple<int8_t, c10::DeviceIndex, c10::StreamId>;

std::atomic<bool> g_any_queued{false};
std::mutex g_mutex;
std::map<Key, Clock::time_point>& busy_until() {
  static auto* map = new std::map<Key, Clock::time_point>();  // leaked: used from exit paths
  return *map;
}

Key key_of(const c10::Stream& stream) {
  return {static_cast<int8_t>(stream.device_type()), stream.device_index(), stream.id()};
}

} // namespace

void keep_busy(const c10::Stream& stream, Clock::duration duration) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(g_mutex);
  auto& until = busy_until()[key_of(stream)];
  until = std::max(until, now) + duration;
  g_any_queued.store(true, std::memory_order_release);
  kernel_clock::add_queued(stream.device_index(), duration);  // the profiler's device time
}

Clock::time_point ready_at(const c10::Stream& stream) {
  if (!g_any_queued.load(std::memory_order_acquire)) return Clock::time_point::min();
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto it = busy_until().find(key_of(stream));
  return it == busy_until().end() ? Clock::time_point::min() : it->second;
}

Clock::time_point device_ready_at(c10::Device device) {
  if (!g_any_queued.load(std::memory_order_acquire)) return Clock::time_point::min();
  std::lock_guard<std::mutex> lock(g_mutex);
  auto latest = Clock::time_point::min();
  for (const auto& [key, until] : busy_until()) {
    if (std::get<0>(key) == static_cast<int8_t>(device.type()) && std::get<1>(key) == device.index()) {
      latest = std::max(latest, until);
    }
  }
  return latest;
}

void wait_for(const c10::Stream& stream, Clock::time_point when) {
  if (when <= Clock::now()) return;  // already passed: nothing to hold back
  std::lock_guard<std::mutex> lock(g_mutex);
  auto& until = busy_until()[key_of(stream)];
  until = std::max(until, when);
  g_any_queued.store(true, std::memory_order_release);
}

void host_wait(Clock::time_point when) {
  if (when > Clock::now()) std::this_thread::sleep_until(when);
}

} // namespace torchdevice::timeline
