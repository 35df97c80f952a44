// The lock around an emulated device's memory counters, which every emulated tensor's
// allocation and free takes.
//
// Uncontended locking is one atomic read-modify-write per call, and on the machines measured it
// was about a tenth of what a small emulated op costs over its CPU kernel (two per op: the
// output's allocation and its free). Nearly always one thread (the one running the model) is
// the only one ever to touch a device's counters, so the lock is biased: the first thread to
// take it becomes its owner and from then on enters and leaves with plain stores. The first
// time any other thread takes it, that thread revokes the bias with an asymmetric fence (Linux
// membarrier: every thread of the process executes a full barrier), waits for the owner to
// leave, and the lock is an ordinary spin flag for every thread from then on.
//
// Without membarrier (other systems, or a kernel or sandbox that refuses it) the lock is never
// biased.
#pragma once

#include <atomic>
#include <cstdint>

namespace torchdevice {

class StatLock {
 public:
  void lock() {
    const void* me = this_thread();
    if (mode_.load(std::memory_order_relaxed) == kBiased && owner_.load(std::memory_order_relaxed) == me) {
      owner_inside_.store(true, std::memory_order_relaxed);
      // Dekker's store-then-load, with the hardware barrier supplied by the revoking thread's
      // membarrier: either the revoker sees owner_inside_ or this sees the revocation.
      std::atomic_signal_fence(std::memory_order_seq_cst);
      if (mode_.load(std::memory_order_relaxed) == kBiased) return;
      owner_inside_.store(false, std::memory_order_release);
    }
    lock_slow(me);
  }

  void unlock() {
    if (owner_inside_.load(std::memory_order_relaxed) && owner_.load(std::memory_order_relaxed) == this_thread()) {
      std::atomic_signal_fence(std::memory_order_seq_cst);
      owner_inside_.store(false, std::memory_order_release);  // the revoker reads the counters after this
      return;
    }
    flag_.clear(std::memory_order_release);
  }

  // For a forked child: the parent's other threads do not exist there, so whatever they held
  // is released and the lock is an ordinary one from now on.
  void reset_after_fork();

 private:
  enum Mode : uint8_t { kUnowned, kBiased, kShared };

  // A per-thread address: the identity of the calling thread (initial-exec TLS, no call).
  static const void* this_thread() {
    static thread_local __attribute__((tls_model("initial-exec"))) char token;
    return &token;
  }
  void lock_slow(const void* me);

  std::atomic<Mode> mode_{kUnowned};
  std::atomic<const void*> owner_{nullptr};
  std::atomic<bool> owner_inside_{false};  // written by the owner only
  std::atomic_flag flag_ = ATOMIC_FLAG_INIT;
};

} // namespace torchdevice
