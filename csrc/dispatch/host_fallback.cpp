#include "dispatch/host_fallback.h"

#include "dispatch/device_check.h"
#include "dispatch/ivalue_lists.h"
#include "runtime/device.h"
#include "runtime/generator.h"
#include "runtime/kernel_clock.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/SmallVector.h>

namespace torchdevice::dispatch {
namespace {

template <c10::DeviceType kType>
class HostCall {
 public:
  explicit HostCall(const c10::OperatorHandle& op) : op_(op) {}

  void set_argument(const c10::Argument& arg, bool written) {
    arg_ = &arg;
    written_ = written;
  }

  // The emulated device the op runs for: that of its emulated tensors, else the current one.
  c10::DeviceIndex device_index() const { return device_ ? device_->index() : current_device(kType); }

  at::Tensor to_host(const at::Tensor& t) {
    // The same mixed-device errors as on the runner's own kernels.
    if (!t.defined() || !devices_.note(t, [this] { return accepts_cpu_tensors(op_, arg_); }, written_)) return t;
    if (!device_) device_ = t.device();
    for (const auto& c : copies_) {
      if (c.original.unsafeGetTensorImpl() == t.unsafeGetTensorImpl()) return c.host;
    }
    at::Tensor host = t.to(c10::Device(c10::DeviceType::CPU));
    copies_.push_back({t, host});
    return host;
  }

  void lower(c10::IValue& v) {
    if (v.isTensor()) {
      v = to_host(v.toTensor());
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> lowered;
      for (const at::Tensor& t : v.toTensorList()) lowered.push_back(to_host(t));
      v = std::move(lowered);
    } else if (is_optional_tensor_list(v)) {
      c10::List<std::optional<at::Tensor>> lowered;
      for (std::optional<at::Tensor> t : optional_tensors_of(v)) {
        lowered.push_back(t.has_value() ? std::optional<at::Tensor>(to_host(*t)) : t);
      }
      v = std::move(lowered);
    } else if (v.isDevice() && v.toDevice().type() == kType) {
      device_ = resolve_device(v.toDevice());
      v = c10::Device(c10::DeviceType::CPU);
    } else if (v.isGenerator() && v.toGenerator().device().type() == kType) {
      // The emulated generator's state lives on the runner; a CPU kernel takes a CPU generator.
      const at::Generator& inner = host_generator_of(v.toGenerator());
      v = inner.device().is_cpu() ? inner : at::detail::getDefaultCPUGenerator();
    }
  }

  // After the kernel: the host copy of a written argument goes back into the argument.
  void write_back(const at::Tensor& original) {
    for (const auto& c : copies_) {
      if (c.original.unsafeGetTensorImpl() != original.unsafeGetTensorImpl()) continue;
      if (c.host.sizes() != original.sizes()) original.resize_(c.host.sizes());
      original.copy_(c.host);
    }
  }

  // A result: a written argument's host copy -> that argument; another host tensor -> a copy on
  // the emulated device (a CPU tensor the caller passed stays as it is).
  at::Tensor map(const at::Tensor& out) {
    if (!out.defined() || !out.device().is_cpu() || !device_) return out;
    for (const auto& c : copies_) {
      if (c.host.unsafeGetTensorImpl() == out.unsafeGetTensorImpl()) return c.original;
    }
    for (const auto& input : host_inputs_) {
      if (input.unsafeGetTensorImpl() == out.unsafeGetTensorImpl()) return out;
    }
    return out.to(*device_);
  }

  void note_host_input(const c10::IValue& v) {
    if (v.isTensor() && v.toTensor().defined() && v.toTensor().device().is_cpu()) host_inputs_.push_back(v.toTensor());
  }

 private:
  const c10::OperatorHandle& op_;
  DeviceCheck<kType> devices_;
  const c10::Argument* arg_ = nullptr;
  bool written_ = false;
  struct Copy {
    at::Tensor original;
    at::Tensor host;
  };
  std::optional<c10::Device> device_;
  c10::SmallVector<Copy, 4> copies_;
  c10::SmallVector<at::Tensor, 2> host_inputs_;
};

} // namespace

template <c10::DeviceType kType>
void run_on_host(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  HostCall<kType> call(op);
  c10::SmallVector<at::Tensor, 2> written;
  for (size_t i = 0; i < args.size(); ++i) {
    c10::IValue& v = (*stack)[first + i];
    call.note_host_input(v);
    const bool writes = args[i].alias_info() && args[i].alias_info()->isWrite();
    call.set_argument(args[i], writes);
    if (writes && v.isTensor() && v.toTensor().defined() && v.toTensor().device().type() == kType) {
      written.push_back(v.toTensor());
    } else if (writes && v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) {
        if (t.defined() && t.device().type() == kType) written.push_back(t);
      }
    }
    call.lower(v);
  }

  {
    const kernel_clock::KernelTimer timer([&] { return call.device_index(); });
    op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
  }

  for (const at::Tensor& t : written) call.write_back(t);
  const size_t num_returns = op.schema().returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    c10::IValue& r = (*stack)[i];
    if (r.isTensor()) {
      r = call.map(r.toTensor());
    } else if (r.isTensorList()) {
      c10::List<at::Tensor> mapped;
      for (const at::Tensor& t : r.toTensorList()) mapped.push_back(call.map(t));
      r = std::move(mapped);
    }
  }
}

template void run_on_host<c10::DeviceType::CUDA>(const c10::OperatorHandle&, torch::jit::Stack*);
template void run_on_host<c10::DeviceType::MPS>(const c10::OperatorHandle&, torch::jit::Stack*);

} // namespace torchdevice::dispatch
