// The one shared tolerance table of DESIGN.md Contract 3, and the elementwise comparisons that
// apply it. Every test and `tpfuse run --check` compare through here, so a tolerance lives in
// exactly one place.
//
// Every element is checked: a comparison passes only when every element is within its bound.
// NaN matches only NaN; an infinity matches only the same infinity.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/tensor.h"

namespace tpfuse {

// ---------------------------------------------------------------- the table
namespace tolerance {

// bf16/f16 activations: |got - ref| <= kHalfUlps * UlpOf(dtype, ref).
inline constexpr double kHalfUlps = 1.0;
// FP8 q, compared after dequantization (see CompareFp8Dequantized): kFp8Ulps FP8 ulps of the
// reference code, scaled.
inline constexpr double kFp8Ulps = 1.0;
// Slack for the f32 arithmetic of dequantization, in f32 ulps of the larger dequantized value.
inline constexpr double kFp8F32SlackUlps = 4.0;
// Dynamic-quant scales: |got - ref| <= kScaleRel * |ref|.
inline constexpr double kScaleRel = 1.0 / 128.0;  // 2^-7
// GEMM outputs (matmul, scaled_matmul), which Contract 3 does not cover: accumulation order
// differs between backends, so the bound grows with the row's magnitude:
//   |got - ref| <= kGemmUlps * UlpOf(dtype, ref) + kGemmRowRel * max |ref| over that row.
inline constexpr double kGemmUlps = 2.0;
inline constexpr double kGemmRowRel = 1.0 / 128.0;  // 2^-7

}  // namespace tolerance

// The comparison classes.
enum class ToleranceClass : uint8_t {
  kHalf,            // 16-bit activations within 1 ulp
  kFp8Dequantized,  // FP8 q after dequantization with its scale
  kScale,           // f32 scales within 2^-7 relative
  kGemm,            // matmul / scaled_matmul outputs
  kExact,           // bitwise
  kAfterGemm,       // 16-bit values a GEMM output reaches (through the ops after it): the GEMM's bound
};
// "half-1ulp", "fp8-dequant", "scale-2^-7", "gemm", "exact", "after-gemm"
std::string_view ToleranceClassName(ToleranceClass cls);

struct Mismatch {
  int64_t index = 0;  // flat, row-major
  int64_t row = 0;    // index / last dim (leading dims flattened)
  int64_t col = 0;    // index % last dim
  double got = 0.0;
  double ref = 0.0;
};

struct CompareResult {
  bool ok = true;
  int64_t checked = 0;
  int64_t mismatches = 0;
  double max_abs_err = 0.0;  // over finite pairs
  double max_ulp_err = 0.0;  // the error in units of the class's bound unit (ulps, or relative
                             // error for scales); 1.0 is at the 1-ulp bound
  std::vector<Mismatch> first_mismatches;  // up to kMaxReported, in index order
  std::string summary;                     // one line: verdict, counts, max errors, mismatches

  static constexpr int kMaxReported = 5;
};

// bf16/f16 (or any float dtype): every element within max_ulps * UlpOf(ref dtype, ref).
// got and ref must have the same dtype and shape.
CompareResult CompareHalf(const HostTensor& got, const HostTensor& ref,
                          double max_ulps = tolerance::kHalfUlps);

// Bitwise equality of every element (a mismatch reports the decoded values).
// `nan_is_nan`: a NaN matches any NaN (the GPU's arithmetic returns one canonical NaN where the
// CPU's keeps an operand's payload and sign); every other element still bitwise.
CompareResult CompareExact(const HostTensor& got, const HostTensor& ref, bool nan_is_nan = false);

// f32 scales: |got - ref| <= rel * |ref| (padding zeros must stay zero).
CompareResult CompareScales(const HostTensor& got, const HostTensor& ref,
                            double rel = tolerance::kScaleRel);

// GEMM class: |got - ref| <= kGemmUlps * UlpOf(ref) + kGemmRowRel * max |ref| over the row.
CompareResult CompareGemm(const HostTensor& got, const HostTensor& ref);

// How an FP8 element finds its scale.
struct Fp8ScaleMap {
  enum class Kind : uint8_t {
    kTensor,    // one scale for every element
    kToken,     // one scale per row: row-major [T, 1] or column-major [1, T_pad]
    kGroup,     // group_size contiguous columns: row-major [T, G] or column-major [G, T_pad]
    kCodeStep,  // no scale known: codes compared with scale 1 (+-1 FP8 code step)
  };
  Kind kind = Kind::kTensor;
  int64_t group_size = 128;  // kGroup
  bool col_major = false;    // kToken, kGroup: the [G, T_pad] layout

  static Fp8ScaleMap Tensor() { return {Kind::kTensor, 0, false}; }
  static Fp8ScaleMap Token(bool col_major = false) { return {Kind::kToken, 0, col_major}; }
  static Fp8ScaleMap Group(int64_t group_size, bool col_major = false) {
    return {Kind::kGroup, group_size, col_major};
  }
  static Fp8ScaleMap CodeStep() { return {Kind::kCodeStep, 0, false}; }
};

// FP8 q compared after dequantization. For each element, with Q = fp8(q) * s and
// R = fp8(q_ref) * s_ref (s, s_ref the element's scales):
//   |Q - R| <= kFp8Ulps * UlpOf(f8e4m3, fp8(q_ref)) * max(s, s_ref) + |fp8(q_ref)| * |s - s_ref|
//              + kFp8F32SlackUlps f32 ulps of max(|Q|, |R|).
// A NaN code matches only a NaN code. s / s_ref: f32 scales laid out per `map` (ignored for
// kCodeStep; for kTensor any one-element f32 tensor).
CompareResult CompareFp8Dequantized(const HostTensor& q, const HostTensor& s,
                                    const HostTensor& q_ref, const HostTensor& s_ref,
                                    const Fp8ScaleMap& map);
// FP8 codes without scales: CompareFp8Dequantized with kCodeStep (+-1 code step).
CompareResult CompareFp8Codes(const HostTensor& q, const HostTensor& q_ref);

}  // namespace tpfuse
