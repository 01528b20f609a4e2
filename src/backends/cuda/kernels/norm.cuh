// Row reductions of the unfused ops: mean over the last dim, RMSNorm, and residual add +
// RMSNorm. One block per row.
//
// Sums follow the one order of common/row_layout.h (the fused kernels' and the CPU oracle's): a
// block of MakeRowLayout(cols).threads threads, thread t summing in f32 the 8-element vectors
// t, t + threads, ..., then an xor butterfly in each warp and the warps in order. Rows the layout
// does not cover are summed left to right by thread 0. So these kernels agree with the oracle bit
// for bit, and an unfused norm with the fused op.
#pragma once

#include <cstdint>

#include "backends/cuda/kernels/unfused_common.cuh"
#include "common/row_layout.h"

namespace tpfuse::cuda::unfused {

// The block's sum of this thread's partial `v` in row order (xor butterfly per warp, warps in
// order); every thread gets it. smem: 32 floats. blockDim: the row layout's threads.
__device__ __forceinline__ float RowOrderBlockSum(float v, float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float total = smem[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) total = __fadd_rn(total, smem[w]);
  __syncthreads();
  return total;
}

// Threads of a row-reduction block for rows of `cols` elements: the row layout's where it covers
// the row (its order needs exactly that many), else 256 (thread 0 sums, all threads map).
inline int RowReductionThreads(int64_t cols) {
  return HasRowLayout(cols) ? MakeRowLayout(cols).threads : 256;
}

// The norm weight's dtype, read at run time (bf16, f16, f32): one kernel per activation dtype.
enum class WeightType : uint8_t { kBf16, kF16, kF32 };

__device__ __forceinline__ float LoadWeight(const void* w, WeightType wt, int64_t i) {
  switch (wt) {
    case WeightType::kBf16: return LoadF(static_cast<const Bf16*>(w) + i);
    case WeightType::kF16: return LoadF(static_cast<const F16*>(w) + i);
    case WeightType::kF32: return LoadF(static_cast<const float*>(w) + i);
  }
  return 0.0f;
}

__device__ __forceinline__ void LoadWeight8(const void* w, WeightType wt, int64_t i,
                                            float (&f)[kVec]) {
  switch (wt) {
    case WeightType::kBf16: VecLoad(static_cast<const Bf16*>(w) + i, f); return;
    case WeightType::kF16: VecLoad(static_cast<const F16*>(w) + i, f); return;
    case WeightType::kF32: VecLoad(static_cast<const float*>(w) + i, f); return;
  }
}

// ---------------------------------------------------------------- mean

struct MeanParams {
  const void* x = nullptr;  // [rows, cols] T
  void* y = nullptr;        // [rows] T
  int64_t cols = 0;
  bool vec = false;  // cols % 8 == 0 and x aligned for 8-element vectors
};

// MeanKernel: y[row] = round_T(sum(x[row, :]) / float(cols)), the sum in f32 in row order (the
// oracle's Mean).
//   Grid: (rows); block: RowReductionThreads(cols). Block owns one row.
//   Shared memory: 32 floats. Synchronization: __syncthreads only. Preconditions: cols > 0.
template <typename T>
__global__ void MeanKernel(MeanParams p) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.cols;
  float sum = 0.0f;
  if (HasRowLayout(p.cols)) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += int64_t(blockDim.x) * kVec) {
      float f[kVec];
      if (p.vec) {
        VecLoad(x + c, f);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) f[i] = LoadF(x + c + i);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum = __fadd_rn(sum, f[i]);
    }
    sum = RowOrderBlockSum(sum, smem);
  } else if (threadIdx.x == 0) {
    for (int64_t c = 0; c < p.cols; ++c) sum = __fadd_rn(sum, LoadF(x + c));
  }
  if (threadIdx.x == 0) static_cast<T*>(p.y)[row] = EncodeF<T>(__fdiv_rn(sum, float(p.cols)));
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNormParams {
  const void* x = nullptr;         // [rows, cols] T
  const void* residual = nullptr;  // [rows, cols] T (kHasResidual)
  const void* w = nullptr;         // [cols] weight_type
  WeightType weight_type = WeightType::kBf16;
  void* y = nullptr;               // [rows, cols] T
  void* residual_out = nullptr;    // [rows, cols] T (kHasResidual)
  int64_t cols = 0;
  float eps = 1e-6f;
  float weight_bias = 0.0f;
  bool vec = false;  // cols % 8 == 0 and every pointer aligned for 8-element vectors
};

// RmsNormKernel: (residual add and) RMSNorm of one row, Contract 3 steps 2-3:
//   h = kHasResidual ? round_T(x + residual) : x         (written to residual_out)
//   r = 1.0f / sqrtf(sum(h^2) / cols + eps)              (squares and sum in f32, row order)
//   y = round_T((h * r) * w'), w' = w + weight_bias (no add when the bias is 0)
//   Grid: (rows); block: RowReductionThreads(cols). Block owns one row; a thread owns the same
//   chunks of 8 columns in both phases (rows the layout does not cover: thread 0 in phase 1).
//   Shared memory: 32 floats. Synchronization: the block reduction between the phases.
//   Phase 2 reads h back from residual_out (its own writes, or thread 0's after the barrier).
//   Preconditions: cols > 0; outputs do not alias inputs.
template <typename T, bool kHasResidual>
__global__ void RmsNormKernel(RmsNormParams p) {
  __shared__ float smem[32];
  const int64_t offset = int64_t(blockIdx.x) * p.cols;
  const T* x = static_cast<const T*>(p.x) + offset;
  const T* res = kHasResidual ? static_cast<const T*>(p.residual) + offset : nullptr;
  T* res_out = kHasResidual ? static_cast<T*>(p.residual_out) + offset : nullptr;
  T* y = static_cast<T*>(p.y) + offset;
  const int64_t step = int64_t(blockDim.x) * kVec;

  // ---- phase 1: h = x (+ residual), sum of squares
  float sum_sq = 0.0f;
  if (HasRowLayout(p.cols)) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += step) {
      float h[kVec];
      if (p.vec) {
        VecLoad(x + c, h);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) h[i] = LoadF(x + c + i);
      }
      if constexpr (kHasResidual) {
        float r[kVec];
        if (p.vec) {
          VecLoad(res + c, r);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) r[i] = LoadF(res + c + i);
        }
#pragma unroll
        for (int i = 0; i < kVec; ++i) h[i] = DecodeF(EncodeF<T>(__fadd_rn(h[i], r[i])));
        if (p.vec) {
          VecStore(res_out + c, h);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) res_out[c + i] = EncodeF<T>(h[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum_sq = __fadd_rn(sum_sq, __fmul_rn(h[i], h[i]));
    }
    sum_sq = RowOrderBlockSum(sum_sq, smem);
  } else {
    if (threadIdx.x == 0) {
      for (int64_t c = 0; c < p.cols; ++c) {
        float h = LoadF(x + c);
        if constexpr (kHasResidual) {
          const T rounded = EncodeF<T>(__fadd_rn(h, LoadF(res + c)));
          res_out[c] = rounded;
          h = DecodeF(rounded);
        }
        sum_sq = __fadd_rn(sum_sq, __fmul_rn(h, h));
      }
      smem[0] = sum_sq;
    }
    __syncthreads();
    sum_sq = smem[0];
  }
  const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sum_sq, float(p.cols)), p.eps)));

  // ---- phase 2: y = (h * r) * (w + weight_bias)
  const T* h_src = kHasResidual ? res_out : x;
  if (p.vec) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += step) {
      float h[kVec], w[kVec];
      VecLoad(h_src + c, h);
      LoadWeight8(p.w, p.weight_type, c, w);
#pragma unroll
      for (int i = 0; i < kVec; ++i)
        h[i] = __fmul_rn(__fmul_rn(h[i], r), p.weight_bias != 0.0f ? __fadd_rn(w[i], p.weight_bias) : w[i]);
      VecStore(y + c, h);
    }
  } else {
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float w0 = LoadWeight(p.w, p.weight_type, c);
      const float w = p.weight_bias != 0.0f ? __fadd_rn(w0, p.weight_bias) : w0;
      y[c] = EncodeF<T>(__fmul_rn(__fmul_rn(LoadF(h_src + c), r), w));
    }
  }
}

}  // namespace tpfuse::cuda::unfused
