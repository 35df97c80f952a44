#include "dispatch/fast_paths.h"

#include "dispatch/device_check.h"
#include "dispatch/standin.h"
#include "runtime/device.h"
#include "runtime/hot_path.h"
#include "runtime/kernel_clock.h"

#include <ATen/Operators.h>

#include <array>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchdevice::dispatch {
namespace {

// One call's state: the stand-ins, the (at most kMutable) mutated arguments, the device.
template <c10::DeviceType kType, size_t kMutable>
class FastCall {
 public:
  // Arguments are lowered in order (as the fallback does), so the mixed-device error names the
  // same devices. Each overload returns what the CPU kernel receives in the argument's place.
  StandInRef lower(const at::Tensor& t) {
    if (!t.defined() || !devices_.note(t, [] { return false; })) return StandInRef::borrow(t);
    return standins.make_reused(t);
  }
  at::Tensor lower(at::Tensor& t) {  // in-place self / out=: the caller's tensor is returned
    if (!t.defined() || !devices_.note(t, [] { return false; }, /*written=*/true)) return t;
    at::Tensor standin = standins.make_reused(t).get();
    mutated_[mutated_count_++] = {standin, &t};
    return standin;
  }
  std::optional<at::Tensor> lower(const std::optional<at::Tensor>& t) {
    if (!t.has_value()) return t;
    return lower(*t).get();
  }
  std::vector<at::Tensor> lower(at::TensorList list) {
    std::vector<at::Tensor> lowered;
    lowered.reserve(list.size());
    // Lists (foreach ops over all parameters) would cycle through the reuse cache without ever
    // hitting it: their stand-ins are made fresh.
    for (const at::Tensor& t : list) {
      lowered.push_back(t.defined() && devices_.note(t, [] { return false; }) ? standins.make(t) : t);
    }
    return lowered;
  }
  template <class T>
  T&& lower(T&& other) {  // scalars, sizes, dtypes, flags: unchanged
    return std::forward<T>(other);
  }

  // After the CPU kernel ran: mutated arguments get the stand-ins' new shape or buffer.
  void sync_mutated() {
    for (size_t i = 0; i < mutated_count_; ++i) standins.sync_back(mutated_[i].standin, *mutated_[i].original);
  }

  // Results: an argument's stand-in -> that argument; a view of a stand-in -> a view of the
  // original storage; a fresh CPU tensor -> adopted by the device.
  at::Tensor map(at::Tensor out) {
    if (!out.defined() || out.device().type() != c10::DeviceType::CPU) return out;
    c10::TensorImpl* impl = out.unsafeGetTensorImpl();
    const c10::Storage& out_storage = impl->unsafe_storage();
    c10::StorageImpl* storage = out_storage.unsafeGetStorageImpl();
    // A tensor and a storage only `out` holds are the kernel's own: no stand-in (this call
    // holds those) and no view of one (it shares the stand-in's storage). The common case.
    if (out.use_count() == 1 && storage != nullptr && out_storage.use_count() == 1 && out.layout() == c10::kStrided) {
      adopt(out);
      return out;
    }
    if (const at::Tensor* original = standins.original_of(impl)) return *original;
    if (out.layout() != c10::kStrided) return out;
    if (c10::StorageImpl* original_storage = standins.original_storage_of(storage)) {
      rebase_view(out, original_storage);
    } else {
      adopt(out);
    }
    return out;
  }
  void adopt(const at::Tensor& out) {
    // Fast paths run only on the cpu runner, where emulated cuda takes every dtype.
    if constexpr (kType != c10::DeviceType::CUDA) check_dtype_supported(kType, out.scalar_type());
    adopt_output(out, device());
  }
  at::Tensor& map_mutated(const at::Tensor& out) {
    for (size_t i = 0; i < mutated_count_; ++i) {
      if (mutated_[i].standin.unsafeGetTensorImpl() == out.unsafeGetTensorImpl()) return *mutated_[i].original;
    }
    TORCH_INTERNAL_ASSERT(false, "torchdevice: an in-place/out= kernel returned a tensor that is not its argument");
  }
  std::vector<at::Tensor> map(std::vector<at::Tensor> outs) {
    for (auto& out : outs) out = map(std::move(out));
    return outs;
  }
  template <class... Ts>
  std::tuple<Ts...> map(std::tuple<Ts...> outs) {
    return std::apply([this](auto&&... o) { return std::tuple<Ts...>(map(std::move(o))...); }, std::move(outs));
  }

  c10::Device device() const {
    return devices_.device() ? *devices_.device() : c10::Device(kType, current_device(kType));
  }

  StandIns standins;

 private:
  struct Mutated {
    at::Tensor standin;
    at::Tensor* original = nullptr;
  };
  DeviceCheck<kType> devices_;
  std::array<Mutated, kMutable> mutated_;
  size_t mutated_count_ = 0;
};

// The unboxed kernel of `Op` (an at::_ops struct) on the emulated device.
template <c10::DeviceType kType, class Op, class Schema = typename Op::schema>
struct FastPath;

template <c10::DeviceType kType, class Op, class Ret, class... Args>
struct FastPath<kType, Op, Ret(Args...)> {
  static_assert((!std::is_same_v<std::decay_t<Args>, std::optional<at::Generator>> && ...),
                "random ops keep the fallback: it routes their generators");
  static_assert((!std::is_same_v<std::decay_t<Args>, std::optional<at::Device>> && ...),
                "ops with a device argument keep the fallback: it maps their device");

  // In-place self and out= arguments: the ones synced back after the kernel.
  static constexpr size_t kMutable = (size_t(0) + ... + size_t(std::is_same_v<Args, at::Tensor&>));

  TORCHDEVICE_HOT static Ret call(Args... args) {
    FastCall<kType, kMutable> call;
    // Braced initialisation lowers the arguments left to right.
    std::tuple<decltype(call.lower(std::forward<Args>(args)))...> lowered{call.lower(std::forward<Args>(args))...};
    auto device_index = [&] { return call.device().index(); };
    if constexpr (std::is_void_v<Ret>) {
      {
        const kernel_clock::KernelTimer timer(device_index);
        std::apply([](auto&... a) { Op::redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), a...); }, lowered);
      }
      if constexpr (kMutable > 0) call.sync_mutated();
    } else {
      auto result = [&]() -> decltype(auto) {
        const kernel_clock::KernelTimer timer(device_index);
        return std::apply(
            [](auto&... a) -> decltype(auto) { return Op::redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), a...); },
            lowered);
      }();
      if constexpr (kMutable > 0) call.sync_mutated();
      if constexpr (std::is_lvalue_reference_v<Ret>) {
        return call.map_mutated(result);
      } else {
        return call.map(std::move(result));
      }
    }
  }
};

// View ops whose CPU kernel only builds a TensorImpl over `self`'s own storage with `self`'s
// dispatch keys (alias_with_sizes_and_strides, as_strided_tensorimpl): device-generic code that
// is CUDA's kernel too. It runs on the original tensor, so the view is born on the device.
template <class Op, class Schema = typename Op::schema>
struct MetadataView;

template <class Op, class... Args>
struct MetadataView<Op, at::Tensor(Args...)> {
  static at::Tensor call(Args... args) {
    return Op::redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), std::forward<Args>(args)...);
  }
};

// "aten::add" + "Tensor" -> "add.Tensor", the name Library::impl takes.
std::string impl_name(std::string_view qualified, std::string_view overload) {
  std::string name(qualified.substr(qualified.find("::") + 2));
  if (!overload.empty()) name.append(".").append(overload);
  return name;
}

template <c10::DeviceType kType, class... Ops>
void register_all(torch::Library& lib) {
  (lib.impl(impl_name(Ops::name, Ops::overload_name).c_str(),
            torch::CppFunction::makeFromUnboxedFunction(TORCH_FN((&FastPath<kType, Ops>::call)))),
   ...);
}

template <class... Ops>
void register_views(torch::Library& lib) {
  (lib.impl(impl_name(Ops::name, Ops::overload_name).c_str(),
            torch::CppFunction::makeFromUnboxedFunction(TORCH_FN((&MetadataView<Ops>::call)))),
   ...);
}

} // namespace

// The ops that dominate training steps and small-tensor code: elementwise arithmetic and
// activations, matmuls, reductions, fills, the views they take, and the foreach ops of the
// optimizers. Anything else runs through the boxed fallback with the same semantics.
template <c10::DeviceType kType>
void register_fast_paths() {
  constexpr auto key = kType == c10::DeviceType::MPS ? c10::DispatchKey::MPS : c10::DispatchKey::CUDA;
  // A library of their own, kept for the process: the dispatcher then names this file as the
  // kernels' origin, which is how the porting report tells fast paths from the fallback.
  auto& lib = *new torch::Library(torch::Library::IMPL, "aten", key, __FILE__, __LINE__);
  namespace ops = at::_ops;
  register_all<kType,
               // arithmetic
               ops::add_Tensor, ops::add__Tensor, ops::add_out, ops::sub_Tensor, ops::sub__Tensor, ops::mul_Tensor,
               ops::mul__Tensor, ops::div_Tensor, ops::div__Tensor, ops::neg, ops::pow_Tensor_Scalar, ops::sqrt,
               ops::rsqrt, ops::exp, ops::addcmul_, ops::addcdiv_, ops::lerp__Scalar, ops::where_self,
               // activations and their backwards
               ops::relu, ops::relu_, ops::threshold_backward, ops::gelu, ops::gelu_backward, ops::silu,
               ops::silu_backward, ops::tanh, ops::sigmoid,
               // matmuls
               ops::mm, ops::addmm, ops::bmm, ops::baddbmm,
               // reductions
               ops::sum, ops::sum_dim_IntList, ops::mean_dim, ops::amax,
               // fills and copies
               ops::fill__Scalar, ops::clone,
               // optimizers
               ops::_foreach_add__List, ops::_foreach_add__Scalar, ops::_foreach_mul__Scalar, ops::_foreach_mul__List,
               ops::_foreach_mul__Tensor, ops::_foreach_lerp__Scalar, ops::_foreach_addcmul__Scalar,
               ops::_foreach_addcdiv__ScalarList, ops::_foreach_addcdiv__Scalar, ops::_foreach_sqrt,
               ops::_foreach_div__ScalarList, ops::_foreach_div__List, ops::_foreach_sub__Scalar>(lib);
  register_views<ops::view, ops::_unsafe_view, ops::t, ops::transpose_int, ops::permute, ops::expand, ops::as_strided,
                 ops::unsqueeze, ops::squeeze_dim, ops::select_int, ops::slice_Tensor, ops::alias, ops::detach>(lib);
}

template void register_fast_paths<c10::DeviceType::CUDA>();
template void register_fast_paths<c10::DeviceType::MPS>();

} // namespace torchdevice::dispatch
