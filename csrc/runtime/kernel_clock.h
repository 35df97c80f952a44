// How long each emulated device has run kernels: the device time torch's profiler reports.
//
// On a GPU the profiler's device time is kernel time, measured on the device. Here kernels run
// on the runner inside the op's call, so the dispatch code times the runner kernel itself
// (KernelTimer) and the profiler's device events read a device's accumulated busy time
// (runtime/profiler_stubs.cpp): an op's device time is the time kernels ran while it was open,
// which stays within its CPU time. Busy time is the union of the intervals kernels ran in (a
// nested or a concurrent kernel does not count twice), plus the work torch.cuda._sleep queues.
//
// Off until a profiler with device activity asks for it: then each KernelTimer is one relaxed
// atomic load.
#pragma once

#include "runtime/hot_path.h"

#include <c10/core/Device.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace torchdevice::kernel_clock {

using Clock = std::chrono::steady_clock;

namespace detail {
extern std::atomic<bool> g_timing;
// The kernel this thread is running, if any: its device and that device's busy time when it
// started. Ops its CPU kernel calls internally read that (they run inside it, as part of it).
struct Inside {
  c10::DeviceIndex device = -1;
  int64_t busy_ns = 0;
};
extern thread_local Inside t_inside;
int64_t started(c10::DeviceIndex device);  // returns the device's busy time at the start
void finished(c10::DeviceIndex device);
} // namespace detail

inline bool timing() { return detail::g_timing.load(std::memory_order_relaxed); }
void set_timing(bool on);

// Nanoseconds `device` has been busy so far (its kernels, including one running now, and its
// queued sleeps). Only differences are meaningful.
int64_t busy_ns(c10::DeviceIndex device);
// What a profiler event recorded now on this thread reads: busy_ns(device), except inside a
// kernel of `device`, where the clock stands at the kernel's start. An op the runner kernel of
// another op calls internally (relu's CPU kernel calls clamp_min) thus gets no device time of its
// own, which keeps every op's device time within its CPU time: torch takes an op's events just
// outside its own time span, and a running clock would count those gaps.
int64_t event_reading(c10::DeviceIndex device);
// torch.cuda._sleep: `duration` of work queued on `device` (it counts when queued, as an event
// recorded behind it completes after it).
void add_queued(c10::DeviceIndex device, Clock::duration duration);

// Times the runner kernel of one op, from construction to destruction, on the emulated device
// `device_of()` names (asked only while timing).
class KernelTimer {
 public:
  template <class DeviceOf>
  TORCHDEVICE_HOT explicit KernelTimer(DeviceOf&& device_of) {
    if (C10_UNLIKELY(timing())) {
      device_ = device_of();
      outer_ = detail::t_inside;
      detail::t_inside = {device_, detail::started(device_)};
    }
  }
  TORCHDEVICE_HOT ~KernelTimer() {
    if (C10_UNLIKELY(device_ >= 0)) {
      detail::finished(device_);
      detail::t_inside = outer_;
    }
  }
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

 private:
  c10::DeviceIndex device_ = -1;  // -1: not timed (timing was off when it started)
  detail::Inside outer_;          // the kernel this one runs inside, if any
};

} // namespace torchdevice::kernel_clock
