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

class StandIns {
 public:
  explicit StandIns(const Runner& runner = cpu_runner()) : runner_(&runner) {}

  // A runner tensor sharing `t`'s memory. Tensors that share a storage get stand-ins that share
  // one CPU storage, so the CPU kernel's overlap and aliasing checks see what CUDA would.
  // `t` must outlive this object (it is not copied: copying a tensor Python owns takes the GIL).
  at::Tensor make(const at::Tensor& t);
  // make() for a tensor the caller cannot keep alive (a boxed stack slot about to be replaced).
  at::Tensor make_owned(at::Tensor t);
  // make() that may reuse this thread's stand-in of `t` from an earlier call (cpu runner only).
  // For kernels that keep no reference to their arguments after returning (the fast paths):
  // a reused stand-in does not keep the original's memory alive by itself.
  at::Tensor make_reused(const at::Tensor& t);

  // The original tensor whose stand-in is `impl`, or nullptr.
  const at::Tensor* original_of(const c10::TensorImpl* impl) const;

  // The original storage behind a stand-in storage, or nullptr when `s` is not a stand-in's.
  c10::StorageImpl* original_storage_of(const c10::StorageImpl* s) const;

  // After the CPU kernel mutated stand-in `standin` of `original` (resize_, out= resize,
  // set_): give the original the same shape and, if the buffer was reallocated, the buffer.
  void sync_back(const at::Tensor& standin, const at::Tensor& original) const;

 private:
  struct StorageEntry {
    c10::StorageImpl* original;
    c10::Storage standin;
  };
  // A strong reference to the stand-in: one freed during the call (its argument list popped)
  // must not have its address reused by an output and be mistaken for it.
  struct TensorEntry {
    at::Tensor standin;
    const at::Tensor* borrowed;  // the caller's tensor (make), or null
    at::Tensor owned;            // make_owned()'s tensor
    const at::Tensor& original() const { return borrowed ? *borrowed : owned; }
  };
  at::Tensor add(const at::Tensor* borrowed, at::Tensor owned);
  at::Tensor build(const at::Tensor& t, c10::Storage storage) const;
  c10::Storage shared_storage(c10::StorageImpl* original, const c10::Storage& candidate);
  c10::Storage standin_storage(c10::StorageImpl* original) const;
  const Runner* runner_;
  c10::SmallVector<StorageEntry, 4> storages_;
  c10::SmallVector<TensorEntry, 4> tensors_;
};

// Gives a tensor a runner kernel produced to an emulated device: the TensorImpl is relabelled in
// place and its memory is counted by the device's allocator.
void adopt_output(const at::Tensor& out, c10::Device device);

// Points `out` (a runner view a kernel made of a stand-in) at the original storage and device.
void rebase_view(const at::Tensor& out, c10::StorageImpl* original_storage);

} // namespace torchdevice::dispatch
