// Some CompositeImplicitAutograd ops decide on `input.is_cuda()` to call kernels that exist only
// in CUDA builds (`_thnn_fused_lstm_cell`, flash attention, cuDNN CTC) or to take a numerically
// different path than on CPU. On the emulated device those ops are routed to their CPU form:
// arguments are copied to the host with differentiable copies, the op runs from the top of the
// dispatcher (autograd included) exactly as for CPU tensors, and results are copied back. The
// result is the CPU result bit for bit, and gradients flow back through the copies.
#include "dispatch/host_routes.h"

#include "runtime/device.h"
#include "runtime/kernel_clock.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_to_copy.h>
#include <torch/library.h>

namespace torchdevice::dispatch {
namespace {

const char* const kHostRoutedOps[] = {
    "lstm.input", "lstm.data", "gru.input", "gru.data", "rnn_tanh.input", "rnn_tanh.data",
    "rnn_relu.input", "rnn_relu.data", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "scaled_dot_product_attention", "ctc_loss.IntList", "ctc_loss.Tensor",
    // torch >= 2.14 takes a fused CUDA kernel whose backward exists only for CUDA.
    "rms_norm",
};

at::Tensor to_device(const at::Tensor& t, c10::Device device) {
  return at::_to_copy(t, t.options().device(device));
}

template <c10::DeviceType kType>
void run_on_host(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/, torch::jit::Stack* stack) {
  const size_t num_args = op.schema().arguments().size();
  const size_t first = stack->size() - num_args;
  std::optional<c10::Device> device;
  // One host copy per distinct tensor: sdpa(q, q, q) must accumulate q's gradient inside the
  // op's own backward, in the order CPU autograd does, not across three copies.
  c10::SmallVector<std::pair<at::Tensor, at::Tensor>, 8> lowered_once;  // (original, host copy)
  auto lower = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined() || t.device().type() != kType) return t;
    if (!device) device = t.device();
    for (const auto& [original, host] : lowered_once) {
      if (original.unsafeGetTensorImpl() == t.unsafeGetTensorImpl()) return host;
    }
    at::Tensor host = to_device(t, c10::Device(c10::DeviceType::CPU));
    lowered_once.emplace_back(t, host);
    return host;
  };
  for (size_t i = first; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor()) {
      v = lower(v.toTensor());
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> lowered;
      for (const at::Tensor& t : v.toTensorList()) lowered.push_back(lower(t));
      v = std::move(lowered);
    }
  }
  {
    const kernel_clock::KernelTimer timer([&] { return device ? device->index() : current_device(kType); });
    op.callBoxed(stack);
  }
  if (!device) return;
  const size_t num_returns = op.schema().returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    c10::IValue& r = (*stack)[i];
    if (r.isTensor() && r.toTensor().defined() && r.toTensor().device().is_cpu()) {
      r = to_device(r.toTensor(), *device);
    }
  }
}

} // namespace

template <c10::DeviceType kType>
void register_host_routes() {
  constexpr bool mps = kType == c10::DeviceType::MPS;
  // At the autograd key the route records autograd through the copies; at the backend key it
  // serves inference-mode tensors (which have no autograd keys). Both are needed: a backend
  // kernel alone would hide the composite from autograd.
  for (auto key : {mps ? c10::DispatchKey::AutogradMPS : c10::DispatchKey::AutogradCUDA,
                   mps ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA}) {
    auto* lib = new torch::Library(torch::Library::IMPL, "aten", key, __FILE__, __LINE__);
    for (const char* name : kHostRoutedOps) {
      const std::string full(name);
      // Emulated cuda takes a GPU's attention backends instead (attention.cpp): DTensor, the
      // FlopCounter and inductor see CUDA's ops. Emulated mps keeps the CPU's form.
      if (!mps && full == "scaled_dot_product_attention") continue;
      const auto dot = full.find('.');
      const c10::OperatorName op_name("aten::" + full.substr(0, dot), dot == std::string::npos ? "" : full.substr(dot + 1));
      if (!c10::Dispatcher::singleton().findSchema(op_name)) continue;  // not in this torch version
      lib->impl(name, torch::CppFunction::makeFromBoxedFunction<&run_on_host<kType>>());
    }
  }
}

template void register_host_routes<c10::DeviceType::CUDA>();
template void register_host_routes<c10::DeviceType::MPS>();

} // namespace torchdevice::dispatch
