#include "dispatch/registration.h"

#include "dispatch/attention.h"
#include "dispatch/cuda_only_ops.h"
#include "dispatch/fallback.h"
#include "dispatch/fast_paths.h"
#include "dispatch/host_routes.h"
#include "dispatch/kernels.h"
#include "runtime/runner.h"

#include <torch/library.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace torchdevice::dispatch {
namespace {

// The emulated device's dispatch table mirrors the CPU's: every aten op that has a CPU kernel,
// and every op whose CompositeExplicitAutograd(NonFunctional) kernel would otherwise fill the
// device slot, runs through the fallback — i.e. on CPU stand-ins exactly as for CPU tensors.
// Without this, a backend with no kernel of its own gets an op's composite kernel ahead of any
// fallback: a decomposition with other numerics (native_layer_norm, mish_backward), an
// allocate-then-out= wrapper, or code that branches on is_cuda() and calls CUDA-only ops or
// DispatchStubs (convolution, convolution_backward). CompositeImplicitAutograd ops without a
// CPU kernel stay as they are: they decompose above autograd, as on CPU.
bool is_tensor_type(const c10::TypePtr& type) {
  switch (type->kind()) {
    case c10::TypeKind::TensorType:
      return true;
    case c10::TypeKind::OptionalType:
      return is_tensor_type(type->castRaw<c10::OptionalType>()->getElementType());
    case c10::TypeKind::ListType:
      return is_tensor_type(type->castRaw<c10::ListType>()->getElementType());
    default:
      return false;
  }
}

bool has_tensor_argument(const c10::FunctionSchema& schema) {
  for (const auto& arg : schema.arguments()) {
    if (is_tensor_type(arg.type())) return true;
  }
  return false;
}

// Ops given the fallback on the device key: one library per namespace, created on first use
// and kept for the process (a library's destructor would deregister its kernels).
template <c10::DeviceType kType>
class FallbackTable {
 public:
  static constexpr auto kKey = kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;

  static FallbackTable& instance() {
    static auto* table = new FallbackTable();
    return *table;
  }

  // The fallback for `name` on the device key, unless it has it already or an explicit kernel.
  bool give(const c10::OperatorName& name) {
    const auto sep = name.name.find("::");
    const std::string ns = name.name.substr(0, sep);
    std::string short_name = name.name.substr(sep + 2);
    if (!name.overload_name.empty()) short_name += "." + name.overload_name;
    if (!done_.insert(name.name + "." + name.overload_name).second) return false;
    const auto& explicit_names = explicit_kernel_names();
    if (ns == "aten" && std::find(explicit_names.begin(), explicit_names.end(), short_name) != explicit_names.end()) {
      return false;
    }
    auto& lib = libraries_[ns];
    if (lib == nullptr) lib = new torch::Library(torch::Library::IMPL, ns, kKey, __FILE__, __LINE__);
    lib->impl(short_name.c_str(), torch::CppFunction::makeFromBoxedFunction<&emulated_fallback<kType>>());
    return true;
  }

  void use_library(const std::string& ns, torch::Library* lib) { libraries_[ns] = lib; }

 private:
  std::unordered_set<std::string> done_;
  std::unordered_map<std::string, torch::Library*> libraries_;
};

template <c10::DeviceType kType>
int mirror_cpu_table(torch::Library& aten) {
  constexpr auto key = FallbackTable<kType>::kKey;
  auto& dispatcher = c10::Dispatcher::singleton();
  auto& table = FallbackTable<kType>::instance();
  table.use_library("aten", &aten);
  int count = 0;
  auto give_fallback = [&](const c10::OperatorName& name) { count += table.give(name) ? 1 : 0; };
  // Kernels already on the device key, of every namespace: on a CUDA build of torch these are
  // real CUDA kernels and would be handed host pointers, so each is replaced. An op with a CPU
  // kernel then runs that (c10d collectives: the process group's CPU backend); a CUDA-only one
  // (symm_mem, an aten op without CPU kernel) fails cleanly in the fallback instead of
  // launching a kernel.
  for (const auto& name : dispatcher.getRegistrationsForDispatchKey(key)) give_fallback(name);
  for (const auto& name : dispatcher.getRegistrationsForDispatchKey(c10::DispatchKey::CPU)) {
    if (name.name.rfind("aten::", 0) == 0) give_fallback(name);
  }
  for (auto source : {c10::DispatchKey::CompositeExplicitAutogradNonFunctional, c10::DispatchKey::CompositeExplicitAutograd}) {
    for (const auto& name : dispatcher.getRegistrationsForDispatchKey(source)) {
      if (name.name.rfind("aten::", 0) != 0) continue;
      // Pure factories (zeros, full, arange, ...) keep their composite: it allocates through the
      // device's own empty kernel and fills in place, which is cheaper than building the result
      // on the host and adopting it, and gives the same values.
      auto op = dispatcher.findOp(name);
      if (op && !op->hasKernelForDispatchKey(c10::DispatchKey::CPU) && !has_tensor_argument(op->schema())) continue;
      // Composites that check their inputs' devices with their own message (which tests and
      // users match) keep it: their inner ops then run emulated one by one, as on a GPU.
      if (name.name == "aten::block_diag") continue;
      give_fallback(name);
    }
  }
  return count;
}

// Replacing real CUDA kernels is intended here; the dispatcher's "Overriding a previously
// registered kernel" warning would only alarm users.
class SilentWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning& /*warning*/) override {}
};

template <c10::DeviceType kType>
int register_for() {
  constexpr auto key = kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;
  // Libraries live as long as the process: their destructors would deregister the kernels.
  auto* fallback = new torch::Library(torch::Library::IMPL, "_", key, __FILE__, __LINE__);
  fallback->fallback(torch::CppFunction::makeFromBoxedFunction<&emulated_fallback<kType>>());
  SilentWarnings silent;
  c10::WarningUtils::WarningHandlerGuard quiet(&silent);
  auto* aten = new torch::Library(torch::Library::IMPL, "aten", key, __FILE__, __LINE__);
  const int overridden = mirror_cpu_table<kType>(*aten);
  if constexpr (kType == c10::DeviceType::CUDA) {
    register_cuda_only_ops(*aten);
    register_gpu_attention(*aten);
  }
  // Fast paths call the CPU kernel directly: for the cpu runner only.
  if (runner_for(kType).is_cpu()) register_fast_paths<kType>();
  register_kernels<kType>(*aten);  // after the mirror: the last registration for a key wins
  register_host_routes<kType>();
  return overridden;
}

template <c10::DeviceType kType>
int adopt_for(const std::vector<c10::OperatorName>& names) {
  static std::mutex mutex;  // libraries may be loaded from several threads
  std::lock_guard<std::mutex> lock(mutex);
  SilentWarnings silent;
  c10::WarningUtils::WarningHandlerGuard quiet(&silent);
  auto& table = FallbackTable<kType>::instance();
  int count = 0;
  for (const auto& name : names) count += table.give(name) ? 1 : 0;
  return count;
}

} // namespace

int adopt_device_kernels(c10::DeviceType type, const std::vector<c10::OperatorName>& names) {
  return type == c10::DeviceType::MPS ? adopt_for<c10::DeviceType::MPS>(names) : adopt_for<c10::DeviceType::CUDA>(names);
}

int register_dispatch(c10::DeviceType type) {
  static std::once_flag cuda_once, mps_once;
  static int cuda_count = 0, mps_count = 0;
  if (type == c10::DeviceType::MPS) {
    std::call_once(mps_once, [] { mps_count = register_for<c10::DeviceType::MPS>(); });
    return mps_count;
  }
  std::call_once(cuda_once, [] { cuda_count = register_for<c10::DeviceType::CUDA>(); });
  return cuda_count;
}

} // namespace torchdevice::dispatch
