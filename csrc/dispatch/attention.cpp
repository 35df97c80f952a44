// scaled_dot_product_attention on emulated cuda: the op a GPU chooses, the kernel the CPU runs.
//
// SDPA is a composite that asks `_fused_sdp_choice` for a backend and then calls that backend's
// op. Python-level consumers see those ops: DTensor has sharding rules for CUDA's flash and
// memory-efficient attention (not for `_scaled_dot_product_flash_attention_for_cpu`), the
// FlopCounter and inductor know them, and their meta functions give CUDA's output layouts. So
// on emulated cuda the choice is a GPU's, derived from the CPU's: where the CPU would run its
// flash kernel, a GPU runs memory-efficient attention (or flash attention, if the user allowed
// only that). Those ops are implemented here by the CPU's flash kernel and its backward, with
// CUDA's output layouts, so values and gradients are the CPU's bit for bit; where the CPU would
// use the math composite, so does the emulated device.
#include "dispatch/attention.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Context.h>
#include <ATen/native/transformers/attention.h>
#include <ATen/native/transformers/sdp_utils_cpp.h>
#include <torch/library.h>

namespace torchdevice::dispatch {
namespace {

using at::Tensor;

// The GPU's choice where the CPU's is `cpu_choice`.
int64_t gpu_choice(int64_t cpu_choice, const Tensor& query, const Tensor& key) {
  if (cpu_choice != static_cast<int64_t>(sdp::SDPBackend::flash_attention)) return cpu_choice;
  const bool grouped = query.dim() == 4 && key.dim() == 4 && query.sym_size(1) != key.sym_size(1);
  // Memory-efficient attention takes masks and float32, as the CPU's flash kernel does; GPU
  // flash attention is what remains when the user allowed only it (and for grouped-query
  // attention, which the memory-efficient kernel lacks).
  if (at::globalContext().userEnabledMemEfficientSDP() && !grouped) {
    return static_cast<int64_t>(sdp::SDPBackend::efficient_attention);
  }
  return static_cast<int64_t>(sdp::SDPBackend::flash_attention);
}

// `_fused_sdp_choice` on emulated cuda, and ATen's CUDA entry of `_fused_sdp_choice_stub`, which
// the op's meta kernel calls for CUDA tensors (fake tensors while torch.compile traces): on a CPU
// build it is missing, on a CUDA build it asks the GPU. The CPU's choice (its CPU kernel, reached
// directly: it reads only shapes, dtypes, strides and the global SDP flags) is the starting point.
int64_t sdp_choice(const Tensor& query, const Tensor& key, const Tensor& value, const std::optional<Tensor>& mask,
                        double dropout_p, bool is_causal, std::optional<double> scale, bool enable_gqa) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("aten::_fused_sdp_choice", "")
                             .typed<int64_t(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                            double, bool, std::optional<double>, bool)>();
  const int64_t cpu = op.redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), query, key, value, mask, dropout_p,
                                    is_causal, scale, enable_gqa);
  return gpu_choice(cpu, query, key);
}

// The CPU flash kernel's logsumexp (B, H, L) in the layout it produces, for its backward.
Tensor cpu_logsumexp_layout(const Tensor& lse, int64_t rows) {
  const Tensor values = lse.narrow(2, 0, rows);
  Tensor out = at::empty({values.size(0), rows, values.size(1)}, values.options()).transpose(1, 2);
  return out.copy_(values);
}

// (B, L, H, E) storage seen as (B, H, L, E): CUDA's attention output layout.
Tensor in_blhe_layout(const Tensor& out) {
  Tensor result = at::empty({out.size(0), out.size(2), out.size(1), out.size(3)}, out.options()).transpose(1, 2);
  return result.copy_(out);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> efficient_attention(const Tensor& query, const Tensor& key,
                                                               const Tensor& value, const std::optional<Tensor>& bias,
                                                               bool compute_log_sumexp, double dropout_p,
                                                               bool is_causal, std::optional<double> scale) {
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal, bias, scale);
  const int64_t rows = query.size(2);
  // CUDA pads logsumexp's rows to a multiple of 32 (its meta function says so too).
  Tensor log_sumexp = at::zeros({query.size(0), query.size(1), compute_log_sumexp ? (rows + 31) / 32 * 32 : 0},
                                lse.options());
  if (compute_log_sumexp) log_sumexp.narrow(2, 0, rows).copy_(lse);
  const auto seed_options = at::TensorOptions().dtype(at::kLong);  // host scalars, as without graph capture
  return {in_blhe_layout(out), log_sumexp, at::empty({}, seed_options), at::empty({}, seed_options)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> efficient_attention_backward(
    const Tensor& grad_out, const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& bias,
    const Tensor& out, const Tensor& logsumexp, const Tensor& /*philox_seed*/, const Tensor& /*philox_offset*/,
    double dropout_p, std::array<bool, 4> /*grad_input_mask*/, bool is_causal, std::optional<double> scale) {
  auto [grad_q, grad_k, grad_v] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, query, key, value, out, cpu_logsumexp_layout(logsumexp, query.size(2)), dropout_p, is_causal,
      bias.defined() ? std::optional<Tensor>(bias) : std::nullopt, scale);
  // The CPU kernel gives the mask no gradient (CPU chooses math when it needs one).
  return {grad_q, grad_k, grad_v, Tensor()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, c10::SymInt, c10::SymInt, Tensor, Tensor, Tensor> flash_attention(
    const Tensor& query, const Tensor& key, const Tensor& value, double dropout_p, bool is_causal,
    bool /*return_debug_mask*/, std::optional<double> scale) {
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                    std::nullopt, scale);
  Tensor attention = at::empty_like(query);  // CUDA flash's layout: the query's
  attention.copy_(out);
  const auto seed_options = at::TensorOptions().dtype(at::kUInt64);
  return {attention, lse.contiguous(), Tensor(), Tensor(), c10::SymInt(query.size(2)), c10::SymInt(key.size(2)),
          at::empty({2}, seed_options), at::empty({}, seed_options), at::empty({0}, query.options())};
}

std::tuple<Tensor, Tensor, Tensor> flash_attention_backward(
    const Tensor& grad_out, const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& out,
    const Tensor& logsumexp, const Tensor& /*cum_seq_q*/, const Tensor& /*cum_seq_k*/, c10::SymInt /*max_q*/,
    c10::SymInt /*max_k*/, double dropout_p, bool is_causal, const Tensor& /*philox_seed*/,
    const Tensor& /*philox_offset*/, std::optional<double> scale) {
  return at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, query, key, value, out, cpu_logsumexp_layout(logsumexp, query.size(2)), dropout_p, is_causal,
      std::nullopt, scale);
}

} // namespace

void register_gpu_attention(torch::Library& aten) {
  at::native::_fused_sdp_choice_stub.set_cuda_dispatch_ptr(&sdp_choice);
  aten.impl("_fused_sdp_choice", TORCH_FN(sdp_choice));
  aten.impl("_scaled_dot_product_efficient_attention", TORCH_FN(efficient_attention));
  aten.impl("_scaled_dot_product_efficient_attention_backward", TORCH_FN(efficient_attention_backward));
  aten.impl("_scaled_dot_product_flash_attention", TORCH_FN(flash_attention));
  aten.impl("_scaled_dot_product_flash_attention_backward", TORCH_FN(flash_attention_backward));
}

} // namespace torchdevice::dispatch
