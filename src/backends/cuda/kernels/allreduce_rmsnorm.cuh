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

// Most 16-byte vectors one thread owns in a row: H <= 512 threads * 4 * 8 = 16384. The kernels
// are instantiated for 1, 2 and 4 vectors per thread so registers match the row.
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
#pragma unroll
      for (int i = 0; i < kVecElems; ++i) hf[i] = ToFloat<T>(FromFloat<T>(__fadd_rn(hf[i], rf[i])));
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

// Sums one 8-lane vector into acc in f32 (the caller goes rank 0..N-1).
template <typename T>
__device__ __forceinline__ void Accumulate(const uint4& w, bool first, float (&acc)[kVecElems]) {
  float f[kVecElems];
  Unpack<T>(w, f);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) acc[i] = first ? f[i] : __fadd_rn(acc[i], f[i]);
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

// ================================================================ one-shot

// One-shot fused all-reduce + epilogue (Lamport).
//
// Grid: G <= min(T, co-resident blocks, kMaxBarrierBlocks); block: blockDim threads fixed by H
// (a multiple of 32, <= 512), kVec vectors each. Block b owns rows b, b + G, ... on every rank.
// Shared memory: 4 x 32 floats (block reductions).
// Protocol (no barrier): buffer = count_b % 2, count_b this block's call count. Phase 1: push
// this rank's rows, with -0.0 turned into +0.0, into slot `rank` of the buffer on every peer.
// Phase 2: poll this rank's copy of every other slot until no 16-bit lane holds the sentinel
// -0.0, reset each slot to the sentinel right after reading it, sum the partials in rank order
// 0..N-1 in f32 and run the epilogue. A peer writes this buffer again only two calls later,
// after it has received this rank's data of the next call, which this rank sends only after
// this kernel has completed (griddepcontrol.wait comes first): the resets are visible by then.
// Preconditions: T rows fit in a slot; H % 8 == 0; pointers 16-byte aligned; the Lamport buffers
// hold the sentinel everywhere (creation fills them; every call restores what it consumed).
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads) OneShotAllreduceRmsnormKernel(const FusedKernelParams p) {
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
  const size_t buffer = p.lamport_offset + size_t(call % kLamportBuffers) * p.lamport_buffer_bytes;
  const size_t row_bytes = size_t(p.hidden) * sizeof(T);
  for (; row < p.tokens; row += gridDim.x) {
    if (row != blockIdx.x) LoadRowX<kVec>(p, row, xv);
    const size_t offset = buffer + size_t(p.rank) * p.lamport_slot_bytes + size_t(row) * row_bytes;
    for (int i = 1; i < p.world_size; ++i) {
      char* dst = p.peer_bases[(p.rank + i) % p.world_size] + offset;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v < p.vecs_per_row) StoreVolatile(dst + size_t(v) * sizeof(uint4), xv[k]);
      }
    }
  }

  // ---- phase 2: gather every rank's rows, reduce in rank order, epilogue
  char* const local = p.peer_bases[p.rank];
  const uint4 sentinel = make_uint4(kSentinelPair, kSentinelPair, kSentinelPair, kSentinelPair);
  WaitBudget budget;
  int slot = 0;
  for (row = blockIdx.x; row < p.tokens; row += gridDim.x, slot ^= 1) {
    uint4 res[kVec];
    LoadResidual<kVec>(p, row, res);
    LoadRowX<kVec>(p, row, xv);
    uint4 a[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      if (v >= p.vecs_per_row) continue;
      float acc[kVecElems];
      for (int r = 0; r < p.world_size; ++r) {
        uint4 w = xv[k];
        if (r != p.rank) {
          char* src = local + buffer + size_t(r) * p.lamport_slot_bytes + size_t(row) * row_bytes +
                      size_t(v) * sizeof(uint4);
          w = LoadVolatile(src);
          for (uint32_t spins = 1; HasSentinel(w); ++spins) {
            if (!budget.KeepWaiting(p, spins, r, kPhaseOneShotGather)) break;
            w = LoadVolatile(src);
          }
          StoreGlobal(src, sentinel);  // consumed: ready for the call after next
        }
        Accumulate<T>(w, r == 0, acc);
      }
      a[k] = Pack<T>(acc);
    }
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
  }
  // Every thread read `call` before the epilogue's barriers, so the block may advance it.
  if (threadIdx.x == 0) p.state->oneshot_count[blockIdx.x] = call + 1;
}

// ================================================================ two-shot

// Per-block barrier with the same block index on every peer: signal, then wait for all.
// NOTE: the fence after __syncthreads publishes every thread's earlier stores (cumulativity)
// before the flag; the acquire load followed by __syncthreads makes the peers' stores visible
// to the whole block.
__device__ __forceinline__ void PeerBlockBarrier(const FusedKernelParams& p, int phase, uint32_t epoch,
                                                 WaitBudget& budget) {
  __syncthreads();
  const int peer = threadIdx.x;
  if (peer < p.world_size && peer != p.rank) {
    const size_t index = (size_t(phase) * kMaxBarrierBlocks + blockIdx.x) * kMaxRanks;
    __threadfence_system();
    uint32_t* remote = reinterpret_cast<uint32_t*>(p.peer_bases[peer] + p.flags_offset) + index + p.rank;
    StoreReleaseSys(remote, epoch);
    const uint32_t* mine = reinterpret_cast<const uint32_t*>(p.peer_bases[p.rank] + p.flags_offset) + index + peer;
    const uint32_t error_phase = phase == 0 ? kPhaseTwoShotReduceScatter : kPhaseTwoShotAllGather;
    for (uint32_t spins = 1; LoadAcquireSys(mine) < epoch; ++spins) {
      if (!budget.KeepWaiting(p, spins, peer, error_phase)) break;
    }
  }
  __syncthreads();
}

// Two-shot fused all-reduce + epilogue.
//
// Grid: G <= min(R, co-resident blocks, kMaxBarrierBlocks), the same G on every rank; block as
// one-shot. Rows are split by owner: rank o owns rows [o R, (o + 1) R), R = ceil(T / N). Block b
// handles row offsets j = b, b + G, ... inside every owner's range.
// Phase 1 (reduce-scatter): push partial rows j of every owner o != rank into slot `rank` of
//   o's reduce-scatter area. Barrier 1 with block b of every peer.
// Phase 2: sum the owned rows over ranks 0..N-1 (own partial from x, the others from the
//   landing area), round once, push a into every rank's all-gather area. Barrier 2.
// Phase 3: for every owner o, the epilogue of row o R + j from the all-gathered a (the
//   residual is replicated, so each rank adds its own).
// Buffer reuse needs no more barriers: a peer writes this rank's areas again only in a later
// call, after that call's barriers with this rank's blocks, which start after this kernel ends.
// Preconditions: R rows fit the landing areas; H % 8 == 0; pointers 16-byte aligned.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads) TwoShotAllreduceRmsnormKernel(const FusedKernelParams p) {
  __shared__ float smem[4][32];
  RowWeights<kVec> weights;
  weights.Preload(p);
  WaitForPreviousKernel();
  AllowNextKernel();

  const uint32_t call = *reinterpret_cast<volatile uint32_t*>(&p.state->twoshot_count[blockIdx.x]);
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
      char* dst = p.peer_bases[owner] + p.rs_offset + size_t(p.rank) * p.rs_slot_bytes + size_t(j) * row_bytes;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v < p.vecs_per_row) StoreGlobal(dst + size_t(v) * sizeof(uint4), xv[k]);
      }
    }
  }
  PeerBlockBarrier(p, 0, 2 * call + 1, budget);

  // ---- phase 2: reduce the owned rows in rank order, all-gather a
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    const int64_t row = p.rank * rows + j;
    if (row >= p.tokens) break;
    uint4 xv[kVec];
    LoadRowX<kVec>(p, row, xv);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      if (v >= p.vecs_per_row) continue;
      float acc[kVecElems];
      for (int r = 0; r < p.world_size; ++r) {
        const uint4 w = r == p.rank ? xv[k]
                                    : __ldcg(reinterpret_cast<const uint4*>(local + p.rs_offset + size_t(r) * p.rs_slot_bytes +
                                                                            size_t(j) * row_bytes) + v);
        Accumulate<T>(w, r == 0, acc);
      }
      const uint4 a = Pack<T>(acc);
      const size_t offset = p.ag_offset + size_t(row) * row_bytes + size_t(v) * sizeof(uint4);
      for (int i = 0; i < p.world_size; ++i) StoreGlobal(p.peer_bases[(p.rank + i) % p.world_size] + offset, a);
    }
  }
  PeerBlockBarrier(p, 1, 2 * call + 2, budget);

  // ---- phase 3: epilogue of every gathered row of this block
  int slot = 0;
  for (int64_t j = blockIdx.x; j < rows; j += gridDim.x) {
    for (int owner = 0; owner < p.world_size; ++owner, slot ^= 1) {
      const int64_t row = owner * rows + j;
      if (row >= p.tokens) break;
      uint4 res[kVec];
      LoadResidual<kVec>(p, row, res);
      uint4 a[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int v = RowVectors<kVec>::Index(k);
        if (v < p.vecs_per_row) a[k] = __ldcg(reinterpret_cast<const uint4*>(local + p.ag_offset + size_t(row) * row_bytes) + v);
      }
      RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
    }
  }
  if (threadIdx.x == 0) p.state->twoshot_count[blockIdx.x] = call + 1;
}

// ================================================================ nccl path epilogue

// Epilogue after ncclAllReduce: reads the reduced rows and runs RowEpilogue.
// Grid: any; block as one-shot; block b handles rows b, b + G, ...
// -0.0 sums (all partials -0.0) become +0.0 so the result matches the other paths bit for bit.
template <typename T, int kVec, QuantMode kQuant>
__global__ void __launch_bounds__(kMaxRowThreads) AllreduceEpilogueKernel(const FusedKernelParams p) {
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
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = RowVectors<kVec>::Index(k);
      if (v < p.vecs_per_row) a[k] = CanonicalZeros(LoadGlobal(reduced + size_t(row) * p.vecs_per_row + v));
    }
    RowEpilogue<T, kVec, kQuant>(p, row, a, res, weights, smem, slot);
  }
}

}  // namespace tpfuse::cuda
