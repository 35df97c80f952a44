#include "runtime/generator.h"

#include "runtime/device.h"
#include "runtime/runner.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/DispatchKeySet.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace torchdevice {

namespace {

// A CPU generator's whole state, to put it back exactly.
struct HostSnapshot {
  at::mt19937 engine;
  std::optional<float> next_float;
  std::optional<double> next_double;
};

using PhiloxKey = std::pair<uint64_t, uint64_t>;  // (seed, offset)

// The states get_state handed out that are still alive as tensors, each with the CPU generator's
// state at that point: set_state of the same 16 bytes (or of a clone of them, which is what
// torch.cuda.set_rng_state passes) replays exactly what followed. An entry lives as long as its
// tensor (torch.utils.checkpoint keeps one per checkpointed region until the recomputation).
class HandedOutStates {
 public:
  struct Entry {
    PhiloxKey key;
    HostSnapshot host;
    std::weak_ptr<HandedOutStates> owner;
    std::array<uint8_t, 16> bytes;  // the tensor's data
  };

  void add(Entry* e) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_[e->key].push_back(e);
  }
  void remove(Entry* e) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(e->key);
    if (it == entries_.end()) return;
    auto& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), e), list.end());
    if (list.empty()) entries_.erase(it);
  }
  std::optional<HostSnapshot> find(const PhiloxKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    return it->second.front()->host;  // equal keys were taken at the same point: equal states
  }

 private:
  std::mutex mutex_;
  std::map<PhiloxKey, std::vector<Entry*>> entries_;
};

void delete_entry(void* ctx) {
  auto* e = static_cast<HandedOutStates::Entry*>(ctx);
  if (auto owner = e->owner.lock()) owner->remove(e);
  delete e;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

c10::DispatchKeySet keys_for(c10::DeviceType type) {
  return c10::DispatchKeySet(type == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA);
}

} // namespace

struct GeneratorState : c10::intrusive_ptr_target {
  GeneratorState(at::Generator host_in, bool philox_in) : host(std::move(host_in)), philox(philox_in) {
    if (philox) seed = host.current_seed();
  }

  // Puts the CPU generator at (seed, offset). Called with host's mutex held.
  void position_host() {
    auto* cpu = at::check_generator<at::CPUGeneratorImpl>(host);
    if (auto snapshot = handed_out->find({seed, offset})) {
      cpu->set_engine(snapshot->engine);
      cpu->set_next_float_normal_sample(snapshot->next_float);
      cpu->set_next_double_normal_sample(snapshot->next_double);
    } else {
      // Offset 0 is the seed's own stream (the CPU's for the same seed); other offsets seed from both.
      cpu->set_current_seed(offset == 0 ? seed : splitmix64(seed ^ splitmix64(offset)));
    }
  }

  mutable at::Generator host;  // mutable: its mutex is taken in const accessors
  const bool philox;           // CUDA's (seed, offset) state: emulated cuda on the cpu runner
  uint64_t seed = 0;
  uint64_t offset = 0;
  std::shared_ptr<HandedOutStates> handed_out = std::make_shared<HandedOutStates>();
};

EmulatedGenerator::EmulatedGenerator(c10::Device device, at::Generator inner)
    : EmulatedGenerator(device, c10::make_intrusive<GeneratorState>(
                                    inner, device.type() == c10::DeviceType::CUDA && inner.device().is_cpu())) {}

EmulatedGenerator::EmulatedGenerator(c10::Device device, c10::intrusive_ptr<GeneratorState> state)
    : c10::GeneratorImpl(device, keys_for(device.type())), state_(std::move(state)) {}

const at::Generator& EmulatedGenerator::host_generator() const {
  return state_->host;
}

// The host generator's own mutex guards the state against kernels running on other threads.
void EmulatedGenerator::set_current_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  if (!state_->philox) return state_->host.set_current_seed(seed);
  state_->seed = seed;
  state_->offset = 0;
  state_->position_host();
}

void EmulatedGenerator::set_offset(uint64_t offset) {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  if (!state_->philox) return state_->host.set_offset(offset);
  TORCH_CHECK(offset % 4 == 0, "offset must be a multiple of 4");  // CUDAGeneratorImpl's check
  state_->offset = offset;
  state_->position_host();
}

uint64_t EmulatedGenerator::get_offset() const {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  return state_->philox ? state_->offset : state_->host.get_offset();
}

uint64_t EmulatedGenerator::current_seed() const {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  return state_->philox ? state_->seed : state_->host.current_seed();
}

uint64_t EmulatedGenerator::seed() {
  if (!state_->philox) {
    std::lock_guard<std::mutex> lock(state_->host.mutex());
    return state_->host.seed();
  }
  const uint64_t random = c10::detail::getNonDeterministicRandom(/*is_cuda=*/true);
  set_current_seed(random);
  return random;
}

void EmulatedGenerator::set_state(const c10::TensorImpl& new_state) {
  if (!state_->philox) {
    std::lock_guard<std::mutex> lock(state_->host.mutex());
    return state_->host.unsafeGetGeneratorImpl()->set_state(new_state);
  }
  // CUDAGeneratorImpl::set_state's checks: a byte tensor of the seed alone or seed and offset.
  at::detail::check_rng_state(new_state);
  const auto size = new_state.numel();
  TORCH_CHECK(size == 8 || size == 16, "RNG state is wrong size");
  const auto* bytes = new_state.data_dtype_initialized<uint8_t>();
  uint64_t seed = 0;
  int64_t offset = 0;
  std::memcpy(&seed, bytes, sizeof(seed));
  if (size == 16) std::memcpy(&offset, bytes + sizeof(seed), sizeof(offset));
  TORCH_CHECK(static_cast<uint64_t>(offset) % 4 == 0, "offset must be a multiple of 4");
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  state_->seed = seed;
  state_->offset = static_cast<uint64_t>(offset);
  state_->position_host();
}

c10::intrusive_ptr<c10::TensorImpl> EmulatedGenerator::get_state() const {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  if (!state_->philox) return state_->host.unsafeGetGeneratorImpl()->get_state();
  auto* cpu = at::check_generator<at::CPUGeneratorImpl>(state_->host);
  auto* entry = new HandedOutStates::Entry{{state_->seed, state_->offset},
                                           {cpu->engine(), cpu->next_float_normal_sample(),
                                            cpu->next_double_normal_sample()},
                                           state_->handed_out,
                                           {}};
  const auto offset = static_cast<int64_t>(state_->offset);
  std::memcpy(entry->bytes.data(), &state_->seed, sizeof(uint64_t));
  std::memcpy(entry->bytes.data() + sizeof(uint64_t), &offset, sizeof(int64_t));
  state_->handed_out->add(entry);
  // The tensor's memory is the entry: freeing the tensor forgets the entry.
  c10::DataPtr data(entry->bytes.data(), entry, &delete_entry, c10::Device(c10::DeviceType::CPU));
  auto storage = c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(), entry->bytes.size(),
                                                       std::move(data), /*allocator=*/nullptr, /*resizable=*/false);
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(std::move(storage)),
                                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                   caffe2::TypeMeta::Make<uint8_t>());
  impl->set_sizes_contiguous({static_cast<int64_t>(entry->bytes.size())});
  return impl;
}

// As CUDA's generators: a graph-safe state is this generator's state object itself, shared, so
// draws through either advance both (CUDA graphs register generators this way).
c10::intrusive_ptr<c10::GeneratorImpl> EmulatedGenerator::graphsafe_get_state() const {
  return c10::intrusive_ptr<c10::GeneratorImpl>::reclaim(new EmulatedGenerator(device(), state_));
}

void EmulatedGenerator::graphsafe_set_state(const c10::intrusive_ptr<c10::GeneratorImpl>& state) {
  auto* other = dynamic_cast<EmulatedGenerator*>(state.get());
  TORCH_CHECK(other != nullptr && other->device().type() == device().type(),
              "graphsafe_set_state: expected a ", c10::DeviceTypeName(device().type(), true), " generator state");
  state_ = other->state_;
}

void EmulatedGenerator::advance(uint64_t count) {
  if (!state_->philox) return;
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  state_->offset += std::max<uint64_t>(4, (count + 3) / 4 * 4);
}

EmulatedGenerator* EmulatedGenerator::clone_impl() const {
  std::lock_guard<std::mutex> lock(state_->host.mutex());
  auto state = c10::make_intrusive<GeneratorState>(state_->host.clone(), state_->philox);
  state->seed = state_->seed;
  state->offset = state_->offset;
  return new EmulatedGenerator(device(), std::move(state));
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
