// Row reductions of the unfused ops: mean over the last dim, RMSNorm, and residual add +
// RMSNorm. One block per row.
//
// NOTE: sums are accumulated in double, as in the CPU oracle. Squares of 16-bit values are exact
// in double and their sums nearly always are, so these kernels agree with the oracle bit for
// bit in practice even though the order of the sum differs (tests still allow Contract 3's
// 1 ulp).
#pragma once

#include <cstdint>

#include "backends/cuda/kernels/unfused_common.cuh"

namespace tpfuse::cuda::unfused {

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

// MeanKernel: y[row] = round_T(float(sum(x[row, :]) / cols)), the sum and the division in
// double (the oracle's Mean).
//   Grid: (rows); block: a multiple of 32 threads, at most 1024. Block owns one row.
//   Shared memory: 32 doubles (the block reduction). Synchronization: __syncthreads only.
//   Preconditions: cols > 0.
template <typename T>
__global__ void MeanKernel(MeanParams p) {
  __shared__ double smem[32];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.cols;
  double sum = 0.0;
  if (p.vec) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += int64_t(blockDim.x) * kVec) {
      float f[kVec];
      VecLoad(x + c, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum = __dadd_rn(sum, double(f[i]));
    }
  } else {
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) sum = __dadd_rn(sum, double(LoadF(x + c)));
  }
  sum = BlockSum(sum, smem);
  if (threadIdx.x == 0)
    static_cast<T*>(p.y)[row] = EncodeF<T>(__double2float_rn(__ddiv_rn(sum, double(p.cols))));
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
//   r = 1.0f / sqrtf(float(sum(h^2) / cols) + eps)       (sum and division in double)
//   y = round_T((h * r) * (w + weight_bias))             (each operation in f32)
//   Grid: (rows); block: a multiple of 32 threads, at most 1024. Block owns one row; a thread
//   owns the same chunks of 8 columns in both phases.
//   Shared memory: 32 doubles. Synchronization: the block reduction between the phases.
//   Phases: 1. h and the sum of squares; 2. the scaled output. Phase 2 reads h back from
//   residual_out, the thread's own writes of phase 1.
//   Preconditions: cols > 0; outputs do not alias inputs.
template <typename T, bool kHasResidual>
__global__ void RmsNormKernel(RmsNormParams p) {
  __shared__ double smem[32];
  const int64_t offset = int64_t(blockIdx.x) * p.cols;
  const T* x = static_cast<const T*>(p.x) + offset;
  const T* res = kHasResidual ? static_cast<const T*>(p.residual) + offset : nullptr;
  T* res_out = kHasResidual ? static_cast<T*>(p.residual_out) + offset : nullptr;
  T* y = static_cast<T*>(p.y) + offset;
  const int64_t step = int64_t(blockDim.x) * kVec;

  // ---- phase 1: h = x (+ residual), sum of squares
  double sum_sq = 0.0;
  if (p.vec) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += step) {
      float h[kVec];
      VecLoad(x + c, h);
      if constexpr (kHasResidual) {
        float r[kVec];
        VecLoad(res + c, r);
#pragma unroll
        for (int i = 0; i < kVec; ++i) h[i] = DecodeF(EncodeF<T>(__fadd_rn(h[i], r[i])));
        VecStore(res_out + c, h);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum_sq = __dadd_rn(sum_sq, __dmul_rn(double(h[i]), double(h[i])));
    }
  } else {
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      float h = LoadF(x + c);
      if constexpr (kHasResidual) {
        const T rounded = EncodeF<T>(__fadd_rn(h, LoadF(res + c)));
        res_out[c] = rounded;
        h = DecodeF(rounded);
      }
      sum_sq = __dadd_rn(sum_sq, __dmul_rn(double(h), double(h)));
    }
  }
  sum_sq = BlockSum(sum_sq, smem);
  const float mean_sq = __double2float_rn(__ddiv_rn(sum_sq, double(p.cols)));
  const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_sq, p.eps)));

  // ---- phase 2: y = (h * r) * (w + weight_bias)
  const T* h_src = kHasResidual ? res_out : x;
  if (p.vec) {
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < p.cols; c += step) {
      float h[kVec], w[kVec];
      VecLoad(h_src + c, h);
      LoadWeight8(p.w, p.weight_type, c, w);
#pragma unroll
      for (int i = 0; i < kVec; ++i) h[i] = __fmul_rn(__fmul_rn(h[i], r), __fadd_rn(w[i], p.weight_bias));
      VecStore(y + c, h);
    }
  } else {
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float w = __fadd_rn(LoadWeight(p.w, p.weight_type, c), p.weight_bias);
      y[c] = EncodeF<T>(__fmul_rn(__fmul_rn(LoadF(h_src + c), r), w));
    }
  }
}

}  // namespace tpfuse::cuda::unfused
