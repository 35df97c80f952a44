#include "runtime/caching_model.h"

#include <algorithm>
#include <tuple>

namespace torchdevice {
namespace {

using c10::CachingAllocator::StatType;

// c10/cuda/CUDACachingAllocator.cpp's constants.
constexpr size_t kMinBlockSize = 512;       // all sizes are rounded to at least 512 bytes
constexpr size_t kSmallSize = 1 << 20;      // largest "small" allocation is 1 MiB
constexpr size_t kSmallBuffer = 2 << 20;    // "small" allocations are packed in 2 MiB blocks
constexpr size_t kLargeBuffer = 20 << 20;   // "large" allocations may be packed in 20 MiB blocks
constexpr size_t kMinLargeAlloc = 10 << 20;  // allocations between 1 and 10 MiB may use kLargeBuffer
constexpr size_t kRoundLarge = 2 << 20;     // round up large allocations to 2 MiB

} // namespace

struct CachingModel::Block {
  uintptr_t address;
  size_t size;
  size_t requested = 0;
  bool small;
  bool allocated = false;
  const void* key = nullptr;
  Block* prev = nullptr;  // neighbours within the segment
  Block* next = nullptr;
  bool is_split() const { return prev != nullptr || next != nullptr; }
};

bool CachingModel::BySizeThenAddress::operator()(const Block* a, const Block* b) const {
  return std::tie(a->size, a->address) < std::tie(b->size, b->address);
}

// Addresses in the range a CUDA device's allocations get (only differences matter).
CachingModel::CachingModel() : next_address_(uintptr_t{0x7f0000000000}) {}

CachingModel::~CachingModel() {
  for (Block* head : segment_heads_) {
    for (Block* b = head; b != nullptr;) delete std::exchange(b, b->next);
  }
}

size_t CachingModel::round_size(size_t nbytes) {
  if (nbytes < kMinBlockSize) return kMinBlockSize;
  return kMinBlockSize * ((nbytes + kMinBlockSize - 1) / kMinBlockSize);
}

size_t CachingModel::segment_size(size_t rounded) {
  if (rounded <= kSmallSize) return kSmallBuffer;
  if (rounded < kMinLargeAlloc) return kLargeBuffer;
  return kRoundLarge * ((rounded + kRoundLarge - 1) / kRoundLarge);
}

void CachingModel::update(c10::CachingAllocator::StatArray& stat, bool small, int64_t amount) {
  const size_t pool = static_cast<size_t>(small ? StatType::SMALL_POOL : StatType::LARGE_POOL);
  for (size_t i : {size_t(StatType::AGGREGATE), pool}) {
    if (amount >= 0) {
      stat[i].increase(amount);
    } else {
      stat[i].decrease(-amount);
    }
  }
}

CachingModel::Pool& CachingModel::pool_of(const Block* block) { return block->small ? small_free_ : large_free_; }

void CachingModel::insert_free(Block* block) {
  pool_of(block).insert(block);
  if (block->is_split()) {
    update(stats_.inactive_split, block->small, 1);
    update(stats_.inactive_split_bytes, block->small, static_cast<int64_t>(block->size));
  }
}

void CachingModel::remove_free(Block* block) {
  pool_of(block).erase(block);
  if (block->is_split()) {
    update(stats_.inactive_split, block->small, -1);
    update(stats_.inactive_split_bytes, block->small, -static_cast<int64_t>(block->size));
  }
}

CachingModel::Block* CachingModel::new_segment(size_t size, bool small, int64_t limit) {
  if (reserved() + static_cast<int64_t>(size) > limit) return nullptr;  // cudaMalloc fails
  auto* block = new Block{next_address_, size, 0, small};
  next_address_ += size;
  segment_heads_.push_back(block);
  update(stats_.segment, small, 1);
  update(stats_.reserved_bytes, small, static_cast<int64_t>(size));
  ++stats_.num_device_alloc;
  return block;
}

void CachingModel::release_segment(Block* block) {
  segment_heads_.erase(std::find(segment_heads_.begin(), segment_heads_.end(), block));
  update(stats_.segment, block->small, -1);
  update(stats_.reserved_bytes, block->small, -static_cast<int64_t>(block->size));
  ++stats_.num_device_free;
  delete block;
}

void CachingModel::release_cached() {
  for (Pool* pool : {&small_free_, &large_free_}) {
    for (auto it = pool->begin(); it != pool->end();) {
      Block* block = *it;
      if (block->is_split()) {
        ++it;
        continue;
      }
      it = pool->erase(it);
      release_segment(block);
    }
  }
}

bool CachingModel::allocate(const void* key, size_t nbytes, int64_t limit) {
  const size_t size = round_size(nbytes);
  const bool small = size <= kSmallSize;
  Pool& pool = small ? small_free_ : large_free_;
  Block probe{0, size, 0, small};
  Block* block = nullptr;
  if (auto it = pool.lower_bound(&probe); it != pool.end()) {
    block = *it;
    remove_free(block);
  } else {
    const size_t segment = segment_size(size);
    block = new_segment(segment, small, limit);
    if (block == nullptr) {
      // CUDA frees its cached segments and retries once before reporting out of memory.
      ++stats_.num_alloc_retries;
      release_cached();
      block = new_segment(segment, small, limit);
      if (block == nullptr) return false;
    }
  }
  const size_t remaining = block->size - size;
  if (small ? remaining >= kMinBlockSize : remaining > kSmallSize) {
    auto* rest = new Block{block->address + size, remaining, 0, small};
    rest->prev = block;
    rest->next = block->next;
    if (block->next) block->next->prev = rest;
    block->next = rest;
    block->size = size;
    insert_free(rest);
  }
  block->allocated = true;
  block->requested = nbytes;
  block->key = key;
  allocated_[key] = block;
  update(stats_.allocation, small, 1);
  update(stats_.allocated_bytes, small, static_cast<int64_t>(block->size));
  update(stats_.active, small, 1);
  update(stats_.active_bytes, small, static_cast<int64_t>(block->size));
  update(stats_.requested_bytes, small, static_cast<int64_t>(nbytes));
  return true;
}

void CachingModel::free(const void* key) {
  const auto found = allocated_.find(key);
  if (found == allocated_.end()) return;
  Block* block = found->second;
  allocated_.erase(found);
  update(stats_.allocation, block->small, -1);
  update(stats_.allocated_bytes, block->small, -static_cast<int64_t>(block->size));
  update(stats_.active, block->small, -1);
  update(stats_.active_bytes, block->small, -static_cast<int64_t>(block->size));
  update(stats_.requested_bytes, block->small, -static_cast<int64_t>(block->requested));
  block->allocated = false;
  block->requested = 0;
  block->key = nullptr;
  // Merge with free neighbours: the earlier block absorbs the later one.
  auto absorb = [](Block* earlier, Block* later) {
    earlier->size += later->size;
    earlier->next = later->next;
    if (later->next) later->next->prev = earlier;
    delete later;
  };
  if (Block* next = block->next; next != nullptr && !next->allocated) {
    remove_free(next);
    absorb(block, next);
  }
  if (Block* prev = block->prev; prev != nullptr && !prev->allocated) {
    remove_free(prev);
    absorb(prev, block);
    block = prev;
  }
  insert_free(block);
}

uintptr_t CachingModel::address_of(const void* key) const {
  const auto found = allocated_.find(key);
  return found == allocated_.end() ? 0 : found->second->address;
}

std::vector<CachingModel::SegmentInfo> CachingModel::segments() const {
  std::vector<SegmentInfo> out;
  out.reserve(segment_heads_.size());
  for (const Block* head : segment_heads_) {
    SegmentInfo segment{head->address, 0, head->small, {}};
    for (const Block* b = head; b != nullptr; b = b->next) {
      segment.size += b->size;
      segment.blocks.push_back({b->address, b->size, b->requested, b->allocated});
    }
    out.push_back(std::move(segment));
  }
  return out;
}

} // namespace torchdevice
