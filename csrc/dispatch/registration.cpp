#include "dispatch/registration.h"

#include "dispatch/fallback.h"
#include "dispatch/host_routes.h"
#include "dispatch/kernels.h"

#include <torch/library.h>

#include <algorithm>
#include <mutex>

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
template <c10::DeviceType kType>
int mirror_cpu_table(torch::Library& lib) {
  constexpr auto key = kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto& explicit_names = explicit_kernel_names();
  int count = 0;
  for (auto source : {c10::DispatchKey::CPU, c10::DispatchKey::CompositeExplicitAutogradNonFunctional,
                      c10::DispatchKey::CompositeExplicitAutograd}) {
    for (const auto& name : dispatcher.getRegistrationsForDispatchKey(source)) {
      if (name.name.rfind("aten::", 0) != 0) continue;
      auto op = dispatcher.findOp(name);
      // Ops with a kernel of their own for this key (or one we registered from an earlier
      // source list) keep it.
      if (!op || op->hasKernelForDispatchKey(key)) continue;
      std::string short_name = name.name.substr(6);
      if (!name.overload_name.empty()) short_name += "." + name.overload_name;
      if (std::find(explicit_names.begin(), explicit_names.end(), short_name) != explicit_names.end()) continue;
      lib.impl(short_name.c_str(), torch::CppFunction::makeFromBoxedFunction<&emulated_fallback<kType>>());
      ++count;
    }
  }
  return count;
}

template <c10::DeviceType kType>
int register_for() {
  constexpr auto key = kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;
  // Libraries live as long as the process: their destructors would deregister the kernels.
  auto* fallback = new torch::Library(torch::Library::IMPL, "_", key, __FILE__, __LINE__);
  fallback->fallback(torch::CppFunction::makeFromBoxedFunction<&emulated_fallback<kType>>());
  auto* aten = new torch::Library(torch::Library::IMPL, "aten", key, __FILE__, __LINE__);
  const int overridden = mirror_cpu_table<kType>(*aten);
  register_kernels<kType>(*aten);
  register_host_routes<kType>();
  return overridden;
}

} // namespace

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
