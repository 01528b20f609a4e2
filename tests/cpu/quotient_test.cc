// QuotientByReciprocal (common/quotient.h) against IEEE division over its documented domain:
// every bf16 and f16 dividend, scales s = max(amax, 1e-10) / 448 for amax over the bf16 and f16
// values (the dynamic quantization's), plus divisors with adversarial significands.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#include "common/numerics.h"
#include "common/quotient.h"

namespace tpfuse {
namespace {

bool SameBits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// Every finite bf16 and f16 value, both signs.
std::vector<float> HalfValues() {
  std::vector<float> v;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float x = Bf16ToFloat(uint16_t(b));
    if (std::isfinite(x)) v.push_back(x);
    const float h = F16ToFloat(uint16_t(b));
    if (std::isfinite(h)) v.push_back(h);
  }
  return v;
}

TEST(QuotientTest, DynamicScaleIsExactForEveryHalfAmax) {
  // s = max(amax, 1e-10) / 448, as the kernels compute it.
  for (float amax : HalfValues()) {
    if (amax < 0.0f) continue;
    const float a = std::fmax(amax, 1e-10f);
    ASSERT_TRUE(SameBits(QuotientByReciprocal(a, 448.0f, 1.0f / 448.0f), a / 448.0f)) << amax;
  }
}

TEST(QuotientTest, DynamicScaleOfAmaxIsTheTorchFormsScaleForEveryHalfAmax) {
  // Both forms against the IEEE expressions the torch forms compute (clamp then / 448, or / 448
  // then clamp), for every finite non-negative bf16 and f16 amax, zero and subnormals included.
  const float floor = 1.0f / (448.0f * 512.0f);
  EXPECT_EQ(kScaleFloorAfterDiv, floor);
  int floored = 0;
  for (float amax : HalfValues()) {
    if (amax < 0.0f) continue;
    ASSERT_TRUE(SameBits(DynamicScaleOfAmax(amax, false), std::fmax(amax, 1e-10f) / 448.0f)) << amax;
    const float after = std::fmax(amax / 448.0f, floor);
    ASSERT_TRUE(SameBits(DynamicScaleOfAmax(amax, true), after)) << amax;
    floored += after == floor;
  }
  EXPECT_GT(floored, 1000);  // the floor decides for every amax below about 1 / 512
  // A non-finite amax: what the torch forms give, inf / 448 = inf and NaN (their clamp and
  // maximum keep a NaN), in both forms.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (bool after_div : {false, true}) {
    EXPECT_EQ(DynamicScaleOfAmax(INFINITY, after_div), INFINITY);
    EXPECT_EQ(DynamicScaleOfAmax(INFINITY, after_div), std::fmax(INFINITY, 1e-10f) / 448.0f);
    EXPECT_TRUE(std::isnan(DynamicScaleOfAmax(nan, after_div)));
  }
  EXPECT_TRUE(std::isnan(Ue8m0Floored(nan)));
}

TEST(QuotientTest, Ue8m0ScalesFlooredAfterTheRoundingAreVllmsForEveryHalfAmax) {
  // vLLM's QuantFP8 UE8M0 form, exp2(ceil(log2(amax / 448))).clamp(min = 1 / (448 * 512)), in
  // f32 for every finite non-negative bf16 and f16 amax, zero and subnormals included (log2(+0)
  // is -inf, its exp2 +0, floored).
  int floored = 0, rounded_above = 0;
  for (float amax : HalfValues()) {
    if (amax < 0.0f) continue;
    const float want = std::fmax(std::exp2(std::ceil(std::log2(amax / 448.0f))), kScaleFloorAfterDiv);
    ASSERT_TRUE(SameBits(DynamicScaleOf(amax, true, true, false), want)) << amax;
    // With vLLM's per-group kernel's floor before the rounding too: the same scales.
    ASSERT_TRUE(SameBits(DynamicScaleOf(amax, true, true, true), want)) << amax;
    floored += want == kScaleFloorAfterDiv;
    // Where the quotient lies below the floor but rounds above it: 2^-17, which the floor
    // before the rounding (round(max(s, floor))) would also give; below 448 * 2^-18 that order
    // gives 2^-17 and this one the floor.
    rounded_above += amax / 448.0f < kScaleFloorAfterDiv && want == 0x1p-17f;
  }
  EXPECT_GT(floored, 1000);
  EXPECT_GT(rounded_above, 0);
  EXPECT_EQ(DynamicScaleOf(0.0f, true, true, false), kScaleFloorAfterDiv);
  EXPECT_NE(DynamicScaleOf(0.0f, true, true, false), RoundUpToPowerOfTwo(kScaleFloorAfterDiv));
  EXPECT_EQ(DynamicScaleOf(INFINITY, true, true, false), INFINITY);
  EXPECT_TRUE(std::isnan(DynamicScaleOf(std::numeric_limits<float>::quiet_NaN(), true, true, false)));
}

TEST(QuotientTest, TheFloorsQuotientAndProductGiveTheSameFp8ForEveryHalfValue) {
  // A ue8m0 scale floored after the rounding may be the floor 1 / (448 * 512), no power of two:
  // the kernels divide by it where the form divides. For 16-bit y the FP8 codes of y / s and of
  // y * (1 / s) agree anyway at every value that scale quantizes (|y| <= 448 * s), though the
  // f32 values differ for many.
  const float s = kScaleFloorAfterDiv, inv = 1.0f / s;
  int f32_differ = 0;
  for (float y : HalfValues()) {
    if (!(std::fabs(y) <= 448.0f * s)) continue;
    ASSERT_EQ(FloatToFp8E4M3(y / s), FloatToFp8E4M3(y * inv)) << y;
    ASSERT_EQ(FloatToFp8E4M3(QuotientByReciprocal(y, s, inv)), FloatToFp8E4M3(y / s)) << y;
    f32_differ += y / s != y * inv;
  }
  EXPECT_GT(f32_differ, 1000);
}

TEST(QuotientTest, AmaxBy448IsIeeeForEveryF32FromItsNormalQuotientsOn) {
  // Every f32 amax from 2^-120 (where a / 448 turns subnormal below) to FLT_MAX, by a stride of
  // 7 ulps (and the ends), then inf and NaN.
  int64_t checked = 0;
  for (uint32_t b = 0x03800000u; b < 0x7F800000u; b += 7) {
    const float a = std::bit_cast<float>(b);
    ASSERT_TRUE(SameBits(AmaxBy448(a), a / 448.0f)) << a;
    ++checked;
  }
  EXPECT_TRUE(SameBits(AmaxBy448(3.40282347e38f), 3.40282347e38f / 448.0f));
  EXPECT_GT(checked, 250000000);
  EXPECT_EQ(AmaxBy448(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(AmaxBy448(std::numeric_limits<float>::quiet_NaN())));
}

TEST(QuotientTest, TheQuotientByZeroWithTheReciprocalZeroIsTheQuotientByInf) {
  // The kernels' divisor and reciprocal for an inf scale (QuotientDivisor): +0 and +0.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float y : {0.0f, -0.0f, 1.0f, -1.0f, 0x1p-149f, -0x1p-149f, 3.40282347e38f, -3.40282347e38f,
                  448.0f, -2.5f, INFINITY, -INFINITY, nan}) {
    const float got = QuotientByReciprocal(y, 0.0f, 0.0f), want = y / INFINITY;
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << y;
    } else {
      EXPECT_TRUE(SameBits(got, want)) << y << ": " << got << " vs " << want;
    }
  }
}

TEST(QuotientTest, MaxOfMagnitudesLetsANaNWinAsTorchsAmax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(MaxOfMagnitudes(0.0f, 2.0f), 2.0f);
  EXPECT_EQ(MaxOfMagnitudes(3.0f, 2.0f), 3.0f);
  EXPECT_EQ(MaxOfMagnitudes(3.0f, INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(MaxOfMagnitudes(nan, 2.0f)));
  EXPECT_TRUE(std::isnan(MaxOfMagnitudes(2.0f, nan)));
  EXPECT_TRUE(std::isnan(MaxOfMagnitudes(INFINITY, nan)));
  // A scan keeps the first NaN it meets, payload and all (as the oracle's amax op).
  const float first = std::bit_cast<float>(0x7FC00001u), second = std::bit_cast<float>(0x7FC00002u);
  float m = 0.0f;
  for (float v : {1.0f, first, 5.0f, second, INFINITY}) m = MaxOfMagnitudes(m, v);
  EXPECT_TRUE(SameBits(m, first));
}

TEST(QuotientTest, MatchesDivisionInsideTheDomainAndFp8Everywhere) {
  const std::vector<float> ys = HalfValues();
  std::vector<float> scales;
  // The dynamic scales of every 37th half amax value (about 3,500 scales).
  for (size_t i = 0; i < ys.size(); i += 37)
    if (ys[i] > 0.0f) scales.push_back(std::fmax(ys[i], 1e-10f) / 448.0f);
  // Adversarial significands over a range of exponents.
  for (int e = -40; e <= 8; ++e)
    for (float m : {1.0f, 1.5f, 1.3333334f, 1.9999999f, 1.0000001f})
      scales.push_back(std::ldexp(m, e));
  int64_t checked = 0, outside = 0;
  for (float s : scales) {
    const float rcp = 1.0f / s;
    for (float y : ys) {
      const float q = QuotientByReciprocal(y, s, rcp), want = y / s;
      if (!std::isfinite(want) || std::fabs(want) > 0x1p+120f) continue;  // outside: static scales divide
      ++checked;
      if (std::fabs(want) >= 0x1p-12f || y == 0.0f) {
        ASSERT_TRUE(SameBits(q, want)) << "y " << y << " s " << s << ": " << q << " vs " << want;
      } else {
        ++outside;
        ASSERT_EQ(FloatToFp8E4M3(q), FloatToFp8E4M3(want)) << "y " << y << " s " << s;
      }
    }
  }
  EXPECT_GT(checked, int64_t{100'000'000});
  EXPECT_GT(outside, 0);
}

}  // namespace
}  // namespace tpfuse
