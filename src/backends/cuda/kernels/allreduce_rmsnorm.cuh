// The fused all-reduce + residual add + RMSNorm + FP8 quantization kernels (DESIGN.md
// Contract 3): one-shot (Lamport), two-shot (reduce-scatter / all-gather with per-block
// barriers), and the epilogue that follows ncclAllReduce on the nccl path.
//
// Every strategy ends in the same per-row epilogue (RowEpilogue) with the same thread layout,
// which depends on H only: so a row's result does not depend on T, on the other rows, or on the
// strategy, and all ranks compute bitwise-identical results.
#pragma once

#include <cstdint>

#include "backends/cuda/comm/workspace.h"
#include "backends/cuda/kernels/common.cuh"
#include "tpfuse/fused_op.h"

namespace tpfuse::cuda {

// Most 16-byte vectors one thread owns in a row: H <= 512 threads * 4 * 8 = 16384.
inline constexpr int kMaxVecPerThread = 4;
inline constexpr int kMaxRowThreads = 512;

// ================================================================ parameters

struct FusedKernelParams {
  // ---- inputs (device pointers; x, residual [T, H]; weight [H]; scale f32[])
  const void* x;
  const void* residual;     // null: no residual
  const void* weight;
  const float* scale;       // fp8_tensor only
  const void* reduced;      // nccl path: the ncclAllReduce result [T, H]
  // ---- outputs (null when not emitted)
  void* allreduce_out;
  void* norm_out;
  void* residual_out;
  uint8_t* quant_out;
  float* scale_out;
  // ---- shape and numerics
  int64_t tokens;           // T
  int hidden;               // H
  int vecs_per_row;         // H / 8
  int vecs_per_thread;      // ceil(vecs_per_row / blockDim.x), <= kMaxVecPerThread
  DType weight_dtype;
  float eps;
  float weight_bias;
  int group_vecs;           // fp8_group: group_size / 8 (a power of two <= 32)
  int groups_per_row;       // H / group_size (group), 1 (token)
  bool scale_col_major;
  bool scale_ue8m0;
  int64_t scale_tokens_padded;  // column-major scale row length: pad4(T)
  // ---- communication
  int rank;
  char* peer_bases[kMaxRanks];    // every rank's workspace as mapped here
  size_t lamport_offset;
  size_t lamport_buffer_bytes;
  size_t lamport_slot_bytes;      // one rank's rows inside a Lamport buffer
  size_t rs_offset;
  size_t rs_slot_bytes;           // one rank's rows inside the reduce-scatter landing area
  size_t ag_offset;
  size_t flags_offset;
  int64_t rows_per_rank;          // two-shot: ceil(T / world size)
  CommDeviceState* state;
  uint64_t timeout_ns;            // 0: wait forever
};

// ================================================================ block reductions

// Sum over the block in a fixed order (xor tree in each warp, then warps 0..n-1 in order), so
// the result depends on blockDim only. Every thread gets the same value.
// NOTE: `slot` alternates between calls (row parity) so a fast thread writing the next row's
// partials cannot overwrite values a slow thread is still reading.
__device__ __forceinline__ float BlockSum(float v, float (*smem)[32], int slot) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[slot][warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = smem[slot][0];
  for (int w = 1; w < warps; ++w) total += smem[slot][w];
  return total;
}

__device__ __forceinline__ float BlockMax(float v, float (*smem)[32], int slot) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) smem[slot][warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = smem[slot][0];
  for (int w = 1; w < warps; ++w) total = fmaxf(total, smem[slot][w]);
  return total;
}

// Max over aligned groups of `lanes` consecutive lanes (lanes a power of two <= 32).
__device__ __forceinline__ float LaneGroupMax(float v, int lanes) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, offset);
    if (offset < lanes) v = fmaxf(v, other);
  }
  return v;
}

// ================================================================ the per-row epilogue

// Weight vector v as 8 floats plus weight_bias (f32 add, as Contract 3 step 3).
__device__ __forceinline__ void LoadWeightPlusBias(const FusedKernelParams& p, int v,
                                                   float (&wb)[kVecElems]) {
  if (p.weight_dtype == DType::kF32) {
    const float4* w = reinterpret_cast<const float4*>(p.weight) + 2 * v;
    const float4 lo = __ldg(w), hi = __ldg(w + 1);
    wb[0] = lo.x; wb[1] = lo.y; wb[2] = lo.z; wb[3] = lo.w;
    wb[4] = hi.x; wb[5] = hi.y; wb[6] = hi.z; wb[7] = hi.w;
  } else {
    const uint4 w = __ldg(reinterpret_cast<const uint4*>(p.weight) + v);
    if (p.weight_dtype == DType::kBF16) Unpack<__nv_bfloat16>(w, wb);
    else Unpack<__half>(w, wb);
  }
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) wb[i] = __fadd_rn(wb[i], p.weight_bias);
}

__device__ __forceinline__ float Ue8m0(float s) {
  uint32_t u = __float_as_uint(s);
  if (u & 0x007FFFFFu) u = (u & 0xFF800000u) + 0x00800000u;  // s > 0, normal: next power of 2
  return __uint_as_float(u);
}

// Contract 3 steps 2-4 for one row, given a = round(sum of partials) for this thread's vectors.
// Block-uniform: every thread of the block calls it for the same row (it synchronizes).
//
// Thread layout: thread i owns vectors i, i + blockDim, i + 2 blockDim, ... (< H/8); blockDim
// is a multiple of 32 fixed by H, so groups of group_size/8 consecutive vectors are owned by
// aligned groups of consecutive lanes, and the sum of squares has one fixed order.
template <typename T, QuantMode kQuant>
__device__ __forceinline__ void RowEpilogue(const FusedKernelParams& p, int64_t row,
                                            const uint4 (&a)[kMaxVecPerThread],
                                            float (*smem)[32], int slot) {
  const size_t row_elems = size_t(row) * p.hidden;
  const uint4* residual = static_cast<const uint4*>(p.residual);
  uint4 h[kMaxVecPerThread];  // rounded h: exact in 16 bits, so kept packed

  // ---- step 2: h = round(a + residual); emit a and h
  float sum_sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxVecPerThread; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
    const size_t idx = row_elems / kVecElems + v;
    if (p.allreduce_out) StoreStreaming(static_cast<uint4*>(p.allreduce_out) + idx, a[k]);
    float hf[kVecElems];
    Unpack<T>(a[k], hf);
    if (residual) {
      float rf[kVecElems];
      Unpack<T>(LoadGlobal(residual + idx), rf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) hf[i] = ToFloat<T>(FromFloat<T>(__fadd_rn(hf[i], rf[i])));
      h[k] = Pack<T>(hf);
    } else {
      h[k] = a[k];
    }
    if (p.residual_out) StoreStreaming(static_cast<uint4*>(p.residual_out) + idx, h[k]);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) sum_sq = __fmaf_rn(hf[i], hf[i], sum_sq);
  }

  // ---- step 3: y = round(h * rsqrt(mean(h^2) + eps) * (w + weight_bias))
  const float total = BlockSum(sum_sq, smem, slot);
  const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, float(p.hidden)), p.eps)));
  uint4 y[kMaxVecPerThread];
  float amax = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxVecPerThread; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
    float hf[kVecElems], wb[kVecElems], yf[kVecElems];
    Unpack<T>(h[k], hf);
    LoadWeightPlusBias(p, v, wb);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(__fmul_rn(hf[i], r), wb[i]);
    y[k] = Pack<T>(yf);
    if (p.norm_out) StoreStreaming(static_cast<uint4*>(p.norm_out) + row_elems / kVecElems + v, y[k]);
    if constexpr (kQuant == QuantMode::kFp8Token || kQuant == QuantMode::kFp8Group) {
      Unpack<T>(y[k], yf);  // the rounded y
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) amax = fmaxf(amax, fabsf(yf[i]));
    }
  }
  if constexpr (kQuant == QuantMode::kNone) return;

  // ---- step 4: FP8 quantization of the rounded y
  if constexpr (kQuant == QuantMode::kFp8Tensor) {
    const float inv = __frcp_rn(__ldg(p.scale));
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      float yf[kVecElems];
      Unpack<T>(y[k], yf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(yf[i], inv);
      StoreStreaming8(p.quant_out + row_elems + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  } else if constexpr (kQuant == QuantMode::kFp8Token) {
    const float row_amax = BlockMax(amax, smem + 2, slot);
    float s = __fdiv_rn(fmaxf(row_amax, 1e-10f), 448.0f);
    if (p.scale_ue8m0) s = Ue8m0(s);
    // [T, 1] row-major and [1, pad4(T)] column-major put row t's scale at index t alike.
    if (threadIdx.x == 0) p.scale_out[row] = s;
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      float yf[kVecElems];
      Unpack<T>(y[k], yf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fdiv_rn(yf[i], s);
      StoreStreaming8(p.quant_out + row_elems + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  } else {  // kFp8Group: one amax per vector slot, reduced over the group's lanes
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      // Shuffles need the whole warp: lanes past the row join with 0 and store nothing.
      if (k >= p.vecs_per_thread) continue;  // uniform across the block
      float yf[kVecElems];
      float local = 0.0f;
      if (v < p.vecs_per_row) {
        Unpack<T>(y[k], yf);
#pragma unroll
        for (int i = 0; i < kVecElems; ++i) local = fmaxf(local, fabsf(yf[i]));
      }
      const float group_amax = LaneGroupMax(local, p.group_vecs);
      if (v >= p.vecs_per_row) continue;
      float s = __fdiv_rn(fmaxf(group_amax, 1e-10f), 448.0f);
      if (p.scale_ue8m0) s = Ue8m0(s);
      const int group = v / p.group_vecs;
      if (v % p.group_vecs == 0) {
        const int64_t sidx = p.scale_col_major ? int64_t(group) * p.scale_tokens_padded + row
                                               : row * p.groups_per_row + group;
        p.scale_out[sidx] = s;
      }
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fdiv_rn(yf[i], s);
      StoreStreaming8(p.quant_out + row_elems + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  }
}

// ================================================================ bounded waits

// Records the first timeout of the communicator (code, peer, phase).
__device__ __forceinline__ void RecordTimeout(const FusedKernelParams& p, int peer, int phase) {
  if (atomicCAS(&p.state->error_code, kErrorNone, kErrorTimeout) == kErrorNone) {
    p.state->error_peer = peer;
    p.state->error_phase = phase;
  }
}

// Bounded-wait bookkeeping for one thread: once any wait of the thread times out (or another
// thread reported an error), the thread stops waiting and finishes with garbage; the host
// sees the error through Communicator::CheckHealth and the communicator is poisoned.
struct WaitBudget {
  uint64_t deadline = 0;  // set at the first wait that has to spin
  bool dead = false;

  // Returns false when the wait must stop (timeout or error elsewhere).
  __device__ __forceinline__ bool KeepWaiting(const FusedKernelParams& p, uint32_t spins,
                                              int peer, int phase) {
    if (dead) return false;
    if ((spins & 63u) != 0) return true;
    const uint64_t now = GlobalTimerNs();
    if (deadline == 0) deadline = now + p.timeout_ns;
    if (*reinterpret_cast<volatile uint32_t*>(&p.state->error_code) != kErrorNone) {
      dead = true;
    } else if (p.timeout_ns != 0 && now > deadline) {
      RecordTimeout(p, peer, phase);
      dead = true;
    }
    return !dead;
  }
};

// Spins until the Lamport slot holds no sentinel, or the budget runs out.
__device__ __forceinline__ uint4 PollLamport(const void* slot, const FusedKernelParams& p,
                                             int peer, WaitBudget& budget) {
  uint4 v = LoadVolatile(slot);
  for (uint32_t spins = 1; HasSentinel(v); ++spins) {
    if (!budget.KeepWaiting(p, spins, peer, /*phase=*/1)) break;
    v = LoadVolatile(slot);
  }
  return v;
}

// Sums 8-lane vectors in f32 in call order (the caller goes rank 0..N-1).
template <typename T>
__device__ __forceinline__ void Accumulate(const uint4& w, bool first, float (&acc)[kVecElems]) {
  float f[kVecElems];
  Unpack<T>(w, f);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) acc[i] = first ? f[i] : __fadd_rn(acc[i], f[i]);
}

// The last block to finish advances the call count (every block has read it by then).
__device__ __forceinline__ void FinishCall(uint32_t* count, uint32_t* blocks_done, uint32_t value,
                                           uint64_t* prev_bytes, uint64_t bytes) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(blocks_done, 1u) == gridDim.x - 1) {
      *blocks_done = 0;
      if (prev_bytes) *prev_bytes = bytes;
      __threadfence();
      *count = value + 1;
    }
  }
}

// ================================================================ one-shot

// One-shot fused all-reduce + epilogue (Lamport).
//
// Grid: G <= co-resident blocks on every rank (the launcher caps it), block: blockDim threads
// fixed by H (a multiple of 32, <= 512). Block b owns rows b, b + G, ... on every rank.
// Shared memory: 4 x 32 floats (block reductions).
// Protocol (no barrier): buffer = call % 3. Phase 1: each rank stores its rows, with -0.0
// turned into +0.0, into slot `rank` of buffer `buffer` on every peer. Phase 2: each rank
// polls its own copy of the other slots until no 16-bit lane holds the sentinel -0.0, sums
// the partials in rank order 0..N-1 in f32 and runs the epilogue. Phase 3: the buffer of the
// previous call is reset to the sentinel: peers write it again only two calls later, after
// this kernel has completed (they need this rank's data of the next call first).
// Preconditions: T rows fit in a slot; H % 8 == 0; all pointers 16-byte aligned; the
// workspace's Lamport buffers hold the sentinel except what the previous call wrote.
template <typename T, int kRanks, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads)
    OneShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  WaitForPreviousKernel();
  AllowNextKernel();

  const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&p.state->oneshot_count);
  const uint64_t prev_bytes = *reinterpret_cast<volatile uint64_t*>(&p.state->oneshot_prev_bytes);
  const size_t buffer = p.lamport_offset + size_t(call % kLamportBuffers) * p.lamport_buffer_bytes;
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  const uint4* x = static_cast<const uint4*>(p.x);
  char* const local = p.peer_bases[p.rank];

  // ---- phase 1: push this rank's rows into slot `rank` of every peer
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x) {
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      const uint4 val = CanonicalZeros(LoadGlobal(x + size_t(row) * p.vecs_per_row + v));
      const size_t offset = buffer + size_t(p.rank) * p.lamport_slot_bytes + size_t(row) * row_bytes +
                            size_t(v) * sizeof(uint4);
#pragma unroll
      for (int i = 1; i < kRanks; ++i) StoreVolatile(p.peer_bases[(p.rank + i) % kRanks] + offset, val);
    }
  }

  // ---- phase 2: gather every rank's rows, reduce in rank order, epilogue
  WaitBudget budget;
  int slot = 0;
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 a[kMaxVecPerThread];
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      float acc[kVecElems];
#pragma unroll
      for (int r = 0; r < kRanks; ++r) {
        uint4 w;
        if (r == p.rank) {
          w = CanonicalZeros(LoadGlobal(x + size_t(row) * p.vecs_per_row + v));
        } else {
          w = PollLamport(local + buffer + size_t(r) * p.lamport_slot_bytes + size_t(row) * row_bytes +
                              size_t(v) * sizeof(uint4),
                          p, r, budget);
        }
        Accumulate<T>(w, r == 0, acc);
      }
      a[k] = Pack<T>(acc);
    }
    RowEpilogue<T, kQuant>(p, row, a, smem, slot);
  }

  // ---- phase 3: reset the previous call's buffer (peer slots) to the sentinel
  if (prev_bytes > 0) {
    const size_t prev = p.lamport_offset + size_t((call + kLamportBuffers - 1) % kLamportBuffers) *
                                               p.lamport_buffer_bytes;
    const size_t words_per_slot = prev_bytes / sizeof(uint4);
    const size_t total = words_per_slot * (kRanks - 1);
    const uint4 sentinel = make_uint4(kSentinelPair, kSentinelPair, kSentinelPair, kSentinelPair);
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += size_t(gridDim.x) * blockDim.x) {
      const int peer_index = int(i / words_per_slot);  // 0..N-2 -> the ranks other than this one
      const int r = peer_index < p.rank ? peer_index : peer_index + 1;
      StoreGlobal(local + prev + size_t(r) * p.lamport_slot_bytes + (i % words_per_slot) * sizeof(uint4),
                  sentinel);
    }
  }

  FinishCall(&p.state->oneshot_count, &p.state->oneshot_blocks_done, call,
             &p.state->oneshot_prev_bytes, uint64_t(p.tokens) * row_bytes);
}

// ================================================================ two-shot

// Per-block barrier with the same block index on every peer: signal, then wait for all.
// NOTE: the fence after __syncthreads publishes every thread's earlier stores (cumulativity)
// before the flag; the acquire load followed by __syncthreads makes the peers' stores visible
// to the whole block.
template <int kRanks>
__device__ __forceinline__ void PeerBlockBarrier(const FusedKernelParams& p, int phase,
                                                 uint32_t epoch, WaitBudget& budget) {
  __syncthreads();
  const int peer = threadIdx.x;
  if (peer < kRanks && peer != p.rank) {
    const size_t index = (size_t(phase) * kMaxBarrierBlocks + blockIdx.x) * kMaxRanks;
    __threadfence_system();
    uint32_t* remote = reinterpret_cast<uint32_t*>(p.peer_bases[peer] + p.flags_offset) + index + p.rank;
    StoreReleaseSys(remote, epoch);
    const uint32_t* mine = reinterpret_cast<const uint32_t*>(p.peer_bases[p.rank] + p.flags_offset) + index + peer;
    for (uint32_t spins = 1; LoadAcquireSys(mine) < epoch; ++spins) {
      if (!budget.KeepWaiting(p, spins, peer, /*phase=*/2 + phase)) break;
    }
  }
  __syncthreads();
}

// Two-shot fused all-reduce + epilogue.
//
// Grid: G <= min(co-resident blocks, kMaxBarrierBlocks), same G on every rank; block as
// one-shot. Rows are split by owner: rank o owns rows [o * R, (o + 1) * R), R = ceil(T / N).
// Block b handles row offsets j = b, b + G, ... inside every owner's range.
// Phase 1 (reduce-scatter): push the partial rows j of every owner o != rank into slot `rank`
//   of o's reduce-scatter area. Barrier 1 with block b of every peer.
// Phase 2: sum the owned rows j over ranks 0..N-1 (own partial from x, the others from the
//   landing area), round once, push a into every rank's all-gather area. Barrier 2.
// Phase 3: for every owner o, the epilogue of row o * R + j from the all-gathered a (the
//   residual is replicated, so each rank adds it itself).
// Buffer reuse is safe without more barriers: a peer writes this rank's areas again only in a
// later call, after its barriers with this rank's blocks of that later call.
// Preconditions: R rows fit the landing areas; H % 8 == 0; pointers 16-byte aligned.
template <typename T, int kRanks, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads)
    TwoShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  WaitForPreviousKernel();
  AllowNextKernel();

  const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&p.state->twoshot_count);
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  const uint4* x = static_cast<const uint4*>(p.x);
  char* const local = p.peer_bases[p.rank];
  const int64_t rows = p.rows_per_rank;
  WaitBudget budget;

  // ---- phase 1: scatter partial rows to their owners
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
#pragma unroll
    for (int i = 1; i < kRanks; ++i) {
      const int owner = (p.rank + i) % kRanks;
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) continue;
      char* dst = p.peer_bases[owner] + p.rs_offset + size_t(p.rank) * p.rs_slot_bytes + size_t(j) * row_bytes;
#pragma unroll
      for (int k = 0; k < kMaxVecPerThread; ++k) {
        const int v = threadIdx.x + k * blockDim.x;
        if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
        StoreGlobal(dst + size_t(v) * sizeof(uint4),
                    CanonicalZeros(LoadGlobal(x + size_t(row) * p.vecs_per_row + v)));
      }
    }
  }
  PeerBlockBarrier<kRanks>(p, 0, 2 * call + 1, budget);

  // ---- phase 2: reduce the owned rows in rank order, all-gather a
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    const int64_t row = p.rank * rows + j;
    if (row >= p.tokens) break;
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      float acc[kVecElems];
#pragma unroll
      for (int r = 0; r < kRanks; ++r) {
        const uint4 w = r == p.rank
                            ? CanonicalZeros(LoadGlobal(x + size_t(row) * p.vecs_per_row + v))
                            : __ldcg(reinterpret_cast<const uint4*>(local + p.rs_offset + size_t(r) * p.rs_slot_bytes +
                                                                    size_t(j) * row_bytes) + v);
        Accumulate<T>(w, r == 0, acc);
      }
      const uint4 a = Pack<T>(acc);
      const size_t offset = p.ag_offset + size_t(row) * row_bytes + size_t(v) * sizeof(uint4);
#pragma unroll
      for (int i = 0; i < kRanks; ++i) StoreGlobal(p.peer_bases[(p.rank + i) % kRanks] + offset, a);
    }
  }
  PeerBlockBarrier<kRanks>(p, 1, 2 * call + 2, budget);

  // ---- phase 3: epilogue of every gathered row of this block
  int slot = 0;
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int owner = 0; owner < kRanks; ++owner, slot ^= 1) {
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) break;
      uint4 a[kMaxVecPerThread];
#pragma unroll
      for (int k = 0; k < kMaxVecPerThread; ++k) {
        const int v = threadIdx.x + k * blockDim.x;
        if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
        a[k] = __ldcg(reinterpret_cast<const uint4*>(local + p.ag_offset + size_t(row) * row_bytes) + v);
      }
      RowEpilogue<T, kQuant>(p, row, a, smem, slot);
    }
  }

  FinishCall(&p.state->twoshot_count, &p.state->twoshot_blocks_done, call, nullptr, 0);
}

// ================================================================ nccl path epilogue

// Epilogue after ncclAllReduce: reads the reduced rows and runs RowEpilogue.
// Grid: any; block as one-shot; block b handles rows b, b + G, ...
// -0.0 sums (all partials -0.0) are turned into +0.0 so the result matches the other paths.
template <typename T, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads)
    AllreduceEpilogueKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  WaitForPreviousKernel();
  AllowNextKernel();
  const uint4* reduced = static_cast<const uint4*>(p.reduced);
  int slot = 0;
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 a[kMaxVecPerThread];
#pragma unroll
    for (int k = 0; k < kMaxVecPerThread; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (k >= p.vecs_per_thread || v >= p.vecs_per_row) continue;
      a[k] = CanonicalZeros(LoadGlobal(reduced + size_t(row) * p.vecs_per_row + v));
    }
    RowEpilogue<T, kQuant>(p, row, a, smem, slot);
  }
}

}  // namespace tpfuse::cuda
