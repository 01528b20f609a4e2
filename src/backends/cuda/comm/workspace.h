// The layout of one rank's symmetric workspace. Every rank allocates the same layout, so a byte
// offset names the same region on every peer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tpfuse::cuda {

inline constexpr int kMaxRanks = 8;
// Upper bound on blocks of the two-shot kernel (one barrier flag row per block).
inline constexpr int kMaxBarrierBlocks = 1024;
// One-shot rotates three Lamport buffers: the one being written, the one being read by a
// slower peer, and the one being cleared.
inline constexpr int kLamportBuffers = 3;

struct WorkspaceConfig {
  int world_size = 2;
  int64_t max_tokens = 8192;          // two-shot limit: larger T takes the nccl path
  int64_t max_hidden = 8192;
  int64_t oneshot_max_tokens = 1024;  // one-shot limit
};

struct WorkspaceLayout {
  // Byte offsets inside each rank's symmetric buffer. Every region is 4096-byte aligned.
  size_t flags_offset = 0;        // uint32 [2][kMaxBarrierBlocks][kMaxRanks] two-shot barrier flags
  size_t flags_bytes = 0;
  size_t lamport_offset = 0;      // kLamportBuffers x lamport_buffer_bytes
  size_t lamport_buffer_bytes = 0;  // one buffer: [world_size][oneshot_max_tokens][max_hidden] 16-bit
  size_t rs_offset = 0;           // two-shot reduce-scatter landing: [world_size][ceil(max_tokens/ws)][max_hidden]
  size_t rs_bytes = 0;
  size_t ag_offset = 0;           // two-shot all-gather landing: [max_tokens][max_hidden] 16-bit
  size_t ag_bytes = 0;
  size_t total_bytes = 0;
  WorkspaceConfig config;

  static WorkspaceLayout Make(const WorkspaceConfig& config);
};

inline size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

inline WorkspaceLayout WorkspaceLayout::Make(const WorkspaceConfig& c) {
  WorkspaceLayout l;
  l.config = c;
  size_t off = 0;
  l.flags_offset = off;
  l.flags_bytes = AlignUp(sizeof(uint32_t) * 2 * kMaxBarrierBlocks * kMaxRanks, 4096);
  off += l.flags_bytes;
  l.lamport_offset = off;
  l.lamport_buffer_bytes =
      AlignUp(size_t(c.world_size) * size_t(c.oneshot_max_tokens) * size_t(c.max_hidden) * 2, 4096);
  off += kLamportBuffers * l.lamport_buffer_bytes;
  const int64_t rows_per_rank = (c.max_tokens + c.world_size - 1) / c.world_size;
  l.rs_offset = off;
  l.rs_bytes = AlignUp(size_t(c.world_size) * size_t(rows_per_rank) * size_t(c.max_hidden) * 2, 4096);
  off += l.rs_bytes;
  l.ag_offset = off;
  l.ag_bytes = AlignUp(size_t(rows_per_rank) * c.world_size * size_t(c.max_hidden) * 2, 4096);
  off += l.ag_bytes;
  l.total_bytes = off;
  return l;
}

}  // namespace tpfuse::cuda

namespace tpfuse::cuda {

// Per-communicator protocol state in this rank's own device memory (not shared). Zeroed at
// creation. Kernels read it after griddepcontrol.wait, so a kernel launched early under
// programmatic dependent launch never sees its predecessor's state half-updated.
struct CommDeviceState {
  // One-shot: call count (selects the Lamport buffer: count % 3), blocks finished in the
  // current call (the last one advances the count), and the bytes each rank-slot of the
  // previous call wrote (what the next call clears).
  uint32_t oneshot_count;
  uint32_t oneshot_blocks_done;
  uint64_t oneshot_prev_bytes;
  // Two-shot: call count (barrier epochs are 2*count+1 and 2*count+2) and blocks finished.
  uint32_t twoshot_count;
  uint32_t twoshot_blocks_done;
  // First error seen by any block: code (0 = none, 1 = timeout), the peer waited for, and the
  // protocol phase (1 = one-shot gather, 2 = two-shot reduce-scatter, 3 = two-shot all-gather).
  uint32_t error_code;
  uint32_t error_peer;
  uint32_t error_phase;
  uint32_t pad_;
};

inline constexpr uint32_t kErrorNone = 0;
inline constexpr uint32_t kErrorTimeout = 1;

}  // namespace tpfuse::cuda
