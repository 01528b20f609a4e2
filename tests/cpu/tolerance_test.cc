// The shared tolerance table: every class accepts errors exactly at its bound and rejects the
// next representable value past it; NaN and inf handling; the element -> scale mappings.
#include "common/tolerance.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/numerics.h"

namespace tpfuse {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

HostTensor Make(DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
  HostTensor t(dtype, std::move(shape));
  for (size_t i = 0; i < values.size(); ++i) t.SetF32(int64_t(i), values[i]);
  return t;
}

HostTensor Bf16(const std::vector<float>& values) {
  return Make(DType::kBF16, {int64_t(values.size())}, values);
}

// ---------------------------------------------------------------- 16-bit activations

TEST(ToleranceTest, HalfAcceptsOneUlpAndRejectsTwo) {
  // ref 1.0: ulp 2^-7 above, and the code below 1.0 is half an ulp away.
  EXPECT_TRUE(CompareHalf(Bf16({1.0f + 0x1.0p-7f}), Bf16({1.0f})).ok);
  EXPECT_TRUE(CompareHalf(Bf16({1.0f - 0x1.0p-8f}), Bf16({1.0f})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({1.0f + 0x1.0p-6f}), Bf16({1.0f})).ok);
  // The bound is |got - ref| <= UlpOf(ref): below a power of two the codes are twice as dense,
  // so two codes below is still one ulp of the reference, three are not.
  EXPECT_TRUE(CompareHalf(Bf16({1.0f - 0x1.0p-7f}), Bf16({1.0f})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({1.0f - 0x1.8p-7f}), Bf16({1.0f})).ok);
  // f16: 1 ulp of 1.0 is 2^-10.
  const auto f16 = [](float v) { return Make(DType::kF16, {1}, {v}); };
  EXPECT_TRUE(CompareHalf(f16(1.0f + 0x1.0p-10f), f16(1.0f)).ok);
  EXPECT_FALSE(CompareHalf(f16(1.0f + 0x1.0p-9f), f16(1.0f)).ok);
  // Zero and subnormals: the smallest subnormal step.
  EXPECT_TRUE(CompareHalf(f16(0x1.0p-24f), f16(0.0f)).ok);
  EXPECT_FALSE(CompareHalf(f16(0x1.0p-23f), f16(0.0f)).ok);
}

TEST(ToleranceTest, HalfNanAndInf) {
  EXPECT_TRUE(CompareHalf(Bf16({kNaN}), Bf16({kNaN})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({1.0f}), Bf16({kNaN})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({kNaN}), Bf16({1.0f})).ok);
  EXPECT_TRUE(CompareHalf(Bf16({kInf}), Bf16({kInf})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({-kInf}), Bf16({kInf})).ok);
  EXPECT_FALSE(CompareHalf(Bf16({Bf16ToFloat(0x7F7F)}), Bf16({kInf})).ok);  // max finite vs inf
  EXPECT_FALSE(CompareHalf(Bf16({kInf}), Bf16({Bf16ToFloat(0x7F7F)})).ok);
}

TEST(ToleranceTest, ReportsCountsErrorsAndFirstMismatches) {
  // [3, 4]: elements 1, 6, 7 are off by two ulps; everything else exact.
  std::vector<float> ref(12), got(12);
  for (int i = 0; i < 12; ++i) ref[size_t(i)] = got[size_t(i)] = float(i + 1);
  for (int i : {1, 6, 7}) got[size_t(i)] = ref[size_t(i)] + 2 * float(UlpOf(DType::kBF16, ref[size_t(i)]));
  const CompareResult r =
      CompareHalf(Make(DType::kBF16, {3, 4}, got), Make(DType::kBF16, {3, 4}, ref));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.checked, 12);
  EXPECT_EQ(r.mismatches, 3);
  ASSERT_EQ(r.first_mismatches.size(), 3u);
  EXPECT_EQ(r.first_mismatches[1].index, 6);
  EXPECT_EQ(r.first_mismatches[1].row, 1);
  EXPECT_EQ(r.first_mismatches[1].col, 2);
  EXPECT_EQ(r.first_mismatches[1].ref, 7.0);
  EXPECT_EQ(r.first_mismatches[1].got, 7.0 + 2 * 0x1.0p-5);
  EXPECT_DOUBLE_EQ(r.max_ulp_err, 2.0);
  EXPECT_DOUBLE_EQ(r.max_abs_err, 2 * 0x1.0p-4);  // element 7 (8.0): ulp 2^-4
  EXPECT_NE(r.summary.find("(row 1, col 2)"), std::string::npos) << r.summary;
  // At most five are listed.
  std::vector<float> far(12, 100.0f);
  const CompareResult all = CompareHalf(Make(DType::kBF16, {3, 4}, far), Make(DType::kBF16, {3, 4}, ref));
  EXPECT_EQ(all.mismatches, 12);
  EXPECT_EQ(all.first_mismatches.size(), size_t(CompareResult::kMaxReported));
}

TEST(ToleranceTest, TypeMismatchFails) {
  EXPECT_FALSE(CompareHalf(Make(DType::kF16, {1}, {1.0f}), Bf16({1.0f})).ok);
  EXPECT_FALSE(CompareHalf(Make(DType::kBF16, {1, 1}, {1.0f}), Bf16({1.0f})).ok);
  const CompareResult r = CompareExact(Make(DType::kBF16, {2}, {1, 2}), Bf16({1.0f}));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.summary.find("bf16[2]"), std::string::npos) << r.summary;
}

// ---------------------------------------------------------------- exact and scales

TEST(ToleranceTest, ExactIsBitwise) {
  EXPECT_TRUE(CompareExact(Bf16({1.0f, -2.0f, kNaN}), Bf16({1.0f, -2.0f, kNaN})).ok);
  EXPECT_FALSE(CompareExact(Bf16({-0.0f}), Bf16({0.0f})).ok);
  const CompareResult r = CompareExact(Bf16({1.0f, 1.0f + 0x1.0p-7f}), Bf16({1.0f, 1.0f}));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.mismatches, 1);
  EXPECT_EQ(r.first_mismatches.at(0).index, 1);
  EXPECT_EQ(r.max_abs_err, 0x1.0p-7);
}

TEST(ToleranceTest, ScalesWithinTwoToTheMinusSevenRelative) {
  const auto f32 = [](float v) { return Make(DType::kF32, {1}, {v}); };
  const float ref = 0.0123f;
  const float at_bound = ref + float(double(ref) / 128.0);  // f32-rounded: check which side
  const double rel = std::fabs(double(at_bound) - ref) / ref;
  EXPECT_EQ(CompareScales(f32(at_bound), f32(ref)).ok, rel <= 1.0 / 128.0);
  EXPECT_TRUE(CompareScales(f32(1.0f + 0x1.0p-7f), f32(1.0f)).ok);   // exactly 2^-7
  EXPECT_TRUE(CompareScales(f32(1.0f - 0x1.0p-7f), f32(1.0f)).ok);
  EXPECT_FALSE(CompareScales(f32(1.0f + 0x1.0p-7f + 0x1.0p-23f), f32(1.0f)).ok);
  EXPECT_FALSE(CompareScales(f32(1.0f - 0x1.0p-7f - 0x1.0p-24f), f32(1.0f)).ok);
  // Padding zeros must stay zero.
  EXPECT_TRUE(CompareScales(f32(0.0f), f32(0.0f)).ok);
  EXPECT_FALSE(CompareScales(f32(1e-30f), f32(0.0f)).ok);
  EXPECT_FALSE(CompareScales(f32(kNaN), f32(1.0f)).ok);
}

// ---------------------------------------------------------------- GEMM

TEST(ToleranceTest, GemmBoundGrowsWithTheRowMaximum) {
  // Row [100, 1]: element 1 may be off by 2 ulp(1) + 100 / 128 = 0.796875.
  const auto row = [](float second) { return Make(DType::kBF16, {1, 2}, {100.0f, second}); };
  EXPECT_TRUE(CompareGemm(row(1.796875f), row(1.0f)).ok);
  EXPECT_FALSE(CompareGemm(row(1.8046875f), row(1.0f)).ok);  // next bf16 up
  // The bound is per row: a small row next to a large one does not borrow its slack.
  const HostTensor ref = Make(DType::kBF16, {2, 2}, {100.0f, 1.0f, 1.0f, 1.0f});
  const HostTensor got = Make(DType::kBF16, {2, 2}, {100.0f, 1.0f, 1.0f, 1.5f});
  const CompareResult r = CompareGemm(got, ref);
  EXPECT_FALSE(r.ok);
  ASSERT_EQ(r.first_mismatches.size(), 1u);
  EXPECT_EQ(r.first_mismatches[0].row, 1);
  // 2 ulps alone are always fine, even in a row of zeros.
  EXPECT_TRUE(CompareGemm(Make(DType::kBF16, {1, 2}, {0.0f, 2.0f + 0x1.0p-5f}),
                          Make(DType::kBF16, {1, 2}, {0.0f, 2.0f})).ok);
}

// ---------------------------------------------------------------- FP8

HostTensor Fp8(std::vector<int64_t> shape, const std::vector<float>& values) {
  return Make(DType::kF8E4M3, std::move(shape), values);
}
HostTensor F32(std::vector<int64_t> shape, const std::vector<float>& values) {
  return Make(DType::kF32, std::move(shape), values);
}

TEST(ToleranceTest, Fp8AcceptsOneCodeStepAndRejectsTwo) {
  const HostTensor s = F32({}, {0.5f});
  const HostTensor ref = Fp8({1, 4}, {1.0f, -3.0f, 448.0f, 0.0f});
  // One code step away everywhere (at 448 the step down is 32; at 0 a subnormal step).
  EXPECT_TRUE(CompareFp8Dequantized(Fp8({1, 4}, {1.125f, -3.25f, 416.0f, 0x1.0p-9f}), s, ref, s,
                                    Fp8ScaleMap::Tensor()).ok);
  EXPECT_TRUE(CompareFp8Dequantized(Fp8({1, 4}, {0.9375f, -2.75f, 448.0f, -0x1.0p-9f}), s, ref, s,
                                    Fp8ScaleMap::Tensor()).ok);
  // Two steps.
  EXPECT_FALSE(CompareFp8Dequantized(Fp8({1, 4}, {1.25f, -3.0f, 448.0f, 0.0f}), s, ref, s,
                                     Fp8ScaleMap::Tensor()).ok);
  EXPECT_FALSE(CompareFp8Dequantized(Fp8({1, 4}, {1.0f, -3.0f, 384.0f, 0.0f}), s, ref, s,
                                     Fp8ScaleMap::Tensor()).ok);
  // The unscaled form compares codes.
  EXPECT_TRUE(CompareFp8Codes(Fp8({1, 2}, {1.125f, 2.0f}), Fp8({1, 2}, {1.0f, 2.0f})).ok);
  EXPECT_FALSE(CompareFp8Codes(Fp8({1, 2}, {1.25f, 2.0f}), Fp8({1, 2}, {1.0f, 2.0f})).ok);
}

TEST(ToleranceTest, Fp8AccountsForScaleDifferences) {
  // Same code, scales 2^-7 apart: |q_ref| * |s - s_ref| covers it.
  const HostTensor q = Fp8({1, 1}, {448.0f});
  EXPECT_TRUE(CompareFp8Dequantized(q, F32({1, 1}, {1.0f + 0x1.0p-7f}), q, F32({1, 1}, {1.0f}),
                                    Fp8ScaleMap::Token()).ok);
  // One code step with the larger scale on the got side: ulp(q_ref) * max(s, s_ref) covers it.
  const float s_big = 1.0f + 0x1.0p-7f;
  EXPECT_TRUE(CompareFp8Dequantized(Fp8({1, 1}, {1.125f}), F32({1, 1}, {s_big}),
                                    Fp8({1, 1}, {1.0f}), F32({1, 1}, {1.0f}),
                                    Fp8ScaleMap::Token()).ok);
  // The bound exactly: got 1.125 * s_big vs ref 1.0 * 1.0 differs by
  // 0.125 * s_big + 1.0 * (s_big - 1) = bound. One more code step is out.
  EXPECT_FALSE(CompareFp8Dequantized(Fp8({1, 1}, {1.25f}), F32({1, 1}, {s_big}),
                                     Fp8({1, 1}, {1.0f}), F32({1, 1}, {1.0f}),
                                     Fp8ScaleMap::Token()).ok);
}

TEST(ToleranceTest, Fp8NanCodes) {
  const HostTensor s = F32({}, {1.0f});
  EXPECT_TRUE(CompareFp8Dequantized(Fp8({1, 1}, {kNaN}), s, Fp8({1, 1}, {kNaN}), s,
                                    Fp8ScaleMap::Tensor()).ok);
  EXPECT_FALSE(CompareFp8Dequantized(Fp8({1, 1}, {448.0f}), s, Fp8({1, 1}, {kNaN}), s,
                                     Fp8ScaleMap::Tensor()).ok);
  EXPECT_FALSE(CompareFp8Dequantized(Fp8({1, 1}, {kNaN}), s, Fp8({1, 1}, {448.0f}), s,
                                     Fp8ScaleMap::Tensor()).ok);
}

// The got side of one group uses twice the reference scale and half the codes, so its
// dequantized values equal the reference's: the comparison passes only if it pairs each
// element with the right scale entry. q [3, 4] in groups of 2; the group is (row 1, group 1).
TEST(ToleranceTest, Fp8GroupScaleMappingRowAndColumnMajor) {
  const HostTensor q_ref = Fp8({3, 4}, std::vector<float>(12, 1.0f));
  HostTensor q_got = q_ref;
  q_got.SetF32(6, 0.5f);
  q_got.SetF32(7, 0.5f);

  // Row-major [3, 2]: the group's entry is 1 * 2 + 1 = 3.
  HostTensor s_ref = F32({3, 2}, std::vector<float>(6, 1.0f));
  HostTensor s_got = s_ref;
  s_got.SetF32(3, 2.0f);
  CompareResult r = CompareFp8Dequantized(q_got, s_got, q_ref, s_ref, Fp8ScaleMap::Group(2));
  EXPECT_TRUE(r.ok) << r.summary;
  EXPECT_EQ(r.checked, 12);
  // Read as column-major [2, 3], the group would pick entry 1 * 3 + 1 = 4 (scale 1): caught.
  r = CompareFp8Dequantized(q_got, s_got, q_ref, s_ref, Fp8ScaleMap::Group(2, true));
  EXPECT_FALSE(r.ok);
  ASSERT_EQ(r.first_mismatches.size(), 2u);
  EXPECT_EQ(r.first_mismatches[0].index, 6);  // (row 1, col 2)
  EXPECT_EQ(r.first_mismatches[1].index, 7);  // (row 1, col 3)

  // Column-major [2, pad4(3) = 4]: the group's entry is 1 * 4 + 1 = 5. The padding entries
  // (3 and 7) are never read.
  s_ref = F32({2, 4}, {1, 1, 1, 0, 1, 1, 1, 0});
  s_got = s_ref;
  s_got.SetF32(5, 2.0f);
  s_got.SetF32(7, 123.0f);
  r = CompareFp8Dequantized(q_got, s_got, q_ref, s_ref, Fp8ScaleMap::Group(2, /*col_major=*/true));
  EXPECT_TRUE(r.ok) << r.summary;
  // A row-major reading does not fit [2, 4] for 3 rows of 2 groups: fails with a reason.
  r = CompareFp8Dequantized(q_got, s_got, q_ref, s_ref, Fp8ScaleMap::Group(2));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.summary.find("group scales"), std::string::npos) << r.summary;
}

TEST(ToleranceTest, Fp8TokenAndTensorScaleMapping) {
  // Row 2 uses scale 2 and half codes on the got side.
  const HostTensor q_ref = Fp8({3, 4}, std::vector<float>(12, 1.0f));
  HostTensor q_got = q_ref;
  for (int c = 0; c < 4; ++c) q_got.SetF32(8 + c, 0.5f);
  const HostTensor s_ref = F32({3, 1}, {1, 1, 1});
  const HostTensor s_got = F32({3, 1}, {1, 1, 2});
  EXPECT_TRUE(CompareFp8Dequantized(q_got, s_got, q_ref, s_ref, Fp8ScaleMap::Token()).ok);
  // The column-major token layout [1, pad4(3)] maps rows the same way.
  EXPECT_TRUE(CompareFp8Dequantized(q_got, F32({1, 4}, {1, 1, 2, 0}), q_ref,
                                    F32({1, 4}, {1, 1, 1, 0}), Fp8ScaleMap::Token(true)).ok);
  // Per tensor, every element reads entry 0.
  const CompareResult r = CompareFp8Dequantized(q_got, F32({}, {1}), q_ref, F32({}, {1}),
                                                Fp8ScaleMap::Tensor());
  EXPECT_EQ(r.mismatches, 4);
  EXPECT_EQ(r.first_mismatches.at(0).row, 2);
}

TEST(ToleranceTest, ClassNames) {
  EXPECT_EQ(ToleranceClassName(ToleranceClass::kHalf), "half-1ulp");
  EXPECT_EQ(ToleranceClassName(ToleranceClass::kFp8Dequantized), "fp8-dequant");
  EXPECT_EQ(ToleranceClassName(ToleranceClass::kScale), "scale-2^-7");
  EXPECT_EQ(ToleranceClassName(ToleranceClass::kGemm), "gemm");
  EXPECT_EQ(ToleranceClassName(ToleranceClass::kExact), "exact");
}

}  // namespace
}  // namespace tpfuse
