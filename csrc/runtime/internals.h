// The only place torchdevice touches PyTorch internals beyond their public API.
//
// Emulation needs to give an existing object a different device: a tensor the CPU kernel
// produced becomes a cuda tensor, and torch's
// already-created CUDA hooks object becomes ours. PyTorch keeps these fields protected
// (they never change in PyTorch itself), so they are reached here, and nowhere else.
// tests/core/test_internals.py and csrc/tests check each one after a torch upgrade.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/TensorImpl.h>

#include <cstring>

namespace at {
struct AcceleratorHooksInterface;
}

namespace torchdevice::internals {

// Moves `impl` from the CPU backend to `device`'s backend: device, backend key bit and
// autocast keys change; autograd/conj/neg/zero-tensor keys stay. The storage is untouched.
void relabel_tensor(c10::TensorImpl* impl, c10::Device device);

// Gives `standin` (a runner tensor over `original`'s memory) the dispatch keys `original` has,
// moved to the runner's backend: conj/neg/ZeroTensor bits and, in inference mode, the autograd
// keys (a stand-in of a normal tensor stays a normal tensor, so views of it are normal too).
void copy_keys_to_backend(c10::TensorImpl* standin, const c10::TensorImpl* original, c10::DeviceType runner);

// Whether two tensors share one version counter. VariableVersion compares by nothing public; its
// only member is the counter's pointer. Spares the reuse path a reference-count round trip.
inline bool same_version_counter(const c10::TensorImpl* a, const c10::TensorImpl* b) {
  // VariableVersion holds one intrusive_ptr to its counter; equal bytes mean one counter.
  static_assert(sizeof(c10::VariableVersion) == sizeof(void*), "VariableVersion changed: revisit");
  return std::memcmp(&a->version_counter(), &b->version_counter(), sizeof(c10::VariableVersion)) == 0;
}

// Turns a live hooks object (CUDA or MPS) into `replacement`'s dynamic type by copying its
// vtable pointer. Used only when torch created its hooks before torchdevice could register its
// own (i.e. `import torch` ran first). The replacement's type must be a data-free subclass of the
// same hooks interface as the live object.
void adopt_hooks_vtable(const at::AcceleratorHooksInterface& live, const at::AcceleratorHooksInterface& replacement);

} // namespace torchdevice::internals
