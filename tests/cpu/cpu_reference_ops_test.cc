// The CPU reference ops: small-integer inputs whose results are exact, hand-computed rows of
// the fused op, every quant mode and layout, and the bitwise equality of the unfused chain and
// the fused op that the oracle promises.
#include "backends/cpu/reference_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/numerics.h"
#include "common/quotient.h"
#include "common/row_layout.h"
#include "support/host_tensors.h"
#include "support/shapes.h"

namespace tpfuse::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The shared helpers under this file's short names.
HostTensor Make(DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
  return testing::MakeTensor(dtype, std::move(shape), values);
}
std::vector<float> Values(const HostTensor& t) { return testing::TensorValues(t); }

HostTensor RandomTensor(DType dtype, std::vector<int64_t> shape, std::mt19937& rng,
                        float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  HostTensor t(dtype, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.SetF32(i, dist(rng));
  return t;
}

template <class T>
T Unwrap(StatusOr<T> s) {
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// ---------------------------------------------------------------- elementwise

TEST(CpuReferenceTest, BinaryBroadcastsEveryContractForm) {
  const HostTensor a = Make(DType::kBF16, {2, 3}, {1, 2, 3, 4, 5, 6});
  const HostTensor row = Make(DType::kBF16, {3}, {10, 20, 30});
  const HostTensor col = Make(DType::kBF16, {2, 1}, {100, 200});
  const HostTensor scalar = Make(DType::kF32, {}, {2});
  // [T, H] x [H], either order.
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kAdd, a, row, DType::kBF16))),
            (std::vector<float>{11, 22, 33, 14, 25, 36}));
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kSub, row, a, DType::kBF16))),
            (std::vector<float>{9, 18, 27, 6, 15, 24}));
  // [T, H] x [T, 1], either order.
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kMul, a, col, DType::kF32))),
            (std::vector<float>{100, 200, 300, 800, 1000, 1200}));
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kDiv, col, a, DType::kF32))),
            (std::vector<float>{100, 50, 100.0f / 3, 50, 40, 200.0f / 6}));
  // Rank 0 with anything, either order.
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kDiv, a, scalar, DType::kF32))),
            (std::vector<float>{0.5, 1, 1.5, 2, 2.5, 3}));
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kSub, scalar, a, DType::kF32))),
            (std::vector<float>{1, 0, -1, -2, -3, -4}));
  const HostTensor y = Unwrap(Binary(BinaryOp::kMul, scalar, scalar, DType::kF32));
  EXPECT_EQ(y.rank(), 0);
  EXPECT_EQ(y.GetF32(0), 4.0f);
  // Shapes that do not broadcast.
  const StatusOr<HostTensor> bad =
      Binary(BinaryOp::kAdd, a, Make(DType::kBF16, {2}, {1, 2}), DType::kBF16);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("do not broadcast"), std::string::npos);
}

// NumPy's rule beyond Contract 2's forms: a 1 anywhere stretches, a missing leading dim is a 1.
TEST(CpuReferenceTest, BinaryBroadcastsAsNumPyDoes) {
  const HostTensor a = Make(DType::kF32, {2, 3}, {1, 2, 3, 4, 5, 6});
  const HostTensor row = Make(DType::kF32, {1, 3}, {10, 20, 30});
  const HostTensor col = Make(DType::kF32, {2, 1}, {100, 200});
  // [T, H] x [1, H]: the row to every row.
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kAdd, a, row, DType::kF32))),
            (std::vector<float>{11, 22, 33, 14, 25, 36}));
  // [T, 1] x [1, H]: the outer sum.
  EXPECT_EQ(Values(Unwrap(Binary(BinaryOp::kAdd, col, row, DType::kF32))),
            (std::vector<float>{110, 120, 130, 210, 220, 230}));
  // [2, 1, 3] x [2, 3] -> [2, 2, 3]: b to each of a's leading rows, a's rows stretched.
  const HostTensor a3 = Make(DType::kF32, {2, 1, 3}, {1, 2, 3, 4, 5, 6});
  const HostTensor y = Unwrap(Binary(BinaryOp::kMul, a3, a, DType::kF32));
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(Values(y), (std::vector<float>{1, 4, 9, 4, 10, 18, 4, 10, 18, 16, 25, 36}));
}

TEST(CpuReferenceTest, BinaryComputesInF32AndRoundsOnce) {
  // bf16 1 + 2^-8: exact in f32, a tie in bf16 -> rounds to even (1.0). Mixed inputs decode
  // exactly first.
  const HostTensor one = Make(DType::kBF16, {1}, {1.0f});
  const HostTensor tiny = Make(DType::kF32, {1}, {0x1.0p-8f});
  EXPECT_EQ(Unwrap(Binary(BinaryOp::kAdd, one, tiny, DType::kF32)).GetF32(0), 1.0f + 0x1.0p-8f);
  EXPECT_EQ(Unwrap(Binary(BinaryOp::kAdd, one, tiny, DType::kBF16)).GetF32(0), 1.0f);
  EXPECT_EQ(BinaryScalar(BinaryOp::kSub, one, 3.0f, DType::kF32).GetF32(0), -2.0f);
  EXPECT_EQ(BinaryScalar(BinaryOp::kDiv, one, 4.0f, DType::kF32).GetF32(0), 0.25f);
}

TEST(CpuReferenceTest, UnaryOps) {
  const HostTensor x = Make(DType::kF32, {4}, {4, 0.25f, -3, kNaN});
  const std::vector<float> pow2 = Values(Pow(x, 2.0f, DType::kF32));
  EXPECT_EQ(pow2[0], 16);
  EXPECT_EQ(pow2[2], 9);
  EXPECT_EQ(Values(Rsqrt(Make(DType::kF32, {2}, {4, 0.25f}), DType::kF32)),
            (std::vector<float>{0.5f, 2.0f}));
  const std::vector<float> clamped = Values(Clamp(x, -1.0f, 1.0f, DType::kF32));
  EXPECT_EQ(clamped[0], 1.0f);
  EXPECT_EQ(clamped[1], 0.25f);
  EXPECT_EQ(clamped[2], -1.0f);
  EXPECT_TRUE(std::isnan(clamped[3]));
  // Cast rounds once; to FP8 it saturates.
  EXPECT_EQ(Cast(Make(DType::kF32, {1}, {1.0f + 0x1.8p-8f}), DType::kBF16).GetF32(0),
            1.0f + 0x1.0p-7f);
  EXPECT_EQ(Cast(Make(DType::kF32, {2}, {1000.0f, -1000.0f}), DType::kF8E4M3).GetF32(1), -448.0f);
  // pow(x, 2) and mul(x, x) agree bit for bit (the decomposed RMSNorm may use either).
  std::mt19937 rng(1);
  const HostTensor r = RandomTensor(DType::kF32, {1000}, rng);
  EXPECT_TRUE(Pow(r, 2.0f, DType::kF32)
                  .BitwiseEquals(Unwrap(Binary(BinaryOp::kMul, r, r, DType::kF32))));
  EXPECT_EQ(Pow(Make(DType::kF32, {1}, {2.0f}), 3.0f, DType::kF32).GetF32(0), 8.0f);
}

TEST(CpuReferenceTest, MeanAndView) {
  const HostTensor x = Make(DType::kBF16, {2, 4}, {1, 2, 3, 6, -4, 4, 8, 0});
  HostTensor m = Unwrap(Mean(x, -1, true, DType::kF32));
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(Values(m), (std::vector<float>{3, 2}));
  m = Unwrap(Mean(x, 1, false, DType::kBF16));
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{2}));
  EXPECT_FALSE(Mean(x, 0, true, DType::kF32).ok());
  // Mean sums in f32 in the kernels' order (sequential for a row the GPU layout does not
  // cover): 1e8 + 1 loses the 1.
  const HostTensor big = Make(DType::kF32, {1, 3}, {1e8f, 1.0f, -1e8f});
  EXPECT_EQ(Unwrap(Mean(big, -1, true, DType::kF32)).GetF32(0), 0.0f);

  const HostTensor v = Unwrap(View(x, {4, 2}));
  EXPECT_EQ(v.shape(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(Values(v), Values(x));
  EXPECT_FALSE(View(x, {3, 2}).ok());
}

// ---------------------------------------------------------------- RMSNorm

TEST(CpuReferenceTest, RmsNormHandComputedRows) {
  // Row 0: mean(h^2) = 4, eps = 0 -> r = 0.5, y = h * 0.5 * w = w.
  // Row 1: h = [3, -3, 3, -3], mean 9 -> r = 1/3 in f32; 3 * r rounds to 1 in f32.
  const HostTensor x = Make(DType::kBF16, {2, 4}, {2, 2, -2, 2, 3, -3, 3, -3});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 0.5f, 2, -1});
  EXPECT_EQ(Values(Unwrap(RmsNorm(x, w, 0.0f, 0.0f, DType::kBF16))),
            (std::vector<float>{1, 0.5f, -2, -1, 1, -0.5f, 2, 1}));
  // Gemma's weight_bias = 1: y = h * r * (1 + w).
  EXPECT_EQ(Values(Unwrap(RmsNorm(x, w, 0.0f, 1.0f, DType::kBF16))),
            (std::vector<float>{2, 1.5f, -3, 0, 2, -1.5f, 3, 0}));
  // eps enters under the square root: mean 4 + eps 12 -> r = 1/4.
  EXPECT_EQ(Values(Unwrap(RmsNorm(Make(DType::kF32, {1, 4}, {2, 2, 2, 2}),
                                  Make(DType::kF32, {4}, {1, 1, 1, 1}), 12.0f, 0.0f,
                                  DType::kF32))),
            (std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}));
}

// The contract's steps written out with explicit f32 operations, per element: the squares
// summed in the kernels' order (common/row_layout.h).
float ContractNorm(const std::vector<float>& h_row, int64_t c, float w, float eps, float bias) {
  std::vector<float> squares;
  for (float v : h_row) squares.push_back(v * v);
  const float sum = RowSumInKernelOrder(squares.data(), int64_t(squares.size()));
  const float r = 1.0f / sqrtf(sum / float(h_row.size()) + eps);
  const float hr = h_row[size_t(c)] * r;
  const float wb = w + bias;
  return hr * wb;
}

TEST(CpuReferenceTest, RmsNormFollowsTheContractStepByStep) {
  std::mt19937 rng(2);
  for (DType wdt : {DType::kBF16, DType::kF16, DType::kF32}) {
    const HostTensor x = RandomTensor(DType::kBF16, {3, 2880}, rng, 3.0f);
    const HostTensor w = RandomTensor(wdt, {2880}, rng);
    const HostTensor y = Unwrap(RmsNorm(x, w, 1e-6f, 1.0f, DType::kBF16));
    for (int64_t t = 0; t < 3; ++t) {
      std::vector<float> row;
      for (int64_t c = 0; c < 2880; ++c) row.push_back(x.GetF32(t * 2880 + c));
      for (int64_t c = 0; c < 2880; ++c) {
        ASSERT_EQ(y.GetF32(t * 2880 + c),
                  RoundTo(DType::kBF16, ContractNorm(row, c, w.GetF32(c), 1e-6f, 1.0f)))
            << "row " << t << " col " << c;
      }
    }
  }
}

TEST(CpuReferenceTest, FusedAddRmsNormRoundsTheResidualFirst) {
  // h = round(x + residual): 1 + 2^-8 is a bf16 tie -> 1.0; the norm reads the rounded h.
  const HostTensor x = Make(DType::kBF16, {1, 2}, {1.0f, 2.0f});
  const HostTensor res = Make(DType::kBF16, {1, 2}, {0x1.0p-8f, 2.0f});
  const HostTensor w = Make(DType::kF32, {2}, {1, 1});
  const AddRmsNormResult r =
      Unwrap(FusedAddRmsNorm(x, res, w, 1e-6f, 0.0f, DType::kBF16, DType::kBF16));
  EXPECT_EQ(Values(r.residual_out), (std::vector<float>{1.0f, 4.0f}));
  const HostTensor h = Make(DType::kBF16, {1, 2}, {1.0f, 4.0f});
  EXPECT_TRUE(r.y.BitwiseEquals(Unwrap(RmsNorm(h, w, 1e-6f, 0.0f, DType::kBF16))));
  EXPECT_FALSE(
      FusedAddRmsNorm(x, Make(DType::kBF16, {2, 1}, {1, 1}), w, 1e-6f, 0, DType::kBF16, DType::kBF16)
          .ok());
  EXPECT_FALSE(RmsNorm(x, Make(DType::kF32, {3}, {1, 1, 1}), 1e-6f, 0, DType::kBF16).ok());
}

// ---------------------------------------------------------------- quantization

TEST(CpuReferenceTest, QuantTensorUsesTheReciprocalOnce) {
  const HostTensor y = Make(DType::kBF16, {1, 4}, {1.0f, -2.0f, 300.0f, 0.3f});
  const HostTensor scale = Make(DType::kF32, {}, {0.5f});
  const HostTensor q = Unwrap(QuantFp8Tensor(y, scale));
  EXPECT_EQ(q.dtype(), DType::kF8E4M3);
  EXPECT_EQ(Values(q), (std::vector<float>{2.0f, -4.0f, 448.0f, Fp8E4M3ToFloat(FloatToFp8E4M3(
                                                                     y.GetF32(3) * 2.0f))}));
  // 1/3 in f32 times y, not y / 3: the two differ for some y; check the contract's form.
  const HostTensor three = Make(DType::kF32, {}, {3.0f});
  std::mt19937 rng(3);
  const HostTensor r = RandomTensor(DType::kBF16, {4096}, rng, 50.0f);
  const HostTensor qr = Unwrap(QuantFp8Tensor(r, three));
  const float inv = 1.0f / 3.0f;
  for (int64_t i = 0; i < r.numel(); ++i)
    ASSERT_EQ(qr.data_as<uint8_t>()[i], FloatToFp8E4M3(r.GetF32(i) * inv)) << i;
  EXPECT_FALSE(QuantFp8Tensor(y, Make(DType::kF32, {2}, {1, 1})).ok());
}

TEST(CpuReferenceTest, QuantTokenHandComputed) {
  const HostTensor y = Make(DType::kBF16, {2, 4}, {1, -2, 4, 0.5f, 0, 0, 0, 0});
  DynamicQuantResult r = Unwrap(QuantFp8Dynamic(y, {QuantMode::kFp8Token, 0, ScaleLayout::kRow,
                                                    ScaleFormat::kF32}));
  EXPECT_EQ(r.s.shape(), (std::vector<int64_t>{2, 1}));
  const float s0 = 4.0f / 448.0f;
  EXPECT_EQ(r.s.GetF32(0), s0);
  EXPECT_EQ(r.s.GetF32(1), 1e-10f / 448.0f);  // an all-zero row: the floor
  for (int c = 0; c < 4; ++c) EXPECT_EQ(r.q.GetF32(c), Fp8E4M3ToFloat(FloatToFp8E4M3(y.GetF32(c) / s0)));
  EXPECT_EQ(r.q.GetF32(2), 448.0f);  // the row maximum lands on 448
  for (int c = 4; c < 8; ++c) EXPECT_EQ(r.q.GetF32(c), 0.0f);
  // ue8m0: s = 2^-6 (the power of two above 4/448), q = y * 64 exactly.
  r = Unwrap(QuantFp8Dynamic(y, {QuantMode::kFp8Token, 0, ScaleLayout::kRow, ScaleFormat::kUe8m0}));
  EXPECT_EQ(r.s.GetF32(0), 0x1.0p-6f);
  EXPECT_EQ(Values(r.q), (std::vector<float>{64, -128, 256, 32, 0, 0, 0, 0}));
}

TEST(CpuReferenceTest, QuantGroupRowAndColumnLayouts) {
  // T = 3, H = 8, groups of 4: group maxima chosen per (row, group) as 2^(row + 2 * group).
  std::vector<float> values;
  for (int t = 0; t < 3; ++t)
    for (int g = 0; g < 2; ++g)
      for (int c = 0; c < 4; ++c) values.push_back(c == 1 ? -std::ldexp(1.0f, t + 2 * g) : 0.25f);
  const HostTensor y = Make(DType::kBF16, {3, 8}, values);
  const auto expected_scale = [](int t, int g, bool ue8m0) {
    const float s = std::ldexp(1.0f, t + 2 * g) / 448.0f;
    return ue8m0 ? RoundUpToPowerOfTwo(s) : s;
  };
  for (bool ue8m0 : {false, true}) {
    const ScaleFormat fmt = ue8m0 ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
    const DynamicQuantResult row =
        Unwrap(QuantFp8Dynamic(y, {QuantMode::kFp8Group, 4, ScaleLayout::kRow, fmt}));
    const DynamicQuantResult col =
        Unwrap(QuantFp8Dynamic(y, {QuantMode::kFp8Group, 4, ScaleLayout::kCol, fmt}));
    EXPECT_EQ(row.s.shape(), (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(col.s.shape(), (std::vector<int64_t>{2, 4}));  // [G, pad4(3)]
    EXPECT_TRUE(row.q.BitwiseEquals(col.q));
    for (int t = 0; t < 3; ++t) {
      for (int g = 0; g < 2; ++g) {
        const float s = expected_scale(t, g, ue8m0);
        EXPECT_EQ(row.s.GetF32(t * 2 + g), s) << t << "," << g;
        EXPECT_EQ(col.s.GetF32(g * 4 + t), s) << t << "," << g;
        for (int c = 0; c < 4; ++c) {
          const int64_t i = t * 8 + g * 4 + c;
          EXPECT_EQ(row.q.data_as<uint8_t>()[i], FloatToFp8E4M3(y.GetF32(i) / s)) << i;
        }
      }
    }
    EXPECT_EQ(col.s.GetF32(3), 0.0f);  // padding stays 0
    EXPECT_EQ(col.s.GetF32(7), 0.0f);
  }
  EXPECT_FALSE(QuantFp8Dynamic(y, {QuantMode::kFp8Group, 3, ScaleLayout::kRow, ScaleFormat::kF32}).ok());
}

TEST(CpuReferenceTest, QuantTakesInfAndNanAsTorchsFormsDo) {
  // Row 0 holds a NaN: torch's amax is NaN, so is the scale, and every q is NaN. Row 1 holds
  // -inf: the scale is inf / 448 = inf, y / inf is +-0 and -inf / inf is NaN. Row 2 is finite.
  const HostTensor y = Make(DType::kBF16, {3, 4}, {1, kNaN, -2, 0.5f,  //
                                                   1, -INFINITY, -2, 0.0f,  //
                                                   1, 4, -2, 0.5f});
  for (ScaleFormat format : {ScaleFormat::kF32, ScaleFormat::kUe8m0}) {
    for (bool swapped : {false, true}) {
      QuantParams config{QuantMode::kFp8Token, 0, ScaleLayout::kRow, format};
      config.scale_op_swapped = swapped;
      const DynamicQuantResult r = Unwrap(QuantFp8Dynamic(y, config));
      EXPECT_TRUE(std::isnan(r.s.GetF32(0)));
      for (int c = 0; c < 4; ++c) EXPECT_TRUE(std::isnan(r.q.GetF32(c))) << c;
      EXPECT_EQ(r.s.GetF32(1), INFINITY);
      const uint8_t* q = r.q.data_as<uint8_t>();
      EXPECT_EQ(q[4], 0x00);  // 1 / inf = +0
      EXPECT_TRUE(std::isnan(r.q.GetF32(5)));
      EXPECT_EQ(q[6], 0x80);  // -2 / inf = -0
      EXPECT_EQ(q[7], 0x00);
      EXPECT_EQ(r.s.GetF32(2), format == ScaleFormat::kF32 ? 4.0f / 448.0f : 1.0f / 64.0f);
      EXPECT_EQ(r.q.GetF32(9), format == ScaleFormat::kF32 ? 448.0f : 256.0f);
    }
  }
}

// ---------------------------------------------------------------- GEMMs

TEST(CpuReferenceTest, MatmulSmallIntegers) {
  const HostTensor a = Make(DType::kBF16, {2, 3}, {1, 2, 3, 4, 5, 6});
  const HostTensor b = Make(DType::kBF16, {3, 2}, {1, -1, 2, 0, -3, 5});
  const HostTensor y = Unwrap(Matmul(a, b, DType::kBF16));
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(Values(y), (std::vector<float>{-4, 14, -4, 26}));
  EXPECT_FALSE(Matmul(a, a, DType::kBF16).ok());
}

TEST(CpuReferenceTest, ScaledMatmulEveryActivationScaleLayout) {
  // q [3, 4] and w [4, 2] hold small integers (exact in FP8); scales are powers of two, so
  // every result is exact and equals matmul of the dequantized operands.
  const std::vector<float> qv = {1, 2, -3, 4, 0, 1, 1, 1, -2, 2, 8, 0.5f};
  const HostTensor q = Make(DType::kF8E4M3, {3, 4}, qv);
  const HostTensor w = Make(DType::kF8E4M3, {4, 2}, {1, 2, 3, 4, -1, 0, 2, 1});
  struct Case {
    ActScaleLayout layout;
    HostTensor s;
    std::function<float(int, int)> scale;  // (t, k) -> scale
  };
  std::vector<Case> cases;
  cases.push_back({ActScaleLayout::kPerTensor, Make(DType::kF32, {}, {0.5f}),
                   [](int, int) { return 0.5f; }});
  cases.push_back({ActScaleLayout::kPerToken, Make(DType::kF32, {3, 1}, {1, 2, 4}),
                   [](int t, int) { return std::ldexp(1.0f, t); }});
  cases.push_back({ActScaleLayout::kPerGroupRow, Make(DType::kF32, {3, 2}, {1, 2, 4, 8, 16, 32}),
                   [](int t, int k) { return std::ldexp(1.0f, 2 * t + k / 2); }});
  cases.push_back({ActScaleLayout::kPerGroupCol,
                   Make(DType::kF32, {2, 4}, {1, 4, 16, 0, 2, 8, 32, 0}),
                   [](int t, int k) { return std::ldexp(1.0f, 2 * t + k / 2); }});
  // Weight scales: blocks [K/2, N/1] = [2, 2].
  const HostTensor ws = Make(DType::kF32, {2, 2}, {1, 0.5f, 2, 0.25f});
  const auto ws_of = [](int k, int n) {
    const float table[2][2] = {{1, 0.5f}, {2, 0.25f}};
    return table[k / 2][n];
  };
  for (const Case& c : cases) {
    HostTensor a(DType::kF32, {3, 4}), b(DType::kF32, {4, 2});
    for (int t = 0; t < 3; ++t)
      for (int k = 0; k < 4; ++k) a.SetF32(t * 4 + k, qv[size_t(t * 4 + k)] * c.scale(t, k));
    for (int k = 0; k < 4; ++k)
      for (int n = 0; n < 2; ++n) b.SetF32(k * 2 + n, w.GetF32(k * 2 + n) * ws_of(k, n));
    const HostTensor got = Unwrap(ScaledMatmul(q, c.s, c.layout, w, ws, DType::kBF16));
    const HostTensor want = Unwrap(Matmul(a, b, DType::kBF16));
    EXPECT_TRUE(got.BitwiseEquals(want)) << ActScaleLayoutName(c.layout);
  }
  // Per-tensor weight scale, and shape errors.
  const HostTensor one = Make(DType::kF32, {}, {1});
  EXPECT_TRUE(ScaledMatmul(q, one, ActScaleLayout::kPerTensor, w, one, DType::kBF16).ok());
  EXPECT_FALSE(ScaledMatmul(q, Make(DType::kF32, {2, 1}, {1, 1}), ActScaleLayout::kPerToken, w,
                            one, DType::kBF16).ok());
  EXPECT_FALSE(ScaledMatmul(q, one, ActScaleLayout::kPerTensor, w,
                            Make(DType::kF32, {3, 2}, {1, 1, 1, 1, 1, 1}), DType::kBF16).ok());
}

// ---------------------------------------------------------------- collectives and the fused op

TEST(CpuReferenceTest, AllreduceSumRankTagged) {
  // Rank r contributes r + 1 in element (0, r % 4) and -1 elsewhere: every sum is exact, so a
  // rank that is skipped or counted twice shows up as an exact mismatch.
  for (int world : {1, 2, 4, 8}) {
    std::vector<HostTensor> partials;
    for (int r = 0; r < world; ++r) {
      HostTensor t(DType::kBF16, {2, 4});
      for (int64_t i = 0; i < 8; ++i) t.SetF32(i, i == r % 4 ? float(r + 1) : -1.0f);
      partials.push_back(t);
    }
    const HostTensor a = Unwrap(AllreduceSum(partials));
    for (int64_t i = 0; i < 8; ++i) {
      float want = 0;
      for (int r = 0; r < world; ++r) want += i == r % 4 ? float(r + 1) : -1.0f;
      EXPECT_EQ(a.GetF32(i), want) << "world " << world << " element " << i;
    }
  }
  EXPECT_FALSE(AllreduceSum(std::vector<HostTensor>{Make(DType::kBF16, {1}, {1}),
                                                    Make(DType::kF16, {1}, {1})}).ok());
}

TEST(CpuReferenceTest, AllreduceSumRoundsOnceAfterTheF32Sum) {
  // 1 + 2^-8 + 2^-8 is exactly 1 + 2^-7 in f32; rounding after every step would lose both
  // halves (1 + 2^-8 is a bf16 tie that goes to 1.0).
  const HostTensor one = Make(DType::kBF16, {1}, {1.0f});
  const HostTensor half_ulp = Make(DType::kBF16, {1}, {0x1.0p-8f});
  EXPECT_EQ(Unwrap(AllreduceSum(std::vector<HostTensor>{one, half_ulp})).GetF32(0), 1.0f);
  EXPECT_EQ(Unwrap(AllreduceSum(std::vector<HostTensor>{one, half_ulp, half_ulp})).GetF32(0),
            1.0f + 0x1.0p-7f);
}

AllreduceRmsnormSpec Spec(int64_t hidden, bool residual, QuantMode quant) {
  AllreduceRmsnormSpec spec;
  spec.hidden = hidden;
  spec.has_residual = residual;
  spec.quant = quant;
  spec.emit.norm = true;
  spec.emit.residual = residual;
  spec.emit.quant = quant != QuantMode::kNone;
  return spec;
}

TEST(CpuReferenceTest, FusedOpHandComputedRow) {
  // Two ranks: a = x0 + x1 = [1, 1, 1, 1] + [0, 2, -4, 2] = [1, 3, -3, 3]; residual
  // [1, -1, 1, -1] -> h = [2, 2, -2, 2]; mean(h^2) = 4, eps 0 -> r = 0.5 -> y = h / 2 * w.
  AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kFp8Tensor);
  spec.eps = 0.0f;
  spec.emit.allreduce = true;
  const HostTensor x0 = Make(DType::kBF16, {1, 4}, {1, 1, 1, 1});
  const HostTensor x1 = Make(DType::kBF16, {1, 4}, {0, 2, -4, 2});
  const HostTensor res = Make(DType::kBF16, {1, 4}, {1, -1, 1, -1});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 2, 3, 0.5f});
  const HostTensor scale = Make(DType::kF32, {}, {0.25f});
  const std::vector<HostTensor> out =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, &scale));
  ASSERT_EQ(out.size(), 4u);  // allreduce, norm, residual, q
  EXPECT_EQ(Values(out[0]), (std::vector<float>{1, 3, -3, 3}));
  EXPECT_EQ(Values(out[1]), (std::vector<float>{1, 2, -3, 0.5f}));
  EXPECT_EQ(Values(out[2]), (std::vector<float>{2, 2, -2, 2}));
  EXPECT_EQ(Values(out[3]), (std::vector<float>{4, 8, -12, 2}));
}

// A bias added to the sum first (has_bias), in exact values and with its rounding: a = [1, 3, -3, 3],
// bias [1, -1, 1, 0.00390625] -> ab = round(a + bias) = [2, 2, -2, 3] (bf16: 3 + 2^-8 is 3, the
// bias rounds away); scaled by sum_scale 0.5 -> [1, 1, -1, 1.5]; residual [1, 1, -1, 0.5] -> h =
// [2, 2, -2, 2], r = 0.5 (eps 0), y = h / 2 * w. The emitted allreduce is a, without the bias.
// Without the bias, or with one of another dtype or length, the call is an error.
TEST(CpuReferenceTest, FusedOpAddsTheBiasToTheSumFirst) {
  AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kNone);
  spec.eps = 0.0f;
  spec.has_bias = true;
  spec.sum_scale = 0.5f;
  spec.emit.allreduce = true;
  const HostTensor x0 = Make(DType::kBF16, {1, 4}, {1, 1, 1, 1});
  const HostTensor x1 = Make(DType::kBF16, {1, 4}, {0, 2, -4, 2});
  const HostTensor res = Make(DType::kBF16, {1, 4}, {1, 1, -1, 0.5f});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 2, 3, 0.5f});
  const HostTensor bias = Make(DType::kBF16, {4}, {1, -1, 1, 0.00390625f});
  const std::vector<HostTensor> partials = {x0, x1};
  const std::vector<HostTensor> out =
      Unwrap(AllreduceRmsnorm(spec, partials, &res, w, nullptr, {}, nullptr, &bias));
  ASSERT_EQ(out.size(), 3u);  // allreduce, norm, residual
  EXPECT_EQ(Values(out[0]), (std::vector<float>{1, 3, -3, 3}));
  EXPECT_EQ(Values(out[1]), (std::vector<float>{1, 2, -3, 0.5f}));
  EXPECT_EQ(Values(out[2]), (std::vector<float>{2, 2, -2, 2}));

  StatusOr<std::vector<HostTensor>> r = AllreduceRmsnorm(spec, partials, &res, w, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bias"), std::string::npos) << r.status().message();
  const HostTensor bias_f32 = Make(DType::kF32, {4}, {1, -1, 1, 0});
  r = AllreduceRmsnorm(spec, partials, &res, w, nullptr, {}, nullptr, &bias_f32);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bias is f32[4]"), std::string::npos) << r.status().message();
  AllreduceRmsnormSpec no_bias = spec;
  no_bias.has_bias = false;
  r = AllreduceRmsnorm(no_bias, partials, &res, w, nullptr, {}, nullptr, &bias);
  EXPECT_FALSE(r.ok());
  AllreduceRmsnormSpec with_x2 = spec;
  with_x2.second_sum = true;
  EXPECT_FALSE(with_x2.Validate().ok());
}

// A bias of x's shape (bias_per_token): each row adds its own. Row 0 is the test above's; row 1
// has a = [2, 2, 2, 2] and the bias [-1, -1, 0, 0] -> ab = [1, 1, 2, 2], scaled -> [0.5, 0.5, 1, 1],
// plus the residual [1.5, 1.5, 1, 1] -> h = [2, 2, 2, 2], r = 0.5, y = w. A bias [H] for a spec of
// [T, H], or one without has_bias, is an error.
TEST(CpuReferenceTest, FusedOpAddsEachRowItsOwnBiasPerToken) {
  AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kNone);
  spec.eps = 0.0f;
  spec.has_bias = true;
  spec.bias_per_token = true;
  spec.sum_scale = 0.5f;
  spec.emit.allreduce = true;
  const HostTensor x0 = Make(DType::kBF16, {2, 4}, {1, 1, 1, 1, 2, 2, 2, 2});
  const HostTensor x1 = Make(DType::kBF16, {2, 4}, {0, 2, -4, 2, 0, 0, 0, 0});
  const HostTensor res = Make(DType::kBF16, {2, 4}, {1, 1, -1, 0.5f, 1.5f, 1.5f, 1, 1});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 2, 3, 0.5f});
  const HostTensor bias = Make(DType::kBF16, {2, 4}, {1, -1, 1, 0.00390625f, -1, -1, 0, 0});
  const std::vector<HostTensor> partials = {x0, x1};
  const std::vector<HostTensor> out =
      Unwrap(AllreduceRmsnorm(spec, partials, &res, w, nullptr, {}, nullptr, &bias));
  ASSERT_EQ(out.size(), 3u);  // allreduce, norm, residual
  EXPECT_EQ(Values(out[0]), (std::vector<float>{1, 3, -3, 3, 2, 2, 2, 2}));
  EXPECT_EQ(Values(out[1]), (std::vector<float>{1, 2, -3, 0.5f, 1, 2, 3, 0.5f}));
  EXPECT_EQ(Values(out[2]), (std::vector<float>{2, 2, -2, 2, 2, 2, 2, 2}));

  const HostTensor row_bias = Make(DType::kBF16, {4}, {1, -1, 1, 0});
  StatusOr<std::vector<HostTensor>> r = AllreduceRmsnorm(spec, partials, &res, w, nullptr, {}, nullptr, &row_bias);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("expected bf16[2, 4]"), std::string::npos) << r.status().message();
  AllreduceRmsnormSpec no_bias = spec;
  no_bias.has_bias = false;
  EXPECT_FALSE(no_bias.Validate().ok());
}

// A norm of the sum before the residual add (pre_residual_norm, sandwich norms), in exact values:
// a = [1, 3, -3, 3] (mean(a^2) = 7, eps 2 -> r0 = 1/3), p = round(a / 3 * w0) with w0 = [3, 3, 3, 6]
// = [1, 3, -3, 6]; h = p + residual = [2, 2, -2, 5], and y = round(h * r) with the second norm's
// eps 0, r = 1 / sqrt(37 / 4). The first norm applies its weight as the second does (weight_bias 1
// to both); without the pre_weight, or with one of another dtype, the call is an error.
TEST(CpuReferenceTest, FusedOpNormsTheSumBeforeTheResidualAdd) {
  AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kNone);
  spec.eps = 0.0f;
  spec.pre_residual_norm = true;
  spec.pre_eps = 2.0f;
  spec.emit.allreduce = true;
  const HostTensor x0 = Make(DType::kBF16, {1, 4}, {1, 1, 1, 1});
  const HostTensor x1 = Make(DType::kBF16, {1, 4}, {0, 2, -4, 2});
  const HostTensor res = Make(DType::kBF16, {1, 4}, {1, -1, 1, -1});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 1, 1, 1});
  const HostTensor w0 = Make(DType::kBF16, {4}, {3, 3, 3, 6});
  const std::vector<HostTensor> out =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr, {}, &w0));
  ASSERT_EQ(out.size(), 3u);  // allreduce, norm, residual
  EXPECT_EQ(Values(out[0]), (std::vector<float>{1, 3, -3, 3}));
  EXPECT_EQ(Values(out[2]), (std::vector<float>{2, 2, -2, 5}));
  const float r = 1.0f / std::sqrt(37.0f / 4.0f);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(out[1].GetF32(i), RoundTo(DType::kBF16, out[2].GetF32(i) * r)) << i;
  // weight_bias 1 to both norms: w0' = w0 + 1 = [4, 4, 4, 7] -> p = round(a / 3 * w0').
  spec.weight_bias = 1.0f;
  const std::vector<HostTensor> biased =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr, {}, &w0));
  for (int i = 0; i < 4; ++i) {
    const float a = out[0].GetF32(i), w0b = w0.GetF32(i) + 1.0f;
    EXPECT_EQ(biased[2].GetF32(i), RoundTo(DType::kBF16, RoundTo(DType::kBF16, a * (1.0f / 3.0f) * w0b) +
                                                           res.GetF32(i)))
        << i;
  }
  EXPECT_FALSE(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr).ok());
  const HostTensor w0_f32 = Make(DType::kF32, {4}, {3, 3, 3, 6});
  EXPECT_FALSE(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr, {}, &w0_f32).ok());
  // No residual to add the normed sum to: the spec is refused.
  spec.has_residual = spec.emit.residual = false;
  EXPECT_FALSE(spec.Validate().ok());
}

// A residual stream kept in f32: h = a + residual in f32 with an f32 residual off bf16's grid;
// residual_out is h itself under residual_out_f32 and round(h) otherwise, and the norm of the
// f32 h (norm_input_f32) reads the same h either way.
TEST(CpuReferenceTest, FusedOpWithAnF32ResidualKeepsTheSumUnrounded) {
  AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kNone);
  spec.residual_f32_in = true;
  spec.rounding.norm_input_f32 = true;
  const HostTensor x0 = Make(DType::kBF16, {1, 4}, {1, 1, 1, 1});
  const HostTensor x1 = Make(DType::kBF16, {1, 4}, {0, 2, -4, 2});
  // 2^-10 and 2^-12 are below bf16's spacing at 2 (2^-6): a rounded h loses them.
  const HostTensor res = Make(DType::kF32, {1, 4}, {1 + 0x1p-10f, -1, 1, -1 - 0x1p-12f});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 1, 1, 1});
  const std::vector<HostTensor> rounded =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr));
  spec.rounding.residual_out_f32 = true;
  const std::vector<HostTensor> kept =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res, w, nullptr));
  ASSERT_EQ(kept.size(), 2u);  // norm, residual
  EXPECT_EQ(kept[1].dtype(), DType::kF32);
  EXPECT_EQ(Values(kept[1]), (std::vector<float>{2 + 0x1p-10f, 2, -2, 2 - 0x1p-12f}));
  EXPECT_EQ(rounded[1].dtype(), DType::kBF16);
  EXPECT_EQ(Values(rounded[1]), (std::vector<float>{2, 2, -2, 2}));
  EXPECT_EQ(Values(kept[0]), Values(rounded[0]));
  // The residual's dtype is the spec's: a bf16 residual for an f32 one is an error.
  const HostTensor res_bf16 = Make(DType::kBF16, {1, 4}, {1, -1, 1, -1});
  EXPECT_FALSE(AllreduceRmsnorm(spec, std::vector<HostTensor>{x0, x1}, &res_bf16, w, nullptr).ok());
}

// The norm output in f32 (norm_out_f32) is y unrounded: with a unit weight y = n, the normalized
// row, off bf16's grid here; by default it is round(n). Under weight_after_round n rounds to the
// activation dtype first (bf16, not the output's f32), so y = round(n) * 1 in f32.
TEST(CpuReferenceTest, FusedOpWithAnF32NormOutputKeepsYUnrounded) {
  AllreduceRmsnormSpec spec = Spec(4, false, QuantMode::kNone);
  spec.local = true;
  spec.eps = 0.0f;
  // mean(x^2) = 7.5: n = x / sqrt(7.5), none of it on bf16's grid.
  const HostTensor x = Make(DType::kBF16, {1, 4}, {1, 2, 3, 4});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 1, 1, 1});
  const std::vector<HostTensor> rounded =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x}, nullptr, w, nullptr));
  spec.rounding.norm_out_f32 = true;
  const std::vector<HostTensor> kept =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x}, nullptr, w, nullptr));
  spec.rounding.weight_after_round = true;
  const std::vector<HostTensor> kept_war =
      Unwrap(AllreduceRmsnorm(spec, std::vector<HostTensor>{x}, nullptr, w, nullptr));
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].dtype(), DType::kF32);
  EXPECT_EQ(kept_war[0].dtype(), DType::kF32);
  EXPECT_EQ(rounded[0].dtype(), DType::kBF16);
  const float r = 1.0f / std::sqrt(30.0f / 4.0f);
  for (int64_t i = 0; i < 4; ++i) {
    const float n = float(i + 1) * r;
    EXPECT_EQ(kept[0].GetF32(i), n) << i;
    EXPECT_NE(kept[0].GetF32(i), RoundTo(DType::kBF16, n)) << i;
    EXPECT_EQ(rounded[0].GetF32(i), RoundTo(DType::kBF16, n)) << i;
    EXPECT_EQ(kept_war[0].GetF32(i), RoundTo(DType::kBF16, n)) << i;
  }
  // A quantization reads the rounded y: the spec refuses one beside an f32 norm output.
  AllreduceRmsnormSpec quantized = Spec(4, false, QuantMode::kFp8Token);
  quantized.rounding.norm_out_f32 = true;
  EXPECT_FALSE(quantized.Validate().ok());
}

// The unfused chain on the CPU: all_reduce -> [fused_add_]rms_norm -> quant_fp8.
std::vector<HostTensor> UnfusedChain(const AllreduceRmsnormSpec& spec,
                                     const std::vector<HostTensor>& partials,
                                     const HostTensor* residual, const HostTensor& w,
                                     const HostTensor* scale) {
  std::vector<HostTensor> out;
  const HostTensor a = Unwrap(AllreduceSum(partials));
  HostTensor y, h = a;
  if (residual) {
    AddRmsNormResult r = Unwrap(FusedAddRmsNorm(a, *residual, w, spec.eps, spec.weight_bias,
                                                spec.act_dtype, spec.act_dtype));
    y = r.y;
    h = r.residual_out;
  } else {
    y = Unwrap(RmsNorm(a, w, spec.eps, spec.weight_bias, spec.act_dtype));
  }
  if (spec.emit.allreduce) out.push_back(a);
  if (spec.emit.norm) out.push_back(y);
  if (spec.emit.residual) out.push_back(h);
  if (spec.quant == QuantMode::kFp8Tensor) {
    out.push_back(Unwrap(QuantFp8Tensor(y, *scale)));
  } else if (spec.quant != QuantMode::kNone) {
    DynamicQuantResult q = Unwrap(QuantFp8Dynamic(
        y, {spec.quant, spec.group_size, spec.scale_layout, spec.scale_fmt}));
    out.push_back(q.q);
    out.push_back(q.s);
  }
  return out;
}

TEST(CpuReferenceTest, FusedOpEqualsTheUnfusedChainBitwise) {
  std::mt19937 rng(5);
  int cases = 0;
  for (int64_t hidden : testing::kQuickHiddenSizes) {
    for (int64_t tokens : testing::kQuickTokenCounts) {
      for (QuantMode quant : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                              QuantMode::kFp8Group}) {
        for (bool residual : {false, true}) {
          const int variant = cases++;
          AllreduceRmsnormSpec spec = Spec(hidden, residual, quant);
          spec.act_dtype = variant % 3 == 0 ? DType::kF16 : DType::kBF16;
          spec.weight_dtype = std::vector<DType>{DType::kBF16, DType::kF16, DType::kF32}[variant % 3];
          spec.weight_bias = variant % 4 == 1 ? 1.0f : 0.0f;
          spec.group_size = hidden % 128 == 0 && variant % 2 == 0 ? 128 : 64;
          spec.scale_layout = variant % 5 < 2 ? ScaleLayout::kCol : ScaleLayout::kRow;
          spec.scale_fmt = variant % 3 == 1 ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
          spec.emit.allreduce = variant % 2 == 0;
          const int world = 1 + variant % 4;
          std::vector<HostTensor> partials;
          for (int r = 0; r < world; ++r)
            partials.push_back(RandomTensor(spec.act_dtype, {tokens, hidden}, rng));
          const HostTensor res = RandomTensor(spec.act_dtype, {tokens, hidden}, rng);
          const HostTensor w = RandomTensor(spec.weight_dtype, {hidden}, rng, 0.5f);
          const HostTensor scale = Make(DType::kF32, {}, {0.01f});
          const HostTensor* res_ptr = residual ? &res : nullptr;
          const HostTensor* scale_ptr = quant == QuantMode::kFp8Tensor ? &scale : nullptr;
          const std::vector<HostTensor> fused =
              Unwrap(AllreduceRmsnorm(spec, partials, res_ptr, w, scale_ptr));
          const std::vector<HostTensor> unfused = UnfusedChain(spec, partials, res_ptr, w, scale_ptr);
          ASSERT_EQ(fused.size(), unfused.size()) << spec.ToString();
          ASSERT_EQ(int(fused.size()), spec.NumResults()) << spec.ToString();
          for (size_t i = 0; i < fused.size(); ++i)
            EXPECT_TRUE(fused[i].BitwiseEquals(unfused[i]))
                << spec.ToString() << " T=" << tokens << " result " << i;
          if (IsDynamicQuant(quant))
            EXPECT_EQ(fused.back().numel(), spec.ScaleElements(tokens)) << spec.ToString();
        }
      }
    }
  }
}

TEST(CpuReferenceTest, FusedOpRowsDoNotDependOnOtherRows) {
  // Contract 3.5: a row's result does not depend on T or on the other rows.
  std::mt19937 rng(6);
  AllreduceRmsnormSpec spec = Spec(256, true, QuantMode::kFp8Group);
  std::vector<HostTensor> partials = {RandomTensor(DType::kBF16, {19, 256}, rng),
                                      RandomTensor(DType::kBF16, {19, 256}, rng)};
  const HostTensor res = RandomTensor(DType::kBF16, {19, 256}, rng);
  const HostTensor w = RandomTensor(DType::kBF16, {256}, rng);
  const std::vector<HostTensor> full = Unwrap(AllreduceRmsnorm(spec, partials, &res, w, nullptr));
  // Row 7 alone.
  const auto row = [](const HostTensor& t, int64_t r) {
    HostTensor out(t.dtype(), {1, t.dim(1)});
    for (int64_t c = 0; c < t.dim(1); ++c) out.SetF32(c, t.GetF32(r * t.dim(1) + c));
    return out;
  };
  const HostTensor res7 = row(res, 7);
  const std::vector<HostTensor> one = Unwrap(AllreduceRmsnorm(
      spec, std::vector<HostTensor>{row(partials[0], 7), row(partials[1], 7)}, &res7, w, nullptr));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(row(full[size_t(i)], 7).BitwiseEquals(one[size_t(i)])) << i;
}

TEST(CpuReferenceTest, FusedOpValidatesItsOperands) {
  const AllreduceRmsnormSpec spec = Spec(4, true, QuantMode::kNone);
  const HostTensor x = Make(DType::kBF16, {1, 4}, {1, 2, 3, 4});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 1, 1, 1});
  const std::vector<HostTensor> partials = {x, x};
  // Missing residual.
  StatusOr<std::vector<HostTensor>> r = AllreduceRmsnorm(spec, partials, nullptr, w, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("residual"), std::string::npos);
  // Wrong weight dtype.
  const HostTensor wf = Make(DType::kF32, {4}, {1, 1, 1, 1});
  r = AllreduceRmsnorm(spec, partials, &x, wf, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("w is f32[4]"), std::string::npos) << r.status().message();
  // Partials of different shapes.
  r = AllreduceRmsnorm(spec, std::vector<HostTensor>{x, Make(DType::kBF16, {1, 2}, {1, 2})}, &x,
                       w, nullptr);
  EXPECT_FALSE(r.ok());
  // Static quant without a scale.
  r = AllreduceRmsnorm(Spec(4, true, QuantMode::kFp8Tensor), partials, &x, w, nullptr);
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace tpfuse::cpu
