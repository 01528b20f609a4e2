// A row's FP8 amax from a bound taken before the row is normalized (fp8_token over a thread
// block cluster: docs/kernels.md, "fp8_token's amax from a bound"). Host and device: the kernel
// decides with it, and a CPU test checks the decision against the amax itself.
//
// With one rounding (Contract 3 step 3, y = round(n w')), the row's amax is
//   amax = max_i |y_i| = round16(Z),  Z = max_i fl(fl(|u_i| r) |w'_i|),
// because the rounding to 16 bits is monotone (r > 0: 1/rms). Z lies within 4 f32 roundings of
// M r, M = max_i fl(|u_i| |w'_i|), a maximum the row can take together with its sum of squares
// (before r exists). Where both ends of [c (1 - 2^-20), c (1 + 2^-20)], c = fl(M r), round to the
// same 16-bit value, that value is amax, bit for bit; otherwise (a c within 2^-20 of a rounding
// boundary: about one row in 2^11 for bf16, 2^8 for f16) the bound decides nothing.
// Guards that keep the 4 roundings relative (no subnormal intermediate near the maximum, no
// overflow): M >= 2^-100, 2^-60 <= c <= 2^120, and no |w'_i| above 2^40 (AmaxBoundOf makes M
// +inf then, which fails the guard). A NaN product makes M NaN (MaxOfMagnitudes, as the amax
// takes a NaN y), which fails the guard too: the kernels then take the amax itself.
// Precondition: r is 1/rms of the same u, r = 1 / sqrt(mean(u^2) + eps) with eps >= 0 (as the
// kernels compute it), so |u_i| r <= about sqrt(H) and fl(|u_i| r) cannot overflow while c is
// finite (a sum of squares that overflows makes r 0, and c fails the guard). For an arbitrary r
// the bound can be wrong: fl(|u_i| r) may overflow where the product with w'_i would not.
// NOTE: for y = round(round(n) w') (weight_after_round) the inner rounding to 16 bits spoils the
// bound; the kernels take the amax itself there.
#pragma once

#include <cmath>

#include "common/quotient.h"

#if defined(__CUDACC__)
#define TPFUSE_AMAX_BOUND_HD __host__ __device__ __forceinline__
#else
#define TPFUSE_AMAX_BOUND_HD inline
#endif

namespace tpfuse {

inline constexpr float kAmaxBoundWeightLimit = 0x1p40f;

// m, grown by max fl(|u_i| |w_i|) over n elements; +inf when some |w_i| > kAmaxBoundWeightLimit.
TPFUSE_AMAX_BOUND_HD float AmaxBoundOf(const float* u, const float* w, int n, float m) {
  float wmax = 0.0f;
  for (int i = 0; i < n; ++i) {
    m = MaxOfMagnitudes(m, fabsf(u[i]) * fabsf(w[i]));
    wmax = MaxOfMagnitudes(wmax, fabsf(w[i]));
  }
  return wmax > kAmaxBoundWeightLimit ? INFINITY : m;
}

// The row's amax from m = max_i fl(|u_i| |w'_i|) (AmaxBoundOf over the row) and r = 1/rms,
// where the bound decides it; -1 where it does not. round16(x): x rounded to the activation
// dtype and back to f32.
template <typename Round16>
TPFUSE_AMAX_BOUND_HD float AmaxFromBound(float m, float r, Round16 round16) {
  // One expression, no early return: the kernels compute it without a branch.
  const float c = m * r;
  const float lo = round16(c * (1.0f - 0x1p-20f)), hi = round16(c * (1.0f + 0x1p-20f));
  const bool guarded = m >= 0x1p-100f && c >= 0x1p-60f && c <= 0x1p120f;
  return guarded && lo == hi ? lo : -1.0f;
}

}  // namespace tpfuse
