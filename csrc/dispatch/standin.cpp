#include "dispatch/standin.h"

#include "runtime/allocator.h"
#include "runtime/internals.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>
#include <c10/core/TensorImpl.h>

#include <array>
#include <optional>

namespace torchdevice::dispatch {
namespace {

// The stand-in storage's DataPtr context is the original StorageImpl, with one reference
// taken for it: no allocation beyond the stand-in itself.
void release_original(void* original) {
  c10::raw::intrusive_ptr::decref(static_cast<c10::StorageImpl*>(original));
}

c10::DataPtr view_of(c10::StorageImpl* original, c10::Device runner_device) {
  // Keeps the original storage alive: a kernel may hand the stand-in to work that outlives the
  // call (asynchronous c10d collectives).
  c10::raw::intrusive_ptr::incref(original);
  return c10::DataPtr(const_cast<void*>(original->data_ptr().get()), original, &release_original, runner_device);
}

} // namespace

c10::Storage StandIns::standin_storage(c10::StorageImpl* original) const {
  // The runner's allocator is what a kernel's resize uses to grow it; sync_back() then moves
  // the new buffer into the original storage.
  c10::Allocator* allocator = runner_->is_cpu() ? c10::GetCPUAllocator() : runner_->allocator();
  const c10::Device device = runner_->device_for(original->device().index());
  return c10::Storage(c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(), original->nbytes(),
                                                            view_of(original, device), allocator,
                                                            original->resizable()));
}

at::Tensor StandIns::make(const at::Tensor& t) {
  return add(&t, at::Tensor());
}

at::Tensor StandIns::make_owned(at::Tensor t) {
  return add(nullptr, std::move(t));
}

at::Tensor StandIns::add(const at::Tensor* borrowed, at::Tensor owned) {
  const at::Tensor& t = borrowed ? *borrowed : owned;
  c10::StorageImpl* original = t.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl();
  c10::Storage storage = shared_storage(original, c10::Storage());
  if (!storage) {
    storage = standin_storage(original);
    storages_.push_back({original, storage});
  }
  at::Tensor result = build(t, std::move(storage));
  tensors_.push_back({result, borrowed, std::move(owned)});
  return result;
}

// The stand-in storage this call already uses for `original` (stand-ins of tensors that share a
// storage must share one, so the kernel's overlap and aliasing checks see what CUDA would); else
// `candidate` is recorded as that storage and returned.
c10::Storage StandIns::shared_storage(c10::StorageImpl* original, const c10::Storage& candidate) {
  for (const auto& e : storages_) {
    if (e.original == original) return e.standin;
  }
  if (candidate) storages_.push_back({original, candidate});
  return candidate;
}

namespace {

// Stand-ins reused across fast-path calls, per thread: building one (a TensorImpl and a
// StorageImpl with their metadata) is most of what a small emulated op costs over its CPU
// kernel. An entry is used again only when nothing else holds it and it still describes its
// original exactly (storage, bytes, dtype, sizes, strides, offset); keys and version counter are
// refreshed on every use. It keeps no memory alive: its storage does not own the bytes, and it
// knows the original storage through a weak reference, which also keeps that address from being
// reused by another storage while the entry exists.
struct ReusedStandIn {
  const c10::TensorImpl* original = nullptr;  // lookup key; everything else is re-checked
  c10::DispatchKeySet original_keys;          // what the stand-in's keys were derived from
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> original_storage;
  at::Tensor standin;
};
struct ReusedStandIns {
  std::array<ReusedStandIn, 8> entries;
  size_t next = 0;
};
thread_local ReusedStandIns t_reused;

bool still_describes(const ReusedStandIn& e, const c10::TensorImpl* impl) {
  const c10::TensorImpl* s = e.standin.unsafeGetTensorImpl();
  const c10::StorageImpl* original = impl->storage().unsafeGetStorageImpl();
  const c10::StorageImpl* storage = s->storage().unsafeGetStorageImpl();
  return e.standin.use_count() == 1 && e.original_storage->_unsafe_get_target() == original &&
         storage->data_ptr().get() == original->data_ptr().get() && storage->nbytes() == original->nbytes() &&
         storage->resizable() == original->resizable() && s->dtype() == impl->dtype() &&
         s->storage_offset() == impl->storage_offset() && s->sizes() == impl->sizes() &&
         s->strides() == impl->strides();
}

} // namespace

at::Tensor StandIns::make_reused(const at::Tensor& t) {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (!runner_->is_cpu() || !impl->has_storage()) return make(t);
  c10::StorageImpl* original = impl->storage().unsafeGetStorageImpl();
  for (const auto& e : tensors_) {  // x + x: one stand-in for both, as the kernel gets natively
    if (e.borrowed == &t || e.original().unsafeGetTensorImpl() == impl) return e.standin;
  }

  ReusedStandIn* slot = nullptr;
  for (auto& e : t_reused.entries) {
    if (e.original == impl) {
      slot = &e;
      break;
    }
  }
  at::Tensor standin;
  if (slot && still_describes(*slot, impl)) {
    standin = slot->standin;
    c10::TensorImpl* s = standin.unsafeGetTensorImpl();
    if (impl->key_set() != slot->original_keys) {  // a conj/neg bit or inference mode changed
      internals::copy_keys_to_backend(s, impl, c10::DeviceType::CPU);
      slot->original_keys = impl->key_set();
    }
    if (!impl->is_inference()) s->set_version_counter(impl->version_counter());
    // Another stand-in of this call may already stand for the same storage.
    bool seen = false;
    for (const auto& e : storages_) {
      if (e.original != original) continue;
      if (e.standin.unsafeGetStorageImpl() != s->storage().unsafeGetStorageImpl()) s->set_storage_keep_dtype(e.standin);
      seen = true;
      break;
    }
    if (!seen) storages_.push_back({original, s->storage()});
  } else {
    if (!slot) {
      slot = &t_reused.entries[t_reused.next];
      t_reused.next = (t_reused.next + 1) % t_reused.entries.size();
    }
    c10::Storage storage = shared_storage(original, c10::Storage());
    if (!storage) {
      // Not owning: the caller holds the original for the call, and the entry must not keep
      // its memory alive afterwards.
      storage = c10::Storage(c10::make_intrusive<c10::StorageImpl>(
          c10::StorageImpl::use_byte_size_t(), original->nbytes(),
          c10::DataPtr(const_cast<void*>(original->data_ptr().get()), c10::Device(c10::DeviceType::CPU)),
          c10::GetCPUAllocator(), original->resizable()));
      shared_storage(original, storage);
    }
    standin = build(t, std::move(storage));
    slot->original = impl;
    slot->original_keys = impl->key_set();
    slot->original_storage.emplace(impl->storage().getWeakStorageImpl());
    slot->standin = standin;
  }
  tensors_.push_back({standin, &t, at::Tensor()});
  return standin;
}

at::Tensor StandIns::build(const at::Tensor& t, c10::Storage storage) const {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  auto standin = c10::make_intrusive<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(runner_->key()), t.dtype());
  standin->set_sizes_and_strides(impl->sizes(), impl->strides(), impl->storage_offset());
  // The original's keys on the runner's backend: lazy conj/neg views stay lazy, ZeroTensors
  // stay ZeroTensors, and a normal tensor's stand-in is no inference tensor in inference mode.
  internals::copy_keys_to_backend(standin.get(), impl, runner_->type());
  if (!impl->is_inference()) {
    // Share the version counter too: views a CPU kernel takes of the stand-in (in inference
    // mode, ADInplaceOrView still tracks them for normal tensors) and in-place writes then
    // count against the original, as they would on a GPU.
    standin->set_version_counter(impl->version_counter());
  }
  return at::Tensor(std::move(standin));
}

const at::Tensor* StandIns::original_of(const c10::TensorImpl* impl) const {
  for (const auto& e : tensors_) {
    if (e.standin.unsafeGetTensorImpl() == impl) return &e.original();
  }
  return nullptr;
}

c10::StorageImpl* StandIns::original_storage_of(const c10::StorageImpl* s) const {
  for (const auto& e : storages_) {
    if (e.standin.unsafeGetStorageImpl() == s) return e.original;
  }
  return nullptr;
}

void StandIns::sync_back(const at::Tensor& standin, const at::Tensor& original) const {
  c10::TensorImpl* src = standin.unsafeGetTensorImpl();
  c10::TensorImpl* dst = original.unsafeGetTensorImpl();
  c10::StorageImpl* src_storage = src->storage().unsafeGetStorageImpl();
  c10::StorageImpl* dst_storage = dst->storage().unsafeGetStorageImpl();

  if (original_storage_of(src_storage) != dst_storage) {
    // The kernel pointed the stand-in at another storage (set_): a stand-in storage maps
    // back to its original; a new runner storage is adopted by the device.
    if (auto* mapped = original_storage_of(src_storage)) {
      dst->set_storage_keep_dtype(c10::Storage(c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(mapped)));
    } else {
      adopt_output(standin, original.device());
      dst->set_storage_keep_dtype(src->storage());
    }
  } else if (src_storage->data_ptr().get() != dst_storage->data_ptr().get() ||
             src_storage->nbytes() != dst_storage->nbytes()) {
    // resize_ grew the buffer: the new bytes came from the runner's allocator.
    auto& alloc = allocator_for(original.device().type());
    const auto nbytes = src_storage->nbytes();
    if (src_storage->data_ptr().get() != dst_storage->data_ptr().get()) {
      dst_storage->set_data_ptr_noswap(
          alloc.adopt(std::move(src_storage->_mutable_data_ptr_no_checks()), nbytes, original.device().index()));
      // The stand-in storage must not free what the original now owns.
      src_storage->set_data_ptr_noswap(c10::DataPtr(dst_storage->data_ptr().get(), src_storage->device()));
    }
    dst_storage->set_nbytes(nbytes);
  }

  if (src->sizes() != dst->sizes() || src->strides() != dst->strides() ||
      src->storage_offset() != dst->storage_offset()) {
    dst->set_sizes_and_strides(src->sizes(), src->strides(), src->storage_offset());
  }
}

void adopt_output(const at::Tensor& out, c10::Device device) {
  c10::TensorImpl* impl = out.unsafeGetTensorImpl();
  if (impl->has_storage()) {
    c10::StorageImpl* storage = impl->storage().unsafeGetStorageImpl();
    c10::DataPtr& data = storage->_mutable_data_ptr_no_checks();
    // Outputs can share one fresh storage (a tensor and a view of it): adopt it once.
    if (data.device().type() != device.type()) {
      auto& alloc = allocator_for(device.type());
      storage->set_data_ptr_noswap(alloc.adopt(std::move(data), storage->nbytes(), device.index()));
      storage->set_allocator(&alloc);
    }
  }
  internals::relabel_tensor(impl, device);
}

void rebase_view(const at::Tensor& out, c10::StorageImpl* original_storage) {
  c10::TensorImpl* impl = out.unsafeGetTensorImpl();
  const c10::Device device = original_storage->device();
  impl->set_storage_keep_dtype(c10::Storage(c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(original_storage)));
  internals::relabel_tensor(impl, device);
}

} // namespace torchdevice::dispatch
