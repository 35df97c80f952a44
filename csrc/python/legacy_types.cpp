// torch creates one Python type per (backend, dtype) on every build, but its constructor
// (Tensor_new, torch/csrc/tensor/python_tensor.cpp) refuses CUDA types unless torch was compiled
// with CUDA. What follows that check, torch::utils::legacy_tensor_ctor, is generic over the
// dispatch key and works for the emulated device. The types are static (not heap) types, so
// Python cannot override their __new__: their tp_new slot is replaced here, and put back by
// restore. This is the one place torchdevice writes a CPython type slot.
#include "python/legacy_types.h"

#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/tensor_new.h>

#include <unordered_map>

namespace torchdevice::python {
namespace {

struct LegacyType {
  c10::ScalarType scalar_type;
  newfunc original;
};

std::unordered_map<PyTypeObject*, LegacyType>& installed() {
  static std::unordered_map<PyTypeObject*, LegacyType> types;
  return types;
}

PyObject* emulated_legacy_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  HANDLE_TH_ERRORS
  const auto it = installed().find(type);
  TORCH_INTERNAL_ASSERT(it != installed().end(), "torchdevice: no legacy constructor for ", type->tp_name);
  // The warning Tensor_new gives for these types on a CUDA build.
  TORCH_WARN_ONCE(
      "The torch.cuda.*DtypeTensor constructors are no longer recommended. It's best to use methods such as "
      "torch.tensor(data, dtype=*, device='cuda') to create tensors.");
  return THPVariable_Wrap(torch::utils::legacy_tensor_ctor(c10::DispatchKey::CUDA, it->second.scalar_type, args, kwargs));
  END_HANDLE_TH_ERRORS
}

} // namespace

void install_legacy_constructor(py::handle tensor_type, py::handle dtype) {
  TORCH_CHECK(PyType_Check(tensor_type.ptr()), "torchdevice: expected a tensor type");
  TORCH_CHECK(THPDtype_Check(dtype.ptr()), "torchdevice: expected a torch.dtype");
  auto* type = reinterpret_cast<PyTypeObject*>(tensor_type.ptr());
  if (installed().count(type)) return;
  installed().emplace(type, LegacyType{reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type, type->tp_new});
  type->tp_new = emulated_legacy_new;
}

void restore_legacy_constructors() {
  for (auto& [type, legacy] : installed()) type->tp_new = legacy.original;
  installed().clear();
}

} // namespace torchdevice::python
