// Python bindings of torchdevice's native core (torchdevice._C).
#include "activate.h"
#include "dispatch/registration.h"
#include "python/legacy_types.h"
#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/pinned_memory.h"
#include "runtime/generator.h"
#include "runtime/kernel_clock.h"
#include "runtime/runner.h"
#include "runtime/timeline.h"

#include <ATen/Context.h>
#include <ATen/native/Resize.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/utils/device_lazy_init.h>
#include <torch/csrc/utils/pybind.h>

#include <unordered_set>

namespace py = pybind11;

namespace {

c10::DeviceType parse_type(const std::string& name) {
  if (name == "cuda") return c10::DeviceType::CUDA;
  if (name == "mps") return c10::DeviceType::MPS;
  throw py::value_error("torchdevice: emulated device type must be 'cuda' or 'mps', got '" + name + "'");
}

c10::DeviceType parse_runner(const std::string& name) {
  if (name == "cpu") return c10::DeviceType::CPU;
  if (name == "cuda") return c10::DeviceType::CUDA;
  if (name == "mps") return c10::DeviceType::MPS;
  throw py::value_error("torchdevice: runner must be 'cpu', 'cuda' or 'mps', got '" + name + "'");
}

// torch.cuda.memory_stats() keys: "<stat>.<pool>.<metric>" plus plain counters.
py::dict memory_stats(const std::string& type, c10::DeviceIndex device) {
  const auto s = torchdevice::allocator_for(parse_type(type)).getDeviceStats(device);
  py::dict out;
  const char* pools[] = {"all", "small_pool", "large_pool"};
  auto add_array = [&](const char* name, const c10::CachingAllocator::StatArray& arr) {
    for (size_t i = 0; i < arr.size(); ++i) {
      const std::string prefix = std::string(name) + "." + pools[i] + ".";
      out[py::str(prefix + "current")] = arr[i].current;
      out[py::str(prefix + "peak")] = arr[i].peak;
      out[py::str(prefix + "allocated")] = arr[i].allocated;
      out[py::str(prefix + "freed")] = arr[i].freed;
    }
  };
  add_array("allocation", s.allocation);
  add_array("segment", s.segment);
  add_array("active", s.active);
  add_array("inactive_split", s.inactive_split);
  add_array("allocated_bytes", s.allocated_bytes);
  add_array("reserved_bytes", s.reserved_bytes);
  add_array("active_bytes", s.active_bytes);
  add_array("inactive_split_bytes", s.inactive_split_bytes);
  add_array("requested_bytes", s.requested_bytes);
  out["num_alloc_retries"] = s.num_alloc_retries;
  out["num_ooms"] = s.num_ooms;
  out["num_sync_all_streams"] = s.num_sync_all_streams;
  out["num_device_alloc"] = s.num_device_alloc;
  out["num_device_free"] = s.num_device_free;
  out["max_split_size"] = -1;
  out["oversize_allocations.current"] = 0;
  out["oversize_allocations.peak"] = 0;
  out["oversize_allocations.allocated"] = 0;
  out["oversize_allocations.freed"] = 0;
  out["oversize_segments.current"] = 0;
  out["oversize_segments.peak"] = 0;
  out["oversize_segments.allocated"] = 0;
  out["oversize_segments.freed"] = 0;
  return out;
}

} // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchdevice native core: emulated cuda/mps devices over host memory";

  m.def("activate", [](const std::string& type, int count, const std::string& runner) {
    auto result = torchdevice::activate(parse_type(type), count, parse_runner(runner));
    py::dict info;
    info["hooks_route"] = result.hooks_route;
    info["fallback_registrations"] = result.fallback_registrations;
    return info;
  }, py::arg("device_type"), py::arg("device_count"), py::arg("runner") = "cpu");

  // Kernels libraries registered on the device key after activation (ops/extensions.py names
  // them: the key's registrations that appeared while a library was loaded).
  m.def("adopt_device_kernels", [](const std::string& type, const std::vector<std::string>& names) {
    std::vector<c10::OperatorName> ops;
    ops.reserve(names.size());
    for (const auto& full : names) {
      // "ns::op.overload" (the dispatcher's registration listing); operator names hold no '.'.
      const auto dot = full.find('.', full.find("::"));
      ops.push_back(dot == std::string::npos ? c10::OperatorName(full, "")
                                             : c10::OperatorName(full.substr(0, dot), full.substr(dot + 1)));
    }
    return torchdevice::dispatch::adopt_device_kernels(parse_type(type), ops);
  }, py::arg("device_type"), py::arg("op_names"));

  m.def("set_profiler_memory_reporting", [](bool on) { torchdevice::EmulatedAllocator::set_profiler_reporting(on); },
        "Allocations and frees of emulated memory are reported to torch.profiler while on (ops/profiler.py).");
  m.def("set_kernel_timing", [](bool on) { torchdevice::kernel_clock::set_timing(on); },
        "Runner kernels are timed for the profiler's device time while on (runtime/kernel_clock.h); the "
        "profiler's first device event switches it on, ops/profiler.py off when the last profiler stops.");
  m.def("kernel_timing", [] { return torchdevice::kernel_clock::timing(); });

  // The memory history (ops/memory_history.py): `observer(allocated, ptr, nbytes, device)` on
  // every allocation and free of emulated memory while set; None switches it off.
  m.def("set_memory_history_observer", [](py::object observer) {
    if (observer.is_none()) {
      torchdevice::EmulatedAllocator::set_history_observer({});
      return;
    }
    // Released with the GIL held, whichever thread drops the last reference.
    std::shared_ptr<py::object> held(new py::object(std::move(observer)), [](py::object* o) {
      if (!Py_IsInitialized()) return;  // at exit: leaked, as the interpreter is gone
      py::gil_scoped_acquire gil;
      delete o;
    });
    torchdevice::EmulatedAllocator::set_history_observer(
        [held](bool allocated, void* ptr, size_t nbytes, c10::DeviceIndex device) {
          if (!Py_IsInitialized()) return;
          py::gil_scoped_acquire gil;
          try {
            (*held)(allocated, reinterpret_cast<uintptr_t>(ptr), nbytes, static_cast<int>(device));
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("torchdevice memory history");
          }
        });
  }, py::arg("observer"));

  // The emulated blocks behind `tensors`' storages, once each: (device, address, bytes), the
  // blocks a memory snapshot lists besides those allocated while history was recorded.
  m.def("emulated_blocks", [](const std::vector<at::Tensor>& tensors) {
    std::vector<std::tuple<int, uintptr_t, size_t>> blocks;
    std::unordered_set<const void*> seen;
    for (const at::Tensor& t : tensors) {
      if (!t.defined() || !t.has_storage()) continue;
      const c10::Storage& storage = t.storage();
      if (!storage || !seen.insert(storage.unsafeGetStorageImpl()).second) continue;
      if (auto block = torchdevice::EmulatedAllocator::block_of(storage.data_ptr())) {
        blocks.emplace_back(block->device, reinterpret_cast<uintptr_t>(block->address), block->nbytes);
      }
    }
    return blocks;
  }, py::arg("tensors"));

  // The runner: which device computes, the ops it lacks (run on the CPU, counted), and the wait
  // for its queued work.
  m.def("runner", [](const std::string& type) {
    return c10::DeviceTypeName(torchdevice::runner_for(parse_type(type)).type(), /*lower_case=*/true);
  });
  m.def("runner_census", [](const std::string& type) { return torchdevice::runner_for(parse_type(type)).census(); });
  m.def("simulate_missing_kernel", [](const std::string& type, const std::string& op_name) {
    torchdevice::mutable_runner_for(parse_type(type)).simulate_missing_kernel(op_name);
  }, py::arg("device_type"), py::arg("op_name"),
     "Test hook: run `op_name` ('aten::atan2') as if the runner had no kernel for it ('' clears).");
  m.def("synchronize", [](const std::string& type, int index) {
    py::gil_scoped_release no_gil;
    // The guard's: the runner's queue, then the streams' timeline (runtime/timeline.h).
    c10::impl::getDeviceGuardImpl(parse_type(type))->synchronizeDevice(static_cast<c10::DeviceIndex>(index));
  });
  m.def("keep_stream_busy", [](const std::string& type, int index, int64_t stream_id, int64_t nanoseconds) {
    const c10::Stream stream(c10::Stream::UNSAFE, c10::Device(parse_type(type), static_cast<c10::DeviceIndex>(index)),
                             stream_id);
    torchdevice::timeline::keep_busy(stream, std::chrono::nanoseconds(nanoseconds));
  }, py::arg("device_type"), py::arg("index"), py::arg("stream_id"), py::arg("nanoseconds"),
     "Queues `nanoseconds` of work on a stream (torch.cuda._sleep's spin kernel).");
  m.def("stream_ready_ns", [](const std::string& type, int index, int64_t stream_id) {
    const c10::Stream stream(c10::Stream::UNSAFE, c10::Device(parse_type(type), static_cast<c10::DeviceIndex>(index)),
                             stream_id);
    const auto when = std::max(torchdevice::timeline::Clock::now(), torchdevice::timeline::ready_at(stream));
    return std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count();
  }, "When the stream reaches work queued now, in steady-clock nanoseconds (an event's timestamp).");

  m.def("device_count", [](const std::string& type) { return torchdevice::device_count(parse_type(type)); });
  // What torch._C._cuda_init does: ATen's per-device "initialized" flag, which is_pinned() and
  // others consult before asking the hooks (an uninitialized device has no pinned memory).
  m.def("lazy_init_device", [](const std::string& type) { at::globalContext().lazyInitDevice(parse_type(type)); });
  // torch's poison_fork for the emulated device: the next Python-level CUDA use runs
  // torch.cuda._lazy_init again (which raises in a bad fork), and ops on inherited tensors fail.
  m.def("poison_after_fork", [](const std::string& type) {
    torch::utils::set_requires_device_init(parse_type(type), true);
    torchdevice::poison_after_fork();
  });
  m.def("set_device_count", [](const std::string& type, int n) { torchdevice::set_device_count(parse_type(type), n); });
  m.def("current_device", [](const std::string& type) { return int(torchdevice::current_device(parse_type(type))); });
  m.def("set_device", [](const std::string& type, int index) {
    torchdevice::set_current_device(parse_type(type), static_cast<c10::DeviceIndex>(index));
  });
  m.def("check_device", [](const std::string& type, int index) {
    torchdevice::check_device_index(parse_type(type), static_cast<c10::DeviceIndex>(index));
  });

  m.def("memory_stats", &memory_stats, py::arg("device_type"), py::arg("device"));
  m.def("memory_allocated", [](const std::string& type, c10::DeviceIndex device) {
    return torchdevice::allocator_for(parse_type(type)).getDeviceStats(device).allocated_bytes[0].current;
  });
  m.def("empty_cache", [](const std::string& type) { torchdevice::allocator_for(parse_type(type)).emptyCache({0, 0}); });
  m.def("models_caching", [](const std::string& type) { return torchdevice::allocator_for(parse_type(type)).models_caching(); },
        "Whether the counts follow CUDA's caching allocator (TORCHDEVICE_CUDA_CACHING=1).");
  // The caching model's segments: (address, size, is_small, [(address, size, requested, allocated)]).
  m.def("modelled_segments", [](const std::string& type, c10::DeviceIndex device) {
    py::list out;
    for (const auto& segment : torchdevice::allocator_for(parse_type(type)).modelled_segments(device)) {
      py::list blocks;
      for (const auto& b : segment.blocks) {
        blocks.append(py::make_tuple(b.address, b.size, b.requested, b.allocated));
      }
      out.append(py::make_tuple(segment.address, segment.size, segment.small, blocks));
    }
    return out;
  });
  m.def("reset_peak_memory_stats", [](const std::string& type, c10::DeviceIndex device) {
    torchdevice::allocator_for(parse_type(type)).resetPeakStats(device);
  });
  m.def("reset_accumulated_memory_stats", [](const std::string& type, c10::DeviceIndex device) {
    torchdevice::allocator_for(parse_type(type)).resetAccumulatedStats(device);
  });
  m.def("mem_get_info", [](const std::string& type, c10::DeviceIndex device) {
    return torchdevice::allocator_for(parse_type(type)).getMemoryInfo(device);
  });
  m.def("set_memory_fraction", [](const std::string& type, double fraction, c10::DeviceIndex device) {
    torchdevice::allocator_for(parse_type(type)).set_memory_fraction(fraction, device);
  });
  m.def("memory_fraction", [](const std::string& type, c10::DeviceIndex device) {
    return torchdevice::allocator_for(parse_type(type)).memory_fraction(device);
  });
  m.def("total_memory", [](const std::string& type) { return torchdevice::allocator_for(parse_type(type)).total_memory(); });
  m.def("set_total_memory", [](const std::string& type, size_t bytes) {
    torchdevice::allocator_for(parse_type(type)).set_total_memory(bytes);
  });

  m.def("host_memory_stats", [] {
    const auto s = torchdevice::host_stats();
    auto stat = [](const c10::CachingAllocator::Stat& st) {
      py::dict d;
      d["current"] = st.current;
      d["peak"] = st.peak;
      d["allocated"] = st.allocated;
      d["freed"] = st.freed;
      return d;
    };
    auto duration = [](const torchdevice::HostDuration& t) {
      py::dict d;
      d["total"] = t.total_us;
      d["max"] = t.max_us;
      d["min"] = t.min_us;
      d["count"] = t.count;
      return d;
    };
    py::dict out;
    out["allocations"] = stat(s.allocations);
    out["allocated_bytes"] = stat(s.allocated_bytes);
    out["active_requests"] = stat(s.active_requests);
    out["active_bytes"] = stat(s.active_bytes);
    out["num_host_alloc"] = s.num_host_alloc;
    out["num_host_free"] = s.num_host_free;
    out["host_alloc_time"] = duration(s.host_alloc_time);
    out["host_free_time"] = duration(s.host_free_time);
    return out;
  });
  m.def("host_empty_cache", &torchdevice::host_empty_cache);
  m.def("host_register", [](uintptr_t ptr, size_t nbytes) {
    return torchdevice::host_register(reinterpret_cast<const void*>(ptr), nbytes);
  });
  m.def("host_unregister", [](uintptr_t ptr) { return torchdevice::host_unregister(reinterpret_cast<const void*>(ptr)); });
  m.def("reset_peak_host_memory_stats", &torchdevice::reset_host_peak_stats);
  m.def("reset_accumulated_host_memory_stats", &torchdevice::reset_host_accumulated_stats);

  // Storage.resize_ on an emulated storage: torch's binding only knows CPU and real CUDA.
  // The storage is passed as a tensor viewing it (torch.empty(0, device=...).set_(storage)).
  m.def("resize_storage_bytes", [](const at::Tensor& view, size_t nbytes) {
    c10::StorageImpl* storage = view.storage().unsafeGetStorageImpl();
    TORCH_CHECK(torchdevice::is_emulated_type(storage->device_type()),
                "torchdevice: resize_storage_bytes expects an emulated device storage, got ", storage->device());
    const c10::Device device = storage->device();
    c10::DeviceGuard guard(device);
    at::native::resize_bytes_cpu(storage, nbytes);
    if (nbytes == 0) {
      // resize_bytes_cpu leaves an empty CPU DataPtr; an emptied device storage stays on its device.
      storage->set_data_ptr_noswap(c10::DataPtr(nullptr, device));
    }
  });

  m.def("default_generator", [](const std::string& type, int index) {
    const auto& gen = torchdevice::default_generator(parse_type(type), static_cast<c10::DeviceIndex>(index));
    return py::reinterpret_steal<py::object>(THPGenerator_initDefaultGenerator(gen));
  });

  m.def("install_legacy_constructor", &torchdevice::python::install_legacy_constructor, py::arg("tensor_type"),
        py::arg("dtype"));
  m.def("restore_legacy_constructors", &torchdevice::python::restore_legacy_constructors);
}
