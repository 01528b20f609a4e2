#include "common/numerics.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace tpfuse {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

float Bf16ToFloat(uint16_t bits) { return BitsFloat(uint32_t(bits) << 16); }

uint16_t FloatToBf16(float value) {
  uint32_t u = FloatBits(value);
  if (std::isnan(value)) return uint16_t((u >> 16) | 0x0040);  // quiet, sign kept
  // Round to nearest even on the 16 dropped bits; carries into the exponent (and to inf) are
  // the correct IEEE behaviour.
  const uint32_t lsb = (u >> 16) & 1u;
  u += 0x7FFFu + lsb;
  return uint16_t(u >> 16);
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000) << 16;
  const uint32_t exp = (bits >> 10) & 0x1F;
  const uint32_t man = bits & 0x3FF;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24.
    const float mag = std::ldexp(float(man), -24);
    return sign ? -mag : mag;
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t FloatToF16(float value) {
  const uint32_t u = FloatBits(value);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  if (std::isnan(value)) return uint16_t(sign | 0x7E00 | ((u >> 13) & 0x3FF));
  const float a = std::fabs(value);
  if (a >= 65520.0f) return uint16_t(sign | 0x7C00);  // rounds to inf (65504 + half ulp)
  if (a < std::ldexp(1.0f, -14)) {
    // Subnormal range: quantize to multiples of 2^-24 with RNE (nearbyint uses the current
    // rounding mode, which is round-to-nearest-even by default).
    const float q = std::nearbyint(std::ldexp(a, 24));
    return uint16_t(sign | uint16_t(q));  // q == 1024 becomes the smallest normal: correct bits
  }
  // Normal: drop 13 mantissa bits with RNE.
  uint32_t v = u & 0x7FFFFFFFu;
  const uint32_t lsb = (v >> 13) & 1u;
  v += 0xFFFu + lsb;
  const uint32_t exp = (v >> 23) - 112;
  const uint32_t man = (v >> 13) & 0x3FF;
  return uint16_t(sign | (exp << 10) | man);
}

float Fp8E4M3ToFloat(uint8_t bits) {
  const bool neg = bits & 0x80;
  const int exp = (bits >> 3) & 0xF;
  const int man = bits & 0x7;
  float mag;
  if (exp == 0xF && man == 0x7) {
    mag = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    mag = std::ldexp(float(man), -9);  // subnormal: man/8 * 2^-6
  } else {
    mag = std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
  }
  return neg ? -mag : mag;
}

uint8_t FloatToFp8E4M3(float value) {
  const uint8_t sign = (FloatBits(value) >> 24) & 0x80;
  if (std::isnan(value)) return uint8_t(sign | 0x7F);
  const float a = std::fabs(value);
  if (a >= 448.0f) return uint8_t(sign | 0x7E);  // saturate (inf included)
  // Find the exponent of a in e4m3: normals have exp field 1..15 (bias 7), min normal 2^-6.
  // Quantize a to a multiple of its step with RNE, then re-encode (a carry into the next binade
  // is handled by re-deriving the fields from the rounded value).
  const int e = a < std::ldexp(1.0f, -6) ? -6 : std::ilogb(a);
  const float step = std::ldexp(1.0f, e - 3);
  const float q = std::nearbyint(a / step) * step;  // exact: a/step has few significant bits
  if (q >= 448.0f) return uint8_t(sign | 0x7E);     // cannot happen below 448 except by rounding
  if (q == 0.0f) return sign;
  if (q < std::ldexp(1.0f, -6)) return uint8_t(sign | uint8_t(q / std::ldexp(1.0f, -9)));
  const int qe = std::ilogb(q);
  const int man = int(q / std::ldexp(1.0f, qe - 3)) - 8;
  return uint8_t(sign | ((qe + 7) << 3) | man);
}

float RoundTo(DType dtype, float value) {
  switch (dtype) {
    case DType::kBF16: return Bf16ToFloat(FloatToBf16(value));
    case DType::kF16: return F16ToFloat(FloatToF16(value));
    case DType::kF8E4M3: return Fp8E4M3ToFloat(FloatToFp8E4M3(value));
    case DType::kI32: return float(int32_t(value));
    case DType::kF32: return value;
  }
  return value;
}

float DecodeElement(DType dtype, const void* element) {
  switch (dtype) {
    case DType::kBF16: {
      uint16_t b;
      std::memcpy(&b, element, 2);
      return Bf16ToFloat(b);
    }
    case DType::kF16: {
      uint16_t b;
      std::memcpy(&b, element, 2);
      return F16ToFloat(b);
    }
    case DType::kF32: {
      float f;
      std::memcpy(&f, element, 4);
      return f;
    }
    case DType::kF8E4M3: return Fp8E4M3ToFloat(*static_cast<const uint8_t*>(element));
    case DType::kI32: {
      int32_t i;
      std::memcpy(&i, element, 4);
      return float(i);
    }
  }
  return 0.0f;
}

void EncodeElement(DType dtype, float value, void* element) {
  switch (dtype) {
    case DType::kBF16: {
      const uint16_t b = FloatToBf16(value);
      std::memcpy(element, &b, 2);
      return;
    }
    case DType::kF16: {
      const uint16_t b = FloatToF16(value);
      std::memcpy(element, &b, 2);
      return;
    }
    case DType::kF32: std::memcpy(element, &value, 4); return;
    case DType::kF8E4M3: *static_cast<uint8_t*>(element) = FloatToFp8E4M3(value); return;
    case DType::kI32: {
      const int32_t i = int32_t(std::lrint(value));
      std::memcpy(element, &i, 4);
      return;
    }
  }
}

double UlpOf(DType dtype, double value) {
  int mantissa_bits, min_exp;  // explicit mantissa bits, exponent of the smallest normal
  switch (dtype) {
    case DType::kBF16: mantissa_bits = 7; min_exp = -126; break;
    case DType::kF16: mantissa_bits = 10; min_exp = -14; break;
    case DType::kF8E4M3: mantissa_bits = 3; min_exp = -6; break;
    case DType::kF32: mantissa_bits = 23; min_exp = -126; break;
    default: return 1.0;
  }
  const double a = std::fabs(value);
  int e = (a == 0.0 || !std::isfinite(a)) ? min_exp : std::ilogb(a);
  if (e < min_exp) e = min_exp;
  return std::ldexp(1.0, e - mantissa_bits);
}

}  // namespace tpfuse
