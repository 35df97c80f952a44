// scaled_dot_product_attention's backends on emulated cuda (see attention.cpp).
#pragma once

#include <torch/library.h>

namespace torchdevice::dispatch {

// The GPU's backend choice and CUDA's flash / memory-efficient attention ops, computed by the
// CPU's flash kernel. Registered after the mirror and the CUDA-only refusals (the last wins).
void register_gpu_attention(torch::Library& aten);

} // namespace torchdevice::dispatch
