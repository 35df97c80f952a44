// Random number generators of emulated devices.
//
// A generator reports the emulated device (so torch.Generator('cuda') and checkpointed RNG
// state behave as on a GPU) and keeps its state in a private CPU generator: CPU kernels
// accept only CPU generators, so the fallback hands them that inner generator. Seeding the
// CPU default generator therefore never changes cuda draws, and vice versa.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/GeneratorImpl.h>

namespace torchdevice {

class EmulatedGenerator final : public c10::GeneratorImpl {
 public:
  EmulatedGenerator(c10::Device device, uint64_t seed);

  void set_current_seed(uint64_t seed) override;
  void set_offset(uint64_t offset) override;
  uint64_t get_offset() const override;
  uint64_t current_seed() const override;
  uint64_t seed() override;
  void set_state(const c10::TensorImpl& new_state) override;
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override;

  // The CPU generator that holds the state; what CPU kernels receive.
  const at::Generator& host_generator() const { return host_; }

 private:
  EmulatedGenerator* clone_impl() const override;
  mutable at::Generator host_;  // mutable: its mutex is taken in const accessors
};

// While alive, the CPU default generator holds `gen`'s state (and `gen` is parked), so CPU
// kernels that draw from the default generator without taking a generator argument
// (native_dropout, and composites that call random ops with generator=None) draw from the
// emulated device's stream. On destruction the states are swapped back. A CPU random op on
// another thread during that window would draw from the device stream: documented limitation.
class DefaultGeneratorRedirect {
 public:
  explicit DefaultGeneratorRedirect(const at::Generator& host_gen);
  ~DefaultGeneratorRedirect();
  DefaultGeneratorRedirect(const DefaultGeneratorRedirect&) = delete;
  DefaultGeneratorRedirect& operator=(const DefaultGeneratorRedirect&) = delete;

 private:
  void swap_states();
  at::Generator host_;
};

// Default generator of device `index` (-1: current device), created on first use.
const at::Generator& default_generator(c10::DeviceType type, c10::DeviceIndex index);
at::Generator new_generator(c10::DeviceType type, c10::DeviceIndex index);

// The CPU generator a CPU kernel should draw from for `gen` (an emulated generator).
inline const at::Generator& host_generator_of(const at::Generator& gen) {
  return static_cast<EmulatedGenerator*>(gen.unsafeGetGeneratorImpl())->host_generator();
}

} // namespace torchdevice
