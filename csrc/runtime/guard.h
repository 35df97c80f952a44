// Device guard for an emulated device type: current device, streams and events.
//
// Execution is synchronous (every kernel has finished when it returns), so streams keep their
// identity and events the time the stream reached them; only work that outlasts its call
// (torch.cuda._sleep, runtime/timeline.h) makes a stream or an event not ready yet.
#pragma once

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <optional>

namespace torchdevice {

void register_guard(c10::DeviceType type);

// In a process that emulates cuda on a torch without MPS: a guard for 'mps' that only says how
// to emulate mps instead (see guard.cpp). Does nothing where torch has an MPS guard of its own.
void register_mps_hint_guard();

// Stream ids handed out by getNewStream/getStreamFromGlobalPool; 0 is the default stream.
c10::StreamId new_stream_id();

// The stream a CUDA graph capture records (ops/graphs.py says when one begins and ends), or none:
// what Stream.is_capturing() answers through the guard.
void set_capturing_stream(c10::DeviceType type, std::optional<c10::Stream> stream);

} // namespace torchdevice
