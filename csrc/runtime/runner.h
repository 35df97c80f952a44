// The runner: the real device whose kernels execute an emulated device's ops.
//
// The emulated device type (what tensors report: cuda or mps) and the runner (what computes:
// cpu, mps or cuda) are separate choices. Emulated memory is runner memory; an op runs the
// runner's kernel on stand-ins, runner tensors over the same memory (dispatch/standin.h).
//   cpu  - any machine; host memory (the only runner this project's CI machines can execute).
//   cuda - an NVIDIA GPU running emulated mps (MPS-written code on CUDA machines).
//   mps  - Apple's GPU running emulated cuda; linked only on macOS (runtime/mps_runner.cpp).
// Everything here goes through c10's device-generic interfaces (allocator, guard, hooks), so a
// runner needs no device-specific code beyond its policy.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Allocator.h>
#include <c10/core/Device.h>
#include <c10/core/DispatchKey.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <string>
#include <vector>

namespace torchdevice {

class Runner {
 public:
  // `allocator`: the device runner's memory (prepare() finds it for a real device).
  explicit Runner(c10::DeviceType type, c10::Allocator* allocator = nullptr);
  virtual ~Runner() = default;

  c10::DeviceType type() const { return type_; }
  c10::DispatchKey key() const { return key_; }
  bool is_cpu() const { return type_ == c10::DeviceType::CPU; }

  // The runner device behind emulated device `emulated_index`.
  c10::Device device_for(c10::DeviceIndex emulated_index) const {
    return is_cpu() ? c10::Device(c10::DeviceType::CPU) : device_behind(emulated_index);
  }
  // Where emulated memory really comes from (nullptr for cpu: the emulated allocator then keeps
  // its own header-tagged host blocks, the cheapest way to count bytes).
  c10::Allocator* allocator() const { return allocator_; }
  // Waits for the work queued on the runner device (a no-op on cpu, whose kernels are synchronous).
  void synchronize(c10::DeviceIndex emulated_index) const;
  // A new generator random kernels of this runner accept, for emulated device `emulated_index`.
  at::Generator new_generator(c10::DeviceIndex emulated_index, uint64_t seed) const;
  // The runner's own default generator (device runners: what their kernels draw from without a
  // generator argument). Not for the cpu runner, whose emulated generators are private.
  const at::Generator& default_generator(c10::DeviceIndex emulated_index) const;

  // A device runner: initializes the real device and keeps what later needs its real hooks
  // (the default generators). Called once, before the runner's own type is switched off as an
  // accelerator (one accelerator per process: the emulated one; see activate.cpp).
  void prepare();
  // The dtypes the runner computes in (MPS: no float64).
  virtual bool supports_dtype(c10::ScalarType dtype) const { return true; }

  // Whether any op can lack a runner kernel (a device runner, or the test hook is in use).
  bool may_lack_kernels() const;
  // Whether `op` has a kernel of its own on the runner. Ops without one run on the CPU
  // explicitly (copies in and out), and are counted in census().
  bool has_kernel(const c10::OperatorHandle& op) const;
  void count_host_fallback(const c10::OperatorHandle& op) const;
  std::map<std::string, int64_t> census() const;
  // Test hook: treat `op_name` (e.g. "aten::atan2") as missing on this runner, so the CPU-side
  // path is exercised with the cpu runner too. An empty name clears the list and the census.
  void simulate_missing_kernel(const std::string& op_name);

 protected:
  // Same ordinal on the runner by default (a CUDA runner backs mps:0 with cuda:0).
  virtual c10::Device device_behind(c10::DeviceIndex emulated_index) const {
    return c10::Device(type_, emulated_index);
  }

 private:
  c10::DeviceType type_;
  c10::DispatchKey key_;
  std::vector<at::Generator> default_generators_;  // per runner device index
  c10::Allocator* allocator_ = nullptr;
};

// The cpu runner (what fast paths and tests use directly).
const Runner& cpu_runner();

// The runner of emulated device type `emulated` (cpu until set_runner).
const Runner& runner_for(c10::DeviceType emulated);
Runner& mutable_runner_for(c10::DeviceType emulated);

// Chooses the runner of `emulated` once, before anything was emulated. Refuses combinations this
// build or this machine cannot run, naming the valid ones.
void set_runner(c10::DeviceType emulated, c10::DeviceType runner);

// Defined in runtime/mps_runner.cpp, linked only on macOS; elsewhere a stub that refuses.
Runner* make_mps_runner();

} // namespace torchdevice
