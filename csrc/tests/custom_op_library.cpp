// A custom-op library as third-party extensions write them (TORCH_LIBRARY with a CPU and a CUDA
// kernel), for tests/ops/test_extensions.py: loaded after torchdevice activates, its CUDA
// kernels must never run on the emulated device. Also an importable Python extension module,
// so both ways libraries are loaded (torch.ops.load_library, import) are tested.
#include <ATen/ATen.h>
#include <Python.h>
#include <torch/library.h>

namespace {

at::Tensor scale_cpu(const at::Tensor& x, double factor) { return x * factor; }

[[noreturn]] at::Tensor cuda_kernel_ran(const at::Tensor&, double) {
  TORCH_CHECK(false, "torchdevice_test: the CUDA kernel ran on the emulated device");
}

[[noreturn]] at::Tensor cuda_only_kernel_ran(const at::Tensor&) {
  TORCH_CHECK(false, "torchdevice_test: the CUDA kernel ran on the emulated device");
}

} // namespace

TORCH_LIBRARY(torchdevice_test, m) {
  m.def("scale(Tensor x, float factor) -> Tensor");
  m.def("cuda_only(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchdevice_test, CPU, m) { m.impl("scale", &scale_cpu); }

TORCH_LIBRARY_IMPL(torchdevice_test, CUDA, m) {
  m.impl("scale", &cuda_kernel_ran);
  m.impl("cuda_only", &cuda_only_kernel_ran);
}

PyMODINIT_FUNC PyInit_torchdevice_test_ops() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "torchdevice_test_ops", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
