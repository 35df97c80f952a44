// The MPS runner: emulated cuda tensors live in Apple-GPU memory and run MPS kernels.
// Compiled only on macOS (CMakeLists.txt); this file is its whole platform-specific part,
// the rest is the device-generic runner (runtime/runner.h).
#include "runtime/runner.h"

#include <ATen/detail/MPSHooksInterface.h>
#include <c10/util/Exception.h>

namespace torchdevice {
namespace {

class MpsRunner final : public Runner {
 public:
  MpsRunner() : Runner(c10::DeviceType::MPS) {}

  // Apple exposes one GPU: every emulated cuda ordinal is backed by it.
  c10::Device device_behind(c10::DeviceIndex /*emulated_index*/) const override {
    return c10::Device(c10::DeviceType::MPS, 0);
  }

  // Float64 policy: MPS has no float64, and silently computing in float32 would break the
  // promise that results match the CPU's. Float64 cuda tensors are refused with MPS's own
  // TypeError (runtime/device.cpp); such programs run with TORCH_DEVICE_BACKEND=cpu.
  bool supports_dtype(c10::ScalarType dtype) const override {
    return dtype != c10::ScalarType::Double && dtype != c10::ScalarType::ComplexDouble;
  }
};

} // namespace

Runner* make_mps_runner() {
  TORCH_CHECK(at::detail::getMPSHooks().hasMPS(),
              "torchdevice: the mps runner needs Apple's GPU (macOS on Apple Silicon) and this torch does not see "
              "one; valid runners here: cpu");
  return new MpsRunner();
}

} // namespace torchdevice
