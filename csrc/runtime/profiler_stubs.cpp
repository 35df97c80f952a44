#include "runtime/profiler_stubs.h"

#include "runtime/device.h"
#include "runtime/kernel_clock.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/ApproximateClock.h>
#include <torch/csrc/profiler/stubs/base.h>

#include <memory>

namespace torchdevice {
namespace {

using torch::profiler::impl::ProfilerVoidEventStub;

// torch's profiler, without CUPTI (a CPU build, or our forced fallback on a CUDA build), asks
// these stubs for a device event at the start and at the end of every op it records and reports
// their distance as the op's device time ("CUDA time"). An event here is a reading of the
// device's kernel clock (runtime/kernel_clock.h), so an op's device time is the time kernels ran
// on the runner while it was open: its own kernel, its children's, and the work
// torch.cuda._sleep queued. torch takes the start event before the op's start time and the end
// event after its end time, and kernels run inside the op's call, so device time stays within
// the op's CPU time (runtime/kernel_clock.h says how ops inside a kernel read it).
class EmulatedCudaStubs final : public torch::profiler::impl::ProfilerStubs {
 public:
  void record(c10::DeviceIndex* device, ProfilerVoidEventStub* event, int64_t* cpu_ns) const override {
    // Kernels are timed from the first event on (ops/profiler.py switches timing off when the
    // last profiler stops); an op's kernel starts after its start event.
    if (!kernel_clock::timing()) kernel_clock::set_timing(true);
    const c10::DeviceIndex index = current_device(c10::DeviceType::CUDA);
    if (device) *device = index;
    *event = std::make_shared<int64_t>(kernel_clock::event_reading(index));
    if (cpu_ns) *cpu_ns = c10::getTime();
  }

  float elapsed(const ProfilerVoidEventStub* start, const ProfilerVoidEventStub* end) const override {
    const int64_t ns = *static_cast<const int64_t*>(end->get()) - *static_cast<const int64_t*>(start->get());
    // Microseconds, as cudaEventElapsedTime * 1000 (torch keeps whole ones).
    return static_cast<float>(ns) / 1000.0f;
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

  void synchronize() const override {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    for (int i = 0; i < device_count(c10::DeviceType::CUDA); ++i) impl->synchronizeDevice(static_cast<c10::DeviceIndex>(i));
  }
};

} // namespace

void install_cuda_profiler_stubs() {
  static EmulatedCudaStubs stubs;  // torch keeps the pointer for the process
  torch::profiler::impl::registerCUDAMethods(&stubs);
}

} // namespace torchdevice
