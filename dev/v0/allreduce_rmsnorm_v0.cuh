// The fused all-reduce + residual add + RMSNorm + FP8 quantization kernels (DESIGN.md
// Contract 3): one-shot and two-shot (both Lamport: data words carry readiness, no barrier),
// and the epilogue of the nccl path.
//
// Every strategy ends in the same per-row epilogue (RowEpilogue) with the same thread layout,
// which depends on H only: so a row's result does not depend on T, on the other rows, or on the
// strategy, and all ranks compute bitwise-identical results.
#pragma once

#include <cstdint>

#include "backends/cuda/comm/workspace.h"
#include "backends/cuda/kernels/common.cuh"
#include "backends/cuda/kernels/unfused_common.cuh"
#include "tpfuse/fused_op.h"

namespace tpfuse::cuda::v0 {

// Most 16-byte vectors one thread owns in a row: H <= 512 threads * 4 * 8 = 16384. The kernels
// are instantiated for 1, 2 and 4 vectors per thread so registers match the row.
inline constexpr int kMaxVecPerThread = 4;
inline constexpr int kMaxRowThreads = 512;
// Blocks per SM the compiler must allow (it caps registers to fit): with one vector per thread
// two 512-thread blocks fit in 64 registers; more vectors would spill.
template <int kVec>
inline constexpr int kMinBlocksPerSm = kVec == 1 ? 2 : 1;

// ================================================================ parameters

struct FusedKernelParams {
  // ---- inputs (device pointers; x, residual [T, H]; weight [H]; scale f32[])
  const void* x;
  const void* residual;     // null: no residual
  const void* weight;
  const float* scale;       // fp8_tensor only
  const void* reduced;      // nccl path: the ncclAllReduce result [T, H], or with
  int gathered_ranks;       //   gathered_ranks > 0 the ncclAllGather result [N][T][H]
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
  DType weight_dtype;
  float eps;
  float weight_bias;
  int group_vecs;           // fp8_group: group_size / 8 (a power of two <= 32)
  int groups_per_row;       // H / group_size (group), 1 (token)
  bool scale_col_major;
  bool scale_ue8m0;
  int64_t scale_tokens_padded;  // column-major scale row length: pad4(T)
  int scale_pad_rows;           // column-major: padding entries after the last row, set to 0
  // ---- communication
  int rank;
  int world_size;
  char* peer_bases[kMaxRanks];    // every rank's workspace as mapped here
  size_t lamport_offset;
  size_t lamport_buffer_bytes;
  size_t lamport_slot_bytes;      // one rank's rows inside a Lamport buffer (16-byte multiple)
  size_t rs_offset;
  size_t rs_buffer_bytes;
  size_t rs_slot_bytes;           // one rank's rows inside a reduce-scatter buffer
  size_t ag_offset;
  size_t ag_buffer_bytes;
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

// Thread layout of a row: thread i owns vectors i, i + blockDim, ..., i + (kVec - 1) blockDim
// (those < H/8). blockDim is a multiple of 32 fixed by H, so the sum of squares has one fixed
// order and groups of group_size/8 consecutive vectors are owned by aligned lane groups.
template <int kVec>
struct RowVectors {
  __device__ __forceinline__ static int Index(int k) { return threadIdx.x + k * blockDim.x; }
};

// Weight vector v (plus weight_bias, an f32 add as Contract 3 step 3).
__device__ __forceinline__ void LoadWeightVector(const FusedKernelParams& p, int v, float (&wb)[kVecElems]) {
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

// This thread's weights, held in registers for the whole kernel when they fit (kVec <= 2) and
// loaded before waiting for the previous kernel (weights are parameters, nobody writes them);
// with more vectors per thread they are read in the epilogue instead, to avoid spills.
template <int kVec>
struct RowWeights {
  static constexpr bool kHeld = kVec <= 2;
  float wb[kHeld ? kVec : 1][kVecElems];

  __device__ __forceinline__ void Preload(const FusedKernelParams& p) {
    if constexpr (kHeld) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v < p.vecs_per_row) LoadWeightVector(p, v, wb[k]);
      }
    }
  }
  __device__ __forceinline__ void Get(const FusedKernelParams& p, int k, float (&out)[kVecElems]) const {
    if constexpr (kHeld) {
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) out[i] = wb[k][i];
    } else {
      LoadWeightVector(p, RowVectors<kVec>::Index(k), out);
    }
  }
};

// This thread's residual vectors of `row` (zeros without a residual): issued before the
// caller waits on peers so the load overlaps the wait.
template <int kVec>
__device__ __forceinline__ void LoadResidual(const FusedKernelParams& p, int64_t row, uint4 (&res)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    res[k] = make_uint4(0, 0, 0, 0);
    if (p.residual && v < p.vecs_per_row)
      res[k] = LoadGlobal(static_cast<const uint4*>(p.residual) + size_t(row) * p.vecs_per_row + v);
  }
}

__device__ __forceinline__ float Ue8m0(float s) {
  uint32_t u = __float_as_uint(s);
  if (u & 0x007FFFFFu) u = (u & 0xFF800000u) + 0x00800000u;  // s > 0, normal: next power of 2
  return __uint_as_float(u);
}

// Contract 3 steps 2-4 for one row, given a = round(sum of partials) for this thread's vectors.
// Block-uniform: every thread of the block calls it for the same row (it synchronizes).
template <typename T, int kVec, QuantMode kQuant>
__device__ __forceinline__ void RowEpilogue(const FusedKernelParams& p, int64_t row, const uint4 (&a)[kVec],
                                            const uint4 (&res)[kVec], const RowWeights<kVec>& weights,
                                            float (*smem)[32], int slot) {
  const size_t row_vec = size_t(row) * p.vecs_per_row;
  uint4 h[kVec];  // rounded h: exact in 16 bits, so kept packed

  // ---- step 2: h = round(a + residual); emit a and h
  float sum_sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v >= p.vecs_per_row) continue;
    if (p.allreduce_out) StoreStreaming(static_cast<uint4*>(p.allreduce_out) + row_vec + v, a[k]);
    float hf[kVecElems];
    Unpack<T>(a[k], hf);
    if (p.residual) {
      float rf[kVecElems];
      Unpack<T>(res[k], rf);
      // One element rounded at a time, as v0 did (the unfused kernels' EncodeF).
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) hf[i] = ToFloat<T>(unfused::EncodeF<T>(__fadd_rn(hf[i], rf[i])));
      h[k] = Pack<T>(hf);
    } else {
      h[k] = a[k];
    }
    if (p.residual_out) StoreStreaming(static_cast<uint4*>(p.residual_out) + row_vec + v, h[k]);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) sum_sq = __fmaf_rn(hf[i], hf[i], sum_sq);
  }

  // ---- step 3: y = round(h * rsqrt(mean(h^2) + eps) * (w + weight_bias))
  const float total = BlockSum(sum_sq, smem, slot);
  const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(total, float(p.hidden)), p.eps)));
  uint4 y[kVec];
  float amax = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v >= p.vecs_per_row) continue;
    float hf[kVecElems], yf[kVecElems], wb[kVecElems];
    Unpack<T>(h[k], hf);
    weights.Get(p, k, wb);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(__fmul_rn(hf[i], r), wb[i]);
    y[k] = Pack<T>(yf);
    if (p.norm_out) StoreStreaming(static_cast<uint4*>(p.norm_out) + row_vec + v, y[k]);
    if constexpr (kQuant == QuantMode::kFp8Token) {
      Unpack<T>(y[k], yf);  // the rounded y
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) amax = fmaxf(amax, fabsf(yf[i]));
    }
  }
  if constexpr (kQuant == QuantMode::kNone) return;

  // ---- step 4: FP8 quantization of the rounded y
  uint8_t* const q_row = p.quant_out + size_t(row) * p.hidden;
  if constexpr (kQuant == QuantMode::kFp8Tensor) {
    const float inv = __frcp_rn(__ldg(p.scale));
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      if (v >= p.vecs_per_row) continue;
      float yf[kVecElems];
      Unpack<T>(y[k], yf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fmul_rn(yf[i], inv);
      StoreStreaming8(q_row + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  } else if constexpr (kQuant == QuantMode::kFp8Token) {
    const float row_amax = BlockMax(amax, smem + 2, slot);
    float s = __fdiv_rn(fmaxf(row_amax, 1e-10f), 448.0f);
    if (p.scale_ue8m0) s = Ue8m0(s);
    // [T, 1] row-major and [1, pad4(T)] column-major put row t's scale at index t alike.
    if (threadIdx.x == 0) {
      p.scale_out[row] = s;
      if (row == p.tokens - 1)
        for (int i = 1; i <= p.scale_pad_rows; ++i) p.scale_out[row + i] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      if (v >= p.vecs_per_row) continue;
      float yf[kVecElems];
      Unpack<T>(y[k], yf);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fdiv_rn(yf[i], s);
      StoreStreaming8(q_row + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  } else {  // kFp8Group: one amax per vector slot, reduced over the group's lanes
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      // Shuffles need the whole warp: lanes past the row join with 0 and store nothing.
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
        // The column-major layout's padding (rows T..pad4(T)-1) is written as 0 so every
        // element of the output is defined.
        if (row == p.tokens - 1)
          for (int i = 1; i <= p.scale_pad_rows; ++i) p.scale_out[sidx + i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) yf[i] = __fdiv_rn(yf[i], s);
      StoreStreaming8(q_row + size_t(v) * kVecElems, ToFp8x8(yf));
    }
  }
}

// ================================================================ bounded waits

// Records the first timeout of the communicator (code, peer, phase).
__device__ __forceinline__ void RecordTimeout(const FusedKernelParams& p, int peer, uint32_t phase) {
  if (atomicCAS(&p.state->error_code, kErrorNone, kErrorTimeout) == kErrorNone) {
    p.state->error_peer = uint32_t(peer);
    p.state->error_phase = phase;
  }
}

// Bounded-wait bookkeeping for one thread: once any wait of the thread times out (or another
// thread reported an error), the thread stops waiting and finishes with garbage; the host sees
// the error through Communicator::CheckHealth and the communicator is poisoned.
struct WaitBudget {
  uint64_t deadline = 0;  // set at the first wait that has to spin
  bool dead = false;

  // Returns false when the wait must stop (timeout or error elsewhere).
  __device__ __forceinline__ bool KeepWaiting(const FusedKernelParams& p, uint32_t spins, int peer,
                                              uint32_t phase) {
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

// One Lamport area of the workspace: buffer `call % 2` of it.
__device__ __forceinline__ size_t LamportBuffer(size_t offset, size_t buffer_bytes, uint32_t call) {
  return offset + size_t(call % kLamportBuffers) * buffer_bytes;
}

template <int kVec>
__device__ __forceinline__ void LoadRowX(const FusedKernelParams& p, int64_t row, uint4 (&xv)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v < p.vecs_per_row)
      xv[k] = CanonicalZeros(LoadGlobal(static_cast<const uint4*>(p.x) + size_t(row) * p.vecs_per_row + v));
  }
}

// Stores this thread's vectors of a row at `row_base` (a peer's Lamport slot row).
template <int kVec>
__device__ __forceinline__ void PushRow(const FusedKernelParams& p, char* row_base, const uint4 (&vals)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v < p.vecs_per_row) StoreVolatile(row_base + size_t(v) * sizeof(uint4), vals[k]);
  }
}

// Reads this thread's vectors of a Lamport slot row at `row_base` (this rank's memory), waiting
// until no 16-bit lane holds the sentinel, and resets them to the sentinel. Every first load is
// issued before any wait, so the row costs one memory round trip when the data is there.
template <int kVec>
__device__ __forceinline__ void PollRow(const FusedKernelParams& p, char* row_base, int peer, uint32_t phase,
                                        WaitBudget& budget, uint4 (&out)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v < p.vecs_per_row) out[k] = LoadVolatile(row_base + size_t(v) * sizeof(uint4));
  }
  const uint4 sentinel = make_uint4(kSentinelPair, kSentinelPair, kSentinelPair, kSentinelPair);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int v = RowVectors<kVec>::Index(k);
    if (v >= p.vecs_per_row) continue;
    char* slot = row_base + size_t(v) * sizeof(uint4);
    for (uint32_t spins = 1; HasSentinel(out[k]); ++spins) {
      if (!budget.KeepWaiting(p, spins, peer, phase)) break;
      out[k] = LoadVolatile(slot);
    }
    StoreGlobal(slot, sentinel);  // consumed: ready for the call after next
  }
}

// a = round(sum over ranks 0..N-1 of the partials, f32, in rank order): this rank's partial is
// `own`, rank r's is polled from `slot_row(r)` (a row of a Lamport area in this rank's memory).
template <typename T, int kVec, typename SlotRow>
__device__ __forceinline__ void GatherAndReduce(const FusedKernelParams& p, const uint4 (&own)[kVec],
                                                SlotRow slot_row, uint32_t phase, WaitBudget& budget,
                                                uint4 (&a)[kVec]) {
  float acc[kVec][kVecElems];
  for (int r = 0; r < p.world_size; ++r) {
    uint4 part[kVec];
    if (r == p.rank) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) part[k] = own[k];
    } else {
      PollRow<kVec>(p, slot_row(r), r, phase, budget, part);
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (RowVectors<kVec>::Index(k) >= p.vecs_per_row) continue;
      float f[kVecElems];
      Unpack<T>(part[k], f);
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) acc[k][i] = r == 0 ? f[i] : __fadd_rn(acc[k][i], f[i]);
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    if (RowVectors<kVec>::Index(k) < p.vecs_per_row) a[k] = Pack<T>(acc[k]);
  }
}

// ================================================================ one-shot

// One-shot fused all-reduce + epilogue (Lamport).
//
// Grid: G <= min(T, co-resident blocks, kMaxFusedBlocks); block: blockDim threads fixed by H
// (a multiple of 32, <= 512), kVec vectors each. Block b owns rows b, b + G, ... on every rank.
// Shared memory: 4 x 32 floats (block reductions).
// Protocol (no barrier): buffer = count_b % 2, count_b this block's call count. Phase 1: push
// this rank's rows, with -0.0 turned into +0.0, into slot `rank` of the buffer on every peer.
// Phase 2: poll this rank's copy of every other slot until no 16-bit lane holds the sentinel
// -0.0, reset each slot to the sentinel right after reading it, sum the partials in rank order
// 0..N-1 in f32 and run the epilogue. A peer writes this buffer again only two calls later,
// after it has received this rank's data of the next call, which this rank sends only after
// this kernel has completed (griddepcontrol.wait comes first): the resets are visible by then.
// Every block pushes before it waits, and waits only on the same block index of its peers.
// Preconditions: T rows fit in a slot; H % 8 == 0; pointers 16-byte aligned; the Lamport areas
// hold the sentinel everywhere (creation fills them; every call restores what it consumed).
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads, kMinBlocksPerSm<kVec>) OneShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  RowWeights<kVec> weights;
  weights.Preload(p);
  WaitForPreviousKernel();
  AllowNextKernel();

  // ---- phase 1: push this rank's rows into slot `rank` of every peer
  int64_t row = blockIdx.x;
  uint4 xv[kVec];
  LoadRowX<kVec>(p, row, xv);  // issued before the count load: both in flight together
  const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&p.state->oneshot_count[blockIdx.x]);
  const size_t buffer = LamportBuffer(p.lamport_offset, p.lamport_buffer_bytes, call);
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  for (; row < p.tokens; row += gridDim.x) {
    if (row != blockIdx.x) LoadRowX<kVec>(p, row, xv);
    const size_t offset = buffer + size_t(p.rank) * p.lamport_slot_bytes + size_t(row) * row_bytes;
    for (int i = 1; i < p.world_size; ++i) PushRow<kVec>(p, p.peer_bases[(p.rank + i) % p.world_size] + offset, xv);
  }

  // ---- phase 2: gather every rank's rows, reduce in rank order, epilogue
  char* const local = p.peer_bases[p.rank];
  WaitBudget budget;
  int slot = 0;
  for (row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 res[kVec], a[kVec];
    LoadResidual<kVec>(p, row, res);
    LoadRowX<kVec>(p, row, xv);
    GatherAndReduce<T, kVec>(
        p, xv, [&](int r) { return local + buffer + size_t(r) * p.lamport_slot_bytes + size_t(row) * row_bytes; },
        kPhaseOneShotGather, budget, a);
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
  }
  // Every thread read `call` before the epilogue's barriers, so the block may advance it.
  if (threadIdx.x == 0) p.state->oneshot_count[blockIdx.x] = call + 1;
}

// ================================================================ two-shot

// Two-shot fused all-reduce + epilogue (Lamport in both halves, no barrier).
//
// Grid: G <= min(R, co-resident blocks, kMaxFusedBlocks), the same G on every rank; block as
// one-shot. Rows are split by owner: rank o owns rows [o R, (o + 1) R), R = ceil(T / N). Block b
// handles row offsets j = b, b + G, ... inside every owner's range. Buffers: count_b % 2 of the
// reduce-scatter and all-gather areas.
// Phase 1 (reduce-scatter): push the partial rows j of every owner o != rank into slot `rank`
//   of o's reduce-scatter buffer.
// Phase 2 (owned rows): poll the other ranks' partials, sum in rank order 0..N-1, round once;
//   push a into every peer's all-gather buffer; run the epilogue here and now.
// Phase 3 (other owners' rows): poll a from this rank's all-gather buffer, run the epilogue (the
//   residual is replicated, so each rank adds its own; gathering a is half the bytes of h + y).
// Every slot read is reset to the sentinel. Buffer reuse is safe for the reasons of one-shot:
// a peer writes a buffer again two calls later, after this kernel has completed. Every block
// pushes before it waits, and waits only on the same block index of its peers.
// Preconditions: R rows fit the areas; H % 8 == 0; pointers 16-byte aligned; the areas hold the
// sentinel everywhere.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads, kMinBlocksPerSm<kVec>) TwoShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  RowWeights<kVec> weights;
  weights.Preload(p);
  WaitForPreviousKernel();
  AllowNextKernel();

  const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&p.state->twoshot_count[blockIdx.x]);
  const size_t rs = LamportBuffer(p.rs_offset, p.rs_buffer_bytes, call);
  const size_t ag = LamportBuffer(p.ag_offset, p.ag_buffer_bytes, call);
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  char* const local = p.peer_bases[p.rank];
  const int64_t rows = p.rows_per_rank;
  WaitBudget budget;

  // ---- phase 1: scatter partial rows to their owners
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int i = 1; i < p.world_size; ++i) {
      const int owner = (p.rank + i) % p.world_size;
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) continue;
      uint4 xv[kVec];
      LoadRowX<kVec>(p, row, xv);
      PushRow<kVec>(p, p.peer_bases[owner] + rs + size_t(p.rank) * p.rs_slot_bytes + size_t(j) * row_bytes, xv);
    }
  }

  // ---- phase 2: reduce the owned rows in rank order, all-gather a, epilogue
  int slot = 0;
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x, slot ^= 1) {
    const int64_t row = p.rank * rows + j;
    if (row >= p.tokens) break;
    uint4 xv[kVec], res[kVec], a[kVec];
    LoadResidual<kVec>(p, row, res);
    LoadRowX<kVec>(p, row, xv);
    GatherAndReduce<T, kVec>(
        p, xv, [&](int r) { return local + rs + size_t(r) * p.rs_slot_bytes + size_t(j) * row_bytes; },
        kPhaseTwoShotReduceScatter, budget, a);
    for (int i = 1; i < p.world_size; ++i)
      PushRow<kVec>(p, p.peer_bases[(p.rank + i) % p.world_size] + ag + size_t(row) * row_bytes, a);
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
  }

  // ---- phase 3: the other owners' rows, as their a arrives
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int i = 1; i < p.world_size; ++i) {
      const int owner = (p.rank + i) % p.world_size;
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) continue;
      uint4 res[kVec], a[kVec];
      LoadResidual<kVec>(p, row, res);
      PollRow<kVec>(p, local + ag + size_t(row) * row_bytes, owner, kPhaseTwoShotAllGather, budget, a);
      RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
      slot ^= 1;
    }
  }
  // Every thread read `call` before the epilogue's barriers, so the block may advance it.
  if (threadIdx.x == 0) p.state->twoshot_count[blockIdx.x] = call + 1;
}

// ================================================================ nccl path epilogue

// Epilogue of the nccl path: reads the rows ncclAllReduce reduced, or sums the rows
// ncclAllGather gathered in rank order (Contract 3's sum, as the other strategies), and runs
// RowEpilogue.
// Grid: any; block as one-shot; block b handles rows b, b + G, ...
// -0.0 becomes +0.0 (in the reduced rows, or in each gathered partial) so the result matches
// the other paths bit for bit.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads, kMinBlocksPerSm<kVec>) AllreduceEpilogueKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  RowWeights<kVec> weights;
  weights.Preload(p);
  WaitForPreviousKernel();
  AllowNextKernel();
  const uint4* reduced = static_cast<const uint4*>(p.reduced);
  int slot = 0;
  for (int64_t row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 res[kVec], a[kVec];
    LoadResidual<kVec>(p, row, res);
    if (p.gathered_ranks > 0) {
      const size_t rank_stride = size_t(p.tokens) * p.vecs_per_row;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v >= p.vecs_per_row) continue;
        float acc[kVecElems];
        for (int r = 0; r < p.gathered_ranks; ++r) {
          float f[kVecElems];
          Unpack<T>(CanonicalZeros(LoadGlobal(reduced + r * rank_stride + size_t(row) * p.vecs_per_row + v)), f);
#pragma unroll
          for (int i = 0; i < kVecElems; ++i) acc[i] = r == 0 ? f[i] : __fadd_rn(acc[i], f[i]);
        }
        a[k] = Pack<T>(acc);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v < p.vecs_per_row) a[k] = CanonicalZeros(LoadGlobal(reduced + size_t(row) * p.vecs_per_row + v));
      }
    }
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
  }
}

}  // namespace tpfuse::cuda::v0
