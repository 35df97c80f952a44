#include "dispatch/registration.h"

#include "dispatch/fallback.h"
#include "dispatch/kernels.h"

#include <torch/library.h>

#include <algorithm>
#include <mutex>

namespace torchdevice::dispatch {
namespace {

// A backend without its own kernel for an op gets the op's CompositeExplicitAutograd(NonFunctional)
// kernel in its slot, ahead of any fallback. For ops that ALSO have a CPU kernel that is wrong:
// the composite is a decomposition (different numerics, e.g. native_layer_norm) or an
// allocate-then-out= wrapper (extra allocation, resize warnings). Those ops get the fallback
// explicitly, so they run exactly the CPU kernel.
template <c10::DeviceType kType>
int override_composites(torch::Library& lib) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto& explicit_names = explicit_kernel_names();
  int count = 0;
  for (auto key : {c10::DispatchKey::CompositeExplicitAutogradNonFunctional, c10::DispatchKey::CompositeExplicitAutograd}) {
    for (const auto& name : dispatcher.getRegistrationsForDispatchKey(key)) {
      if (name.name.rfind("aten::", 0) != 0) continue;
      auto op = dispatcher.findOp(name);
      // Skip ops that already have a kernel of their own for this key (or that we registered
      // in the previous round: an op can have both composite kinds).
      if (!op || !op->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
          op->hasKernelForDispatchKey(kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA)) {
        continue;
      }
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
  const int overridden = override_composites<kType>(*aten);
  register_kernels<kType>(*aten);
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
