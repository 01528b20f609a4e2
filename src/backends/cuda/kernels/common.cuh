// Device helpers shared by the fused kernels: 16-byte vectors of 8 activations, conversions,
// memory-model-explicit loads/stores, programmatic dependent launch, bounded spin-waits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace tpfuse::cuda {

// Eight 16-bit activations in one 16-byte word: the unit every fused kernel moves.
inline constexpr int kVecElems = 8;
// The Lamport sentinel: -0.0 in both bf16 and f16. A peer never sends it (it sends +0.0 for
// -0.0), so a slot still holding it has not been written yet.
inline constexpr uint32_t kSentinelPair = 0x80008000u;

// ---------------------------------------------------------------- conversions

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) { return __half2float(v); }

// Unpacks a 16-byte word into 8 floats / packs 8 floats (rounding each once).
template <typename T>
__device__ __forceinline__ void Unpack(const uint4& w, float (&f)[kVecElems]) {
  const T* e = reinterpret_cast<const T*>(&w);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) f[i] = ToFloat<T>(e[i]);
}
// A vector of eight T values (a weight's, or y rounded to T) to f32: for bf16 by its bits (the
// low element shifted up, the high one masked: two integer instructions per pair, where
// Unpack's element reads compile to three or four); f16 as Unpack.
template <typename T>
__device__ __forceinline__ void UnpackRounded(const uint4& w, float (&f)[kVecElems]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(words[i] << 16);
      f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  } else {
    Unpack<T>(w, f);
  }
}
// Two floats rounded to nearest even into one 32-bit pair (low half: a): one paired conversion
// (F2FP ... PACK_AB) instead of two single ones (F2F.BF16.F32 for bf16). A row's epilogue rounds
// every element two or three times, and with the single conversions those dominated the row's
// arithmetic (docs/perf/h200x1/NOTES.md, run 10).
template <typename T>
__device__ __forceinline__ uint32_t PackPair(float a, float b);
template <>
__device__ __forceinline__ uint32_t PackPair<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t PackPair<__half>(float a, float b) {
  const __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <typename T>
__device__ __forceinline__ uint4 Pack(const float (&f)[kVecElems]) {
  return make_uint4(PackPair<T>(f[0], f[1]), PackPair<T>(f[2], f[3]), PackPair<T>(f[4], f[5]),
                    PackPair<T>(f[6], f[7]));
}
// Each element rounded to T and back (what a graph's .to(T) does to an f32 value).
template <typename T>
__device__ __forceinline__ void RoundVector(float (&f)[kVecElems]) {
  Unpack<T>(Pack<T>(f), f);
}
// One value rounded to T and back, as a function object (AmaxFromBound's round16).
template <typename T>
struct RoundTo16 {
  __device__ __forceinline__ float operator()(float x) const {
    if constexpr (std::is_same_v<T, __half>) return ToFloat<T>(__float2half_rn(x));
    else return ToFloat<T>(__float2bfloat16_rn(x));
  }
};

// -0.0 -> +0.0 in each 16-bit lane, so that no sent word ever equals the sentinel.
// NOTE: every strategy applies this to every partial (its own included): the sum of
// canonicalized partials is then the same on every path, and never -0.0.
__device__ __forceinline__ uint32_t CanonicalZeroPair(uint32_t v) {
  const uint32_t lo = (v & 0xFFFFu) == 0x8000u ? 0u : (v & 0xFFFFu);
  const uint32_t hi = (v & 0xFFFF0000u) == 0x80000000u ? 0u : (v & 0xFFFF0000u);
  return lo | hi;
}
__device__ __forceinline__ uint4 CanonicalZeros(uint4 v) {
  return make_uint4(CanonicalZeroPair(v.x), CanonicalZeroPair(v.y), CanonicalZeroPair(v.z),
                    CanonicalZeroPair(v.w));
}
__device__ __forceinline__ bool PairHasSentinel(uint32_t v) {
  return (v & 0xFFFFu) == 0x8000u || (v >> 16) == 0x8000u;
}
__device__ __forceinline__ bool HasSentinel(const uint4& v) {
  return PairHasSentinel(v.x) || PairHasSentinel(v.y) || PairHasSentinel(v.z) ||
         PairHasSentinel(v.w);
}

// Eight FP8 e4m3fn codes (round to nearest even, saturating to +-448, NaN kept) in 8 bytes.
__device__ __forceinline__ uint2 ToFp8x8(const float (&f)[kVecElems]) {
  uint32_t packed[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(
        make_float2(f[half * 4 + 0], f[half * 4 + 1]), __NV_SATFINITE, __NV_E4M3);
    const __nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(
        make_float2(f[half * 4 + 2], f[half * 4 + 3]), __NV_SATFINITE, __NV_E4M3);
    packed[half] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  return make_uint2(packed[0], packed[1]);
}

// ---------------------------------------------------------------- memory access

// 16 bytes global -> shared without registers (cp.async, cached in L1); completes at
// CopyAsyncWaitAll, after which the issuing thread may read its own copies.
__device__ __forceinline__ void CopyAsync16(uint4* smem_dst, const uint4* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void CopyAsyncWaitAll() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Starts bringing `bytes` (a multiple of 16) at `p` (16-byte aligned) into L2, from one thread;
// nothing waits for it and nothing reads its result. A prefetch is a hint with no effect on
// memory consistency (PTX ISA: prefetch, cp.async.bulk.prefetch): it returns no data and fills
// no L1, so a load that follows a synchronization (griddepcontrol.wait) still sees every write
// the synchronization orders before it, whenever the prefetch ran.
__device__ __forceinline__ void PrefetchL2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes));
#endif
}

__device__ __forceinline__ uint4 LoadGlobal(const void* p) {
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ float LoadGlobalF32(const float* p) { return *p; }
// Read through to memory every time: polled words are written by peers over NVLink.
__device__ __forceinline__ uint4 LoadVolatile(const void* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ void StoreVolatile(void* p, const uint4& v) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void StoreGlobal(void* p, const uint4& v) {
  *reinterpret_cast<uint4*>(p) = v;
}
// Streaming store for outputs nobody reads back in this kernel.
__device__ __forceinline__ void StoreStreaming(void* p, const uint4& v) {
  __stcs(reinterpret_cast<uint4*>(p), v);
}
__device__ __forceinline__ void StoreStreaming8(void* p, const uint2& v) {
  __stcs(reinterpret_cast<uint2*>(p), v);
}
// StoreStreaming where `store` holds, as one predicated instruction (StoreStreaming8If).
__device__ __forceinline__ void StoreStreamingIf(bool store, void* p, const uint4& v) {
  asm volatile(
      "{\n\t.reg .pred s;\n\tsetp.ne.b32 s, %0, 0;\n\t"
      "@s st.global.cs.v4.u32 [%1], {%2, %3, %4, %5};\n\t}"
      :
      : "r"(int(store)), "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
      : "memory");
}
// StoreStreaming8 where `store` holds, as one predicated instruction: the compiler cannot move
// the computation of v into a branch around it.
__device__ __forceinline__ void StoreStreaming8If(bool store, void* p, const uint2& v) {
  asm volatile(
      "{\n\t.reg .pred s;\n\tsetp.ne.b32 s, %0, 0;\n\t@s st.global.cs.v2.u32 [%1], {%2, %3};\n\t}"
      :
      : "r"(int(store)), "l"(p), "r"(v.x), "r"(v.y)
      : "memory");
}

// Keeps a value computed where this is called: the compiler may not move its computation
// later (an empty asm that may change it). For addresses taken while a row's loads are in
// flight, where the compiler would take them again after the row's sum.
template <typename V>
__device__ __forceinline__ void PinInRegister(V*& v) {
  uintptr_t bits = reinterpret_cast<uintptr_t>(v);
  asm volatile("" : "+l"(bits));
  v = reinterpret_cast<V*>(bits);
}
__device__ __forceinline__ void PinInRegister(int& v) { asm volatile("" : "+r"(v)); }
__device__ __forceinline__ void PinInRegister(uint4& v) {
  asm volatile("" : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w));
}

// A global f32 store where `store` holds, as one predicated instruction, st.global even where
// the compiler no longer knows the pointer is global (a pinned address: PinInRegister).
__device__ __forceinline__ void StoreGlobalF32If(bool store, float* p, float v) {
  asm volatile("{\n\t.reg .pred s;\n\tsetp.ne.b32 s, %0, 0;\n\t@s st.global.f32 [%1], %2;\n\t}"
               :
               : "r"(int(store)), "l"(p), "f"(v)
               : "memory");
}

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// ---------------------------------------------------------------- programmatic dependent launch

// Blocks until the previous kernel on the stream has completed and its writes are visible.
// A no-op when the kernel was launched without the PDL attribute.
__device__ __forceinline__ void WaitForPreviousKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Lets the next kernel on the stream start launching (it still waits for our completion
// before reading anything we write).
__device__ __forceinline__ void AllowNextKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace tpfuse::cuda
