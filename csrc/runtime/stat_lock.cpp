#include "runtime/stat_lock.h"

#include <chrono>
#include <thread>

#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace torchdevice {
namespace {

#if defined(__linux__)
long membarrier(int cmd) {
  return syscall(__NR_membarrier, cmd, 0, 0);
}
#endif

// Whether this process may use the asymmetric fence (registers for it on first use).
bool asymmetric_fence_available() {
#if defined(__linux__)
  static const bool available = [] {
    const long commands = membarrier(MEMBARRIER_CMD_QUERY);
    return commands > 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
           membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
  }();
  return available;
#else
  return false;
#endif
}

// A full memory barrier executed by every running thread of the process. False if the kernel
// refused it (the bias cannot then be revoked safely, and the caller waits instead).
bool asymmetric_fence() {
#if defined(__linux__)
  return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
#else
  return false;
#endif
}

} // namespace

void StatLock::lock_slow(const void* me) {
  while (flag_.test_and_set(std::memory_order_acquire)) std::this_thread::yield();
  switch (mode_.load(std::memory_order_relaxed)) {
    case kUnowned:
      // The first thread here owns the lock from its next call on (this one holds the flag).
      if (asymmetric_fence_available()) {
        owner_.store(me, std::memory_order_relaxed);
        mode_.store(kBiased, std::memory_order_release);
      } else {
        mode_.store(kShared, std::memory_order_relaxed);
      }
      break;
    case kBiased:
      if (owner_.load(std::memory_order_relaxed) == me) break;  // the owner, after a failed fast path
      mode_.store(kShared, std::memory_order_relaxed);
      // The process registered when the bias was taken, and the kernel does not refuse a
      // registered process; should it ever, give the owner's store buffer ample time to drain.
      if (!asymmetric_fence()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      while (owner_inside_.load(std::memory_order_acquire)) std::this_thread::yield();
      break;
    case kShared:
      break;
  }
}

void StatLock::reset_after_fork() {
  mode_.store(kShared, std::memory_order_relaxed);
  owner_.store(nullptr, std::memory_order_relaxed);
  owner_inside_.store(false, std::memory_order_relaxed);
  flag_.clear(std::memory_order_relaxed);
}

} // namespace torchdevice
