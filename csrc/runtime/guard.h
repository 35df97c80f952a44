// Device guard for an emulated device type: current device, streams and events.
//
// Execution is synchronous (every kernel has finished when it returns), so streams only keep
// their identity and events only keep the time they were recorded; the API semantics
// (ordering, query() == true, elapsed_time) hold as on a GPU.
#pragma once

#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace torchdevice {

void register_guard(c10::DeviceType type);

// Stream ids handed out by getNewStream/getStreamFromGlobalPool; 0 is the default stream.
c10::StreamId new_stream_id();

} // namespace torchdevice
