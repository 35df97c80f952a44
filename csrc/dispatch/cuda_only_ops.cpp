// Operators CUDA has kernels for and CPU does not. There is no CPU kernel to run on stand-ins,
// so the ones CUDA code reaches through torch's own Python and C++ (F.linear_cross_entropy's
// out_dtype matmuls, SyncBatchNorm's statistics, the fused dropout of older code and the JIT)
// are written here as compositions of device ops, following the CUDA kernels' semantics: their
// checks and messages, result dtypes (float statistics for half inputs), and undefined outputs.
// Every other CUDA-only aten operator (cuDNN, MIOpen, cuSPARSELt, Triton, flash-attention
// internals) raises a NotImplementedError that names it, instead of the dispatcher's "Could not
// run ... with arguments from the 'CPU' backend", which misleads.
#include "dispatch/cuda_only_ops.h"

#include "dispatch/kernels.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/Resize.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace torchdevice::dispatch {
namespace {

// --- matmuls with out_dtype (CUDA's Blas.cpp) ------------------------------------------------

void check_out_dtype(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype) {
  TORCH_CHECK(a.dtype() == b.dtype(), "input dtypes must be the same, got: ", a.dtype(), " and ", b.dtype());
  TORCH_CHECK(out_dtype == a.scalar_type() ||
                  (out_dtype == at::kFloat && (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16)),
              "out_dtype must be the same as input dtype or fp32 for fp16/bf16 inputs");
}

// fp16/bf16 inputs with a float32 result: CUDA multiplies with float accumulation and writes
// float; the inputs widened to float (exactly) and multiplied in float give that result.
at::Tensor widened(const at::Tensor& t, at::ScalarType out_dtype) {
  return t.scalar_type() == out_dtype ? t : t.to(out_dtype);
}

at::Tensor& write_out(const at::Tensor& result, at::ScalarType out_dtype, at::Tensor& out) {
  TORCH_CHECK(out_dtype == out.scalar_type(), "out_dtype must be the same as the dtype of the provided out tensor");
  at::native::resize_output(out, result.sizes());
  return out.copy_(result);
}

at::Tensor host_mm_dtype(const at::Tensor& self, const at::Tensor& mat2, at::ScalarType out_dtype) {
  TORCH_CHECK(self.dim() == 2, "self must be a matrix, got ", self.dim(), "-D tensor");
  TORCH_CHECK(mat2.dim() == 2, "mat2 must be a matrix, got ", mat2.dim(), "-D tensor");
  check_out_dtype(self, mat2, out_dtype);
  return at::mm(widened(self, out_dtype), widened(mat2, out_dtype));
}
at::Tensor& host_mm_dtype_out(const at::Tensor& self, const at::Tensor& mat2, at::ScalarType out_dtype, at::Tensor& out) {
  return write_out(host_mm_dtype(self, mat2, out_dtype), out_dtype, out);
}

at::Tensor host_bmm_dtype(const at::Tensor& self, const at::Tensor& mat2, at::ScalarType out_dtype) {
  TORCH_CHECK(self.dim() == 3, "batch1 must be a 3D tensor");
  TORCH_CHECK(mat2.dim() == 3, "batch2 must be a 3D tensor");
  check_out_dtype(self, mat2, out_dtype);
  return at::bmm(widened(self, out_dtype), widened(mat2, out_dtype));
}
at::Tensor& host_bmm_dtype_out(const at::Tensor& self, const at::Tensor& mat2, at::ScalarType out_dtype, at::Tensor& out) {
  return write_out(host_bmm_dtype(self, mat2, out_dtype), out_dtype, out);
}

at::Tensor host_addmm_dtype(const at::Tensor& self, const at::Tensor& mat1, const at::Tensor& mat2,
                       at::ScalarType out_dtype, const at::Scalar& beta, const at::Scalar& alpha) {
  TORCH_CHECK(mat1.dim() == 2, "mat1 must be a matrix, got ", mat1.dim(), "-D tensor");
  TORCH_CHECK(mat2.dim() == 2, "mat2 must be a matrix, got ", mat2.dim(), "-D tensor");
  check_out_dtype(mat1, mat2, out_dtype);
  return at::addmm(widened(self, out_dtype), widened(mat1, out_dtype), widened(mat2, out_dtype), beta, alpha);
}
at::Tensor& host_addmm_dtype_out(const at::Tensor& self, const at::Tensor& mat1, const at::Tensor& mat2,
                            at::ScalarType out_dtype, const at::Scalar& beta, const at::Scalar& alpha, at::Tensor& out) {
  return write_out(host_addmm_dtype(self, mat1, mat2, out_dtype, beta, alpha), out_dtype, out);
}

at::Tensor host_baddbmm_dtype(const at::Tensor& self, const at::Tensor& batch1, const at::Tensor& batch2,
                         at::ScalarType out_dtype, const at::Scalar& beta, const at::Scalar& alpha) {
  TORCH_CHECK(batch1.dim() == 3, "batch1 must be a 3D tensor");
  TORCH_CHECK(batch2.dim() == 3, "batch2 must be a 3D tensor");
  check_out_dtype(batch1, batch2, out_dtype);
  return at::baddbmm(widened(self, out_dtype), widened(batch1, out_dtype), widened(batch2, out_dtype), beta, alpha);
}
at::Tensor& host_baddbmm_dtype_out(const at::Tensor& self, const at::Tensor& batch1, const at::Tensor& batch2,
                              at::ScalarType out_dtype, const at::Scalar& beta, const at::Scalar& alpha,
                              at::Tensor& out) {
  return write_out(host_baddbmm_dtype(self, batch1, batch2, out_dtype, beta, alpha), out_dtype, out);
}

// --- fused dropout (CUDA's Dropout.cu): `p` is the probability to keep ------------------------

std::tuple<at::Tensor, at::Tensor> host_fused_dropout(const at::Tensor& self, double p, std::optional<at::Generator> gen) {
  TORCH_CHECK(p >= 0 && p <= 1, "dropout probability has to be between 0 and 1, but got ", p);
  at::Tensor mask = at::empty_like(self, self.options().dtype(at::kByte)).bernoulli_(p, gen);
  at::Tensor out = self * mask * (1.0 / p);
  return {out, mask};
}

at::Tensor host_masked_scale(const at::Tensor& self, const at::Tensor& mask, double scale) {
  TORCH_CHECK(mask.scalar_type() == at::kByte || mask.scalar_type() == at::kBool,
              "mask should be torch.uint8 or torch.bool dtype");
  return self * mask * scale;
}

// --- SyncBatchNorm's statistics (CUDA's Normalization.cu) ------------------------------------
// Statistics are per channel (dim 1), in the input's accumulation type (float for half and
// bfloat16 inputs), as the CUDA kernels return them.

at::ScalarType acc_type(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<int64_t> reduced_dims(const at::Tensor& input) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d != 1) dims.push_back(d);
  }
  return dims;
}

// A per-channel [C] tensor shaped to broadcast against `input` [N, C, *].
at::Tensor per_channel(const at::Tensor& t, const at::Tensor& input) {
  std::vector<int64_t> shape(input.dim(), 1);
  shape[1] = input.size(1);
  return t.reshape(shape);
}

std::tuple<at::Tensor, at::Tensor> host_batch_norm_stats(const at::Tensor& input, double eps) {
  TORCH_CHECK(input.dim() >= 2, "batch_norm_stats expects an input of at least 2 dimensions, got ", input.dim());
  const at::Tensor x = input.to(acc_type(input));
  const auto dims = reduced_dims(input);
  at::Tensor mean = x.mean(dims);
  at::Tensor var = x.var(dims, /*correction=*/0);
  return {mean, (var + eps).rsqrt()};
}

at::Tensor host_batch_norm_elemt(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
                            double /*eps*/) {
  at::Tensor y = (input.to(acc_type(input)) - per_channel(mean, input)) * per_channel(invstd, input);
  if (weight.has_value() && weight->defined()) y = y * per_channel(*weight, input);
  if (bias.has_value() && bias->defined()) y = y + per_channel(*bias, input);
  return y.to(input.scalar_type());
}
at::Tensor& host_batch_norm_elemt_out(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                                 const at::Tensor& invstd, double eps, at::Tensor& out) {
  at::Tensor y = host_batch_norm_elemt(input, weight, bias, mean, invstd, eps);
  at::native::resize_output(out, y.sizes());
  return out.copy_(y);
}

// Merges per-process (mean, invstd, count) rows into the global statistics and updates the
// running ones (unbiased variance), as the CUDA kernel's Welford merge does. Rows with count 0
// take no part.
std::tuple<at::Tensor, at::Tensor> host_batch_norm_gather_stats_with_counts(
    const at::Tensor& input, const at::Tensor& mean, const at::Tensor& invstd,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, double momentum,
    double eps, const at::Tensor& counts) {
  const auto acc = mean.scalar_type();
  const at::Tensor n = counts.to(acc).reshape({-1, 1});  // [W, 1]
  const at::Tensor present = n > 0;
  const at::Tensor total = n.sum(0);  // [1]
  const at::Tensor var_i = at::where(present, invstd.pow(-2) - eps, at::zeros_like(invstd));
  const at::Tensor mean_i = at::where(present, mean, at::zeros_like(mean));
  const at::Tensor global_mean = (mean_i * n).sum(0) / total;
  const at::Tensor m2 = (n * (var_i + (mean_i - global_mean).pow(2))).sum(0);  // sum of squared deviations
  const at::Tensor global_invstd = (m2 / total + eps).rsqrt();
  if (running_mean.has_value() && running_mean->defined()) {
    running_mean->copy_(running_mean->to(acc) * (1 - momentum) + global_mean * momentum);
  }
  if (running_var.has_value() && running_var->defined()) {
    const at::Tensor unbiased = m2 / (total - 1);
    running_var->copy_(running_var->to(acc) * (1 - momentum) + unbiased * momentum);
  }
  return {global_mean, global_invstd};
}

std::tuple<at::Tensor, at::Tensor> host_batch_norm_gather_stats(
    const at::Tensor& input, const at::Tensor& mean, const at::Tensor& invstd,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, double momentum,
    double eps, int64_t count) {
  const at::Tensor counts = at::full({mean.size(0)}, static_cast<double>(count), mean.options());
  return host_batch_norm_gather_stats_with_counts(input, mean, invstd, running_mean, running_var, momentum, eps, counts);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> host_batch_norm_backward_reduce(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& invstd,
    const std::optional<at::Tensor>& weight, bool input_g, bool weight_g, bool bias_g) {
  const auto acc = acc_type(input);
  const auto dims = reduced_dims(input);
  const at::Tensor g = grad_out.to(acc);
  const at::Tensor sum_dy = g.sum(dims);
  const at::Tensor sum_dy_xmu = (g * (input.to(acc) - per_channel(mean, input))).sum(dims);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : mean.scalar_type();
  at::Tensor grad_weight = weight_g ? (sum_dy_xmu * invstd).to(param_dtype) : at::Tensor();
  at::Tensor grad_bias = bias_g ? sum_dy.to(param_dtype) : at::Tensor();
  if (!input_g) return {at::Tensor(), at::Tensor(), grad_weight, grad_bias};
  return {sum_dy, sum_dy_xmu, grad_weight, grad_bias};
}

at::Tensor host_batch_norm_backward_elemt(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
                                     const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, const at::Tensor& count) {
  const auto acc = acc_type(input);
  const at::Tensor norm = count.to(acc).sum().reciprocal();
  const at::Tensor mean_dy = per_channel(sum_dy * norm, input);
  const at::Tensor inv = per_channel(invstd, input);
  const at::Tensor factor = inv.pow(2) * per_channel(sum_dy_xmu * norm, input);
  at::Tensor scale = inv;
  if (weight.has_value() && weight->defined()) scale = scale * per_channel(weight->to(acc), input);
  const at::Tensor x = input.to(acc);
  return ((grad_out.to(acc) - mean_dy - (x - per_channel(mean, input)) * factor) * scale).to(input.scalar_type());
}

// --- library probes: the emulated device has no cuDNN / MIOpen -------------------------------

bool no_library(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, int64_t) { return false; }
bool no_library_tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
  return false;
}

// --- everything else -------------------------------------------------------------------------

void unsupported_cuda_only_op(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack*) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "torchdevice: '", op.schema().operator_name(),
                              "' is a CUDA-only operator (it runs GPU library code: cuDNN, MIOpen, cuSPARSELt, "
                              "Triton or a fused CUDA kernel) and has no host implementation on the emulated cuda "
                              "device. Use the operator's public form (e.g. the torch.nn.functional call), which "
                              "runs the CPU kernel.");
}

// The families of CUDA-only operators of torch 2.13/2.14 (from a CUDA build's dispatch table).
bool named_cuda_only(const std::string& name) {
  for (const char* prefix : {"cudnn_", "_cudnn_", "miopen_", "_cslt_", "_sparse_semi_structured_", "_triton_",
                             "_flash_attention_", "_efficient_attention_", "_scaled_dot_product_flash_attention",
                             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                             "_conv_depthwise2d", "conv_depthwise3d", "_thnn_fused_", "_fused_rms_norm_backward",
                             "_mixed_dtypes_linear", "_weight_int4pack_mm", "_convert_weight_to_int4pack",
                             "_scaled_grouped_mm", "_fill_mem_eff_dropout_mask_", "_to_sparse_semi_structured"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

bool has_kernel_outside_device(const c10::OperatorHandle& op) {
  for (auto key : {c10::DispatchKey::CPU, c10::DispatchKey::CompositeImplicitAutograd,
                   c10::DispatchKey::CompositeExplicitAutograd,
                   c10::DispatchKey::CompositeExplicitAutogradNonFunctional}) {
    if (op.hasKernelForDispatchKey(key)) return true;
  }
  return false;
}

// A CUDA build's QuantizedCUDA kernels would launch on host memory. There is no emulated
// quantized backend (see refuse_quantized in fallback.cpp): they all refuse, naming the backend.
void refuse_quantized_cuda(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack*) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "torchdevice: '", op.schema().operator_name(),
                              "' with arguments from the 'QuantizedCUDA' backend: the emulated device has no "
                              "quantized backend. Keep quantized tensors on the CPU.");
}

void register_quantized_refusals() {
  auto& dispatcher = c10::Dispatcher::singleton();
  std::unordered_map<std::string, torch::Library*> libraries;  // per namespace, kept for the process
  for (const auto& name : dispatcher.getRegistrationsForDispatchKey(c10::DispatchKey::QuantizedCUDA)) {
    const auto sep = name.name.find("::");
    const std::string ns = name.name.substr(0, sep);
    std::string short_name = name.name.substr(sep + 2);
    if (!name.overload_name.empty()) short_name += "." + name.overload_name;
    auto& lib = libraries[ns];
    if (lib == nullptr) {
      lib = new torch::Library(torch::Library::IMPL, ns, c10::DispatchKey::QuantizedCUDA, __FILE__, __LINE__);
    }
    lib->impl(short_name.c_str(), torch::CppFunction::makeFromBoxedFunction<&refuse_quantized_cuda>());
  }
}

} // namespace

void register_cuda_only_ops(torch::Library& aten) {
  register_quantized_refusals();
  auto& dispatcher = c10::Dispatcher::singleton();
  std::unordered_set<std::string> implemented;
  // Only operators this torch defines and has no CPU kernel for (where one exists, the
  // mirror's fallback runs it, as for every op).
  auto impl = [&](const char* name, auto&& fn) {
    std::string full = std::string("aten::") + name;
    const auto dot = full.find('.');
    const std::string base = full.substr(0, dot);
    const std::string overload = dot == std::string::npos ? "" : full.substr(dot + 1);
    const auto op = dispatcher.findSchema({base, overload});
    if (!op || has_kernel_outside_device(*op)) return;
    aten.impl(name, std::forward<decltype(fn)>(fn));
    implemented.insert(full);
  };
  impl("mm.dtype", TORCH_FN(host_mm_dtype));
  impl("mm.dtype_out", TORCH_FN(host_mm_dtype_out));
  impl("bmm.dtype", TORCH_FN(host_bmm_dtype));
  impl("bmm.dtype_out", TORCH_FN(host_bmm_dtype_out));
  impl("addmm.dtype", TORCH_FN(host_addmm_dtype));
  impl("addmm.dtype_out", TORCH_FN(host_addmm_dtype_out));
  impl("baddbmm.dtype", TORCH_FN(host_baddbmm_dtype));
  impl("baddbmm.dtype_out", TORCH_FN(host_baddbmm_dtype_out));
  impl("_fused_dropout", TORCH_FN(host_fused_dropout));
  impl("_masked_scale", TORCH_FN(host_masked_scale));
  impl("batch_norm_stats", TORCH_FN(host_batch_norm_stats));
  impl("batch_norm_elemt", TORCH_FN(host_batch_norm_elemt));
  impl("batch_norm_elemt.out", TORCH_FN(host_batch_norm_elemt_out));
  impl("batch_norm_gather_stats", TORCH_FN(host_batch_norm_gather_stats));
  impl("batch_norm_gather_stats_with_counts", TORCH_FN(host_batch_norm_gather_stats_with_counts));
  impl("batch_norm_backward_reduce", TORCH_FN(host_batch_norm_backward_reduce));
  impl("batch_norm_backward_elemt", TORCH_FN(host_batch_norm_backward_elemt));
  impl("_use_cudnn_ctc_loss", TORCH_FN(no_library));
  impl("_use_cudnn_ctc_loss.Tensor", TORCH_FN(no_library_tensor));
  impl("_use_miopen_ctc_loss", TORCH_FN(no_library));
  impl("_use_miopen_ctc_loss.Tensor", TORCH_FN(no_library_tensor));

  // The explicit device kernels (record_stream, ...) are registered after this and win.
  const auto& explicit_names = explicit_kernel_names();
  for (const auto& name : dispatcher.getAllOpNames()) {
    if (name.name.rfind("aten::", 0) != 0) continue;
    const std::string full = name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
    if (implemented.count(full)) continue;
    const std::string short_name = full.substr(6);
    if (std::find(explicit_names.begin(), explicit_names.end(), short_name) != explicit_names.end()) continue;
    auto op = dispatcher.findOp(name);
    if (!op || !op->hasSchema() || has_kernel_outside_device(*op)) continue;
    // A CUDA build registered a CUDA kernel for it (the mirror has replaced that kernel with the
    // fallback by now); a CPU build has none, and its CUDA-only operators are known by name.
    // Others without a CPU kernel (MPS-, sparse- or nested-only ones) keep the dispatcher's message.
    if (!op->hasKernelForDispatchKey(c10::DispatchKey::CUDA) && !named_cuda_only(short_name)) continue;
    aten.impl(short_name.c_str(), torch::CppFunction::makeFromBoxedFunction<&unsupported_cuda_only_op>());
  }
}

} // namespace torchdevice::dispatch
