// Recognising Tensor?[] arguments in a boxed call, whoever built the list.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/jit_type.h>

namespace torchdevice::dispatch {

// IValue::isOptionalTensorList() compares the list's element type by pointer with the one
// c10::getTypePtr<std::optional<Tensor>>() returns; a list TorchScript builds (prim::ListConstruct
// for `t[:, idx]` -> aten::index(Tensor, Tensor?[])) carries an equal but distinct OptionalType
// and fails that test. Compared by structure instead, so that such lists are lowered too.
inline bool is_optional_tensor_list(const c10::IValue& v) {
  if (v.isOptionalTensorList()) return true;  // the common case, and the cheap test
  if (!v.isList()) return false;
  const c10::TypePtr element = v.toList().elementType();
  return element->kind() == c10::TypeKind::OptionalType &&
         element->castRaw<c10::OptionalType>()->getElementType()->kind() == c10::TypeKind::TensorType;
}

// The elements of such a list (each None or a Tensor) as the typed list kernels expect.
inline c10::List<std::optional<at::Tensor>> optional_tensors_of(const c10::IValue& v) {
  c10::List<std::optional<at::Tensor>> list;
  list.reserve(v.toListRef().size());
  for (const c10::IValue& e : v.toListRef()) {
    list.push_back(e.isNone() ? std::nullopt : std::optional<at::Tensor>(e.toTensor()));
  }
  return list;
}

} // namespace torchdevice::dispatch
