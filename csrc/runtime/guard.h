// Device guard for an emulated device type: current device, streams and events.
//
// Execution is synchronous (every kernel has finished when it returns), so streams keep their
// identity and events the time the stream reached them; only work that outlasts its call
// (torch.cuda._sleep, runtime/timeline.h) makes a stream or an event not ready yet.
#pragma once

#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace torchdevice {

void register_guard(c10::DeviceType type);

// In a process that emulates cuda on a torch without MPS: a guard for 'mps' that only says how
// to emulate mps instead (see guard.cpp). Does nothing where torch has an MPS guard of its own.
void register_mps_hint_guard();

// Stream ids handed out by getNewStream/getStreamFromGlobalPool; 0 is the default stream.
c10::StreamId new_stream_id();

} // namespace torchdevice
