// The layout of one rank's symmetric workspace. Every rank allocates the same layout, so a byte
// offset names the same region on every peer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/cuda/comm/lamport.h"

namespace tpfuse::cuda {

inline constexpr int kMaxRanks = 8;
// kMaxFusedBlocks and kLamportBuffers, and the rule that picks a buffer: comm/lamport.h.

struct WorkspaceConfig {
  int world_size = 2;
  int64_t max_tokens = 8192;          // two-shot limit: larger T takes the nccl path
  int64_t max_hidden = 8192;
  int64_t oneshot_max_tokens = 1024;  // one-shot limit
};

// Every area is a Lamport area: it holds the 16-bit sentinel (-0.0) wherever no data is in
// flight. Each is kLamportBuffers buffers back to back.
struct WorkspaceLayout {
  // Byte offsets inside each rank's symmetric buffer. Every buffer is 4096-byte aligned.
  size_t lamport_offset = 0;        // one-shot landing
  size_t lamport_slot_bytes = 0;    // one rank's rows: [oneshot_max_tokens][max_hidden] 16-bit
  size_t lamport_buffer_bytes = 0;  // world_size slots
  size_t rs_offset = 0;             // two-shot reduce-scatter landing
  size_t rs_slot_bytes = 0;         // one rank's rows: [ceil(max_tokens / ws)][max_hidden] 16-bit
  size_t rs_buffer_bytes = 0;       // world_size slots
  size_t ag_offset = 0;             // two-shot all-gather landing
  size_t ag_buffer_bytes = 0;       // [world_size * ceil(max_tokens / ws)][max_hidden] 16-bit
  size_t sentinel_offset = 0;       // [sentinel_offset, total_bytes) starts as the sentinel
  size_t total_bytes = 0;
  WorkspaceConfig config;

  static WorkspaceLayout Make(const WorkspaceConfig& config);
};

inline size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

inline WorkspaceLayout WorkspaceLayout::Make(const WorkspaceConfig& c) {
  WorkspaceLayout l;
  l.config = c;
  size_t off = 0;
  l.sentinel_offset = off;
  l.lamport_offset = off;
  l.lamport_slot_bytes = AlignUp(size_t(c.oneshot_max_tokens) * size_t(c.max_hidden) * 2, 4096);
  l.lamport_buffer_bytes = size_t(c.world_size) * l.lamport_slot_bytes;
  off += kLamportBuffers * l.lamport_buffer_bytes;
  const int64_t rows_per_rank = (c.max_tokens + c.world_size - 1) / c.world_size;
  l.rs_offset = off;
  l.rs_slot_bytes = AlignUp(size_t(rows_per_rank) * size_t(c.max_hidden) * 2, 4096);
  l.rs_buffer_bytes = size_t(c.world_size) * l.rs_slot_bytes;
  off += kLamportBuffers * l.rs_buffer_bytes;
  l.ag_offset = off;
  l.ag_buffer_bytes = AlignUp(size_t(rows_per_rank) * c.world_size * size_t(c.max_hidden) * 2, 4096);
  off += kLamportBuffers * l.ag_buffer_bytes;
  l.total_bytes = off;
  return l;
}

}  // namespace tpfuse::cuda

namespace tpfuse::cuda {

// Per-communicator protocol state in this rank's own device memory (not shared). Zeroed at
// creation. Kernels read it after griddepcontrol.wait, so a kernel launched early under
// programmatic dependent launch never sees its predecessor's state half-updated.
struct CommDeviceState {
  // First error seen by any block: code (0 = none, 1 = timeout), the peer waited for, and the
  // protocol phase (kPhase* below).
  uint32_t error_code;
  uint32_t error_peer;
  uint32_t error_phase;
  uint32_t pad_;
  // Call counts of the one-shot and two-shot kernels, kept equal across the array between calls
  // (comm/lamport.h: block b reads counts[b]; at the end every counter holds the next call's
  // number). The count is the number of earlier calls of that strategy, the same on every block
  // and every rank; every Lamport area's buffer is count % 2. No cross-block atomics.
  uint32_t oneshot_count[kMaxFusedBlocks];
  uint32_t twoshot_count[kMaxFusedBlocks];
};

inline constexpr uint32_t kErrorNone = 0;
inline constexpr uint32_t kErrorTimeout = 1;

// CommDeviceState::error_phase values.
inline constexpr uint32_t kPhaseOneShotGather = 1;
inline constexpr uint32_t kPhaseTwoShotReduceScatter = 2;
inline constexpr uint32_t kPhaseTwoShotAllGather = 3;

// The 16-bit pattern of a Lamport slot not yet written: -0.0 in bf16 and in f16. Creation
// fills the Lamport buffers with it. NOTE: a one-shot kernel must never push -0.0 as
// data (it pushes +0.0 instead), or a reader would wait for a value that already arrived.
inline constexpr uint16_t kLamportSentinel = 0x8000;

}  // namespace tpfuse::cuda
