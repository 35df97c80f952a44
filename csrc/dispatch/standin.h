// Stand-ins: runner tensors (CPU tensors on the cpu runner) over the same memory as
// emulated-device tensors.
//
// An emulated op runs the runner's kernel on stand-ins. Views, in-place and out= work because
// the stand-in shares the original's memory; afterwards results are mapped back (view of an
// input -> view of the original storage; fresh output -> relabelled to the emulated device).
#pragma once

#include "runtime/runner.h"

#include <ATen/core/Tensor.h>
#include <c10/util/SmallVector.h>

namespace torchdevice::dispatch {

struct ReusedStandIn;   // one reusable stand-in (standin.cpp)
struct ReusedStandIns;  // this thread's reusable stand-ins (standin.cpp)

// A stand-in as handed to a kernel: a reused one by reference (it lives in its reuse slot for
// the call; no reference-count traffic), anything else by value.
class StandInRef {
 public:
  static StandInRef borrow(const at::Tensor& t) { return StandInRef(&t, at::Tensor()); }
  static StandInRef own(at::Tensor t) { return StandInRef(nullptr, std::move(t)); }
  const at::Tensor& get() const { return borrowed_ ? *borrowed_ : owned_; }
  operator const at::Tensor&() const { return get(); }

 private:
  StandInRef(const at::Tensor* borrowed, at::Tensor owned) : borrowed_(borrowed), owned_(std::move(owned)) {}
  const at::Tensor* borrowed_;
  at::Tensor owned_;
};

class StandIns {
 public:
  explicit StandIns(const Runner& runner = cpu_runner()) : runner_(&runner) {}
  ~StandIns();
  StandIns(const StandIns&) = delete;
  StandIns& operator=(const StandIns&) = delete;

  // A runner tensor sharing `t`'s memory. Tensors that share a storage get stand-ins that share
  // one CPU storage, so the CPU kernel's overlap and aliasing checks see what CUDA would.
  // `t` must outlive this object (it is not copied: copying a tensor Python owns takes the GIL).
  at::Tensor make(const at::Tensor& t);
  // make() for a tensor the caller cannot keep alive (a boxed stack slot about to be replaced).
  at::Tensor make_owned(at::Tensor t);
  // make() that may reuse this thread's stand-in of `t` from an earlier call (cpu runner only).
  // For kernels that keep no reference to their arguments after returning (the fast paths):
  // a reused stand-in does not keep the original's memory alive by itself.
  // The reference stays valid until this object is destroyed.
  StandInRef make_reused(const at::Tensor& t);

  // The original tensor whose stand-in is `impl`, or nullptr.
  const at::Tensor* original_of(const c10::TensorImpl* impl) const;

  // The original storage behind a stand-in storage, or nullptr when `s` is not a stand-in's.
  c10::StorageImpl* original_storage_of(const c10::StorageImpl* s) const;

  // After the CPU kernel mutated stand-in `standin` of `original` (resize_, out= resize,
  // set_): give the original the same shape and, if the buffer was reallocated, the buffer.
  void sync_back(const at::Tensor& standin, const at::Tensor& original) const;

 private:
  // Entries are plain data, so recording one costs a few stores; what they point at is kept
  // alive by the owning vectors below, by the caller (borrowed tensors) or by a reuse slot.
  struct StorageEntry {
    c10::StorageImpl* original;
    c10::StorageImpl* standin;
  };
  // The stand-in is held (by fresh_ or by its reuse slot) for the whole call: one freed early
  // must not have its address reused by an output and be mistaken for it.
  struct TensorEntry {
    ReusedStandIn* slot;         // the reuse slot holding the stand-in, or null
    int32_t fresh;               // else the stand-in is fresh_[fresh]
    int32_t owned;               // make_owned()'s original is owned_[owned], or -1
    const at::Tensor* borrowed;  // the caller's tensor (make, make_reused), or null
  };
  const at::Tensor& standin_of(const TensorEntry& e) const;
  const at::Tensor& original_of(const TensorEntry& e) const { return e.borrowed ? *e.borrowed : owned_[e.owned]; }
  at::Tensor add(const at::Tensor* borrowed, at::Tensor owned);
  at::Tensor build(const at::Tensor& t, c10::Storage storage) const;
  ReusedStandIn* refill_slot(const at::Tensor& t, ReusedStandIn* slot, size_t index);
  c10::Storage shared_storage(c10::StorageImpl* original) const;
  c10::Storage standin_storage(c10::StorageImpl* original) const;
  const Runner* runner_;
  ReusedStandIns* reused_ = nullptr;
  c10::SmallVector<StorageEntry, 4> storages_;
  c10::SmallVector<TensorEntry, 4> tensors_;
  c10::SmallVector<c10::Storage, 1> owned_storages_;  // fresh stand-ins' storages
  c10::SmallVector<at::Tensor, 1> fresh_;             // fresh stand-ins
  c10::SmallVector<at::Tensor, 1> owned_;             // make_owned()'s originals
};

// Gives a tensor a runner kernel produced to an emulated device: the TensorImpl is relabelled in
// place and its memory is counted by the device's allocator.
void adopt_output(const at::Tensor& out, c10::Device device);

// Points `out` (a runner view a kernel made of a stand-in) at the original storage and device.
void rebase_view(const at::Tensor& out, c10::StorageImpl* original_storage);

} // namespace torchdevice::dispatch
