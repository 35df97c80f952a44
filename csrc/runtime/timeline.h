// When each emulated stream's queued work finishes, for the one kind of work that outlasts its call.
//
// Kernels run synchronously, so a stream is idle as soon as an op returns. The exception is
// torch.cuda._sleep: on a GPU it queues a spin kernel that keeps the stream busy for a given
// number of cycles, and code (PyTorch's own tests, overlap checks, timing code) relies on that:
// query() is False while it spins, a blocking copy or synchronize() waits for it, an event
// recorded behind it completes when it does. The timeline keeps, per stream, the time its queued
// work finishes, and the guard, the copy kernel and the bindings consult it. Until the first
// _sleep nothing is recorded and every query is one relaxed atomic load.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <chrono>

namespace torchdevice::timeline {

using Clock = std::chrono::steady_clock;

// Queues `duration` of work on `stream`, behind what it already has queued.
void keep_busy(const c10::Stream& stream, Clock::duration duration);
// When the work queued on `stream` so far finishes (at or before now when it is idle).
Clock::time_point ready_at(const c10::Stream& stream);
// The latest ready_at over every stream of `device`.
Clock::time_point device_ready_at(c10::Device device);
// `stream` waits for `when` (an event recorded elsewhere): its later work starts no earlier.
void wait_for(const c10::Stream& stream, Clock::time_point when);
// Blocks the calling host thread until `when`.
void host_wait(Clock::time_point when);

} // namespace torchdevice::timeline
