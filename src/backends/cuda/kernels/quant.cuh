// FP8 kernels of the unfused ops: static (per-tensor) and dynamic (per-token, per-group)
// quantization to e4m3fn, and the dequantization that feeds scaled_matmul's GEMM.
#pragma once

#include <cstdint>

#include "backends/cuda/kernels/unfused_common.cuh"
#include "common/quotient.h"

namespace tpfuse::cuda::unfused {

// ---------------------------------------------------------------- static quantization

struct QuantTensorParams {
  const void* x = nullptr;       // [n] T
  const float* scale = nullptr;  // [1]
  void* q = nullptr;             // [n] f8e4m3
  int64_t n = 0;
  bool divides = false;  // q = fp8(x / scale), else fp8(x * (1 / scale)) (QuantParams::Divides)
  bool vec = false;      // x and q aligned for 8-element vectors
};

// x / scale (IEEE) or x * inv, as the form wrote it.
__device__ __forceinline__ float ScaleStepOf(float x, float scale, float inv, bool divides) {
  return divides ? __fdiv_rn(x, scale) : __fmul_rn(x, inv);
}

// QuantFp8TensorKernel: q[i] = fp8(x[i] * (1.0f / scale)), the reciprocal once per thread in
// f32 (the same value everywhere), or fp8(x[i] / scale) where the form divides.
//   Grid: 1D, grid-stride; block: 1D; a thread owns chunks of 8 elements.
//   Shared memory: none. Synchronization: none.
template <typename T>
__global__ void QuantFp8TensorKernel(QuantTensorParams p) {
  const T* x = static_cast<const T*>(p.x);
  Fp8* q = static_cast<Fp8*>(p.q);
  const float scale = *p.scale;
  const float inv = __fdiv_rn(1.0f, scale);
  const int64_t chunks = (p.n + kVec - 1) / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    const int64_t base = c * kVec;
    if (p.vec && base + kVec <= p.n) {
      float f[kVec];
      VecLoad(x + base, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) f[i] = ScaleStepOf(f[i], scale, inv, p.divides);
      VecStore(q + base, f);
    } else {
      for (int64_t i = base; i < p.n && i < base + kVec; ++i)
        q[i] = EncodeF<Fp8>(ScaleStepOf(LoadF(x + i), scale, inv, p.divides));
    }
  }
}

// ---------------------------------------------------------------- dynamic quantization

struct QuantDynamicParams {
  const void* x = nullptr;  // [rows, cols] T
  void* q = nullptr;        // [rows, cols] f8e4m3
  float* s = nullptr;       // row-major [rows, groups] or column-major [groups, rows_padded]
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group_size = 0;   // cols for per-token
  int64_t groups = 0;       // cols / group_size
  int64_t rows_padded = 0;  // column-major: pad4(rows)
  bool col_major = false;
  bool ue8m0 = false;
  bool floor_after_div = false;  // s = max(amax / 448, 1 / (448 * 512))
  bool ue8m0_floor = false;      // ue8m0 of max(s, 1e-10)
  bool divides = true;           // q = fp8(x / s), else fp8(x * (1 / s)) (QuantParams::Divides)
  bool vec = false;  // group_size % 8 == 0 and x, q aligned for 8-element vectors
};

// max |x| over n elements from `x`, this thread's share (team member `member` of `team`); a NaN
// wins (MaxOfMagnitudes, as torch's amax).
template <typename T>
__device__ __forceinline__ float SpanAmax(const T* x, int64_t n, int member, int team, bool vec) {
  float amax = 0.0f;
  if (vec) {
    for (int64_t c = int64_t(member) * kVec; c < n; c += int64_t(team) * kVec) {
      float f[kVec];
      VecLoad(x + c, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) amax = MaxOfMagnitudes(amax, fabsf(f[i]));
    }
  } else {
    for (int64_t c = member; c < n; c += team) amax = MaxOfMagnitudes(amax, fabsf(LoadF(x + c)));
  }
  return amax;
}

// q = fp8(x / s) or fp8(x * (1 / s)) over n elements, this thread's share (same split as
// SpanAmax).
template <typename T>
__device__ __forceinline__ void SpanQuantize(const T* x, Fp8* q, int64_t n, float s, bool divides,
                                             int member, int team, bool vec) {
  const float inv = __frcp_rn(s);
  if (vec) {
    for (int64_t c = int64_t(member) * kVec; c < n; c += int64_t(team) * kVec) {
      float f[kVec];
      VecLoad(x + c, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) f[i] = ScaleStepOf(f[i], s, inv, divides);
      VecStore(q + c, f);
    }
  } else {
    for (int64_t c = member; c < n; c += team) q[c] = EncodeF<Fp8>(ScaleStepOf(LoadF(x + c), s, inv, divides));
  }
}

// QuantFp8DynamicKernel: per-token or per-group quantization of one row per block.
//   amax = max |x| over the group (a NaN wins), s = DynamicScaleOf(amax) (common/quotient.h,
//   the oracle's), q = fp8(x / s) (f32 division; x * (1 / s) where the form multiplies), s
//   stored in the row- or column-major layout. Bit for bit the oracle, inf and NaN included
//   (NaN payloads aside).
//   Grid: (rows, or rows_padded for column-major scales: blocks past the last row write the
//   layout's zero padding and exit). Block: a multiple of 32 threads.
//   One group per row (per-token): the whole block shares it, amax by a block reduction.
//   Several groups: each warp takes groups warp, warp + warps, ..., amax by warp shuffles.
//   Shared memory: 32 floats. Synchronization: the block reduction (per-token only).
//   Preconditions: cols == groups * group_size, group_size > 0.
template <typename T>
__global__ void QuantFp8DynamicKernel(QuantDynamicParams p) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x;
  auto scale_at = [&](int64_t g) -> float* {
    return p.col_major ? p.s + g * p.rows_padded + row : p.s + row * p.groups + g;
  };
  if (row >= p.rows) {  // column-major padding rows
    for (int64_t g = threadIdx.x; g < p.groups; g += blockDim.x) *scale_at(g) = 0.0f;
    return;
  }
  const T* x = static_cast<const T*>(p.x) + row * p.cols;
  Fp8* q = static_cast<Fp8*>(p.q) + row * p.cols;
  if (p.groups == 1) {
    const float amax = BlockMax(SpanAmax(x, p.cols, threadIdx.x, blockDim.x, p.vec), smem);
    const float s = DynamicScaleOf(amax, p.floor_after_div, p.ue8m0, p.ue8m0_floor);
    SpanQuantize(x, q, p.cols, s, p.divides, threadIdx.x, blockDim.x, p.vec);
    if (threadIdx.x == 0) *scale_at(0) = s;
    return;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t g = warp; g < p.groups; g += warps) {
    const T* xg = x + g * p.group_size;
    const float amax = WarpMax(SpanAmax(xg, p.group_size, lane, 32, p.vec));
    const float s = DynamicScaleOf(amax, p.floor_after_div, p.ue8m0, p.ue8m0_floor);
    SpanQuantize(xg, q + g * p.group_size, p.group_size, s, p.divides, lane, 32, p.vec);
    if (lane == 0) *scale_at(g) = s;
  }
}

// ---------------------------------------------------------------- dequantization

// Element (r, c) of an FP8 matrix [rows, cols] takes the scale
// s[(r / block_rows) * row_stride + (c / block_cols) * col_stride].
struct DequantParams {
  const void* q = nullptr;   // [rows, cols] f8e4m3
  const float* s = nullptr;
  float* out = nullptr;      // [rows, cols] f32
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t block_rows = 1;
  int64_t block_cols = 1;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
  bool vec = false;  // cols % 8 == 0, q and out aligned for 8-element vectors
};

// DequantFp8Kernel: out = float(q) * scale (one f32 multiplication: exact for power-of-two
// scales).
//   Grid: 1D, grid-stride; block: 1D; a thread owns chunks of 8 elements (inside one row with
//   p.vec). Shared memory: none. Synchronization: none.
// NOTE: not a template, so only one translation unit (launch/quant.cu) may include this header.
__global__ void DequantFp8Kernel(DequantParams p) {
  const Fp8* q = static_cast<const Fp8*>(p.q);
  const int64_t n = p.rows * p.cols;
  const int64_t chunks = (n + kVec - 1) / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
    const int64_t base = ch * kVec;
    if (p.vec) {
      const int64_t r = base / p.cols, c0 = base % p.cols;
      float f[kVec];
      VecLoad(q + base, f);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float s = p.s[(r / p.block_rows) * p.row_stride + ((c0 + i) / p.block_cols) * p.col_stride];
        f[i] = __fmul_rn(f[i], s);
      }
      VecStore(p.out + base, f);
    } else {
      for (int64_t i = base; i < n && i < base + kVec; ++i) {
        const int64_t r = i / p.cols, c = i % p.cols;
        const float s = p.s[(r / p.block_rows) * p.row_stride + (c / p.block_cols) * p.col_stride];
        p.out[i] = __fmul_rn(LoadF(q + i), s);
      }
    }
  }
}

}  // namespace tpfuse::cuda::unfused
