#include "runtime/ddp_timer.h"

#if __has_include(<torch/csrc/distributed/c10d/reducer_timer.hpp>)
#define TORCHDEVICE_HAS_C10D 1
#include <torch/csrc/distributed/c10d/reducer_timer.hpp>
#endif

#include <array>
#include <atomic>
#include <memory>
#include <optional>

namespace torchdevice {

#ifdef TORCHDEVICE_HAS_C10D
namespace {

// The same measurement as the reducer's own CPU timer: record() (the base class) stores the
// host clock, and a difference is reported only once both ends were recorded in order.
class HostTimer final : public c10d::Timer {
 public:
  explicit HostTimer(c10::Device /*device*/) {}

  std::optional<int64_t> measureDifference(Event start, Event end) override {
    const int64_t start_time = getTimeRef(start);
    const int64_t end_time = getTimeRef(end);
    if (start_time == c10d::kUnsetTime || end_time == c10d::kUnsetTime || end_time < start_time) {
      return std::nullopt;
    }
    return end_time - start_time;
  }
};

std::unique_ptr<c10d::Timer> make_host_timer(c10::Device device) {
  return std::make_unique<HostTimer>(device);
}

// Indexed like device.cpp's slots: 0 = CUDA, 1 = MPS.
std::array<std::atomic<bool>, 2> g_registered{};

} // namespace

void register_ddp_timer(c10::DeviceType type) {
  auto& registered = g_registered[type == c10::DeviceType::MPS ? 1 : 0];
  if (!registered.exchange(true)) {
    // Preferred priority: replaces the CUDA build's cudaEvent timer (registered at the default).
    c10d::TimerRegistry()->Register(type, make_host_timer, c10::REGISTRY_PREFERRED);
  }
}
#else
void register_ddp_timer(c10::DeviceType /*type*/) {}
#endif

} // namespace torchdevice
