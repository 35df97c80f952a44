#include "runtime/generator.h"

#include "runtime/device.h"
#include "runtime/runner.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/DispatchKeySet.h>

#include <array>
#include <mutex>

namespace torchdevice {
namespace {

c10::DispatchKeySet keys_for(c10::DeviceType type) {
  return c10::DispatchKeySet(type == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA);
}

} // namespace

EmulatedGenerator::EmulatedGenerator(c10::Device device, at::Generator inner)
    : c10::GeneratorImpl(device, keys_for(device.type())), host_(std::move(inner)) {}

// The host generator's own mutex guards its state against kernels running on other threads.
void EmulatedGenerator::set_current_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(host_.mutex());
  host_.set_current_seed(seed);
}
void EmulatedGenerator::set_offset(uint64_t offset) {
  std::lock_guard<std::mutex> lock(host_.mutex());
  host_.set_offset(offset);
}
uint64_t EmulatedGenerator::get_offset() const {
  std::lock_guard<std::mutex> lock(host_.mutex());
  return host_.get_offset();
}
uint64_t EmulatedGenerator::current_seed() const {
  std::lock_guard<std::mutex> lock(host_.mutex());
  return host_.current_seed();
}
uint64_t EmulatedGenerator::seed() {
  std::lock_guard<std::mutex> lock(host_.mutex());
  return host_.seed();
}
void EmulatedGenerator::set_state(const c10::TensorImpl& new_state) {
  std::lock_guard<std::mutex> lock(host_.mutex());
  host_.unsafeGetGeneratorImpl()->set_state(new_state);
}
c10::intrusive_ptr<c10::TensorImpl> EmulatedGenerator::get_state() const {
  std::lock_guard<std::mutex> lock(host_.mutex());
  return host_.unsafeGetGeneratorImpl()->get_state();
}

EmulatedGenerator* EmulatedGenerator::clone_impl() const {
  std::lock_guard<std::mutex> lock(host_.mutex());
  return new EmulatedGenerator(device(), host_.clone());
}

DefaultGeneratorRedirect::DefaultGeneratorRedirect(const at::Generator& host_gen) : host_(host_gen) {
  swap_states();
}

DefaultGeneratorRedirect::~DefaultGeneratorRedirect() {
  swap_states();
}

void DefaultGeneratorRedirect::swap_states() {
  const at::Generator& cpu_default = at::detail::getDefaultCPUGenerator();
  if (cpu_default.unsafeGetGeneratorImpl() == host_.unsafeGetGeneratorImpl()) return;
  // Never hold these locks across a kernel: CPU kernels take the generator's mutex themselves.
  std::scoped_lock lock(const_cast<at::Generator&>(cpu_default).mutex(), host_.mutex());
  auto* a = at::check_generator<at::CPUGeneratorImpl>(cpu_default);
  auto* b = at::check_generator<at::CPUGeneratorImpl>(host_);
  const auto engine = a->engine();
  const auto next_float = a->next_float_normal_sample();
  const auto next_double = a->next_double_normal_sample();
  a->set_engine(b->engine());
  a->set_next_float_normal_sample(b->next_float_normal_sample());
  a->set_next_double_normal_sample(b->next_double_normal_sample());
  b->set_engine(engine);
  b->set_next_float_normal_sample(next_float);
  b->set_next_double_normal_sample(next_double);
}

const at::Generator& default_generator(c10::DeviceType type, c10::DeviceIndex index) {
  constexpr int kMaxDevices = 64;
  static std::once_flag flags[2][kMaxDevices];
  static std::array<std::array<at::Generator, kMaxDevices>, 2>* gens =
      new std::array<std::array<at::Generator, kMaxDevices>, 2>();
  const int s = type == c10::DeviceType::MPS ? 1 : 0;
  if (index < 0) {
    index = current_device(type);
  }
  check_device_index(type, index);
  std::call_once(flags[s][index], [&] {
    // Like CUDA, default generators start from the fixed default seed until seeded.
    const Runner& runner = runner_for(type);
    at::Generator inner = runner.is_cpu() ? runner.new_generator(index, c10::default_rng_seed_val)
                                          : runner.default_generator(index);
    (*gens)[s][index] = at::make_generator<EmulatedGenerator>(c10::Device(type, index), std::move(inner));
  });
  return (*gens)[s][index];
}

at::Generator new_generator(c10::DeviceType type, c10::DeviceIndex index) {
  if (index < 0) {
    index = current_device(type);
  }
  if (type == c10::DeviceType::CUDA) {
    // createCUDAGenerator's own check (torch.Generator(device='cuda:N') on a GPU).
    TORCH_CHECK(index < device_count(type), "The device_index is invalid.");
  }
  check_device_index(type, index);
  return at::make_generator<EmulatedGenerator>(c10::Device(type, index),
                                               runner_for(type).new_generator(index, c10::default_rng_seed_val));
}

} // namespace torchdevice
