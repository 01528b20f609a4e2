// Which buffer of a Lamport area a fused call uses: one call count for the whole call, the
// same on every block and every rank, so that safety does not depend on the shape of earlier
// calls. CUDA-free (host and device), so the rule is unit-tested on the CPU.
//
// The rule. A strategy (one-shot, two-shot) keeps kMaxFusedBlocks counters in its
// CommDeviceState, all equal between calls (creation zeroes them). Call k of that strategy:
//   - block b reads counts[b] (= k) after griddepcontrol.wait and uses buffer k % 2 of every
//     Lamport area;
//   - at its end, block b of a grid of G stores k + 1 into counts[b], counts[b + G],
//     counts[b + 2G], ... (every index < kMaxFusedBlocks congruent to b mod G), so that once
//     the call is complete every counter holds k + 1, whatever grid the next call launches.
//     Index b < G is written only by block b, after block b has read it: no race in a call.
//
// Why two buffers suffice (the argument the kernels' doc blocks refer to). Call k + 1 on any
// rank cannot complete before every rank has completed call k: each call's result on every
// rank needs a contribution of every rank to at least one row (one-shot: every row of every
// peer; two-shot: every row's sum needs every rank's partial, and every rank reads every
// row's sum), and a rank sends its contributions to call k + 1 only after its call k kernel
// has completed (the kernel waits on its predecessor before its first push). A peer writes
// buffer k % 2 again only in call k + 2, which it starts after its call k + 1 completed, hence
// after this rank completed call k, whose reads and sentinel resets of buffer k % 2 are done
// by then. No region of a buffer is shared between consecutive calls, whatever T, H, quant mode
// or grid each call has. (The previous rule took the buffer from a per-block count: blocks of
// consecutive calls with different grids could then use the same buffer bytes back to back.)
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TPFUSE_LAMPORT_HD __host__ __device__ __forceinline__
#else
#define TPFUSE_LAMPORT_HD inline
#endif

namespace tpfuse::cuda {

// Upper bound on blocks of a peer-memory kernel (one call counter each).
inline constexpr int kMaxFusedBlocks = 1024;
// Buffers of every Lamport area, alternated by the call count.
inline constexpr int kLamportBuffers = 2;

// The buffer of a Lamport area that call `call` uses.
TPFUSE_LAMPORT_HD uint32_t LamportBufferIndex(uint32_t call) { return call % kLamportBuffers; }

// The call count block `block` sees at the start of a call.
TPFUSE_LAMPORT_HD uint32_t LamportCallOf(const uint32_t* counts, int block) { return counts[block]; }

// The end-of-call update of block `block` in a grid of `grid` blocks (see the rule above).
// `stride`/`first` let a block's threads share the stores: thread i of n stores indices
// block + (first + j n) grid for j = 0, 1, ...; pass first = 0, stride = 1 for one thread.
TPFUSE_LAMPORT_HD void LamportAdvance(uint32_t* counts, int block, int grid, uint32_t call,
                                      int first = 0, int stride = 1) {
  for (int i = block + first * grid; i < kMaxFusedBlocks; i += stride * grid) counts[i] = call + 1;
}

}  // namespace tpfuse::cuda
