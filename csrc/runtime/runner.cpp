#include "runtime/runner.h"

#include "runtime/device.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/detail/MPSHooksInterface.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <set>

namespace torchdevice {
namespace {

c10::DispatchKey key_of(c10::DeviceType type) {
  switch (type) {
    case c10::DeviceType::CPU: return c10::DispatchKey::CPU;
    case c10::DeviceType::CUDA: return c10::DispatchKey::CUDA;
    case c10::DeviceType::MPS: return c10::DispatchKey::MPS;
    default: TORCH_CHECK(false, "torchdevice: ", type, " cannot be a runner; runners are cpu, cuda and mps");
  }
}

// Census and test hook state, shared by all runners (one process has at most two).
struct HostFallbackState {
  std::mutex mutex;
  std::map<std::string, int64_t> census;
  std::set<std::string> simulated_missing;
  std::atomic<bool> any_simulated{false};
};
HostFallbackState& host_fallback_state() {
  static auto* state = new HostFallbackState();
  return *state;
}

// Both emulated types start on the cpu runner; created together so no lookup races a creation.
struct Slot {
  std::unique_ptr<Runner> runner = std::make_unique<Runner>(c10::DeviceType::CPU);
  bool chosen = false;
};
Slot& slot_of(c10::DeviceType emulated) {
  static auto* slots = new std::array<Slot, 2>();  // leaked: tensors freed at exit still ask
  return (*slots)[emulated == c10::DeviceType::MPS ? 1 : 0];
}

} // namespace

Runner::Runner(c10::DeviceType type, c10::Allocator* allocator)
    : type_(type), key_(key_of(type)), allocator_(allocator) {}

void Runner::synchronize(c10::DeviceIndex emulated_index) const {
  if (is_cpu()) return;
  c10::impl::getDeviceGuardImpl(type_)->synchronizeDevice(device_for(emulated_index).index());
}

at::Generator Runner::new_generator(c10::DeviceIndex emulated_index, uint64_t seed) const {
  if (is_cpu()) return at::make_generator<at::CPUGeneratorImpl>(seed);
  // A clone has the runner generator's type and device, and its own state.
  at::Generator gen = default_generator(emulated_index).clone();
  gen.set_current_seed(seed);
  return gen;
}

const at::Generator& Runner::default_generator(c10::DeviceIndex emulated_index) const {
  const auto index = static_cast<size_t>(device_for(emulated_index).index());
  TORCH_CHECK(!is_cpu() && index < default_generators_.size(), "torchdevice: the ",
              c10::DeviceTypeName(type_, true), " runner has no device ", index);
  return default_generators_[index];
}

void Runner::prepare() {
  if (is_cpu() || !default_generators_.empty()) return;
  auto& context = at::globalContext();
  context.lazyInitDevice(type_);  // the real device's allocator and streams come up here
  const auto& hooks = context.getAcceleratorHooksInterface(type_);
  // MPS's allocator is reached through its hooks (the c10 table need not hold it); CUDA's
  // caching allocator is in the table.
  allocator_ = type_ == c10::DeviceType::MPS ? at::detail::getMPSHooks().getMPSDeviceAllocator()
                                              : c10::GetAllocator(type_);
  // Apple exposes one GPU (make_mps_runner checked it is there); CUDA's guard counts the GPUs.
  // (Not the hooks' deviceCount, which MPS's hooks need not override: the default says 0.)
  const c10::DeviceIndex count =
      type_ == c10::DeviceType::MPS ? 1 : c10::impl::getDeviceGuardImpl(type_)->deviceCount();
  for (c10::DeviceIndex i = 0; i < count; ++i) {
    default_generators_.push_back(hooks.getDefaultGenerator(i));
  }
  TORCH_CHECK(!default_generators_.empty(), "torchdevice: the ", c10::DeviceTypeName(type_, true),
              " runner found no ", c10::DeviceTypeName(type_, true), " device");
}

bool Runner::may_lack_kernels() const {
  return !is_cpu() || host_fallback_state().any_simulated.load(std::memory_order_relaxed);
}

bool Runner::has_kernel(const c10::OperatorHandle& op) const {
  auto& state = host_fallback_state();
  if (state.any_simulated.load(std::memory_order_relaxed)) {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (state.simulated_missing.count(op.operator_name().name)) return false;
  }
  if (is_cpu()) return true;  // the cpu runner is the reference: every aten op has its kernel
  // A backend's own kernel, or a composite that decomposes into ops the backend has. (The
  // computed dispatch table would also count MPS's catch-all fallback, which is not a kernel.)
  for (auto k : {key_, c10::DispatchKey::CompositeExplicitAutograd,
                 c10::DispatchKey::CompositeExplicitAutogradNonFunctional,
                 c10::DispatchKey::CompositeImplicitAutograd}) {
    if (op.hasKernelForDispatchKey(k)) return true;
  }
  return false;
}

void Runner::count_host_fallback(const c10::OperatorHandle& op) const {
  auto& state = host_fallback_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  ++state.census[op.operator_name().name + (op.operator_name().overload_name.empty()
                                                ? ""
                                                : "." + op.operator_name().overload_name)];
}

std::map<std::string, int64_t> Runner::census() const {
  auto& state = host_fallback_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  return state.census;
}

void Runner::simulate_missing_kernel(const std::string& op_name) {
  auto& state = host_fallback_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (op_name.empty()) {
    state.simulated_missing.clear();
    state.census.clear();
  } else {
    state.simulated_missing.insert(op_name);
  }
  state.any_simulated.store(!state.simulated_missing.empty(), std::memory_order_relaxed);
}

const Runner& cpu_runner() {
  static const auto* cpu = new Runner(c10::DeviceType::CPU);
  return *cpu;
}

const Runner& runner_for(c10::DeviceType emulated) {
  return mutable_runner_for(emulated);
}

Runner& mutable_runner_for(c10::DeviceType emulated) {
  return *slot_of(emulated).runner;
}

void set_runner(c10::DeviceType emulated, c10::DeviceType runner) {
  TORCH_CHECK(is_emulated_type(emulated), "torchdevice emulates cuda or mps, not ", emulated);
  Slot& slot = slot_of(emulated);
  const c10::DeviceType current = slot.runner->type();
  if (slot.chosen) {
    TORCH_CHECK(current == runner, "torchdevice: ", c10::DeviceTypeName(emulated, true), " already runs on ",
                c10::DeviceTypeName(current, true), "; the runner is chosen once per process");
    return;
  }
  TORCH_CHECK(runner != emulated, "torchdevice: ", c10::DeviceTypeName(emulated, true),
              " cannot run on itself; a real ", c10::DeviceTypeName(emulated, true), " device needs no emulation");
  // An emulated device answers its hooks like a real one, but has no kernels of its own.
  TORCH_CHECK(!is_emulated_type(runner) || !slot_of(runner).chosen, "torchdevice: ",
              c10::DeviceTypeName(runner, true), " is emulated in this process and cannot run ",
              c10::DeviceTypeName(emulated, true), "; valid runners here: cpu");
  switch (runner) {
    case c10::DeviceType::CPU:
      slot.runner = std::make_unique<Runner>(c10::DeviceType::CPU);
      break;
    case c10::DeviceType::CUDA:
      // The hooks of a CUDA build report real GPUs; a CPU-only build has none to run on.
      TORCH_CHECK(at::detail::getCUDAHooks().hasCUDA(),
                  "torchdevice: the cuda runner needs a CUDA build of torch and an NVIDIA GPU, and this process "
                  "has neither; valid runners here: cpu");
      slot.runner = std::make_unique<Runner>(c10::DeviceType::CUDA);
      slot.runner->prepare();
      break;
    case c10::DeviceType::MPS:
      slot.runner.reset(make_mps_runner());
      slot.runner->prepare();
      break;
    default:
      TORCH_CHECK(false, "torchdevice: ", runner, " cannot be a runner; runners are cpu, cuda and mps");
  }
  slot.chosen = true;
}

#if !defined(__APPLE__)
Runner* make_mps_runner() {
  TORCH_CHECK(false, "torchdevice: the mps runner (Apple's GPU) is built only on macOS; valid runners here: cpu, "
                     "and cuda where torch is a CUDA build with an NVIDIA GPU");
}
#endif

} // namespace torchdevice
