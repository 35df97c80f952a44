// Allocator of emulated devices, with the byte counts of CUDA's caching allocator. On the cpu
// runner it serves host blocks itself; on a device runner it wraps that runner's allocator.
#pragma once

#include "runtime/caching_model.h"
#include "runtime/stat_lock.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace torchdevice {

// TORCHDEVICE_TOTAL_MEMORY's value in bytes ("24GB", "512 MiB", "25769803776"); raises c10::Error
// naming the value and the valid forms (the grammar of core/device.py's parse_memory_size).
size_t parse_memory_size(const std::string& text);

class EmulatedAllocator final : public c10::DeviceAllocator {
 public:
  static constexpr int kMaxDevices = 64;
  explicit EmulatedAllocator(c10::DeviceType type);

  // Allocates on the current device of this allocator's type (as CUDA's allocator does).
  c10::DataPtr allocate(size_t nbytes) override;
  c10::DataPtr allocate_on(size_t nbytes, c10::DeviceIndex device);
  c10::DeleterFnPtr raw_deleter() const override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

  // Takes over memory a runner kernel allocated for an output of an emulated op: the bytes are
  // counted on `device` from now on and the DataPtr reports that device.
  c10::DataPtr adopt(c10::DataPtr&& host_data, size_t nbytes, c10::DeviceIndex device);

  bool initialized() override { return true; }
  void emptyCache(c10::MempoolId_t mempool_id) override;  // only the caching model caches
  void recordStream(const c10::DataPtr& /*ptr*/, c10::Stream /*stream*/) override {}
  c10::CachingDeviceAllocator::DeviceStats getDeviceStats(c10::DeviceIndex device) override;
  void resetAccumulatedStats(c10::DeviceIndex device) override;
  void resetPeakStats(c10::DeviceIndex device) override;
  std::pair<size_t, size_t> getMemoryInfo(c10::DeviceIndex device) override;  // (free, total)

  // Emulated device memory: total bytes and the per-process fraction CUDA users can cap.
  void set_total_memory(size_t bytes);
  size_t total_memory() const { return total_memory_; }
  void set_memory_fraction(double fraction, c10::DeviceIndex device);  // CUDA's checks: [0, 1]
  void set_limit_ratio(double ratio, c10::DeviceIndex device);         // unchecked (MPS: up to 2, inf)
  double memory_fraction(c10::DeviceIndex device);

  c10::DeviceType type() const { return type_; }

  // Bookkeeping entry point for the deleters: `nbytes` at `address` are freed on `device`.
  void record_free(c10::DeviceIndex device, size_t nbytes, const void* address);

  // CUDA's caching allocator modelled for the counts (runtime/caching_model.h): on when
  // TORCHDEVICE_CUDA_CACHING=1 for emulated cuda. Its segments, for memory snapshots.
  bool models_caching() const { return models_caching_; }
  std::vector<CachingModel::SegmentInfo> modelled_segments(c10::DeviceIndex device);

  // Observers of allocations and frees, off by default (then one relaxed load per allocation
  // and per free): torch.profiler's memory reporting (profile_memory=True, as CUDA's allocator
  // reports) and the memory history (torch.cuda.memory._record_memory_history, ops/memory.py).
  using HistoryObserver = std::function<void(bool allocated, void* ptr, size_t nbytes, c10::DeviceIndex device)>;
  static void set_profiler_reporting(bool on);
  static void set_history_observer(HistoryObserver observer);  // an empty one: off
  static bool observed();
  // `delta` bytes at `ptr` were allocated (> 0, called after counting) or are being freed (< 0,
  // called before) on `device`; `host_memory`: a block a CPU kernel allocated (CPU's allocator
  // reported it to the profiler as CPU memory).
  void notify(void* ptr, int64_t delta, c10::DeviceIndex device, bool host_memory);

  // The emulated block behind `data` (a storage's DataPtr): its address (what the observers
  // were told) and the bytes counted for it; nullopt for memory this allocator does not count.
  // For memory snapshots, which list the blocks allocated before history was recorded too.
  struct Block {
    void* address;
    size_t nbytes;
    c10::DeviceIndex device;
  };
  static std::optional<Block> block_of(const c10::DataPtr& data);

  // In a forked child: the counters' locks forget the parent's threads.
  void reset_locks_after_fork();

 private:
  // Nothing is cached, so every block is one allocation, one segment and one active block,
  // and its allocated, reserved, active and requested bytes are equal: one count and one byte
  // figure per pool (aggregate, small, large) carry all of CUDA's stat families. With the
  // caching model, the model keeps CUDA's figures instead.
  struct PerDevice {
    StatLock mutex;
    c10::CachingAllocator::StatArray blocks;
    c10::CachingAllocator::StatArray bytes;
    std::unique_ptr<CachingModel> model;
    int64_t num_device_alloc = 0;
    int64_t num_device_free = 0;
    int64_t num_ooms = 0;
    double fraction = 1.0;
    int64_t limit = INT64_MAX;  // fraction * total memory (CUDA: at most total - context), in bytes
  };
  PerDevice& device_state(c10::DeviceIndex device);
  // Counts `nbytes` at `address` on `device`; raises CUDA's out-of-memory error past the limit.
  void record_alloc(c10::DeviceIndex device, size_t nbytes, const void* address);
  void record_modelled_alloc(PerDevice& d, c10::DeviceIndex device, size_t nbytes, const void* address);
  void refuse_beyond_limit(c10::DeviceIndex device, size_t nbytes);  // the model's early OOM
  void update_limit(PerDevice& d);  // with d.mutex held
  size_t context_bytes() const;       // what the CUDA context would hold of total_memory
  size_t free_bytes(size_t in_use) const;  // cudaMemGetInfo's free: total - context - in use
  // With d.mutex held (released here). `tried`: what the message says was tried (CUDA names
  // the segment it could not get).
  [[noreturn]] void throw_out_of_memory(PerDevice& d, c10::DeviceIndex device, size_t tried);

  c10::DeviceType type_;
  bool models_caching_;
  size_t total_memory_;
  std::array<PerDevice, kMaxDevices> devices_;
};

// The allocator of an emulated device type (one instance per type, never freed).
EmulatedAllocator& allocator_for(c10::DeviceType type);

} // namespace torchdevice
