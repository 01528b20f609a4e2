// y / s without a division instruction, for the FP8 quantization's per-element scale step:
// q = y * rcp with rcp = 1 / s (correctly rounded), then one exact remainder and correction,
// e = fma(s, q, -y) (the remainder, negated), q' = fma(-e, rcp, q). Host and device (the CPU
// test checks it against IEEE division; the kernels use it so no per-element division call sits
// in the hot loop).
// Zeros need no test: where s q - y is exactly 0, e is +0 and fma(-0, rcp, q) is q, -0 included
// (-0 + -0 = -0), and y = ±0 gives q = ±0 so. (The remainder taken as fma(-s, q, y) also comes to
// +0 there, and fma(+0, rcp, -0) is +0: that form needs a test for a zero remainder, two more
// instructions per element.)
// Domain (what quotient_test.cc checks exhaustively over every bf16 and f16 dividend):
//   - the result equals the IEEE quotient y / s bit for bit whenever |y / s| lies in
//     [2^-12, 2^120] (no overflow, no loss in the remainder);
//   - below 2^-12 it may differ from y / s in the last bits, which FP8 e4m3 cannot see (every
//     magnitude below 2^-10 rounds to zero), so the FP8 code is the same;
//   - zeros keep their sign (a zero remainder returns q, which is exact).
// The dynamic quantization divides by s = max(amax, 1e-10) / 448 or max(amax / 448, 1 /
// (448 * 512)), both >= amax / 448, so |y / s| <= 448: always inside the domain. (An inf scale,
// from an inf amax, is taken as the divisor +0 with the reciprocal +0: the kernels'
// QuotientDivisor.) A static scale has no such bound: the kernels divide by it with IEEE
// division.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TPFUSE_QUOTIENT_HD __host__ __device__ __forceinline__
#else
#define TPFUSE_QUOTIENT_HD inline
#endif

namespace tpfuse {

TPFUSE_QUOTIENT_HD float QuotientByReciprocal(float y, float s, float rcp) {
#if defined(__CUDA_ARCH__)
  const float q = __fmul_rn(y, rcp);
  const float e = __fmaf_rn(s, q, -y);
  return __fmaf_rn(-e, rcp, q);
#else
  const float q = y * rcp;
  const float e = std::fma(s, q, -y);
  return std::fma(-e, rcp, q);
#endif
}

// The max of two magnitudes (values >= +0, +inf or NaN) as torch's amax takes it: a NaN
// wins (fmaxf would skip it). The amax of every dynamic quantization, host and device. On the
// host a NaN `m` stays (the first NaN of a scan, as the oracle's amax op keeps it); on the GPU
// max.NaN returns the canonical NaN (no payload survives on the GPU).
TPFUSE_QUOTIENT_HD float MaxOfMagnitudes(float m, float v) {
#if defined(__CUDA_ARCH__)
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(m), "f"(v));
  return d;
#else
  return (m != m || v < m) ? m : v;  // v = NaN fails v < m, so a NaN v is taken
#endif
}

// The dynamic FP8 scale of a row or group from its amax = max |y| (Contract 3 step 4), host and
// device, the one home of both forms (RoundingRecipe::scale_floor_after_div):
//   default:                s = max(amax, 1e-10) / 448
//   scale_floor_after_div:  s = max(amax / 448, f32(1 / (448 * 512)))  (vLLM's per-token floor)
// (ue8m0 scales: DynamicScaleOf below, where the floor after the division follows the rounding.)
// The quotient by 448 is the IEEE one for every finite amax of a 16-bit activation (448 has
// three significant bits: the remainder is exact wherever the quotient is normal; a subnormal
// quotient lies far below the floor). A non-finite amax gives what torch's forms give: inf / 448
// = inf, and NaN (no floor binds: torch's clamp and maximum keep a NaN).
inline constexpr float kScaleFloorAfterDiv = 1.0f / (448.0f * 512.0f);
// What the ue8m0_floor form rounds up to a power of two: max(s, kUe8m0ScaleFloor).
inline constexpr float kUe8m0ScaleFloor = 1e-10f;

// a / 448 for an amax a: QuotientByReciprocal's steps, its remainder taken as at most FLT_MAX:
// for a finite a that changes nothing; for a = inf the remainder inf - inf is NaN, and fminf
// makes it FLT_MAX, so the result is inf - FLT_MAX / 448 = inf; a NaN a stays NaN. (No branch:
// in the kernels a select here cost registers.) It is the IEEE quotient for every a >= 2^-120
// (a normal quotient; quotient_test checks every f32 there); below, where the quotient is
// subnormal, it may differ in the last bits, which no scale sees: both forms floor it first
// (to 1e-10) or after (to 1 / (448 * 512)).
TPFUSE_QUOTIENT_HD float AmaxBy448(float a) {
  constexpr float kRcp = 1.0f / 448.0f;
#if defined(__CUDA_ARCH__)
  const float q = __fmul_rn(a, kRcp);
  const float e = fminf(__fmaf_rn(448.0f, q, -a), 3.40282347e38f);
  return __fmaf_rn(-e, kRcp, q);
#else
  const float q = a * kRcp;
  const float e = std::fmin(std::fma(448.0f, q, -a), 3.40282347e38f);
  return std::fma(-e, kRcp, q);
#endif
}

// The floor of scale_floor_after_div, max(s, f32(1 / (448 * 512))), a NaN s kept (as torch's
// clamp keeps it).
TPFUSE_QUOTIENT_HD float FlooredAfterDiv(float s) { return s < kScaleFloorAfterDiv ? kScaleFloorAfterDiv : s; }

TPFUSE_QUOTIENT_HD float DynamicScaleOfAmax(float amax, bool floor_after_div) {
  if (floor_after_div) return FlooredAfterDiv(AmaxBy448(amax));
  return AmaxBy448(amax < 1e-10f ? 1e-10f : amax);
}

// The value the ue8m0_floor form rounds up to a power of two: max(s, 1e-10), a NaN s kept (as
// the scale without the floor keeps it).
TPFUSE_QUOTIENT_HD float Ue8m0Floored(float s) { return s < kUe8m0ScaleFloor ? kUe8m0ScaleFloor : s; }

// Contract 3's ue8m0 scale: the smallest power of two >= s for s > 0 (subnormals included), as
// torch's exp2(ceil(log2(s))) gives it; zeros, inf and NaN stay as they are (log2 of +0 is
// -inf, whose exp2 is +0; of inf, inf; of NaN, NaN). Host and device, bit for bit.
TPFUSE_QUOTIENT_HD float RoundUpToPowerOfTwo(float s) {
#if defined(__CUDA_ARCH__)
  uint32_t u = __float_as_uint(s);
#else
  uint32_t u;
  std::memcpy(&u, &s, 4);
#endif
  const uint32_t exponent = u & 0x7F800000u, mantissa = u & 0x007FFFFFu;
  if (exponent == 0x7F800000u || mantissa == 0) return s;  // inf, NaN, zeros, powers of two
  if (exponent != 0) {
    u = (u & 0xFF800000u) + 0x00800000u;  // next exponent, mantissa cleared
  } else {
    // Subnormal: the mantissa's top bit, doubled unless it is the only one set.
#if defined(__CUDA_ARCH__)
    const uint32_t top = 1u << (31 - __clz(mantissa));
#else
    const uint32_t top = 1u << (31 - __builtin_clz(mantissa));
#endif
    u = (u & 0x80000000u) | (mantissa == top ? top : top << 1);
  }
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  std::memcpy(&s, &u, 4);
  return s;
#endif
}

// The dynamic scale of an amax, the one composition the oracle and the kernels share:
//   f32 scales:   DynamicScaleOfAmax;
//   ue8m0 scales: max(amax, 1e-10) / 448 rounded up to a power of two (from max(s, 1e-10) under
//                 ue8m0_floor); under scale_floor_after_div the floor follows the rounding,
//                 max(pow2_ceil(amax / 448), f32(1 / (448 * 512))), as vLLM's QuantFP8 UE8M0
//                 form clamps exp2(ceil(log2(amax / 448))). The floor before the division
//                 changes nothing there: every amax below 1e-10 rounds far below the floor after.
// The floor 1 / (448 * 512) is no power of two: that form's scales (f32, as every ue8m0 scale
// here) are powers of two only for an amax above 448 * 2^-18 (about 1.7e-3).
TPFUSE_QUOTIENT_HD float DynamicScaleOf(float amax, bool floor_after_div, bool ue8m0, bool ue8m0_floor) {
  if (!ue8m0) return DynamicScaleOfAmax(amax, floor_after_div);
  const float quotient = DynamicScaleOfAmax(amax, false);
  const float s = RoundUpToPowerOfTwo(ue8m0_floor ? Ue8m0Floored(quotient) : quotient);
  return floor_after_div ? FlooredAfterDiv(s) : s;
}

}  // namespace tpfuse
