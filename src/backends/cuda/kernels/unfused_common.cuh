// Device helpers of the unfused op kernels (elementwise, norm, quant): one element type per
// storage dtype, loads that decode to f32 and stores that round once, 8-element vectors, and
// block reductions.
//
// NOTE: the arithmetic here must agree with the CPU oracle (backends/cpu/reference_ops.*) bit
// for bit wherever the oracle's operations are the same: every rounding is round-to-nearest-even
// and every f32 operation that the oracle performs as one IEEE operation is written with an
// explicit _rn intrinsic, so neither --use_fast_math nor FMA contraction can change it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/quotient.h"

namespace tpfuse::cuda::unfused {

// Storage types by dtype: bf16 __nv_bfloat16, f16 __half, f32 float, f8e4m3 __nv_fp8_e4m3,
// i32 int32_t.
using Bf16 = __nv_bfloat16;
using F16 = __half;
using Fp8 = __nv_fp8_e4m3;

// ---------------------------------------------------------------- element codecs

__device__ __forceinline__ float LoadF(const Bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float LoadF(const F16* p) { return __half2float(*p); }
__device__ __forceinline__ float LoadF(const float* p) { return *p; }
__device__ __forceinline__ float LoadF(const Fp8* p) { return float(*p); }  // exact
__device__ __forceinline__ float LoadF(const int32_t* p) { return __int2float_rn(*p); }

__device__ __forceinline__ float DecodeF(Bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float DecodeF(F16 v) { return __half2float(v); }
__device__ __forceinline__ float DecodeF(float v) { return v; }
__device__ __forceinline__ float DecodeF(Fp8 v) { return float(v); }
__device__ __forceinline__ float DecodeF(int32_t v) { return __int2float_rn(v); }

template <typename T>
__device__ __forceinline__ T EncodeF(float v);
template <>
__device__ __forceinline__ Bf16 EncodeF<Bf16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ F16 EncodeF<F16>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ float EncodeF<float>(float v) { return v; }
// Round to nearest even, saturating to +-448 (the oracle's FloatToFp8E4M3).
template <>
__device__ __forceinline__ Fp8 EncodeF<Fp8>(float v) {
  Fp8 r;
  r.__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
  return r;
}

// ---------------------------------------------------------------- 8-element vectors

inline constexpr int kVec = 8;

// Eight elements moved as one (16-byte for 16-bit types, 2 x 16 bytes for 32-bit ones, 8 bytes
// for FP8). Precondition of VecLoad / VecStore: the address is aligned to alignof(Vec8<T>).
template <typename T>
struct alignas(sizeof(T) * kVec > 16 ? 16 : sizeof(T) * kVec) Vec8 {
  T v[kVec];
};

template <typename T>
__device__ __forceinline__ void VecLoad(const T* p, float (&f)[kVec]) {
  const Vec8<T> w = *reinterpret_cast<const Vec8<T>*>(p);
#pragma unroll
  for (int i = 0; i < kVec; ++i) f[i] = DecodeF(w.v[i]);
}

template <typename T>
__device__ __forceinline__ void VecStore(T* p, const float (&f)[kVec]) {
  Vec8<T> w;
#pragma unroll
  for (int i = 0; i < kVec; ++i) w.v[i] = EncodeF<T>(f[i]);
  *reinterpret_cast<Vec8<T>*>(p) = w;
}

// Whether `p` may be used with VecLoad / VecStore for element type of size `elem_bytes`.
inline bool VecAligned(const void* p, int elem_bytes) {
  const uintptr_t align = elem_bytes * kVec > 16 ? 16 : uintptr_t(elem_bytes) * kVec;
  return reinterpret_cast<uintptr_t>(p) % align == 0;
}

// ---------------------------------------------------------------- block reductions

// Sum over the block; every thread gets the total. blockDim.x is a multiple of 32 (at most
// 1024); `smem` holds 32 doubles. Ends with a barrier, so `smem` may be reused at once.
// NOTE: the order of the sum is fixed by the block size alone, so a row's result does not
// depend on the grid or on other rows.
__device__ __forceinline__ double BlockSum(double v, double* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? smem[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

// Max over a warp of magnitudes (values >= +0, inf or NaN): a NaN wins (MaxOfMagnitudes).
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = MaxOfMagnitudes(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over the block of magnitudes; every thread gets it. Same preconditions as BlockSum;
// `smem` holds 32 floats.
__device__ __forceinline__ float BlockMax(float v, float* smem) {
  v = WarpMax(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = WarpMax(lane < warps ? smem[lane] : 0.0f);
  __syncthreads();
  return v;
}

// Threads per block for a kernel that gives one block to a row of `cols` elements, each
// thread taking 8 at a time: enough threads to cover the row once, in [32, 1024], a multiple
// of 32.
inline int RowBlockThreads(int64_t cols) {
  int64_t threads = (cols + kVec - 1) / kVec;
  threads = (threads + 31) / 32 * 32;
  if (threads < 32) threads = 32;
  if (threads > 1024) threads = 1024;
  return int(threads);
}

}  // namespace tpfuse::cuda::unfused
