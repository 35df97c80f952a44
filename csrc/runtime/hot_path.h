// Marks the functions every emulated op runs. At small sizes an emulated op's cost over the
// native one is mostly the cache lines it touches; GCC and Clang place `hot` functions together
// (.text.hot), so the code an op adds shares lines instead of being spread over the library.
#pragma once

#define TORCHDEVICE_HOT __attribute__((hot))
