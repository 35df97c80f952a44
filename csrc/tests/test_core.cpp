// C++ checks of the native core without Python: guard, allocator counters, factories, an op
// through the fallback and copies. Run by ctest; exits non-zero on the first failure.
#include "activate.h"
#include "dispatch/standin.h"
#include "runtime/allocator.h"
#include "runtime/caching_model.h"
#include "runtime/device.h"
#include "runtime/generator.h"
#include "runtime/runner.h"
#include "runtime/stat_lock.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

#define EXPECT(cond)                                                        \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                           \
    }                                                                       \
  } while (0)

template <typename F>
bool throws(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

const auto kCUDA = c10::DeviceType::CUDA;

void test_guard() {
  const auto* impl = c10::impl::getDeviceGuardImpl(kCUDA);
  EXPECT(impl->deviceCount() == 2);
  EXPECT(impl->getDevice() == c10::Device(kCUDA, 0));
  {
    c10::DeviceGuard guard(c10::Device(kCUDA, 1));
    EXPECT(torchdevice::current_device(kCUDA) == 1);
  }
  EXPECT(torchdevice::current_device(kCUDA) == 0);
  EXPECT(throws([&] { impl->setDevice(c10::Device(kCUDA, 7)); }));
}

void test_allocator_counters() {
  auto& alloc = torchdevice::allocator_for(kCUDA);
  const auto before = alloc.getDeviceStats(0).allocated_bytes[0].current;
  {
    auto t = at::empty({256}, at::TensorOptions().device(kCUDA).dtype(at::kFloat));
    EXPECT(alloc.getDeviceStats(0).allocated_bytes[0].current == before + 1024);
    EXPECT(alloc.getDeviceStats(0).allocated_bytes[0].peak >= before + 1024);
  }
  EXPECT(alloc.getDeviceStats(0).allocated_bytes[0].current == before);
}

void test_factory() {
  auto t = at::empty({2, 3}, at::TensorOptions().device(c10::Device(kCUDA, 1)));
  EXPECT(t.is_cuda());
  EXPECT(t.device() == c10::Device(kCUDA, 1));
  EXPECT(t.storage().device() == c10::Device(kCUDA, 1));
  EXPECT(throws([] { at::empty({1}, at::TensorOptions().device(c10::Device(kCUDA, 7))); }));
}

void test_op_matches_cpu() {
  auto a = at::randn({4, 5});
  auto b = at::randn({4, 5});
  auto expected = a.mm(b.t()) + 1;
  auto got = a.to(kCUDA).mm(b.to(kCUDA).t()) + 1;
  EXPECT(got.is_cuda());
  EXPECT(at::equal(got.cpu(), expected));
  // in-place keeps the object and the device
  auto c = a.to(kCUDA);
  auto* impl = c.unsafeGetTensorImpl();
  c.add_(1);
  EXPECT(c.unsafeGetTensorImpl() == impl && c.is_cuda());
  EXPECT(at::equal(c.cpu(), a + 1));
  // views share memory with their base
  auto v = c.view({20});
  v.zero_();
  EXPECT(c.sum().item<float>() == 0.0f);
  EXPECT(v.is_cuda() && v.storage().unsafeGetStorageImpl() == c.storage().unsafeGetStorageImpl());
}

void test_copies() {
  auto a = at::arange(10, at::kFloat);
  auto d0 = a.to(c10::Device(kCUDA, 0));
  auto d1 = d0.to(c10::Device(kCUDA, 1));
  EXPECT(d1.device() == c10::Device(kCUDA, 1));
  EXPECT(at::equal(d1.cpu(), a));
  EXPECT(!d1.cpu().is_cuda());
  // mixing devices raises as on a GPU
  EXPECT(throws([&] { (void)(d0 + d1); }));
  EXPECT(throws([&] { (void)(d0 + a); }));
  EXPECT(at::equal((d0 + at::scalar_tensor(2.0)).cpu(), a + 2));
}

void test_runner_choice() {
  const auto kMPS = c10::DeviceType::MPS;
  EXPECT(torchdevice::runner_for(kCUDA).is_cpu());
  // Chosen once: cuda already runs on the cpu runner.
  EXPECT(throws([] { torchdevice::set_runner(kCUDA, c10::DeviceType::MPS); }));
  torchdevice::set_runner(kCUDA, c10::DeviceType::CPU);  // the same choice again is fine
  // A device cannot run itself; the mps runner is built only on macOS; the cuda runner needs a GPU.
  EXPECT(throws([&] { torchdevice::set_runner(kMPS, kMPS); }));
#if !defined(__APPLE__)
  EXPECT(throws([] { delete torchdevice::make_mps_runner(); }));
#endif
  EXPECT(throws([&] { torchdevice::set_runner(kMPS, kCUDA); }));  // cuda is emulated here
  EXPECT(torchdevice::runner_for(kMPS).is_cpu());
}

void test_standins_follow_the_runner() {
  // A device runner's stand-in is a tensor of the runner's type over the same memory. (Built
  // here with the runner type equal to the emulated one, the only device type this machine has
  // an allocator for; the stand-in must still take key, device and allocator from the runner.)
  c10::Allocator* runner_memory = c10::GetCPUAllocator();
  const torchdevice::Runner device_runner(kCUDA, runner_memory);
  auto t = at::arange(24, at::TensorOptions().device(c10::Device(kCUDA, 1))).view({4, 6}).narrow(1, 2, 3);
  torchdevice::dispatch::StandIns standins(device_runner);
  at::Tensor standin = standins.make(t);
  EXPECT(standin.key_set().has_backend(c10::BackendComponent::CUDABit));
  EXPECT(standin.device() == device_runner.device_for(1));
  EXPECT(standin.data_ptr() == t.data_ptr());
  EXPECT(standin.sizes() == t.sizes() && standin.strides() == t.strides());
  EXPECT(standin.storage_offset() == t.storage_offset());
  EXPECT(standin.storage().allocator() == runner_memory);
  EXPECT(standins.original_of(standin.unsafeGetTensorImpl()) == &t);

  torchdevice::dispatch::StandIns host_standins;  // the cpu runner
  at::Tensor host = host_standins.make(t);
  EXPECT(host.device().is_cpu() && host.data_ptr() == t.data_ptr());
}

// The biased lock: the owner's plain-store path and the other threads' revocation must still
// exclude each other, including while the owner is inside (no update may be lost).
void test_stat_lock_excludes() {
  torchdevice::StatLock lock;
  int64_t counter = 0;  // guarded by `lock`; unsynchronised increments would lose updates
  constexpr int kPerThread = 200000;
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      std::lock_guard<torchdevice::StatLock> guard(lock);
      counter = counter + 1;
    }
  };
  work();  // this thread becomes the owner
  std::vector<std::thread> threads;
  threads.emplace_back(work);  // revokes while the owner keeps going
  threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  EXPECT(counter == 4 * kPerThread);
}

// Emulated tensors allocated and freed on several threads leave exact counters.
void test_allocator_counters_from_threads() {
  auto& alloc = torchdevice::allocator_for(kCUDA);
  const auto before = alloc.getDeviceStats(0).allocated_bytes[0].current;
  auto work = [] {
    for (int i = 0; i < 2000; ++i) {
      auto a = at::ones({16}, at::TensorOptions().device(kCUDA).dtype(at::kFloat));
      auto b = a + a;  // the CPU kernel's output, adopted
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  EXPECT(alloc.getDeviceStats(0).allocated_bytes[0].current == before);
}

} // namespace

// Freed neighbours merge back into one unsplit segment, which empty_cache then releases.
void test_caching_model_merges_and_releases() {
  torchdevice::CachingModel model;
  int a, b, c;  // the real blocks' addresses are only keys
  const int64_t unlimited = INT64_MAX;
  EXPECT(model.allocate(&a, 100, unlimited) && model.allocate(&b, 600, unlimited) && model.allocate(&c, 512, unlimited));
  const auto& s = model.stats();
  EXPECT(model.allocated() == 512 + 1024 + 512 && model.reserved() == (2 << 20));
  model.free(&b);  // a hole between a and c
  EXPECT(s.inactive_split[0].current == 2 && s.inactive_split_bytes[0].current == (2 << 20) - 1024);
  model.free(&a);  // merges with the hole
  EXPECT(s.inactive_split[0].current == 2 && model.segments()[0].blocks.size() == 3);
  model.free(&c);  // everything merges: one free block, the whole segment
  EXPECT(s.inactive_split[0].current == 0 && model.segments()[0].blocks.size() == 1);
  EXPECT(model.allocated() == 0 && model.reserved() == (2 << 20));
  model.release_cached();
  EXPECT(model.reserved() == 0 && model.segments().empty() && s.num_device_free == 1);
  // Past the limit even after releasing the cache: refused, after one retry.
  EXPECT(!model.allocate(&a, 30 << 20, 16 << 20) && s.num_alloc_retries == 1 && model.reserved() == 0);
}

// TORCHDEVICE_TOTAL_MEMORY's grammar: exact binary units; nothing under a byte or over 2^64-1.
void test_memory_sizes() {
  using torchdevice::parse_memory_size;
  EXPECT(parse_memory_size("25769803776") == 25769803776ull);
  EXPECT(parse_memory_size("24GB") == (24ull << 30) && parse_memory_size("24 GiB") == (24ull << 30));
  EXPECT(parse_memory_size("0.5 tb") == (1ull << 39) && parse_memory_size("512m") == (512ull << 20));
  EXPECT(parse_memory_size("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"banana", "0", "0.1", "inf", "nan", "1e30", "-5", "18446744073709551616", "16EB", ""}) {
    EXPECT(throws([&] { parse_memory_size(bad); }));
  }
}

// The emulated cuda's process has a guard for 'mps' only to say how to emulate mps instead.
void test_mps_hint_guard() {
  EXPECT(c10::impl::hasDeviceGuardImpl(c10::DeviceType::MPS));
  const auto* mps = c10::impl::getDeviceGuardImpl(c10::DeviceType::MPS);
  EXPECT(mps->deviceCount() == 0);
  bool named = false;
  try {
    mps->exchangeDevice(c10::Device(c10::DeviceType::MPS, 0));
  } catch (const c10::NotImplementedError& e) {
    named = std::string(e.what()).find("TORCHDEVICE_EMULATE=mps") != std::string::npos;
  }
  EXPECT(named);
}

// CUDA's state format: 16 bytes of (seed, offset); random ops advance the offset by what they
// returned (multiples of 4), and a handed-out state replays the numbers that followed it.
void test_generator_philox_state() {
  at::Generator gen = torchdevice::new_generator(kCUDA, 0);
  gen.set_current_seed(42);
  const at::Tensor state = gen.get_state();
  EXPECT(state.numel() == 16 && state.scalar_type() == at::kByte);
  EXPECT(gen.current_seed() == 42 && gen.get_offset() == 0);
  const auto opts = at::TensorOptions().device(kCUDA);
  const at::Tensor first = at::randn({10}, gen, opts);
  EXPECT(gen.get_offset() == 12);
  gen.set_state(state.clone());
  EXPECT(at::equal(at::randn({10}, gen, opts).cpu(), first.cpu()));
  // The seed's stream is the CPU's for that seed.
  EXPECT(at::equal(first.cpu(), at::randn({10}, at::make_generator<at::CPUGeneratorImpl>(42))));
  EXPECT(throws([&] { gen.set_offset(6); }));
  EXPECT(throws([&] { gen.set_state(at::zeros({5}, at::kByte)); }));
}

int main() {
  torchdevice::activate(kCUDA, 2);
  const std::vector<std::pair<std::string, std::function<void()>>> tests = {
      {"guard", test_guard},
      {"allocator_counters", test_allocator_counters},
      {"factory", test_factory},
      {"op_matches_cpu", test_op_matches_cpu},
      {"copies", test_copies},
      {"runner_choice", test_runner_choice},
      {"standins_follow_the_runner", test_standins_follow_the_runner},
      {"stat_lock_excludes", test_stat_lock_excludes},
      {"allocator_counters_from_threads", test_allocator_counters_from_threads},
      {"caching_model_merges_and_releases", test_caching_model_merges_and_releases},
      {"memory_sizes", test_memory_sizes},
      {"mps_hint_guard", test_mps_hint_guard},
      {"generator_philox_state", test_generator_philox_state},
  };
  int failed_tests = 0;
  for (const auto& [name, fn] : tests) {
    const int before = failures;
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  FAILED %s: unexpected exception: %s\n", name.c_str(), e.what());
      ++failures;
    }
    const bool ok = failures == before;
    failed_tests += ok ? 0 : 1;
    std::printf("%s %s\n", ok ? "[ PASS ]" : "[ FAIL ]", name.c_str());
  }
  std::printf("%zu passed, %d failed\n", tests.size() - failed_tests, failed_tests);
  return failed_tests == 0 ? 0 : 1;
}
