#include "dispatch/kernels.h"

#include "dispatch/standin.h"
#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/kernel_clock.h"
#include "runtime/timeline.h"

#include <ATen/EmptyTensor.h>
#include <ATen/TensorIterator.h>
#include <ATen/ops/_log_softmax_backward_data_ops.h>
#include <ATen/ops/_log_softmax_ops.h>
#include <ATen/ops/_softmax_backward_data_ops.h>
#include <ATen/ops/_softmax_ops.h>
#include <ATen/ops/_to_copy_native.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/copy_ops.h>
#include <ATen/ops/zero_ops.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/set_native.h>
#include <c10/core/DeviceGuard.h>

namespace torchdevice::dispatch {
namespace {

template <c10::DeviceType kType>
constexpr c10::DispatchKey dispatch_key() {
  return kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;
}

// Makes `device` current while it lives: the allocator serves the current device, as CUDA's
// does. Costs nothing when `device` already is current (a guard would still swap it twice).
class CurrentDevice {
 public:
  explicit CurrentDevice(c10::Device device) {
    if (device.index() != current_device(device.type())) guard_.reset_device(device);
  }

 private:
  c10::OptionalDeviceGuard guard_;
};

template <c10::DeviceType kType>
at::Tensor empty_memory_format(c10::SymIntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> pin_memory, std::optional<at::MemoryFormat> memory_format) {
  TORCH_CHECK(!pin_memory.value_or(false), "Only dense CPU tensors can be pinned");
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "torchdevice: only strided tensors are supported on ",
              c10::DeviceTypeName(kType, true), ", got layout ", *layout);
  const c10::Device dev = resolve_device(device.value_or(c10::Device(kType)));
  check_dtype_supported(kType, c10::dtype_or_default(dtype));
  const CurrentDevice current(dev);
  return at::detail::empty_generic(C10_AS_INTARRAYREF_SLOW(size), &allocator_for(kType),
                                   c10::DispatchKeySet(dispatch_key<kType>()),
                                   c10::dtype_or_default(dtype), memory_format);
}

template <c10::DeviceType kType>
at::Tensor empty_strided(c10::SymIntArrayRef size, c10::SymIntArrayRef stride, std::optional<at::ScalarType> dtype,
                         std::optional<at::Layout> layout, std::optional<at::Device> device,
                         std::optional<bool> pin_memory) {
  TORCH_CHECK(!pin_memory.value_or(false), "Only dense CPU tensors can be pinned");
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "torchdevice: only strided tensors are supported on ",
              c10::DeviceTypeName(kType, true), ", got layout ", *layout);
  const c10::Device dev = resolve_device(device.value_or(c10::Device(kType)));
  check_dtype_supported(kType, c10::dtype_or_default(dtype));
  const CurrentDevice current(dev);
  return at::detail::empty_strided_generic(C10_AS_INTARRAYREF_SLOW(size), C10_AS_INTARRAYREF_SLOW(stride),
                                           &allocator_for(kType), c10::DispatchKeySet(dispatch_key<kType>()),
                                           c10::dtype_or_default(dtype));
}

// Every direction (cpu<->device, device<->device on any ordinals) is the runner's copy kernel
// on stand-ins, with its dtype conversion, conj/neg and broadcasting (on the cpu runner: host
// memory on both sides, the CPU copy kernel).
template <c10::DeviceType kType>
at::Tensor& copy_(at::Tensor& self, const at::Tensor& src, bool non_blocking) {
  if (!non_blocking && (self.is_cpu() || src.is_cpu())) {
    // A blocking copy to or from the host waits for the device's current stream, as
    // cudaMemcpy does (only torch.cuda._sleep can have left it busy: runtime/timeline.h).
    const c10::Device device = self.is_cpu() ? src.device() : self.device();
    timeline::host_wait(timeline::ready_at(c10::impl::getDeviceGuardImpl(kType)->getStream(device)));
  }
  const Runner& runner = runner_for(kType);
  StandIns standins(runner);
  at::Tensor self_on_runner = self.device().type() == kType ? standins.make(self) : self;
  const at::Tensor src_on_runner = src.device().type() == kType ? standins.make(src) : src;
  const kernel_clock::KernelTimer timer([&] { return (self.device().type() == kType ? self : src).device().index(); });
  at::_ops::copy_::redispatch(c10::DispatchKeySet(runner.key()), self_on_runner, src_on_runner, non_blocking);
  return self;
}

// torch.zeros(..., device=) ends here. CPU's zero_ clears a small dense tensor with one memset
// (at::native::zero_, below the grain size); on the cpu runner the emulated memory is host
// memory, so the same memset runs on it directly instead of on a stand-in. Other tensors and
// runners take the runner's kernel, which decides as CPU (or the GPU) does.
template <c10::DeviceType kType>
at::Tensor& zero_(at::Tensor& self) {
  const Runner& runner = runner_for(kType);
  const int64_t numel = self.numel();
  if (runner.is_cpu() && numel < at::internal::GRAIN_SIZE && self.is_non_overlapping_and_dense()) {
    if (void* data = self.mutable_data_ptr(); data != nullptr && numel > 0) {
      const kernel_clock::KernelTimer timer([&] { return self.device().index(); });
      std::memset(data, 0, numel * self.itemsize());
      return self;
    }
  }
  StandIns standins(runner);
  at::Tensor standin = standins.make(self);
  const kernel_clock::KernelTimer timer([&] { return self.device().index(); });
  at::_ops::zero_::redispatch(c10::DispatchKeySet(runner.key()), standin);
  return self;
}

// The CPU implementations of resize/set_ are device-neutral once the storage's allocator is
// ours; the guard makes that allocator serve the tensor's own device.
const at::Tensor& resize_(const at::Tensor& self, c10::SymIntArrayRef size,
                          std::optional<at::MemoryFormat> memory_format) {
  c10::DeviceGuard guard(self.device());
  return at::native::resize_(self, C10_AS_INTARRAYREF_SLOW(size), memory_format);
}

at::Tensor& set_storage(at::Tensor& self, at::Storage source, c10::SymInt offset, c10::SymIntArrayRef size,
                        c10::SymIntArrayRef stride) {
  c10::DeviceGuard guard(self.device());
  return at::native::set_storage_cpu_(self, std::move(source), offset.expect_int(), C10_AS_INTARRAYREF_SLOW(size),
                                      C10_AS_INTARRAYREF_SLOW(stride));
}

template <c10::DeviceType kType>
at::Tensor& set_empty(at::Tensor& self) {
  c10::DeviceGuard guard(self.device());
  at::Storage storage(at::Storage::use_byte_size_t(), 0, &allocator_for(kType), /*resizable=*/true);
  return at::native::set_storage_cpu_(self, std::move(storage), 0, {0}, {});
}

void record_stream(at::Tensor& self, c10::Stream stream) {
  // Execution is synchronous: no block can be reused while a stream still reads it.
  TORCH_CHECK(stream.device_type() == self.device().type(), "Expected a ", self.device().type(),
              " stream, got a ", stream.device_type(), " stream");
}

// CUDA computes softmax(half, dtype=float) as _softmax(half, half_to_float=true); the CPU kernel
// has no such mode. CPU users get the same result from x.float() then _softmax, which is what
// runs here, so the values equal CPU's F.softmax(x, dtype=torch.float32) bit for bit. A device
// runner gets the flag as it is (its kernels are GPU kernels).
template <typename Op>
at::Tensor softmax_like(Op op, const at::Tensor& self, int64_t dim, bool half_to_float) {
  const Runner& runner = runner_for(self.device().type());
  StandIns standins(runner);
  at::Tensor input = standins.make(self);
  const bool emulate_half_to_float = half_to_float && runner.is_cpu();
  const kernel_clock::KernelTimer timer([&] { return self.device().index(); });
  if (emulate_half_to_float) input = input.to(at::kFloat);
  at::Tensor out = op(c10::DispatchKeySet(runner.key()), input, dim, half_to_float && !emulate_half_to_float);
  adopt_output(out, self.device());
  return out;
}

// The matching backward: gradient computed in float, then cast to the input's half dtype (the
// CPU graph's ToCopyBackward).
template <typename Op>
at::Tensor softmax_backward_like(Op op, const at::Tensor& grad, const at::Tensor& output, int64_t dim,
                                 at::ScalarType input_dtype) {
  const Runner& runner = runner_for(grad.device().type());
  StandIns standins(runner);
  const bool half_to_float = runner.is_cpu() && grad.scalar_type() != input_dtype;
  const kernel_clock::KernelTimer timer([&] { return grad.device().index(); });
  at::Tensor out = op(c10::DispatchKeySet(runner.key()), standins.make(grad),
                                  standins.make(output), dim, half_to_float ? grad.scalar_type() : input_dtype);
  if (half_to_float) out = out.to(input_dtype);
  adopt_output(out, grad.device());
  return out;
}

at::Tensor softmax(const at::Tensor& self, int64_t dim, bool half_to_float) {
  return softmax_like(&at::_ops::_softmax::redispatch, self, dim, half_to_float);
}
at::Tensor log_softmax(const at::Tensor& self, int64_t dim, bool half_to_float) {
  return softmax_like(&at::_ops::_log_softmax::redispatch, self, dim, half_to_float);
}
at::Tensor softmax_backward(const at::Tensor& grad, const at::Tensor& output, int64_t dim, at::ScalarType dtype) {
  return softmax_backward_like(&at::_ops::_softmax_backward_data::redispatch, grad, output, dim, dtype);
}
at::Tensor log_softmax_backward(const at::Tensor& grad, const at::Tensor& output, int64_t dim, at::ScalarType dtype) {
  return softmax_backward_like(&at::_ops::_log_softmax_backward_data::redispatch, grad, output, dim, dtype);
}

// Only CPU tensors can be pinned; CUDA's words when asked to pin a device tensor.
at::Tensor pin_memory_of_device_tensor(const at::Tensor& self, std::optional<at::Device> /*device*/) {
  TORCH_CHECK(false, "cannot pin 'torch.", c10::DeviceTypeName(self.device().type(), true), ".",
              c10::toString(self.scalar_type()), "Tensor' only dense CPU tensors can be pinned");
}

// _lazy_clone gives a copy-on-write alias on CPU and CUDA. An emulated storage cannot join a
// copy-on-write group (its memory is shared with stand-ins, which bypass COW materialization), so
// the copy happens now; the result is what a materialized lazy clone is: a new storage of the same
// size, with the same sizes, strides, offset and conj/neg bits.
at::Tensor lazy_clone(const at::Tensor& self) {
  const auto nbytes = static_cast<int64_t>(self.storage().nbytes());
  const auto bytes = self.options().dtype(at::kByte);
  at::Tensor source = at::empty({0}, bytes).set_(self.storage(), 0, {nbytes}, {1});
  at::Tensor copy = at::empty({nbytes}, bytes).copy_(source);
  at::Tensor out = at::empty({0}, self.options()).set_(copy.storage(), self.storage_offset(), self.sizes(), self.strides());
  out._set_conj(self.is_conj());
  out._set_neg(self.is_neg());
  return out;
}

bool is_pinned_device_tensor(const at::Tensor& /*self*/, std::optional<at::Device> /*device*/) {
  return false;
}

} // namespace

const std::vector<std::string>& explicit_kernel_names() {
  static const std::vector<std::string> names = {
      "empty.memory_format", "empty_strided", "copy_", "resize_",
      "set_.source_Storage", "set_.source_Storage_storage_offset", "set_.source_Tensor", "set_",
      "record_stream", "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
      "_pin_memory", "is_pinned", "_to_copy", "_lazy_clone", "zero_"};
  return names;
}

template <c10::DeviceType kType>
void register_kernels(torch::Library& lib) {
  lib.impl("empty.memory_format", TORCH_FN(empty_memory_format<kType>));
  lib.impl("empty_strided", TORCH_FN(empty_strided<kType>));
  lib.impl("copy_", TORCH_FN(copy_<kType>));
  lib.impl("zero_", TORCH_FN(zero_<kType>));
  lib.impl("resize_", TORCH_FN(resize_));
  lib.impl("set_.source_Storage", TORCH_FN(at::native::set_));
  lib.impl("set_.source_Storage_storage_offset", TORCH_FN(set_storage));
  lib.impl("set_.source_Tensor", TORCH_FN(at::native::set_tensor_));
  lib.impl("set_", TORCH_FN(set_empty<kType>));
  lib.impl("record_stream", TORCH_FN(record_stream));
  lib.impl("_softmax", TORCH_FN(softmax));
  lib.impl("_log_softmax", TORCH_FN(log_softmax));
  lib.impl("_softmax_backward_data", TORCH_FN(softmax_backward));
  lib.impl("_log_softmax_backward_data", TORCH_FN(log_softmax_backward));
  lib.impl("_pin_memory", TORCH_FN(pin_memory_of_device_tensor));
  lib.impl("is_pinned", TORCH_FN(is_pinned_device_tensor));
  lib.impl("_lazy_clone", TORCH_FN(lazy_clone));
  // The composite, as on a GPU: a non_blocking copy to the host lands in pinned memory, and
  // device-to-device copies go through empty + copy_ on the target device.
  lib.impl("_to_copy", TORCH_FN(at::native::_to_copy));
}

template void register_kernels<c10::DeviceType::CUDA>(torch::Library&);
template void register_kernels<c10::DeviceType::MPS>(torch::Library&);

} // namespace torchdevice::dispatch
