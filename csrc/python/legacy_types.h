// Legacy typed constructors (torch.cuda.FloatTensor(4)) on a torch built without CUDA.
#pragma once

#include <torch/csrc/utils/pybind.h>

namespace torchdevice::python {

// Makes `tensor_type` (one of torch.cuda's *Tensor types) construct tensors on the emulated
// device; `dtype` is its torch.dtype.
void install_legacy_constructor(py::handle tensor_type, py::handle dtype);
// Puts back torch's own constructors.
void restore_legacy_constructors();

} // namespace torchdevice::python
