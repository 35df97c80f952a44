// CUDA's caching allocator as a model: the segments and blocks it would hold for the same
// requests, so that memory_allocated/memory_reserved, peaks, fragmentation and out-of-memory
// read as on a GPU (TORCHDEVICE_CUDA_CACHING=1; "does this fit on a 24 GB GPU?").
//
// The emulated allocator still gives every tensor its own host block; the model only decides
// what CUDA's allocator would report and when it would run out of memory. Its rules are those of
// c10/cuda/CUDACachingAllocator.cpp with the default configuration (one stream, no
// max_split_size, no expandable segments, no garbage collection threshold):
//   - sizes round up to multiples of 512 bytes;
//   - requests up to 1 MiB come from the small pool, whose segments are 2 MiB; larger ones from
//     the large pool: 20 MiB segments for requests under 10 MiB, else the size rounded up to
//     2 MiB;
//   - a request takes the smallest free block of its pool that fits (best fit, then the lowest
//     address), split when the rest is at least 512 bytes (small pool) or over 1 MiB (large);
//   - a freed block merges with free neighbours of its segment and stays cached;
//   - when a new segment would exceed the device's limit, the cached segments that are wholly
//     free are released (as empty_cache does) and the allocation retried once.
// Block addresses are the model's own (a segment's blocks are contiguous there); each modelled
// block is keyed by the address of the real block it stands for.
#pragma once

#include <c10/core/CachingDeviceAllocator.h>

#include <cstddef>
#include <cstdint>
#include <set>
#include <unordered_map>
#include <vector>

namespace torchdevice {

class CachingModel {
 public:
  CachingModel();
  ~CachingModel();
  CachingModel(const CachingModel&) = delete;
  CachingModel& operator=(const CachingModel&) = delete;

  // A request of `nbytes` for the real block at `key`. False when CUDA's allocator would be out
  // of memory: a new segment would take the reserved bytes over `limit`, even after releasing
  // the cached ones (counted as CUDA counts: num_alloc_retries, not num_ooms).
  bool allocate(const void* key, size_t nbytes, int64_t limit);
  // The real block at `key` was freed (unknown keys: blocks allocated before the model).
  void free(const void* key);
  // The model's address of the allocated block standing for the real one at `key` (0: none).
  uintptr_t address_of(const void* key) const;
  // torch.cuda.empty_cache(): releases every cached segment that has no allocated block.
  void release_cached();

  // What CUDA's allocator would report, as its DeviceStats.
  const c10::CachingDeviceAllocator::DeviceStats& stats() const { return stats_; }
  c10::CachingDeviceAllocator::DeviceStats& mutable_stats() { return stats_; }
  int64_t reserved() const { return stats_.reserved_bytes[0].current; }
  int64_t allocated() const { return stats_.allocated_bytes[0].current; }

  // The model's segments for memory snapshots.
  struct BlockInfo {
    uintptr_t address;
    size_t size;
    size_t requested;
    bool allocated;
  };
  struct SegmentInfo {
    uintptr_t address;
    size_t size;
    bool small;
    std::vector<BlockInfo> blocks;
  };
  std::vector<SegmentInfo> segments() const;

  // CUDA's rules, for the model and its tests.
  static size_t round_size(size_t nbytes);
  static size_t segment_size(size_t rounded);

 private:
  struct Block;
  struct BySizeThenAddress {
    bool operator()(const Block* a, const Block* b) const;
  };
  using Pool = std::set<Block*, BySizeThenAddress>;

  Pool& pool_of(const Block* block);
  void insert_free(Block* block);  // into its pool, counting it as inactive split if it is
  void remove_free(Block* block);
  Block* new_segment(size_t size, bool small, int64_t limit);
  void release_segment(Block* block);
  void update(c10::CachingAllocator::StatArray& stat, bool small, int64_t amount);

  Pool small_free_;
  Pool large_free_;
  std::unordered_map<const void*, Block*> allocated_;
  std::vector<Block*> segment_heads_;  // first block of each live segment, by creation
  uintptr_t next_address_;
  c10::CachingDeviceAllocator::DeviceStats stats_;
};

} // namespace torchdevice
