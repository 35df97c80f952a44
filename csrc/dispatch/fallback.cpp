#include "dispatch/fallback.h"

#include "dispatch/device_check.h"
#include "dispatch/host_fallback.h"
#include "dispatch/ivalue_lists.h"
#include "dispatch/standin.h"
#include "runtime/device.h"
#include "runtime/generator.h"
#include "runtime/kernel_clock.h"
#include "runtime/runner.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string_view>

namespace torchdevice::dispatch {
namespace {

bool is_optional_generator(const c10::Argument& arg) {
  const auto& type = arg.type();
  return type->kind() == c10::TypeKind::OptionalType &&
         type->castRaw<c10::OptionalType>()->getElementType()->kind() == c10::TypeKind::GeneratorType;
}

// Everything the fallback learns about one call's arguments.
template <c10::DeviceType kType>
class CallState {
 public:
  CallState(const c10::OperatorHandle& op, const Runner& runner) : standins(runner), op_(op), runner_(runner) {}

  // The argument whose value the next lower() calls see (for the device rules of CPU tensors).
  void set_argument(const c10::Argument& arg, bool written) {
    arg_ = &arg;
    written_ = written;
  }

  // Replaces emulated tensors (also inside lists) and devices in `v` by their runner stand-ins.
  void lower(c10::IValue& v) {
    if (v.isTensor()) {
      const at::Tensor& t = v.toTensor();
      if (t.defined()) v = lower_tensor(t);
    } else if (v.isTensorList()) {
      auto list = v.toTensorList();
      bool any = false;
      for (const at::Tensor& t : list) any |= t.defined() && t.device().type() == kType;
      if (!any) {
        for (const at::Tensor& t : list) note(t);
      } else {
        c10::List<at::Tensor> lowered;
        lowered.reserve(list.size());
        for (const at::Tensor& t : list) lowered.push_back(t.defined() ? lower_tensor(t) : t);
        v = std::move(lowered);
      }
    } else if (is_optional_tensor_list(v)) {
      auto list = optional_tensors_of(v);
      c10::List<std::optional<at::Tensor>> lowered;
      lowered.reserve(list.size());
      for (std::optional<at::Tensor> t : list) {
        lowered.push_back(t.has_value() && t->defined() ? std::optional<at::Tensor>(lower_tensor(*t)) : t);
      }
      v = std::move(lowered);
    } else if (v.isList() && !v.toListRef().empty() && v.toListRef()[0].isTensorList()) {
      // Tensor[][] (c10d collectives' output lists): lower each inner list.
      c10::impl::GenericList lowered(c10::ListType::ofTensors());
      for (const c10::IValue& inner : v.toListRef()) {
        c10::IValue copy = inner;
        lower(copy);
        lowered.push_back(std::move(copy));
      }
      v = std::move(lowered);
    } else if (v.isGenerator()) {
      has_generator_ = true;
    } else if (v.isDevice()) {
      const c10::Device d = v.toDevice();
      if (d.type() == kType) {
        explicit_device_ = resolve_device(d);
        v = runner_.device_for(explicit_device_->index());
      } else {
        explicit_non_emulated_device_ = true;
      }
    }
  }

  // The device of the op's outputs: its device argument (x.to('cuda:1')), else that of its
  // emulated tensors, else the current device.
  c10::Device device() const {
    if (explicit_device_) return *explicit_device_;
    if (devices_.device()) return *devices_.device();
    return c10::Device(kType, current_device(kType));
  }
  bool has_emulated_input() const { return devices_.device().has_value() || explicit_device_.has_value(); }
  // A Generator argument was passed (None ones are handled with the seeded-random tag).
  bool has_generator_argument() const { return has_generator_; }
  bool outputs_stay_on_host() const { return explicit_non_emulated_device_ && !explicit_device_; }

  // A CPU tensor argument: its outputs are never relabelled (they are the caller's CPU tensors).
  bool is_host_input(const at::Tensor& t) const {
    const auto* storage = t.unsafeGetTensorImpl()->has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr;
    for (const auto& input : host_inputs_) {
      const auto* impl = input.unsafeGetTensorImpl();
      if (impl == t.unsafeGetTensorImpl() || (storage && impl->has_storage() &&
                                              impl->storage().unsafeGetStorageImpl() == storage)) {
        return true;
      }
    }
    return false;
  }

  StandIns standins;

 private:
  at::Tensor lower_tensor(const at::Tensor& t) {
    return note(t) ? standins.make_owned(t) : t;
  }

  // Checks `t`'s device; true for an emulated tensor. CPU tensors are remembered as host inputs.
  bool note(const at::Tensor& t) {
    if (!t.defined()) return false;
    if (t.device().type() == c10::DeviceType::CPU) host_inputs_.push_back(t);
    return devices_.note(t, [this] { return accepts_cpu_tensors(op_, arg_); }, written_);
  }

  const c10::OperatorHandle& op_;
  const Runner& runner_;
  DeviceCheck<kType> devices_;
  const c10::Argument* arg_ = nullptr;
  bool written_ = false;
  std::optional<c10::Device> explicit_device_;
  bool explicit_non_emulated_device_ = false;
  bool has_generator_ = false;
  // Strong references, so that addresses cannot be reused by outputs (see StandIns).
  c10::SmallVector<at::Tensor, 4> host_inputs_;
};

// How many elements the op's tensor results hold: what a random op drew, as CUDA counts it.
uint64_t elements_returned(const torch::jit::Stack& stack, size_t num_returns) {
  uint64_t count = 0;
  for (size_t i = stack.size() - num_returns; i < stack.size(); ++i) {
    const c10::IValue& r = stack[i];
    if (r.isTensor()) {
      if (r.toTensor().defined()) count += static_cast<uint64_t>(r.toTensor().numel());
    } else if (r.isTensorList()) {
      for (const at::Tensor& t : r.toTensorList()) count += t.defined() ? static_cast<uint64_t>(t.numel()) : 0;
    }
  }
  return count;
}

// Quantized tensors (deprecated in PyTorch) have no emulated QuantizedCUDA backend: every op on
// one would fail later with "Could not run ... 'QuantizedCUDA' backend", so their creation fails
// now, saying why (creation with a device= goes to that backend and fails there the same way).
[[noreturn]] void refuse_quantized(const c10::OperatorHandle& op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "torchdevice: '", op.schema().operator_name(),
                              "' would make a quantized tensor on the emulated device, which has no quantized "
                              "backend (QuantizedCUDA). Keep quantized tensors on the CPU.");
}

} // namespace

template <c10::DeviceType kType>
void emulated_fallback(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const auto& args = schema.arguments();
  const size_t num_args = args.size();
  const size_t first_arg = stack->size() - num_args;

  const Runner& runner = runner_for(kType);
  if (C10_UNLIKELY(runner.may_lack_kernels()) && !runner.has_kernel(op)) {
    runner.count_host_fallback(op);
    run_on_host<kType>(op, stack);
    return;
  }

  CallState<kType> call(op, runner);
  // Mutable arguments (in-place self, out=) whose stand-ins must be synced back afterwards.
  c10::SmallVector<std::pair<at::Tensor, at::Tensor>, 4> mutated;  // (stand-in, original)

  for (size_t i = 0; i < num_args; ++i) {
    c10::IValue& v = (*stack)[first_arg + i];
    const bool writes = args[i].alias_info() && args[i].alias_info()->isWrite();
    call.set_argument(args[i], writes);
    if (writes && v.isTensor() && v.toTensor().defined() && v.toTensor().device().type() == kType) {
      at::Tensor original = v.toTensor();
      call.lower(v);
      mutated.emplace_back(v.toTensor(), std::move(original));
    } else if (writes && v.isTensorList()) {
      auto originals = v.toTensorList().vec();
      call.lower(v);
      auto lowered = v.toTensorList();
      for (size_t j = 0; j < originals.size(); ++j) {
        if (originals[j].defined() && originals[j].device().type() == kType) {
          mutated.emplace_back(lowered.get(j), originals[j]);
        }
      }
    } else {
      call.lower(v);
    }
  }

  // Random ops draw from the emulated device's generators, never from the CPU's. Seeded-random
  // ops can also draw from the CPU default generator inside their CPU kernel (native_dropout;
  // composites calling random ops with generator=None): during the call that generator carries
  // the device's default stream, and arguments naming the device's default generator use it.
  // (A device runner's kernels draw from the runner's default generator, which *is* the
  // emulated default generator's state: only explicit generators need mapping there.)
  std::optional<DefaultGeneratorRedirect> redirect;
  // The emulated generators this op draws from: each moves its Philox offset on afterwards.
  c10::SmallVector<EmulatedGenerator*, 2> drawn;
  auto draws_from = [&drawn](const at::Generator& gen) {
    auto* impl = static_cast<EmulatedGenerator*>(gen.unsafeGetGeneratorImpl());
    if (std::find(drawn.begin(), drawn.end(), impl) == drawn.end()) drawn.push_back(impl);
  };
  if (call.has_emulated_input() && (call.has_generator_argument() ||
                                    (runner.is_cpu() && op.hasTag(at::Tag::nondeterministic_seeded)))) {
    const at::Generator& device_default = default_generator(kType, call.device().index());
    if (runner.is_cpu() && op.hasTag(at::Tag::nondeterministic_seeded)) {
      redirect.emplace(host_generator_of(device_default));
      draws_from(device_default);
    }
    for (size_t i = 0; i < num_args; ++i) {
      c10::IValue& v = (*stack)[first_arg + i];
      if (v.isGenerator()) {
        const auto& gen = v.toGenerator();
        // check_generator's words in a CUDA kernel handed a CPU generator.
        TORCH_CHECK(gen.device().type() == kType, "Expected a '", c10::DeviceTypeName(kType, /*lower_case=*/true),
                    "' device type for generator but found '", c10::DeviceTypeName(gen.device().type(), true), "'");
        const bool is_default = gen.unsafeGetGeneratorImpl() == device_default.unsafeGetGeneratorImpl();
        draws_from(gen);
        v = redirect && is_default ? at::detail::getDefaultCPUGenerator() : host_generator_of(gen);
      } else if (runner.is_cpu() && !redirect && v.isNone() && is_optional_generator(args[i])) {
        draws_from(device_default);
        v = host_generator_of(device_default);
      }
    }
  }

  {
    const kernel_clock::KernelTimer timer([&] { return call.device().index(); });
    op.redispatchBoxed(c10::DispatchKeySet(runner.key()), stack);
  }
  redirect.reset();
  if (!drawn.empty()) {
    const uint64_t count = elements_returned(*stack, schema.returns().size());
    for (EmulatedGenerator* gen : drawn) gen->advance(count);
  }

  for (const auto& [standin, original] : mutated) {
    call.standins.sync_back(standin, original);
  }

  const c10::Device device = call.device();
  auto map_output = [&](const at::Tensor& out) -> std::optional<at::Tensor> {
    if (!out.defined() || out.device().type() != runner.type()) return std::nullopt;
    if (const at::Tensor* original = call.standins.original_of(out.unsafeGetTensorImpl())) {
      return *original;  // in-place / out= return the caller's own tensor
    }
    if (call.is_host_input(out) || call.outputs_stay_on_host() || out.layout() != c10::kStrided) {
      return std::nullopt;
    }
    c10::StorageImpl* storage = out.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl();
    if (c10::StorageImpl* original_storage = call.standins.original_storage_of(storage)) {
      rebase_view(out, original_storage);
    } else {
      check_dtype_supported(kType, out.scalar_type());
      if (C10_UNLIKELY(out.is_quantized())) refuse_quantized(op);
      adopt_output(out, device);
    }
    return std::nullopt;
  };

  auto map_list = [&](c10::List<at::Tensor> list) {
    for (size_t j = 0; j < list.size(); ++j) {
      if (auto replacement = map_output(list.get(j))) list.set(j, std::move(*replacement));
    }
    return list;
  };

  const size_t num_returns = schema.returns().size();
  for (size_t i = stack->size() - num_returns; i < stack->size(); ++i) {
    c10::IValue& r = (*stack)[i];
    if (r.isTensor()) {
      if (auto replacement = map_output(r.toTensor())) r = std::move(*replacement);
    } else if (r.isTensorList()) {
      r = map_list(r.toTensorList());
    } else if (r.isList() && !r.toListRef().empty() && r.toListRef()[0].isTensorList()) {
      c10::impl::GenericList mapped(c10::ListType::ofTensors());
      for (const c10::IValue& inner : r.toListRef()) mapped.push_back(map_list(inner.toTensorList()));
      r = std::move(mapped);
    }
  }
}

template void emulated_fallback<c10::DeviceType::CUDA>(const c10::OperatorHandle&, c10::DispatchKeySet,
                                                       torch::jit::Stack*);
template void emulated_fallback<c10::DeviceType::MPS>(const c10::OperatorHandle&, c10::DispatchKeySet,
                                                      torch::jit::Stack*);

} // namespace torchdevice::dispatch
