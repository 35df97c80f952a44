#include "runtime/profiler_stubs.h"

#include "runtime/device.h"
#include "runtime/timeline.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/ApproximateClock.h>
#include <torch/csrc/profiler/stubs/base.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>

namespace torchdevice {
namespace {

using torch::profiler::impl::ProfilerVoidEventStub;

// torch's profiler, without CUPTI (a CPU build, or our forced fallback on a CUDA build), asks
// these stubs for a device event at the start and at the end of every op it records and reports
// their distance as the op's device time ("CUDA time"). Kernels run synchronously on the
// runner, so the work an event follows has finished when the event is taken, except for what
// torch.cuda._sleep keeps queued on the stream (runtime/timeline.h): an event completes after it.
//
// Events are read on the clock the profiler times ops with (c10's approximate clock, the TSC
// where there is one), so that an op's device time stays within its CPU time; its ticks are
// converted to time with a scale measured from activation to now, a long baseline, as the
// profiler measures its own.
class EmulatedCudaStubs final : public torch::profiler::impl::ProfilerStubs {
 public:
  void record(c10::DeviceIndex* device, ProfilerVoidEventStub* event, int64_t* cpu_ns) const override {
    const c10::DeviceIndex index = current_device(c10::DeviceType::CUDA);
    if (device) *device = index;
    const auto stream =
        c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(c10::Device(c10::DeviceType::CUDA, index));
    // Work torch.cuda._sleep queued on the stream is still ahead of this event.
    const auto ready = timeline::ready_at(stream);  // time_point::min() when nothing is queued
    const auto now = timeline::Clock::now();
    auto ticks = static_cast<double>(c10::getApproximateTime());
    if (ready > now) ticks += std::chrono::duration<double, std::nano>(ready - now).count() / ns_per_tick();
    *event = std::make_shared<double>(ticks);
    if (cpu_ns) *cpu_ns = c10::getTime();
  }

  float elapsed(const ProfilerVoidEventStub* start, const ProfilerVoidEventStub* end) const override {
    const double ticks = *static_cast<const double*>(end->get()) - *static_cast<const double*>(start->get());
    return static_cast<float>(ticks * ns_per_tick() / 1000.0);  // microseconds, as cudaEventElapsedTime * 1000
  }

  // NVTX marks and ranges: torch.cuda.nvtx is served in Python (ops/host.py), and the emulated
  // device has no NVTX consumer to hand them to.
  void mark(const char* /*name*/) const override {}
  void rangePush(const char* /*name*/) const override {}
  void rangePop() const override {}

  bool enabled() const override { return true; }

  void onEachDevice(std::function<void(int)> op) const override {
    c10::OptionalDeviceGuard guard;
    for (int i = 0; i < device_count(c10::DeviceType::CUDA); ++i) {
      guard.reset_device(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(i)));
      op(i);
    }
  }

  // Nanoseconds per approximate-clock tick, measured from activation (baseline()) to now: the
  // read jitter (tens of ns) is small against a baseline at least as long as the profile.
  static double ns_per_tick() {
    const auto& [first_ns, first_ticks] = baseline();
    const c10::time_t ns = c10::getTime();
    const auto ticks = c10::getApproximateTime();
    if (ticks <= first_ticks || ns <= first_ns) return 1.0;
    return static_cast<double>(ns - first_ns) / static_cast<double>(ticks - first_ticks);
  }
  static const std::pair<c10::time_t, c10::approx_time_t>& baseline() {
    static const std::pair<c10::time_t, c10::approx_time_t> first{c10::getTime(), c10::getApproximateTime()};
    return first;
  }

  void synchronize() const override {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    for (int i = 0; i < device_count(c10::DeviceType::CUDA); ++i) impl->synchronizeDevice(static_cast<c10::DeviceIndex>(i));
  }
};

} // namespace

void install_cuda_profiler_stubs() {
  static EmulatedCudaStubs stubs;  // torch keeps the pointer for the process
  EmulatedCudaStubs::baseline();  // the clock scale's baseline starts now
  torch::profiler::impl::registerCUDAMethods(&stubs);
}

} // namespace torchdevice
