// The layout of one rank's symmetric workspace. Every rank allocates the same layout, so a byte
// offset names the same region on every peer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tpfuse::cuda {

inline constexpr int kMaxRanks = 8;
// Upper bound on blocks of the two-shot kernel (one barrier flag row per block).
inline constexpr int kMaxBarrierBlocks = 1024;
// One-shot alternates two Lamport buffers; a reader resets each slot to the sentinel right after
// reading it, and a peer writes that buffer again only after this rank's next call has begun.
inline constexpr int kLamportBuffers = 2;

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
  // First error seen by any block: code (0 = none, 1 = timeout), the peer waited for, and the
  // protocol phase (kPhase* below).
  uint32_t error_code;
  uint32_t error_peer;
  uint32_t error_phase;
  uint32_t pad_;
  // Per-block call counts of the one-shot and two-shot kernels: block b reads its count at the
  // start and stores count + 1 at the end. Every rank launches the same grid for the same shape,
  // so block b's count is the same on every rank (the one-shot buffer is count % 2; two-shot's
  // barrier epochs are 2 count + 1 and 2 count + 2). No cross-block atomics are needed.
  uint32_t oneshot_count[kMaxBarrierBlocks];
  uint32_t twoshot_count[kMaxBarrierBlocks];
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
