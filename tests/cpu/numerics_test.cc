// The bit-exact codecs of common/numerics.h against brute-force nearest-representable searches.
#include "common/numerics.h"
#include "common/quotient.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace tpfuse {
namespace {

float FromBits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t ToBits(float f) { return std::bit_cast<uint32_t>(f); }

// e4m3fn decoded from the definition: bias 7, 3 mantissa bits, subnormals at exponent 0,
// S.1111.111 is NaN, no infinities.
double Fp8Reference(uint8_t code) {
  const int sign = code >> 7, exp = (code >> 3) & 0xF, man = code & 7;
  if (exp == 15 && man == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = exp == 0 ? man / 8.0 * std::ldexp(1.0, -6)
                              : (1.0 + man / 8.0) * std::ldexp(1.0, exp - 7);
  return sign ? -mag : mag;
}

// Nearest e4m3fn code by exhaustive search over the 127 non-negative finite codes; ties go to
// the even code; magnitudes over 448 saturate; the sign bit is kept (also for zero and NaN).
uint8_t BruteFp8(float v) {
  const uint8_t sign = (ToBits(v) >> 31) ? 0x80 : 0x00;
  if (std::isnan(v)) return sign | 0x7F;
  const double a = std::fabs(double(v));
  if (a > 448.0) return sign | 0x7E;
  uint8_t best = 0;
  double best_dist = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(a - Fp8Reference(uint8_t(c)));
    if (d < best_dist || (d == best_dist && (c & 1) == 0)) {
      best = uint8_t(c);
      best_dist = d;
    }
  }
  return sign | best;
}

// Nearest bf16 by comparing the two candidates around v (truncated and next up in magnitude);
// ties to even; magnitudes past the largest finite value + half an ulp become inf.
uint16_t BruteBf16(float v) {
  const uint32_t u = ToBits(v);
  const uint16_t lo = uint16_t(u >> 16);
  const uint16_t hi = uint16_t(lo + 1);
  const auto value = [](uint16_t b) {
    if ((b & 0x7FFF) == 0x7F80) return std::ldexp(1.0, 128);  // inf as the next binade
    return std::fabs(double(FromBits(uint32_t(b) << 16)));
  };
  const double a = std::fabs(double(v));
  const double dl = a - value(lo), dh = value(hi) - a;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) == 0 ? lo : hi;
}

double F16Reference(uint16_t code) {
  const int sign = code >> 15, exp = (code >> 10) & 0x1F, man = code & 0x3FF;
  double mag;
  if (exp == 31) mag = man ? std::numeric_limits<double>::quiet_NaN()
                           : std::numeric_limits<double>::infinity();
  else if (exp == 0) mag = man * std::ldexp(1.0, -24);
  else mag = (1.0 + man / 1024.0) * std::ldexp(1.0, exp - 15);
  return sign ? -mag : mag;
}

// Nearest f16 by binary search in the table of every non-negative finite value (and 65536 for
// inf, the IEEE overflow threshold); ties to even.
uint16_t BruteF16(float v) {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (int c = 0; c < 0x7C00; ++c) t.push_back(F16Reference(uint16_t(c)));
    t.push_back(65536.0);  // 0x7C00: inf
    return t;
  }();
  const uint16_t sign = (ToBits(v) >> 31) ? 0x8000 : 0;
  const double a = std::fabs(double(v));
  auto it = std::lower_bound(table.begin(), table.end(), a);
  if (it == table.end()) return sign | 0x7C00;
  const int hi = int(it - table.begin());
  if (table[size_t(hi)] == a || hi == 0) return uint16_t(sign | hi);
  const int lo = hi - 1;
  const double dl = a - table[size_t(lo)], dh = table[size_t(hi)] - a;
  if (dl < dh) return uint16_t(sign | lo);
  if (dh < dl) return uint16_t(sign | hi);
  return uint16_t(sign | ((lo & 1) == 0 ? lo : hi));
}

// Random floats with exponents in [min_exp, max_exp] and random mantissas and signs.
std::vector<float> RandomFloats(int n, int min_exp, int max_exp, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> exp(min_exp, max_exp);
  std::uniform_int_distribution<uint32_t> man(0, (1u << 23) - 1);
  std::vector<float> out;
  for (int i = 0; i < n; ++i) {
    const float mag = std::ldexp(1.0f + float(man(rng)) * 0x1.0p-23f, exp(rng));
    out.push_back(rng() & 1 ? -mag : mag);
  }
  return out;
}

// ---------------------------------------------------------------- FP8

TEST(NumericsTest, AllFp8CodesDecodeAndEncodeBack) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = uint8_t(c);
    const double want = Fp8Reference(code);
    const float got = Fp8E4M3ToFloat(code);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
      EXPECT_EQ(FloatToFp8E4M3(got) & 0x7F, 0x7F) << "NaN must encode to a NaN code";
      continue;
    }
    EXPECT_EQ(double(got), want) << "code " << c;
    EXPECT_EQ(std::signbit(got), bool(c & 0x80)) << "code " << c;
    EXPECT_EQ(FloatToFp8E4M3(got), code) << "code " << c << " value " << got;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0x1.0p-9f);  // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), 0x1.0p-6f);  // smallest normal
}

TEST(NumericsTest, Fp8EncodeMatchesBruteForceOnEveryBf16Value) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float v = FromBits(b << 16);
    const uint8_t want = BruteFp8(v);
    const uint8_t got = FloatToFp8E4M3(v);
    if (std::isnan(v)) {
      ASSERT_EQ(got & 0x7F, 0x7F) << "bf16 " << b;
      continue;
    }
    ASSERT_EQ(got, want) << "bf16 0x" << std::hex << b << " value " << v;
  }
}

TEST(NumericsTest, Fp8EncodeMatchesBruteForceOnRandomFloats) {
  for (float v : RandomFloats(200000, -14, 10, 1)) ASSERT_EQ(FloatToFp8E4M3(v), BruteFp8(v)) << v;
  std::mt19937 rng(2);
  for (int i = 0; i < 50000; ++i) {
    const float v = FromBits(rng());
    if (std::isnan(v)) continue;
    ASSERT_EQ(FloatToFp8E4M3(v), BruteFp8(v)) << v;
  }
}

TEST(NumericsTest, Fp8TiesSaturationNanAndSignedZero) {
  // Every midpoint between adjacent codes rounds to the even code.
  for (int c = 0; c < 0x7E; ++c) {
    const float mid = float((Fp8Reference(uint8_t(c)) + Fp8Reference(uint8_t(c + 1))) / 2);
    const uint8_t even = (c & 1) == 0 ? uint8_t(c) : uint8_t(c + 1);
    EXPECT_EQ(FloatToFp8E4M3(mid), even) << "midpoint after code " << c;
    EXPECT_EQ(FloatToFp8E4M3(-mid), 0x80 | even) << "negative midpoint after code " << c;
  }
  EXPECT_EQ(FloatToFp8E4M3(464.0f), 0x7E);  // would round to 480: saturates
  EXPECT_EQ(FloatToFp8E4M3(1e6f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToFp8E4M3(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(FloatToFp8E4M3(0.0f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToFp8E4M3(-0x1.0p-11f), 0x80);  // underflows to -0
  EXPECT_EQ(FloatToFp8E4M3(0x1.0p-10f), 0x00);   // half the smallest subnormal: tie to 0
  EXPECT_EQ(FloatToFp8E4M3(0x1.8p-10f), 0x01);   // 0.75 of it: up
}

// ---------------------------------------------------------------- bf16

TEST(NumericsTest, Bf16RoundingMatchesBruteForce) {
  for (float v : RandomFloats(300000, -133, 127, 3)) ASSERT_EQ(FloatToBf16(v), BruteBf16(v)) << v;
  std::mt19937 rng(4);
  for (int i = 0; i < 300000; ++i) {
    const float v = FromBits(rng());
    if (std::isnan(v)) continue;
    ASSERT_EQ(FloatToBf16(v), BruteBf16(v)) << std::hexfloat << v;
  }
  // Subnormal inputs, exhaustively over their high bits with random low bits.
  for (uint32_t hi = 0; hi < 0x80; ++hi) {
    const float v = FromBits((hi << 16) | (rng() & 0xFFFF));
    ASSERT_EQ(FloatToBf16(v), BruteBf16(v)) << std::hexfloat << v;
  }
}

TEST(NumericsTest, Bf16KnownValues) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.0f + 0x1.0p-8f), 0x3F80);                // tie -> even (down)
  EXPECT_EQ(FloatToBf16(1.0f + 0x1.8p-7f), 0x3F82);                // tie -> even (up)
  EXPECT_EQ(FloatToBf16(1.0f + 0x1.0p-8f + 0x1.0p-23f), 0x3F81);  // just over the tie
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000)), 0x0000);  // subnormal tie -> even (0)
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000)), 0x0002);  // subnormal tie -> even (up)
  const uint16_t nan = FloatToBf16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(Bf16ToFloat(nan)));
  // A signalling-looking NaN whose payload sits in the dropped bits stays NaN.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FromBits(0x7F800001)))));
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float v = Bf16ToFloat(uint16_t(b));
    ASSERT_EQ(ToBits(v), b << 16);
    if (!std::isnan(v)) ASSERT_EQ(FloatToBf16(v), b);
  }
}

// ---------------------------------------------------------------- f16

TEST(NumericsTest, F16DecodesEveryCode) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    const double want = F16Reference(uint16_t(c));
    const float got = F16ToFloat(uint16_t(c));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << c;
      ASSERT_TRUE(std::isnan(F16ToFloat(FloatToF16(got))));
      continue;
    }
    ASSERT_EQ(double(got), want) << c;
    ASSERT_EQ(FloatToF16(got), c) << c;
  }
}

TEST(NumericsTest, F16RoundingMatchesBruteForce) {
  for (float v : RandomFloats(300000, -27, 16, 5)) ASSERT_EQ(FloatToF16(v), BruteF16(v)) << v;
  // Every midpoint between adjacent finite codes, and its neighbours one f32 ulp away.
  for (int c = 0; c < 0x7BFF; ++c) {
    const float lo = F16ToFloat(uint16_t(c)), hi = F16ToFloat(uint16_t(c + 1));
    const float mid = float((double(lo) + double(hi)) / 2);  // exact: 12 significant bits
    for (float v : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      ASSERT_EQ(FloatToF16(v), BruteF16(v)) << std::hexfloat << v;
      ASSERT_EQ(FloatToF16(-v), BruteF16(-v)) << std::hexfloat << -v;
    }
  }
}

TEST(NumericsTest, F16KnownValues) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65519.996f), 0x7BFF);  // under the overflow threshold
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);    // the threshold itself: ties away to inf
  EXPECT_EQ(FloatToF16(1e9f), 0x7C00);
  EXPECT_EQ(FloatToF16(-1e9f), 0xFC00);
  EXPECT_EQ(FloatToF16(0x1.0p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToF16(0x1.0p-25f), 0x0000);  // tie -> even (0)
  EXPECT_EQ(FloatToF16(0x1.8p-24f), 0x0002);  // tie -> even (up)
  EXPECT_EQ(FloatToF16(0x1.ffcp-15f), 0x0400);  // rounds up into the smallest normal
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::numeric_limits<float>::quiet_NaN()))));
}

// ---------------------------------------------------------------- helpers

TEST(NumericsTest, RoundUpToPowerOfTwo) {
  EXPECT_EQ(RoundUpToPowerOfTwo(1.0f), 1.0f);
  EXPECT_EQ(RoundUpToPowerOfTwo(1.5f), 2.0f);
  EXPECT_EQ(RoundUpToPowerOfTwo(0.75f), 1.0f);
  EXPECT_EQ(RoundUpToPowerOfTwo(std::nextafter(1.0f, 2.0f)), 2.0f);
  EXPECT_EQ(RoundUpToPowerOfTwo(4.0f / 448.0f), 0x1.0p-6f);
  EXPECT_EQ(RoundUpToPowerOfTwo(1e-10f / 448.0f), 0x1.0p-42f);
  EXPECT_EQ(RoundUpToPowerOfTwo(0x1.0p-140f), 0x1.0p-140f);  // subnormal power of two
  EXPECT_EQ(RoundUpToPowerOfTwo(0x1.8p-140f), 0x1.0p-139f);  // subnormal
  std::mt19937 rng(6);
  for (float s : RandomFloats(10000, -60, 60, 7)) {
    s = std::fabs(s);
    const float p = RoundUpToPowerOfTwo(s);
    ASSERT_GE(p, s);
    ASSERT_LT(p, 2 * s);
    ASSERT_EQ(ToBits(p) & 0x007FFFFF, 0u) << s;
  }
  // What torch's exp2(ceil(log2(s))) gives where s is not a positive finite value.
  EXPECT_EQ(ToBits(RoundUpToPowerOfTwo(0.0f)), 0u);
  EXPECT_EQ(RoundUpToPowerOfTwo(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(RoundUpToPowerOfTwo(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(RoundUpToPowerOfTwo(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(std::exp2(std::ceil(std::log2(INFINITY))), INFINITY);
  EXPECT_TRUE(std::isnan(std::exp2(std::ceil(std::log2(std::numeric_limits<float>::quiet_NaN())))));
}

TEST(NumericsTest, UlpOf) {
  EXPECT_EQ(UlpOf(DType::kBF16, 1.0), 0x1.0p-7);
  EXPECT_EQ(UlpOf(DType::kBF16, 1.5), 0x1.0p-7);
  EXPECT_EQ(UlpOf(DType::kBF16, -1.5), 0x1.0p-7);
  EXPECT_EQ(UlpOf(DType::kBF16, 0.99), 0x1.0p-8);
  EXPECT_EQ(UlpOf(DType::kBF16, 0.0), 0x1.0p-133);
  EXPECT_EQ(UlpOf(DType::kF16, 1.0), 0x1.0p-10);
  EXPECT_EQ(UlpOf(DType::kF16, 65504.0), 32.0);
  EXPECT_EQ(UlpOf(DType::kF16, 0.0), 0x1.0p-24);
  EXPECT_EQ(UlpOf(DType::kF16, 0x1.0p-20), 0x1.0p-24);  // subnormal
  EXPECT_EQ(UlpOf(DType::kF8E4M3, 1.0), 0.125);
  EXPECT_EQ(UlpOf(DType::kF8E4M3, 448.0), 32.0);
  EXPECT_EQ(UlpOf(DType::kF8E4M3, 0.0), 0x1.0p-9);
  EXPECT_EQ(UlpOf(DType::kF8E4M3, 0x1.0p-8), 0x1.0p-9);
  EXPECT_EQ(UlpOf(DType::kF32, 1.0), 0x1.0p-23);
  // The ulp is the gap to the next larger magnitude: consistent with the codecs.
  for (uint32_t b = 0x0001; b < 0x7F7F; b += 37) {
    const double v = Bf16ToFloat(uint16_t(b));
    ASSERT_EQ(UlpOf(DType::kBF16, v), double(Bf16ToFloat(uint16_t(b + 1))) - v) << b;
  }
  for (int c = 0; c < 0x7E; ++c) {
    const double v = Fp8E4M3ToFloat(uint8_t(c));
    ASSERT_EQ(UlpOf(DType::kF8E4M3, v), double(Fp8E4M3ToFloat(uint8_t(c + 1))) - v) << c;
  }
}

}  // namespace
}  // namespace tpfuse
