// The profiler's CUDA side on the emulated device (torch.profiler with ProfilerActivity.CUDA).
#pragma once

namespace torchdevice {

// Registers CUDA profiler stubs for the emulated device (torch's "GPU fallback" profiling, the
// path it takes without CUPTI): each op's device events are host timestamps taken around its
// kernel, so its device time is the time its kernel ran on the runner.
void install_cuda_profiler_stubs();

} // namespace torchdevice
