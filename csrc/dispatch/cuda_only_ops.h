// Host forms of the aten operators that have a CUDA kernel and no CPU one.
#pragma once

#include <torch/library.h>

namespace torchdevice::dispatch {

// Registers them on the CUDA key of `aten` (a library for that key).
void register_cuda_only_ops(torch::Library& aten);

} // namespace torchdevice::dispatch
