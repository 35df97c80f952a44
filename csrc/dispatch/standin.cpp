#include "dispatch/standin.h"

#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/hot_path.h"
#include "runtime/internals.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>
#include <c10/core/TensorImpl.h>

#include <array>
#include <memory>
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
  check_not_forked();
  int32_t owned_index = -1;
  if (!borrowed) {
    owned_index = static_cast<int32_t>(owned_.size());
    owned_.push_back(std::move(owned));
  }
  const at::Tensor& t = borrowed ? *borrowed : owned_.back();
  c10::StorageImpl* original = t.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl();
  c10::Storage storage = shared_storage(original);
  if (!storage) {
    storage = standin_storage(original);
    storages_.push_back({original, storage.unsafeGetStorageImpl()});
    owned_storages_.push_back(storage);
  }
  fresh_.push_back(build(t, std::move(storage)));
  tensors_.push_back({nullptr, static_cast<int32_t>(fresh_.size() - 1), owned_index, borrowed});
  return fresh_.back();
}

// The stand-in storage this call already uses for `original`, or none: stand-ins of tensors
// that share a storage must share one, so the kernel's overlap and aliasing checks see what
// CUDA would.
c10::Storage StandIns::shared_storage(c10::StorageImpl* original) const {
  for (const auto& e : storages_) {
    if (e.original == original) return c10::Storage(c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(e.standin));
  }
  return c10::Storage();
}

namespace {

// Stand-ins reused across fast-path calls, per thread: building one (a TensorImpl and a
// StorageImpl with their metadata) is most of what a small emulated op costs over its CPU
// kernel. An entry is used again only when nothing else holds it and it still describes its
// original exactly (storage, data, bytes, dtype, sizes, strides, offset); keys and version
// counter are refreshed on every use. It keeps no memory alive: its storage does not own the
// bytes, and it knows the original storage through a weak reference, which also keeps that
// address from being reused by another storage while the entry exists.
//
// Kept small: at this size an emulated op's cost is mostly the cache lines it touches beyond
// the native op's, so lookups scan one line of keys, and validation reads the stand-in (which
// the kernel reads next anyway) rather than a copy of its metadata.
} // namespace

struct ReusedStandIn {
  const c10::StorageImpl* original_storage = nullptr;  // kept from reuse by `storage_ref`
  c10::StorageImpl* standin_storage = nullptr;         // the stand-in's storage (it holds it)
  c10::DispatchKeySet original_keys;                   // what the stand-in's keys were derived from
  bool busy = false;                                   // handed to a call that has not finished
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> storage_ref;
  at::Tensor standin;
};

struct ReusedStandIns {
  static constexpr size_t kSlots = 8;
  std::array<const c10::TensorImpl*, kSlots> originals{};  // lookup keys
  std::array<ReusedStandIn, kSlots> entries;
  size_t next = 0;
};

namespace {

// This thread's slots, reached through a plain pointer in initial-exec TLS: a fixed offset from
// the thread pointer instead of a __tls_get_addr call and an initialisation check, on every op.
// Eight bytes of the static TLS space glibc reserves for libraries loaded later.
__attribute__((tls_model("initial-exec"))) thread_local ReusedStandIns* t_reused = nullptr;

ReusedStandIns* this_threads_slots() {
  if (C10_LIKELY(t_reused != nullptr)) return t_reused;
  // Owns the slots and frees them when the thread exits (registered on first use only).
  struct Owner {
    std::unique_ptr<ReusedStandIns> slots = std::make_unique<ReusedStandIns>();
    ~Owner() {
      t_reused = nullptr;
      slots.reset();
    }
  };
  static thread_local Owner owner;
  t_reused = owner.slots.get();  // null once the thread is exiting: nothing is reused then
  return t_reused;
}

bool still_describes(const ReusedStandIn& e, const c10::TensorImpl* impl, const c10::StorageImpl* original) {
  if (e.original_storage != original || e.busy || e.standin.use_count() != 1) return false;
  const c10::StorageImpl* storage = e.standin_storage;
  if (storage->data() != original->data() || storage->nbytes() != original->nbytes() ||
      storage->resizable() != original->resizable()) {
    return false;
  }
  const c10::TensorImpl* s = e.standin.unsafeGetTensorImpl();
  if (s->dtype() != impl->dtype() || s->storage_offset() != impl->storage_offset()) return false;
  const c10::IntArrayRef sizes = impl->sizes(), standin_sizes = s->sizes();
  const size_t dim = sizes.size();
  if (standin_sizes.size() != dim) return false;
  const c10::IntArrayRef strides = impl->strides(), standin_strides = s->strides();
  for (size_t d = 0; d < dim; ++d) {
    if (standin_sizes[d] != sizes[d] || standin_strides[d] != strides[d]) return false;
  }
  return true;
}

// The next slot to replace, skipping those a call on this thread still uses.
size_t free_slot(ReusedStandIns& reused) {
  for (size_t tried = 0; tried < ReusedStandIns::kSlots; ++tried) {
    const size_t i = reused.next;
    reused.next = (reused.next + 1) % ReusedStandIns::kSlots;
    const ReusedStandIn& e = reused.entries[i];
    if (!e.busy && (!e.standin.defined() || e.standin.use_count() == 1)) return i;
  }
  return ReusedStandIns::kSlots;
}

} // namespace

TORCHDEVICE_HOT const at::Tensor& StandIns::standin_of(const TensorEntry& e) const {
  return e.slot ? e.slot->standin : fresh_[e.fresh];
}

TORCHDEVICE_HOT StandIns::~StandIns() {
  for (const auto& e : tensors_) {
    if (e.slot) e.slot->busy = false;
  }
}

// make_reused() without a valid stand-in for `t`: builds one into `slot` (`t`'s stale slot, or
// null) or another free slot. Kept out of line so the reuse path stays short.
C10_NOINLINE ReusedStandIn* StandIns::refill_slot(const at::Tensor& t, ReusedStandIn* slot, size_t index) {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  c10::StorageImpl* original = impl->unsafe_storage().unsafeGetStorageImpl();
  // A slot no one holds: not a kernel that kept its stand-in, not an enclosing call.
  if (!slot || slot->busy || slot->standin.use_count() > 1) index = free_slot(*reused_);
  if (index == ReusedStandIns::kSlots) return nullptr;
  slot = &reused_->entries[index];
  c10::Storage storage = shared_storage(original);
  if (!storage) {
    // Not owning: the caller holds the original for the call, and the entry must not keep
    // its memory alive afterwards.
    storage = c10::Storage(c10::make_intrusive<c10::StorageImpl>(
        c10::StorageImpl::use_byte_size_t(), original->nbytes(),
        c10::DataPtr(const_cast<void*>(original->data_ptr().get()), c10::Device(c10::DeviceType::CPU)),
        c10::GetCPUAllocator(), original->resizable()));
    // The slot's stand-in keeps it alive.
    storages_.push_back({original, storage.unsafeGetStorageImpl()});
  }
  slot->standin_storage = storage.unsafeGetStorageImpl();
  slot->standin = build(t, std::move(storage));
  reused_->originals[index] = impl;
  slot->original_storage = original;
  slot->original_keys = impl->key_set();
  slot->storage_ref.emplace(impl->storage().getWeakStorageImpl());
  return slot;
}

TORCHDEVICE_HOT StandInRef StandIns::make_reused(const at::Tensor& t) {
  check_not_forked();
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  // unsafe_storage(): no virtual call; tensors without a storage (sparse) take make().
  c10::StorageImpl* original = impl->unsafe_storage().unsafeGetStorageImpl();
  if (!runner_->is_cpu() || original == nullptr) return StandInRef::own(make(t));
  for (const auto& e : tensors_) {  // x + x: one stand-in for both, as the kernel gets natively
    if (e.borrowed == &t || original_of(e).unsafeGetTensorImpl() == impl) {
      return e.slot ? StandInRef::borrow(e.slot->standin) : StandInRef::own(fresh_[e.fresh]);
    }
  }

  if (!reused_ && !(reused_ = this_threads_slots())) return StandInRef::own(make(t));
  size_t index = ReusedStandIns::kSlots;
  for (size_t i = 0; i < ReusedStandIns::kSlots; ++i) {
    if (reused_->originals[i] == impl) {
      index = i;
      break;
    }
  }
  ReusedStandIn* slot = index < ReusedStandIns::kSlots ? &reused_->entries[index] : nullptr;
  if (slot && still_describes(*slot, impl, original)) {
    c10::TensorImpl* s = slot->standin.unsafeGetTensorImpl();
    if (C10_UNLIKELY(impl->key_set() != slot->original_keys)) {  // a conj/neg bit or inference mode changed
      internals::copy_keys_to_backend(s, impl, c10::DeviceType::CPU);
      slot->original_keys = impl->key_set();
    }
    if (!impl->is_inference() && C10_UNLIKELY(!internals::same_version_counter(s, impl))) {
      s->set_version_counter(impl->version_counter());
    }
    // Another stand-in of this call may already stand for the same storage.
    bool seen = false;
    for (const auto& e : storages_) {
      if (e.original != original) continue;
      if (e.standin != slot->standin_storage) {
        s->set_storage_keep_dtype(c10::Storage(c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(e.standin)));
        slot->standin_storage = e.standin;
      }
      seen = true;
      break;
    }
    if (!seen) storages_.push_back({original, slot->standin_storage});
  } else {
    slot = refill_slot(t, slot, index);
    if (!slot) return StandInRef::own(make(t));  // every slot is in use
  }
  slot->busy = true;
  tensors_.push_back({slot, -1, -1, &t});
  return StandInRef::borrow(slot->standin);
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

TORCHDEVICE_HOT const at::Tensor* StandIns::original_of(const c10::TensorImpl* impl) const {
  for (const auto& e : tensors_) {
    if (standin_of(e).unsafeGetTensorImpl() == impl) return &original_of(e);
  }
  return nullptr;
}

TORCHDEVICE_HOT c10::StorageImpl* StandIns::original_storage_of(const c10::StorageImpl* s) const {
  for (const auto& e : storages_) {
    if (e.standin == s) return e.original;
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

TORCHDEVICE_HOT void adopt_output(const at::Tensor& out, c10::Device device) {
  c10::TensorImpl* impl = out.unsafeGetTensorImpl();
  // unsafe_storage(): no virtual call; storage-less outputs (sparse) have none.
  if (c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl()) {
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
