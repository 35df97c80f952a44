#include "runtime/internals.h"

#include "runtime/hot_path.h"

#include <ATen/detail/AcceleratorHooksInterface.h>
#include <c10/core/TensorImpl.h>

#include <array>
#include <cstring>

namespace torchdevice::internals {
namespace {

// A derived class may name a protected member of its base; the resulting pointer-to-member
// then works on any base object. This is standard C++ and needs no layout assumptions.
struct TensorImplAccess : c10::TensorImpl {
  static constexpr auto key_set = &TensorImplAccess::key_set_;
  static constexpr auto device_opt = &TensorImplAccess::device_opt_;
};

c10::BackendComponent backend_of(c10::DeviceType type) {
  switch (type) {
    case c10::DeviceType::CUDA: return c10::BackendComponent::CUDABit;
    case c10::DeviceType::MPS: return c10::BackendComponent::MPSBit;
    default: return c10::BackendComponent::CPUBit;
  }
}

// The autocast keys of each backend. A table rather than getAutocastRelatedKeySetFromBackend's
// switch: relabelling runs for every output of an emulated op, and that switch's indirect jump,
// taken for alternating backends, was mispredicted about every time.
struct AutocastKeys {
  std::array<c10::DispatchKeySet, static_cast<size_t>(c10::BackendComponent::EndOfBackendKeys) + 1> of;
  AutocastKeys() {
    for (size_t b = 0; b < of.size(); ++b) {
      of[b] = c10::getAutocastRelatedKeySetFromBackend(static_cast<c10::BackendComponent>(b));
    }
  }
};
// Built when the library loads (nothing reads it before activation), so reading it costs no
// initialisation check.
const AutocastKeys kAutocastKeys;

// Moves a key set from its backend to `to`'s: backend bit and per-device autocast keys.
// Backend bits are shared by all functionality keys, so AutogradCPU becomes AutogradCUDA too;
// autocast keys are per device type and are swapped explicitly. (`-` removes functionality
// keys only, hence remove_backend.)
c10::DispatchKeySet move_backend(c10::DispatchKeySet keys, c10::BackendComponent to) {
  const auto from = keys.highestBackendKey();
  if (from == to) return keys;
  const auto& autocast = kAutocastKeys.of;
  return (keys.remove_backend(from) - autocast[static_cast<size_t>(from)]) | c10::DispatchKeySet(to) |
         autocast[static_cast<size_t>(to)];
}

} // namespace

TORCHDEVICE_HOT void relabel_tensor(c10::TensorImpl* impl, c10::Device device) {
  auto& keys = impl->*TensorImplAccess::key_set;
  keys = move_backend(keys, backend_of(device.type()));
  impl->*TensorImplAccess::device_opt = device;
}

void copy_keys_to_backend(c10::TensorImpl* standin, const c10::TensorImpl* original, c10::DeviceType runner) {
  standin->*TensorImplAccess::key_set = move_backend(original->*TensorImplAccess::key_set, backend_of(runner));
}


void adopt_hooks_vtable(const at::AcceleratorHooksInterface& live, const at::AcceleratorHooksInterface& replacement) {
  // Itanium C++ ABI: the vtable pointer is the object's first word. torch heap-allocates its
  // hooks object and never frees it, so rewriting that word is safe once no other thread
  // is inside a hooks call (we do it while activating, under the GIL).
  void* vptr = nullptr;
  std::memcpy(&vptr, static_cast<const void*>(&replacement), sizeof(void*));
  std::memcpy(const_cast<void*>(static_cast<const void*>(&live)), &vptr, sizeof(void*));
}

} // namespace torchdevice::internals
