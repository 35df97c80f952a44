// Pinned host memory: what pin_memory() / pin_memory=True allocate and is_pinned() recognizes.
//
// Host memory is host memory here; what makes this "pinned" is behaving as CUDA's caching host
// allocator does, as far as code can observe it: requests are rounded up to a power of two,
// freed blocks are kept for reuse until torch._C._host_emptyCache(), and
// torch.cuda.host_memory_stats() counts blocks, requests and host allocations the same way.
// cudaHostRegister'ed ranges (torch.cuda.cudart()) are pinned too, until unregistered.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

namespace torchdevice {

c10::Allocator* pinned_allocator();
// Whether `data` lies in a pinned block or a registered range.
bool is_pinned_ptr(const void* data);

// torch.cuda.cudart().cudaHostRegister/Unregister; the return value is the cudaError_t.
int host_register(const void* data, size_t nbytes);
int host_unregister(const void* data);

struct HostDuration {
  int64_t total_us = 0, max_us = 0, min_us = 0, count = 0;
};
struct HostStats {
  c10::CachingAllocator::Stat allocations;      // blocks held, in use or cached
  c10::CachingAllocator::Stat allocated_bytes;
  c10::CachingAllocator::Stat active_requests;  // blocks in use
  c10::CachingAllocator::Stat active_bytes;
  int64_t num_host_alloc = 0;                   // blocks taken from / returned to the system
  int64_t num_host_free = 0;
  HostDuration host_alloc_time;
  HostDuration host_free_time;
};
HostStats host_stats();
void reset_host_peak_stats();
void reset_host_accumulated_stats();
// Returns every cached (free) block to the system.
void host_empty_cache();

} // namespace torchdevice
