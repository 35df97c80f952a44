// Random number generators of emulated devices.
//
// A generator reports the emulated device (so torch.Generator('cuda') and checkpointed RNG
// state behave as on a GPU) and keeps its state in an inner generator of the runner: kernels
// accept only their own device's generators, so the fallback hands them that inner generator.
// On the cpu runner it is a private CPU generator (seeding the CPU default generator never
// changes cuda draws, and vice versa); on a device runner the emulated default generator wraps
// the runner's default generator, which that runner's kernels draw from without an argument.
//
// Emulated cuda on the cpu runner keeps CUDA's state format: a seed and a Philox offset, the 16
// bytes of get_state/set_state, which random ops advance (advance()). The CPU generator behind
// it is always "at" (seed, offset): seeding gives the CPU's own stream for that seed, a state
// this process handed out restores to exactly the numbers that followed it, and any other state
// (one saved on a GPU, or in another process) to a CPU generator seeded from (seed, offset).
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/GeneratorImpl.h>

namespace torchdevice {

struct GeneratorState;  // generator.cpp

class EmulatedGenerator final : public c10::GeneratorImpl {
 public:
  EmulatedGenerator(c10::Device device, at::Generator inner);

  void set_current_seed(uint64_t seed) override;
  void set_offset(uint64_t offset) override;
  uint64_t get_offset() const override;
  uint64_t current_seed() const override;
  uint64_t seed() override;
  void set_state(const c10::TensorImpl& new_state) override;
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override;
  void graphsafe_set_state(const c10::intrusive_ptr<c10::GeneratorImpl>& state) override;
  c10::intrusive_ptr<c10::GeneratorImpl> graphsafe_get_state() const override;

  // The runner generator that holds the state; what the runner's kernels receive.
  const at::Generator& host_generator() const;

  // After a random op drew `count` numbers from this generator: the Philox offset moves on, as a
  // CUDA kernel moves it (by the numbers drawn, in CUDA's multiples of 4).
  void advance(uint64_t count);

 private:
  EmulatedGenerator(c10::Device device, c10::intrusive_ptr<GeneratorState> state);
  EmulatedGenerator* clone_impl() const override;
  c10::intrusive_ptr<GeneratorState> state_;
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

// The runner generator a kernel should draw from for `gen` (an emulated generator).
inline const at::Generator& host_generator_of(const at::Generator& gen) {
  return static_cast<EmulatedGenerator*>(gen.unsafeGetGeneratorImpl())->host_generator();
}

} // namespace torchdevice
