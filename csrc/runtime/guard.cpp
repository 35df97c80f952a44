#include "runtime/guard.h"

#include "runtime/device.h"
#include "runtime/runner.h"
#include "runtime/timeline.h"

#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <chrono>

namespace torchdevice {
namespace {

constexpr int kMaxDevices = 64;

std::atomic<c10::StreamId> g_next_stream_id{1};

// Per thread and device: the current stream (as with cudaStreamPerThread-free CUDA semantics,
// the current stream is thread-local).
thread_local std::array<std::array<c10::StreamId, kMaxDevices>, 2> t_current_stream{};

int slot(c10::DeviceType type) {
  return type == c10::DeviceType::MPS ? 1 : 0;
}

struct EmulatedEvent {
  c10::DeviceIndex device;
  // When the stream reaches the event: now, or later when the stream has queued work (timeline.h).
  timeline::Clock::time_point completes_at;
  bool recorded = false;
};

class EmulatedGuardImpl final : public c10::impl::DeviceGuardImplInterface {
 public:
  explicit EmulatedGuardImpl(c10::DeviceType type) : type_(type) {}

  c10::DeviceType type() const override { return type_; }

  c10::Device exchangeDevice(c10::Device d) const override {
    const auto old = getDevice();
    if (d.index() != old.index()) {
      setDevice(d);
    }
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(type_, current_device(type_)); }
  void setDevice(c10::Device d) const override {
    TORCH_INTERNAL_ASSERT(d.type() == type_);
    set_current_device(type_, d.index());
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    // Called from destructors (guards restoring the previous device): must not throw.
    if (d.index() >= 0 && d.index() < device_count(type_)) {
      set_current_device(type_, d.index());
    }
  }

  c10::Stream getStream(c10::Device d) const override {
    const auto index = d.has_index() ? d.index() : current_device(type_);
    // c10::cuda::getCurrentCUDAStream's check and wording (torch.accelerator.current_stream(n)).
    TORCH_CHECK(index >= 0 && index < device_count(type_), "Device index value ", int(index),
                " is out of index range [0, ", device_count(type_), ")");
    return c10::Stream(c10::Stream::UNSAFE, c10::Device(type_, index), t_current_stream[slot(type_)][index]);
  }
  c10::Stream getDefaultStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, with_index(d));
  }
  // As CUDA's stream pool does, an unindexed device means the current one.
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool /*isHighPriority*/) const override {
    return c10::Stream(c10::Stream::UNSAFE, with_index(d), new_stream_id());
  }
  c10::Stream getNewStream(c10::Device d, int /*priority*/) const override {
    return c10::Stream(c10::Stream::UNSAFE, with_index(d), new_stream_id());
  }
  c10::Stream exchangeStream(c10::Stream s) const override {
    auto& current = t_current_stream[slot(type_)][s.device_index()];
    const auto old = c10::Stream(c10::Stream::UNSAFE, s.device(), current);
    current = s.id();
    return old;
  }

  void destroyEvent(void* event, const c10::DeviceIndex /*device_index*/) const noexcept override {
    delete static_cast<EmulatedEvent*>(event);
  }
  void record(void** event, const c10::Stream& stream, const c10::DeviceIndex device_index,
              const c10::EventFlag /*flag*/) const override {
    TORCH_CHECK(device_index == -1 || device_index == stream.device_index(),
                "Event device index ", int(device_index), " does not match recording stream's device index ",
                int(stream.device_index()), ".");
    if (*event == nullptr) {
      *event = new EmulatedEvent{stream.device_index(), {}, false};
    }
    auto* e = static_cast<EmulatedEvent*>(*event);
    // A device runner queues its kernels: the event's time is when the queued work finished.
    runner_for(type_).synchronize(stream.device_index());
    e->completes_at = std::max(timeline::Clock::now(), timeline::ready_at(stream));
    e->recorded = true;
  }
  void block(void* event, const c10::Stream& stream) const override {
    if (event != nullptr) timeline::wait_for(stream, static_cast<EmulatedEvent*>(event)->completes_at);
  }
  bool queryEvent(void* event) const override {
    return event == nullptr || static_cast<EmulatedEvent*>(event)->completes_at <= timeline::Clock::now();
  }
  void synchronizeEvent(void* event) const override {
    if (event != nullptr) timeline::host_wait(static_cast<EmulatedEvent*>(event)->completes_at);
  }
  double elapsedTime(void* start, void* end, const c10::DeviceIndex /*device_index*/) const override {
    TORCH_CHECK(start && end, "Both events must be recorded before calculating elapsed time.");
    auto* s = static_cast<EmulatedEvent*>(start);
    auto* e = static_cast<EmulatedEvent*>(end);
    TORCH_CHECK(s->recorded && e->recorded, "Both events must be recorded before calculating elapsed time.");
    return std::chrono::duration<double, std::milli>(e->completes_at - s->completes_at).count();
  }

  c10::DeviceIndex deviceCount() const noexcept override {
    return static_cast<c10::DeviceIndex>(device_count(type_));
  }
  bool queryStream(const c10::Stream& stream) const override {
    return timeline::ready_at(stream) <= timeline::Clock::now();
  }
  // Execution is in order on one queue per device (cpu runner: synchronous), so a stream or a
  // device is synchronized by waiting for the runner device, then for its timeline.
  void synchronizeStream(const c10::Stream& stream) const override {
    runner_for(type_).synchronize(stream.device_index());
    timeline::host_wait(timeline::ready_at(stream));
  }
  void synchronizeDevice(const c10::DeviceIndex device_index) const override {
    const auto index = device_index < 0 ? current_device(type_) : device_index;
    runner_for(type_).synchronize(index);
    timeline::host_wait(timeline::device_ready_at(c10::Device(type_, index)));
  }
  void recordDataPtrOnStream(const c10::DataPtr& /*data_ptr*/, const c10::Stream& /*stream*/) const override {}

 private:
  c10::Device with_index(c10::Device d) const {
    return d.has_index() ? d : c10::Device(type_, current_device(type_));
  }
  c10::DeviceType type_;
};

} // namespace

c10::StreamId new_stream_id() {
  return g_next_stream_id.fetch_add(1, std::memory_order_relaxed);
}

// PyTorch has one accelerator type per process, and MPS-written code meets the emulated cuda's
// process without an MPS guard: `x.to("mps")` then fails in c10 with "PyTorch is not linked
// with support for mps devices", which does not say what to do. This guard says it. It has no
// devices, so nothing enumerates it (autograd starts no device thread for it); ops on mps
// tensors are refused by the MPS-key fallback (shims/cuda.py) with the same advice.
class MpsHintGuardImpl final : public c10::impl::NoOpDeviceGuardImpl<c10::DeviceType::MPS> {
 public:
  c10::Device exchangeDevice(c10::Device) const override { refuse(); }
  c10::Device getDevice() const override { refuse(); }
  void setDevice(c10::Device) const override { refuse(); }
  c10::DeviceIndex deviceCount() const noexcept override { return 0; }

 private:
  [[noreturn]] static void refuse() {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "device 'mps': this process emulates cuda, not mps, and PyTorch has one "
                                "accelerator type per process; run MPS-written code with TORCHDEVICE_EMULATE=mps");
  }
};

void register_mps_hint_guard() {
  if (c10::impl::hasDeviceGuardImpl(c10::DeviceType::MPS)) return;  // a torch with MPS (macOS)
  static auto* hint = new MpsHintGuardImpl();
  c10::impl::DeviceGuardImplRegistrar(c10::DeviceType::MPS, hint);
}

void register_guard(c10::DeviceType type) {
  // Registration is an atomic store into c10's per-type table, so re-registering over a
  // real CUDA guard (CUDA wheel, no GPU) is clean.
  static auto* cuda = new EmulatedGuardImpl(c10::DeviceType::CUDA);
  static auto* mps = new EmulatedGuardImpl(c10::DeviceType::MPS);
  c10::impl::DeviceGuardImplRegistrar(type, type == c10::DeviceType::MPS ? mps : cuda);
}

} // namespace torchdevice
