// Which device an emulated op runs on, and the mixed-device error a GPU raises.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

namespace torchdevice::dispatch {

[[noreturn]] inline void throw_device_mismatch(c10::Device a, c10::Device b) {
  // TensorIterator's wording, which is what most CUDA ops raise for mixed devices.
  TORCH_CHECK(false, "Expected all tensors to be on the same device, but found at least two devices, ", a,
              " and ", b, "!");
}

// Arguments that may be non-scalar CPU tensors next to device tensors on a real GPU: any
// argument of a copy or a storage swap, and the indices (not the values) of indexing ops.
inline bool accepts_cpu_tensors(const c10::OperatorHandle& op, const c10::Argument* arg) {
  const std::string_view name = op.operator_name().name;
  for (std::string_view indexing : {"aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_",
                                    "aten::_unsafe_index", "aten::_unsafe_index_put"}) {
    if (name == indexing) return arg != nullptr && arg->name() == "indices";
  }
  for (std::string_view allowed : {"aten::copy_", "aten::_copy_from", "aten::_copy_from_and_resize", "aten::set_",
                                   "aten::_to_copy", "aten::is_set_to", "aten::is_same_size"}) {
    if (name == allowed) return true;
  }
  return false;
}

// Fed every tensor argument in order. Emulated tensors must share one device; CPU tensors may
// join them only as 0-dim scalar inputs (as TensorIterator allows: never as in-place self or
// out=, which CUDA kernels check) or where the op accepts them.
template <c10::DeviceType kType>
class DeviceCheck {
 public:
  // Returns true for a tensor of the emulated type (the caller makes its stand-in).
  // `accepts_cpu_tensors()` is asked only about CPU tensors that are not scalar inputs;
  // `written`: the argument is an in-place self or an out= tensor.
  template <class AcceptsCpuTensors>
  bool note(const at::Tensor& t, AcceptsCpuTensors&& accepts_cpu_tensors, bool written = false) {
    const c10::Device d = t.device();
    if (d.type() == kType) {
      if (!device_) {
        // TensorIterator names the common (device) side first, whatever the argument order.
        if (first_ && *first_ != d) throw_device_mismatch(d, *first_);
        device_ = d;
        first_ = d;
      } else if (*device_ != d) {
        throw_device_mismatch(*device_, d);
      }
      return true;
    }
    if (d.type() == c10::DeviceType::CPU && (t.dim() != 0 || written) && !accepts_cpu_tensors()) {
      if (device_) throw_device_mismatch(*device_, d);
      if (!first_) first_ = d;
    }
    return false;
  }

  // The device of the emulated tensors seen, if any.
  const std::optional<c10::Device>& device() const { return device_; }

 private:
  std::optional<c10::Device> device_;
  std::optional<c10::Device> first_;
};

} // namespace torchdevice::dispatch
