// Bit-exact host codecs for the 16-bit and FP8 types, and unit-in-the-last-place helpers.
// NOTE: these are the rounding rules of DESIGN.md Contract 3; the CUDA kernels must agree with
// them bit for bit (round to nearest even everywhere, FP8 saturating to +-448, NaN kept).
#pragma once

#include <cstdint>

#include "tpfuse/dtype.h"

namespace tpfuse {

float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);  // round to nearest even; NaN stays a quiet NaN
float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);   // round to nearest even; overflow -> inf; subnormals kept
float Fp8E4M3ToFloat(uint8_t bits); // e4m3fn: no infinities, 0x7F/0xFF are NaN
uint8_t FloatToFp8E4M3(float value);  // RNE, saturates to +-448, NaN -> 0x7F (sign kept)

// Rounds a float to the given floating dtype and back (f32: identity).
float RoundTo(DType dtype, float value);
// Decodes one stored element (bf16/f16/f32/f8e4m3/i32) to float.
float DecodeElement(DType dtype, const void* element);
// Encodes a float into one stored element with round to nearest even.
void EncodeElement(DType dtype, float value, void* element);

// The distance between |value| (rounded to dtype) and the next larger representable magnitude
// of dtype. For zero and subnormals: the smallest subnormal step.
double UlpOf(DType dtype, double value);

}  // namespace tpfuse
