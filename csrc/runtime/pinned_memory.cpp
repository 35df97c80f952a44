#include "runtime/pinned_memory.h"

#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/llvmMathExtras.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace torchdevice {
namespace {

// cudaError_t values cudaHostRegister/Unregister return.
constexpr int kCudaSuccess = 0;
constexpr int kCudaErrorHostMemoryAlreadyRegistered = 712;
constexpr int kCudaErrorHostMemoryNotRegistered = 713;

struct Block {
  size_t size;
  bool in_use;
};

// Everything below is guarded by g_mutex (host allocations are not a hot path).
std::mutex g_mutex;
HostStats g_stats;
std::unordered_map<const void*, Block>& blocks() {
  static auto* map = new std::unordered_map<const void*, Block>();  // leaked: freed tensors outlive statics
  return *map;
}
std::unordered_map<size_t, std::vector<void*>>& free_blocks() {  // by size, cached for reuse
  static auto* map = new std::unordered_map<size_t, std::vector<void*>>();
  return *map;
}
std::map<uintptr_t, size_t>& registered() {  // cudaHostRegister'ed ranges: start -> length
  static auto* map = new std::map<uintptr_t, size_t>();
  return *map;
}

void add_duration(HostDuration& d, std::chrono::steady_clock::duration elapsed) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count();
  d.total_us += us;
  d.max_us = d.count == 0 ? us : std::max(d.max_us, us);
  d.min_us = d.count == 0 ? us : std::min(d.min_us, us);
  ++d.count;
}

void free_pinned(void* data) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = blocks().find(data);
  if (it == blocks().end() || !it->second.in_use) return;
  it->second.in_use = false;
  g_stats.active_requests.decrease(1);
  g_stats.active_bytes.decrease(it->second.size);
  free_blocks()[it->second.size].push_back(data);
}

class PinnedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes == 0) {
      return c10::DataPtr(nullptr, c10::Device(c10::DeviceType::CPU));
    }
    // CachingHostAllocator's size classes: the next power of two.
    const size_t size = c10::llvm::PowerOf2Ceil(nbytes);
    std::lock_guard<std::mutex> lock(g_mutex);
    void* data = nullptr;
    auto& cached = free_blocks()[size];
    if (!cached.empty()) {
      data = cached.back();
      cached.pop_back();
    } else {
      const auto start = std::chrono::steady_clock::now();
      data = c10::alloc_cpu(size);
      add_duration(g_stats.host_alloc_time, std::chrono::steady_clock::now() - start);
      blocks().emplace(data, Block{size, false});
      g_stats.allocations.increase(1);
      g_stats.allocated_bytes.increase(size);
      ++g_stats.num_host_alloc;
    }
    blocks().at(data).in_use = true;
    g_stats.active_requests.increase(1);
    g_stats.active_bytes.increase(size);
    return c10::DataPtr(data, data, &free_pinned, c10::Device(c10::DeviceType::CPU));
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_pinned; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

bool in_registered_range(uintptr_t address) {
  auto it = registered().upper_bound(address);
  if (it == registered().begin()) return false;
  --it;
  return address < it->first + it->second;
}

} // namespace

c10::Allocator* pinned_allocator() {
  static auto* alloc = new PinnedAllocator();
  return alloc;
}

bool is_pinned_ptr(const void* data) {
  std::lock_guard<std::mutex> lock(g_mutex);
  // A block is looked up by its base, which is what is_pinned() passes (the storage's data).
  const auto it = blocks().find(data);
  if (it != blocks().end()) return it->second.in_use;
  return !registered().empty() && in_registered_range(reinterpret_cast<uintptr_t>(data));
}

int host_register(const void* data, size_t nbytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto start = reinterpret_cast<uintptr_t>(data);
  if (in_registered_range(start)) return kCudaErrorHostMemoryAlreadyRegistered;
  registered()[start] = nbytes;
  return kCudaSuccess;
}

int host_unregister(const void* data) {
  std::lock_guard<std::mutex> lock(g_mutex);
  // As cudaHostUnregister: `data` must be the start of a registered range.
  return registered().erase(reinterpret_cast<uintptr_t>(data)) ? kCudaSuccess : kCudaErrorHostMemoryNotRegistered;
}

HostStats host_stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_stats;
}

void reset_host_peak_stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto* stat : {&g_stats.allocations, &g_stats.allocated_bytes, &g_stats.active_requests, &g_stats.active_bytes}) {
    stat->reset_peak();
  }
}

void reset_host_accumulated_stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto* stat : {&g_stats.allocations, &g_stats.allocated_bytes, &g_stats.active_requests, &g_stats.active_bytes}) {
    stat->reset_accumulated();
  }
  g_stats.num_host_alloc = 0;
  g_stats.num_host_free = 0;
  g_stats.host_alloc_time = {};
  g_stats.host_free_time = {};
}

void host_empty_cache() {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto& [size, cached] : free_blocks()) {
    for (void* data : cached) {
      const auto start = std::chrono::steady_clock::now();
      c10::free_cpu(data);
      add_duration(g_stats.host_free_time, std::chrono::steady_clock::now() - start);
      blocks().erase(data);
      g_stats.allocations.decrease(1);
      g_stats.allocated_bytes.decrease(size);
      ++g_stats.num_host_free;
    }
    cached.clear();
  }
}

} // namespace torchdevice
