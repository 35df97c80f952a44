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

namespace c10 {
struct TensorImpl;
} // namespace c10
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

// Turns a live hooks object (CUDA or MPS) into `replacement`'s dynamic type by copying its
// vtable pointer. Used only when torch created its hooks before torchdevice could register its
// own (i.e. `import torch` ran first). The replacement's type must be a data-free subclass of the
// same hooks interface as the live object.
void adopt_hooks_vtable(const at::AcceleratorHooksInterface& live, const at::AcceleratorHooksInterface& replacement);

} // namespace torchdevice::internals
