#include "runtime/allocator.h"

#include "runtime/device.h"
#include "runtime/hot_path.h"
#include "runtime/runner.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <memory>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <pthread.h>
#include <string>
#include <unistd.h>
#include <unordered_map>
#include <utility>

namespace torchdevice {
namespace {

using c10::CachingAllocator::StatType;

// Every block starts with a header so the raw deleter (which only gets the data pointer)
// knows what to uncount. 64 bytes keeps the data 64-byte aligned like c10's CPU allocator.
struct alignas(64) BlockHeader {
  uint64_t nbytes;
  c10::DeviceIndex device;
  c10::DeviceType type;
};
static_assert(sizeof(BlockHeader) == 64);

// CUDA's caching allocator puts blocks up to 1 MiB in its small pool.
constexpr size_t kSmallSize = 1 << 20;

// Bit 0: the profiler's memory reporting; bit 1: the memory history.
std::atomic<uint8_t> g_observers{0};
constexpr uint8_t kProfilerBit = 1, kHistoryBit = 2;
std::shared_ptr<EmulatedAllocator::HistoryObserver> g_history_observer;  // read with std::atomic_load

void free_block(void* data) {
  auto* header = static_cast<BlockHeader*>(data) - 1;
  auto& allocator = allocator_for(header->type);
  if (C10_UNLIKELY(EmulatedAllocator::observed())) {
    allocator.notify(data, -static_cast<int64_t>(header->nbytes), header->device, false);
  }
  allocator.record_free(header->device, header->nbytes, data);
  c10::free_cpu(header);
}

// Memory first allocated by a runner's kernel (or the runner's allocator), now owned by an
// emulated device.
struct AdoptedBlock {
  c10::DataPtr host;
  uint64_t nbytes;
  c10::DeviceIndex device;
  EmulatedAllocator* allocator;
};

void free_adopted(void* ctx) {
  auto* block = static_cast<AdoptedBlock*>(ctx);
  if (C10_UNLIKELY(EmulatedAllocator::observed())) {
    block->allocator->notify(block->host.get(), -static_cast<int64_t>(block->nbytes), block->device,
                             block->host.device().is_cpu());
  }
  block->allocator->record_free(block->device, block->nbytes, block->host.get());
  delete block;
}

// Small blocks of c10's default CPU allocator (what CPU kernels give their outputs) are adopted
// without an AdoptedBlock: allocating and freeing one was a fifth of what a small emulated op
// costs over its CPU kernel. What the deleter needs besides the data pointer travels in the
// context pointer's high bits (checked per block: an address at or above 2^47, possible on
// some arm64 and 5-level-paging systems, takes the AdoptedBlock path) and in the choice of
// deleter (one per device type and index).
constexpr int kAddressBits = 47;
constexpr uint64_t kAddressMask = (uint64_t(1) << kAddressBits) - 1;
constexpr uint64_t kMaxTaggedBytes = (uint64_t(1) << (64 - kAddressBits)) - 1;

// c10's allocator is built when libc10 loads, before this library.
const c10::DeleterFnPtr kDefaultCpuDeleter = c10::GetDefaultCPUAllocator()->raw_deleter();

template <c10::DeviceType kType, c10::DeviceIndex kDevice>
TORCHDEVICE_HOT void free_tagged(void* ctx) {
  const auto tagged = reinterpret_cast<uintptr_t>(ctx);
  void* address = reinterpret_cast<void*>(tagged & kAddressMask);
  if (C10_UNLIKELY(EmulatedAllocator::observed())) {
    allocator_for(kType).notify(address, -static_cast<int64_t>(tagged >> kAddressBits), kDevice, true);
  }
  allocator_for(kType).record_free(kDevice, tagged >> kAddressBits, address);
  kDefaultCpuDeleter(reinterpret_cast<void*>(tagged & kAddressMask));
}

template <c10::DeviceType kType, size_t... kDevices>
constexpr std::array<c10::DeleterFnPtr, sizeof...(kDevices)> tagged_deleters(std::index_sequence<kDevices...>) {
  return {&free_tagged<kType, static_cast<c10::DeviceIndex>(kDevices)>...};
}
constexpr auto kCudaTaggedDeleters =
    tagged_deleters<c10::DeviceType::CUDA>(std::make_index_sequence<EmulatedAllocator::kMaxDevices>());
constexpr auto kMpsTaggedDeleters =
    tagged_deleters<c10::DeviceType::MPS>(std::make_index_sequence<EmulatedAllocator::kMaxDevices>());

// The tagged context for `host`, or nullptr when it does not qualify.
void* tag_context(const c10::DataPtr& host, size_t nbytes) {
  const auto address = reinterpret_cast<uintptr_t>(host.get());
  if (nbytes > kMaxTaggedBytes || (address & ~kAddressMask) != 0 || host.get_context() != host.get() ||
      host.get_deleter() != kDefaultCpuDeleter) {
    return nullptr;
  }
  return reinterpret_cast<void*>(address | (static_cast<uintptr_t>(nbytes) << kAddressBits));
}

// The stat families a reset applies to.
std::array<c10::CachingAllocator::StatArray*, 9> model_stat_arrays(c10::CachingDeviceAllocator::DeviceStats& s) {
  return {&s.allocation, &s.segment, &s.active, &s.inactive_split, &s.allocated_bytes, &s.reserved_bytes,
          &s.active_bytes, &s.inactive_split_bytes, &s.requested_bytes};
}

// CUDA's pool for a block: small up to 1 MiB, else large (index into a StatArray).
size_t pool_of(size_t nbytes) {
  return static_cast<size_t>(nbytes <= kSmallSize ? StatType::SMALL_POOL : StatType::LARGE_POOL);
}

} // namespace

// TORCHDEVICE_TOTAL_MEMORY: bytes, or a number with a binary unit ("24GB", "24GiB", "24G",
// "512MB", "0.5 TB"): GPUs are sold by binary sizes, and CUDA reports them so. The grammar and the
// messages are those of parse_memory_size in torchdevice/core/device.py, which checks the value
// before torch loads: digits, at most 9 fraction digits (so the bytes are computed exactly, in
// integers), optional spaces, a unit; at least 1 byte and at most what size_t holds.
size_t parse_memory_size(const std::string& text) {
  static const char* const kForms =
      ": give bytes (25769803776) or a positive number with a unit of B, KB, MB, GB or TB "
      "(binary: 1 GB = 1024^3 bytes), e.g. 24GB";
  const auto refuse = [&](const char* why) {
    TORCH_CHECK(false, "TORCHDEVICE_TOTAL_MEMORY='", text, "' ", why, kForms);
  };
  const auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  size_t begin = 0, end = text.size();
  while (begin < end && is_space(text[begin])) ++begin;
  while (end > begin && is_space(text[end - 1])) --end;

  using Wide = unsigned __int128;
  constexpr size_t kMaxIntegerDigits = 21;  // more is above 2^64 whatever the unit (leading zeros aside)
  size_t i = begin;
  Wide integer = 0;
  size_t significant = 0;
  for (; i < end && is_digit(text[i]); ++i) {
    if (integer != 0 || text[i] != '0') ++significant;
    if (significant <= kMaxIntegerDigits) integer = integer * 10 + (text[i] - '0');
  }
  const bool has_integer = i > begin;
  Wide fraction = 0, fraction_scale = 1;
  if (has_integer && i < end && text[i] == '.') {
    const size_t first = ++i;
    for (; i < end && is_digit(text[i]) && i - first < 9; ++i) {
      fraction = fraction * 10 + (text[i] - '0');
      fraction_scale *= 10;
    }
    if (i == first || (i < end && is_digit(text[i]))) refuse("is not a memory size");
  }
  while (i < end && text[i] == ' ') ++i;
  std::string unit;
  for (; i < end && std::isalpha(static_cast<unsigned char>(text[i])); ++i) {
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
  }
  // "", "B", or K/M/G/T alone or followed by "B" or "IB" (case-insensitive): all binary.
  int power = unit.empty() || unit == "B" ? 0 : -1;
  const std::string rest = unit.empty() ? "" : unit.substr(1);
  if (power < 0 && (rest.empty() || rest == "B" || rest == "IB")) {
    const char* const prefixes = "KMGT";
    for (int p = 0; p < 4; ++p) {
      if (unit[0] == prefixes[p]) power = p + 1;
    }
  }
  if (!has_integer || i != end || power < 0) refuse("is not a memory size");
  if (significant > kMaxIntegerDigits) refuse("is more than 2^64-1 bytes");
  const Wide scale = Wide(1) << (10 * power);
  const Wide bytes = integer * scale + fraction * scale / fraction_scale;
  if (bytes < 1) refuse("is less than 1 byte");
  if (bytes > Wide(std::numeric_limits<size_t>::max())) refuse("is more than 2^64-1 bytes");
  return static_cast<size_t>(bytes);
}

namespace {

size_t default_total_memory() {
  // Report what the host really has: a limit the emulated device cannot honour would lie.
  if (const char* env = std::getenv("TORCHDEVICE_TOTAL_MEMORY")) {
    return parse_memory_size(env);
  }
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page_size > 0 ? static_cast<size_t>(pages) * page_size : size_t(16) << 30;
}

bool caching_requested(c10::DeviceType type) {
  const char* env = std::getenv("TORCHDEVICE_CUDA_CACHING");
  if (type != c10::DeviceType::CUDA || env == nullptr || *env == '\0' || std::strcmp(env, "0") == 0) return false;
  TORCH_CHECK(std::strcmp(env, "1") == 0, "TORCHDEVICE_CUDA_CACHING='", env,
              "' is not valid: 1 models CUDA's caching allocator for the memory counts, 0 (the default) counts "
              "each tensor's bytes");
  return true;
}

} // namespace

EmulatedAllocator::EmulatedAllocator(c10::DeviceType type)
    : type_(type), models_caching_(caching_requested(type)), total_memory_(default_total_memory()) {
  for (auto& d : devices_) {
    update_limit(d);
    if (models_caching_) d.model = std::make_unique<CachingModel>();
  }
}

EmulatedAllocator::PerDevice& EmulatedAllocator::device_state(c10::DeviceIndex device) {
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "torchdevice: device index out of range: ", int(device));
  return devices_[device];
}

size_t EmulatedAllocator::context_bytes() const {
  // A GPU never gives PyTorch all of its memory: the CUDA context (kernels, cuBLAS/cuDNN
  // handles) holds about half a GiB, so filling total_memory exactly fails there (PyTorch's
  // test_out_of_memory_retry relies on it). MPS shares unified memory and has no such share.
  if (type_ != c10::DeviceType::CUDA) return 0;
  constexpr size_t kCudaContextBytes = size_t{512} << 20;
  return std::min(kCudaContextBytes, total_memory_ / 32);
}

void EmulatedAllocator::update_limit(PerDevice& d) {
  const double limit = d.fraction * static_cast<double>(total_memory_);  // may be +inf (no limit)
  const auto usable = static_cast<double>(total_memory_ - context_bytes());
  const double capped = type_ == c10::DeviceType::CUDA ? std::min(limit, usable) : limit;
  d.limit = capped >= static_cast<double>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(capped);
}

void EmulatedAllocator::throw_out_of_memory(PerDevice& d, c10::DeviceIndex device, size_t tried) {
  ++d.num_ooms;
  const auto allocated = static_cast<size_t>(d.model ? d.model->allocated() : d.bytes[0].current);
  const auto reserved = static_cast<size_t>(d.model ? d.model->reserved() : d.bytes[0].current);
  const std::string name = type_ == c10::DeviceType::CUDA ? "CUDA" : c10::DeviceTypeName(type_);
  const double fraction = d.fraction;
  d.mutex.unlock();
  // Same shape as CUDA's caching-allocator message, so log scrapers and tests match it.
  TORCH_CHECK_WITH(OutOfMemoryError, false,
      name, " out of memory. Tried to allocate ", c10::CachingAllocator::format_size(tried),
      ". GPU ", int(device), " has a total capacity of ", c10::CachingAllocator::format_size(total_memory_),
      " of which ", c10::CachingAllocator::format_size(free_bytes(reserved)),
      " is free. Of the allocated memory ", c10::CachingAllocator::format_size(allocated),
      " is allocated by PyTorch, and ", c10::CachingAllocator::format_size(reserved - allocated),
      " is reserved by PyTorch but unallocated."
      " (torchdevice: the per-process memory fraction is ", fraction, ")");
}

// record_alloc and record_free run for every emulated tensor: `device` comes from a Device that
// was checked when it was made, and the counters are updated without loops or floating point.
TORCHDEVICE_HOT void EmulatedAllocator::record_alloc(c10::DeviceIndex device, size_t nbytes, const void* address) {
  auto& d = devices_[static_cast<size_t>(device)];
  d.mutex.lock();
  if (C10_UNLIKELY(d.model != nullptr)) {
    record_modelled_alloc(d, device, nbytes, address);
    return;
  }
  const auto bytes = static_cast<int64_t>(nbytes);
  if (C10_UNLIKELY(d.bytes[0].current + bytes > d.limit)) throw_out_of_memory(d, device, nbytes);
  const size_t pool = pool_of(nbytes);
  d.blocks[0].increase(1);
  d.bytes[0].increase(nbytes);
  d.blocks[pool].increase(1);
  d.bytes[pool].increase(nbytes);
  ++d.num_device_alloc;
  d.mutex.unlock();
}

void EmulatedAllocator::record_modelled_alloc(PerDevice& d, c10::DeviceIndex device, size_t nbytes,
                                              const void* address) {
  if (C10_UNLIKELY(!d.model->allocate(address, nbytes, d.limit))) {
    throw_out_of_memory(d, device, CachingModel::segment_size(CachingModel::round_size(nbytes)));
  }
  d.mutex.unlock();
}

TORCHDEVICE_HOT void EmulatedAllocator::record_free(c10::DeviceIndex device, size_t nbytes, const void* address) {
  auto& d = devices_[static_cast<size_t>(device)];
  std::lock_guard<StatLock> lock(d.mutex);
  if (C10_UNLIKELY(d.model != nullptr)) {
    d.model->free(address);
    return;
  }
  const size_t pool = pool_of(nbytes);
  d.blocks[0].decrease(1);
  d.bytes[0].decrease(nbytes);
  d.blocks[pool].decrease(1);
  d.bytes[pool].decrease(nbytes);
  ++d.num_device_free;
}

c10::DataPtr EmulatedAllocator::allocate(size_t nbytes) {
  return allocate_on(nbytes, current_device(type_));
}

c10::DataPtr EmulatedAllocator::allocate_on(size_t nbytes, c10::DeviceIndex device) {
  const c10::Device dev(type_, device);
  if (nbytes == 0) {
    return c10::DataPtr(nullptr, dev);  // like cudaMalloc-backed allocators: no block for 0 bytes
  }
  // CUDA's caching allocator refuses these up front, before any accounting or OOM count.
  constexpr size_t kOneExabyte = size_t{1} << 60;
  TORCH_CHECK_WITH(OutOfMemoryError, nbytes < kOneExabyte,
                   type_ == c10::DeviceType::CUDA ? "CUDA" : c10::DeviceTypeName(type_),
                   " out of memory. Tried to allocate more than 1EB memory.");
  const Runner& runner = runner_for(type_);
  if (c10::Allocator* real = runner.allocator()) {
    // Device memory of the runner (its caching allocator serves its current device).
    c10::DeviceGuard guard(runner.device_for(device));
    return adopt(real->allocate(nbytes), nbytes, device);
  }
  BlockHeader* header = nullptr;
  if (C10_LIKELY(!models_caching_)) {
    record_alloc(device, nbytes, nullptr);  // before the host allocation: a huge request is CUDA's OOM
    header = static_cast<BlockHeader*>(c10::alloc_cpu(nbytes + sizeof(BlockHeader)));
  } else {
    // The model keys blocks by address, so the host block comes first (a request larger than
    // any segment could be is refused before it).
    refuse_beyond_limit(device, nbytes);
    header = static_cast<BlockHeader*>(c10::alloc_cpu(nbytes + sizeof(BlockHeader)));
    try {
      record_alloc(device, nbytes, header + 1);
    } catch (...) {
      c10::free_cpu(header);
      throw;
    }
  }
  header->nbytes = nbytes;
  header->device = device;
  header->type = type_;
  void* data = header + 1;
  if (C10_UNLIKELY(observed())) notify(data, static_cast<int64_t>(nbytes), device, false);
  return c10::DataPtr(data, data, &free_block, dev);
}

void EmulatedAllocator::set_profiler_reporting(bool on) {
  if (on) {
    g_observers.fetch_or(kProfilerBit, std::memory_order_relaxed);
  } else {
    g_observers.fetch_and(static_cast<uint8_t>(~kProfilerBit), std::memory_order_relaxed);
  }
}

void EmulatedAllocator::set_history_observer(HistoryObserver observer) {
  const bool on = static_cast<bool>(observer);
  std::atomic_store(&g_history_observer, on ? std::make_shared<HistoryObserver>(std::move(observer)) : nullptr);
  if (on) {
    g_observers.fetch_or(kHistoryBit, std::memory_order_release);
  } else {
    g_observers.fetch_and(static_cast<uint8_t>(~kHistoryBit), std::memory_order_release);
  }
}

bool EmulatedAllocator::observed() { return g_observers.load(std::memory_order_relaxed) != 0; }

// A block that a CPU kernel allocated (and CPU's allocator reported to the profiler) changes
// hands: the profiler sees it leave the CPU and arrive on the device when adopted, and come
// back to the CPU just before CPU's allocator reports freeing it, so each side's totals hold.
//
// Called after an allocation is counted and before a free is, so that the caching model still
// knows the block: the history is told the model's address of it (the snapshot's segments are the
// model's), and the profiler the totals after the event, as CUDA reports them.
void EmulatedAllocator::notify(void* ptr, int64_t delta, c10::DeviceIndex device, bool host_memory) {
  const uint8_t observers = g_observers.load(std::memory_order_acquire);
  auto& d = devices_[static_cast<size_t>(device)];
  const auto nbytes = static_cast<size_t>(delta > 0 ? delta : -delta);
  const size_t counted = d.model ? CachingModel::round_size(nbytes) : nbytes;  // the block's size
  if (observers & kHistoryBit) {
    if (auto observer = std::atomic_load(&g_history_observer)) {
      void* address = ptr;
      if (d.model) {
        std::lock_guard<StatLock> lock(d.mutex);
        address = reinterpret_cast<void*>(d.model->address_of(ptr));
      }
      (*observer)(delta > 0, address, counted, device);
    }
  }
  if (!(observers & kProfilerBit)) return;
  int64_t allocated = 0, reserved = 0;
  {
    std::lock_guard<StatLock> lock(d.mutex);
    allocated = (d.model ? d.model->allocated() : d.bytes[0].current) - (delta < 0 ? static_cast<int64_t>(counted) : 0);
    reserved = d.model ? d.model->reserved() : allocated;
  }
  if (host_memory) c10::reportMemoryUsageToProfiler(ptr, -delta, 0, 0, c10::Device(c10::DeviceType::CPU));
  c10::reportMemoryUsageToProfiler(ptr, delta, static_cast<size_t>(std::max<int64_t>(allocated, 0)),
                                   static_cast<size_t>(std::max<int64_t>(reserved, 0)), c10::Device(type_, device));
}

std::optional<EmulatedAllocator::Block> EmulatedAllocator::block_of(const c10::DataPtr& data) {
  const c10::DeleterFnPtr deleter = data.get_deleter();
  if (deleter == &free_block) {
    const auto* header = static_cast<const BlockHeader*>(data.get_context()) - 1;
    return Block{data.get_context(), header->nbytes, header->device};
  }
  if (deleter == &free_adopted) {
    const auto* block = static_cast<const AdoptedBlock*>(data.get_context());
    return Block{block->host.get(), block->nbytes, block->device};
  }
  for (const auto* deleters : {&kCudaTaggedDeleters, &kMpsTaggedDeleters}) {
    const auto it = std::find(deleters->begin(), deleters->end(), deleter);
    if (it != deleters->end()) {
      const auto tagged = reinterpret_cast<uintptr_t>(data.get_context());
      return Block{reinterpret_cast<void*>(tagged & kAddressMask), tagged >> kAddressBits,
                   static_cast<c10::DeviceIndex>(it - deleters->begin())};
    }
  }
  return std::nullopt;
}

c10::DeleterFnPtr EmulatedAllocator::raw_deleter() const {
  // Runner memory carries a context (the runner's own DataPtr): no raw allocation API there.
  return runner_for(type_).is_cpu() ? &free_block : nullptr;
}

void EmulatedAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  if (c10::Allocator* real = runner_for(type_).allocator()) {
    real->copy_data(dest, src, count);
  } else {
    std::memcpy(dest, src, count);
  }
}

TORCHDEVICE_HOT c10::DataPtr EmulatedAllocator::adopt(c10::DataPtr&& host_data, size_t nbytes, c10::DeviceIndex device) {
  const c10::Device dev(type_, device);
  void* data = host_data.get();
  if (data == nullptr) {
    return c10::DataPtr(nullptr, dev);
  }
  // Counting can fail (memory fraction); the host memory is then freed with host_data.
  record_alloc(device, nbytes, data);
  if (C10_UNLIKELY(observed())) notify(data, static_cast<int64_t>(nbytes), device, host_data.device().is_cpu());
  if (void* tagged = tag_context(host_data, nbytes)) {
    host_data.release_context();
    const auto& deleters = type_ == c10::DeviceType::MPS ? kMpsTaggedDeleters : kCudaTaggedDeleters;
    return c10::DataPtr(data, tagged, deleters[static_cast<size_t>(device)], dev);
  }
  auto* block = new AdoptedBlock{std::move(host_data), nbytes, device, this};
  return c10::DataPtr(data, block, &free_adopted, dev);
}

void EmulatedAllocator::refuse_beyond_limit(c10::DeviceIndex device, size_t nbytes) {
  auto& d = device_state(device);
  d.mutex.lock();
  const size_t segment = CachingModel::segment_size(CachingModel::round_size(nbytes));
  if (static_cast<double>(segment) > static_cast<double>(d.limit)) throw_out_of_memory(d, device, segment);
  d.mutex.unlock();
}

void EmulatedAllocator::emptyCache(c10::MempoolId_t /*mempool_id*/) {
  if (!models_caching_) return;  // nothing is cached
  for (auto& d : devices_) {
    std::lock_guard<StatLock> lock(d.mutex);
    d.model->release_cached();
  }
}

std::vector<CachingModel::SegmentInfo> EmulatedAllocator::modelled_segments(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  return d.model ? d.model->segments() : std::vector<CachingModel::SegmentInfo>{};
}

c10::CachingDeviceAllocator::DeviceStats EmulatedAllocator::getDeviceStats(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  if (d.model) {
    auto s = d.model->stats();
    s.num_ooms = d.num_ooms;
    return s;
  }
  c10::CachingDeviceAllocator::DeviceStats s;
  s.allocation = s.segment = s.active = d.blocks;
  s.allocated_bytes = s.reserved_bytes = s.active_bytes = s.requested_bytes = d.bytes;
  s.num_device_alloc = d.num_device_alloc;
  s.num_device_free = d.num_device_free;
  s.num_ooms = d.num_ooms;
  return s;
}

void EmulatedAllocator::resetAccumulatedStats(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  for (auto* stats : {&d.blocks, &d.bytes}) {
    for (auto& stat : *stats) stat.reset_accumulated();
  }
  if (d.model) {
    auto& s = d.model->mutable_stats();
    for (auto* stats : model_stat_arrays(s)) {
      for (auto& stat : *stats) stat.reset_accumulated();
    }
    s.num_alloc_retries = s.num_device_alloc = s.num_device_free = 0;
  }
  d.num_ooms = 0;
  d.num_device_alloc = 0;
  d.num_device_free = 0;
}

void EmulatedAllocator::resetPeakStats(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  for (auto* stats : {&d.blocks, &d.bytes}) {
    for (auto& stat : *stats) stat.reset_peak();
  }
  if (d.model) {
    for (auto* stats : model_stat_arrays(d.model->mutable_stats())) {
      for (auto& stat : *stats) stat.reset_peak();
    }
  }
}

std::pair<size_t, size_t> EmulatedAllocator::getMemoryInfo(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  const int64_t in_use = d.model ? d.model->reserved() : d.bytes[0].current;
  return {free_bytes(static_cast<size_t>(in_use)), total_memory_};
}

size_t EmulatedAllocator::free_bytes(size_t in_use) const {
  const size_t taken = in_use + context_bytes();
  return total_memory_ - std::min(total_memory_, taken);
}

void EmulatedAllocator::set_total_memory(size_t bytes) {
  total_memory_ = bytes;
  for (auto& d : devices_) {
    std::lock_guard<StatLock> lock(d.mutex);
    update_limit(d);
  }
}

void EmulatedAllocator::set_memory_fraction(double fraction, c10::DeviceIndex device) {
  // Same checks and wording as torch.cuda.set_per_process_memory_fraction.
  TORCH_CHECK(0 <= fraction && fraction <= 1, "invalid fraction:", fraction, ". Please set within [0, 1].");
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  d.fraction = fraction;
  update_limit(d);
}

void EmulatedAllocator::set_limit_ratio(double ratio, c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  d.fraction = ratio;
  update_limit(d);
}

double EmulatedAllocator::memory_fraction(c10::DeviceIndex device) {
  auto& d = device_state(device);
  std::lock_guard<StatLock> lock(d.mutex);
  return d.fraction;
}

void EmulatedAllocator::reset_locks_after_fork() {
  for (auto& d : devices_) d.mutex.reset_after_fork();
}

TORCHDEVICE_HOT EmulatedAllocator& allocator_for(c10::DeviceType type) {
  // Leaked on purpose: tensors freed during interpreter shutdown still call back into it.
  static auto* cuda = new EmulatedAllocator(c10::DeviceType::CUDA);
  static auto* mps = new EmulatedAllocator(c10::DeviceType::MPS);
  static const bool fork_handler = [] {
    return pthread_atfork(nullptr, nullptr, [] {
             cuda->reset_locks_after_fork();
             mps->reset_locks_after_fork();
           }) == 0;
  }();
  (void)fork_handler;
  return type == c10::DeviceType::MPS ? *mps : *cuda;
}

} // namespace torchdevice
