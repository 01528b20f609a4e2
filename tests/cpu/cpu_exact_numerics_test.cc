// Exact CPU numerics: the new elementwise and reduction ops with exact values, the fused op's
// rounding recipe flags against hand-computed rows, and, on the CPU executor, decomposed
// PyTorch forms against the fused op with the recipe of that form: bitwise equal (Contract 3).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "common/numerics.h"
#include "common/quotient.h"
#include "common/row_layout.h"
#include "ir/parser.h"
#include "runtime/check.h"
#include "runtime/executor.h"
#include "runtime/inputs.h"
#include "support/host_tensors.h"

namespace tpfuse {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// The shared helpers under this file's short names.
HostTensor Make(DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
  return testing::MakeTensor(dtype, std::move(shape), values);
}
std::vector<float> Values(const HostTensor& t) { return testing::TensorValues(t); }

template <class T>
T Unwrap(StatusOr<T> s) {
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

bool SignBit(float v) { return std::signbit(v); }

// ---------------------------------------------------------------- new elementwise ops

TEST(CpuExactOpsTest, UnaryOpsExactValues) {
  using cpu::UnaryOp;
  const HostTensor x = Make(DType::kF32, {6}, {4.0f, -0.0f, 0.5f, -3.0f, 8.0f, kInf});
  EXPECT_EQ(Values(cpu::Unary(UnaryOp::kSqrt, Make(DType::kF32, {3}, {9, 0.25f, 2}), DType::kF32)),
            (std::vector<float>{3.0f, 0.5f, std::sqrt(2.0f)}));
  const std::vector<float> abs = Values(cpu::Unary(UnaryOp::kAbs, x, DType::kF32));
  EXPECT_EQ(abs, (std::vector<float>{4, 0, 0.5f, 3, 8, kInf}));
  EXPECT_FALSE(SignBit(abs[1]));  // |-0.0| = +0.0
  const std::vector<float> neg = Values(cpu::Unary(UnaryOp::kNeg, x, DType::kF32));
  EXPECT_EQ(neg, (std::vector<float>{-4, 0, -0.5f, 3, -8, -kInf}));
  EXPECT_FALSE(SignBit(neg[1]));
  EXPECT_TRUE(SignBit(Values(cpu::Unary(UnaryOp::kNeg, Make(DType::kF32, {1}, {0}), DType::kF32))[0]));
  const std::vector<float> rcp = Values(cpu::Unary(UnaryOp::kReciprocal, x, DType::kF32));
  EXPECT_EQ(rcp[0], 0.25f);
  EXPECT_EQ(rcp[1], -kInf);
  EXPECT_EQ(rcp[3], 1.0f / -3.0f);
  EXPECT_EQ(rcp[5], 0.0f);
  EXPECT_EQ(Values(cpu::Unary(UnaryOp::kLog2, Make(DType::kF32, {4}, {8, 0.5f, 1, 0}), DType::kF32)),
            (std::vector<float>{3, -1, 0, -kInf}));
  EXPECT_EQ(Values(cpu::Unary(UnaryOp::kExp2, Make(DType::kF32, {4}, {3, -2, 0, -150}), DType::kF32)),
            (std::vector<float>{8, 0.25f, 1, 0}));
  EXPECT_EQ(Values(cpu::Unary(UnaryOp::kCeil, Make(DType::kF32, {4}, {1.2f, -1.5f, 3, -0.25f}), DType::kF32)),
            (std::vector<float>{2, -1, 3, -0.0f}));
  EXPECT_TRUE(SignBit(cpu::Unary(UnaryOp::kCeil, Make(DType::kF32, {1}, {-0.25f}), DType::kF32).GetF32(0)));
  EXPECT_TRUE(std::isnan(cpu::Unary(UnaryOp::kAbs, Make(DType::kF32, {1}, {kNaN}), DType::kF32).GetF32(0)));
  // One rounding to the output dtype: 1/3 in f32, then to bf16.
  EXPECT_EQ(cpu::Unary(UnaryOp::kReciprocal, Make(DType::kF32, {1}, {3}), DType::kBF16).GetF32(0),
            RoundTo(DType::kBF16, 1.0f / 3.0f));
}

TEST(CpuExactOpsTest, PowFollowsTorchSpecialCases) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(0.01f, 100.0f);
  HostTensor x(DType::kF32, {1000});
  for (int64_t i = 0; i < x.numel(); ++i) x.SetF32(i, dist(rng));
  // pow(x, -1) is reciprocal bit for bit; -0.5 is rsqrt; 0.5 is sqrt.
  EXPECT_TRUE(cpu::Pow(x, -1.0f, DType::kF32)
                  .BitwiseEquals(cpu::Unary(cpu::UnaryOp::kReciprocal, x, DType::kF32)));
  EXPECT_TRUE(cpu::Pow(x, -0.5f, DType::kF32).BitwiseEquals(cpu::Rsqrt(x, DType::kF32)));
  EXPECT_TRUE(cpu::Pow(x, 0.5f, DType::kF32)
                  .BitwiseEquals(cpu::Unary(cpu::UnaryOp::kSqrt, x, DType::kF32)));
  EXPECT_EQ(Values(cpu::Pow(Make(DType::kF32, {3}, {3, -2, 0.5f}), 3.0f, DType::kF32)),
            (std::vector<float>{27, -8, 0.125f}));
  EXPECT_EQ(Values(cpu::Pow(Make(DType::kF32, {2}, {4, -0.5f}), -2.0f, DType::kF32)),
            (std::vector<float>{0.0625f, 4}));
  EXPECT_EQ(cpu::Pow(Make(DType::kF32, {1}, {3}), -1.0f, DType::kF32).GetF32(0), 1.0f / 3.0f);
}

TEST(CpuExactOpsTest, AmaxOverTheLastDim) {
  const HostTensor x = Make(DType::kBF16, {2, 2, 3}, {1, -5, 3, -1, -2, -0.5f, 0, 7, 7, 2, 1, 0});
  HostTensor m = Unwrap(cpu::Amax(x, -1, true, DType::kF32));
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(Values(m), (std::vector<float>{3, -0.5f, 7, 2}));
  m = Unwrap(cpu::Amax(x, 2, false, DType::kBF16));
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{2, 2}));
  // NaN propagates, as torch.amax.
  EXPECT_TRUE(std::isnan(
      Unwrap(cpu::Amax(Make(DType::kF32, {1, 3}, {1, kNaN, 2}), -1, true, DType::kF32)).GetF32(0)));
  EXPECT_FALSE(cpu::Amax(x, 0, true, DType::kF32).ok());
}

TEST(CpuExactOpsTest, MeanSumsInTheKernelOrderInF32) {
  // A row the GPU cannot hold (H = 3): summed in order in f32, where 1e8 + 1 loses the 1.
  EXPECT_EQ(Unwrap(cpu::Mean(Make(DType::kF32, {1, 3}, {1e8f, 1.0f, -1e8f}), -1, true,
                             DType::kF32)).GetF32(0),
            0.0f);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (int64_t hidden : {int64_t{2880}, int64_t{4096}, int64_t{7168}}) {
    HostTensor x(DType::kF32, {2, hidden});
    for (int64_t i = 0; i < x.numel(); ++i) x.SetF32(i, dist(rng));
    const HostTensor m = Unwrap(cpu::Mean(x, -1, true, DType::kF32));
    const std::vector<float> values = Values(x);
    for (int64_t t = 0; t < 2; ++t) {
      const std::vector<float> row(values.begin() + t * hidden, values.begin() + (t + 1) * hidden);
      EXPECT_EQ(m.GetF32(t), RowSumInKernelOrder(row.data(), hidden) / float(hidden))
          << "H=" << hidden << " row " << t;
    }
  }
}

// ---------------------------------------------------------------- the fused op's recipe

AllreduceRmsnormSpec NormSpec(int64_t hidden, float eps) {
  AllreduceRmsnormSpec spec;
  spec.hidden = hidden;
  spec.eps = eps;
  spec.emit.norm = true;
  return spec;
}

std::vector<HostTensor> RunFused(const AllreduceRmsnormSpec& spec, const HostTensor& x,
                                 const HostTensor* residual, const HostTensor& w,
                                 const HostTensor* scale = nullptr) {
  return Unwrap(cpu::AllreduceRmsnorm(spec, std::vector<HostTensor>{x}, residual, w, scale));
}

TEST(CpuFusedRecipeTest, WeightAfterRound) {
  // h = [1, 1, 1, 2], eps 0: mean 7/4, r = 1/sqrtf(1.75); n = r = 0.7559289 for the ones.
  // One rounding: y = round(n * 1.5) = round(1.1338934) = 0x1.22p+0.
  // weight_after_round: round(n) = 0x1.84p-1 (0.7578125), times 1.5 = 1.13671875 = 0x1.23p+0,
  // a bf16 tie, to even: 0x1.24p+0.
  const HostTensor x = Make(DType::kBF16, {1, 4}, {1, 1, 1, 2});
  const HostTensor w = Make(DType::kBF16, {4}, {1.5f, 1.5f, 1.5f, 1.5f});
  AllreduceRmsnormSpec spec = NormSpec(4, 0.0f);
  EXPECT_EQ(Values(RunFused(spec, x, nullptr, w)[0]),
            (std::vector<float>{0x1.22p+0f, 0x1.22p+0f, 0x1.22p+0f, 0x1.22p+1f}));
  spec.rounding.weight_after_round = true;
  EXPECT_EQ(Values(RunFused(spec, x, nullptr, w)[0]),
            (std::vector<float>{0x1.24p+0f, 0x1.24p+0f, 0x1.24p+0f, 0x1.24p+1f}));
}

TEST(CpuFusedRecipeTest, WeightBiasInWeightDtype) {
  // h = [3, 1, 1, 1], eps 1: mean 3 + 1 = 4, r = 0.5, n = [1.5, 0.5, 0.5, 0.5].
  // w = 3 * 2^-8, weight_bias 1. In f32: w' = 1.01171875; y = round(1.517578125) = 1.515625
  // and round(0.505859375) = 0.5078125 (a tie, to even).
  // In bf16: w' = round(1.01171875) = 1.015625 (a tie, to even); y = 1.5234375, 0.5078125.
  const HostTensor x = Make(DType::kBF16, {1, 4}, {3, 1, 1, 1});
  const float wv = 3 * 0x1.0p-8f;
  const HostTensor w = Make(DType::kBF16, {4}, {wv, wv, wv, wv});
  AllreduceRmsnormSpec spec = NormSpec(4, 1.0f);
  spec.weight_bias = 1.0f;
  EXPECT_EQ(Values(RunFused(spec, x, nullptr, w)[0]),
            (std::vector<float>{1.515625f, 0.5078125f, 0.5078125f, 0.5078125f}));
  spec.rounding.weight_bias_in_weight_dtype = true;
  EXPECT_EQ(Values(RunFused(spec, x, nullptr, w)[0]),
            (std::vector<float>{1.5234375f, 0.5078125f, 0.5078125f, 0.5078125f}));
  // An f32 weight has nothing to round to: the flag changes nothing.
  const HostTensor wf = Make(DType::kF32, {4}, {wv, wv, wv, wv});
  spec.weight_dtype = DType::kF32;
  EXPECT_EQ(Values(RunFused(spec, x, nullptr, wf)[0]),
            (std::vector<float>{1.515625f, 0.5078125f, 0.5078125f, 0.5078125f}));
}

TEST(CpuFusedRecipeTest, NormInputF32) {
  // a = [1, 1, 1, 1], residual [0, 0, 2^-8, 3 * 2^-8]: h = [1, 1, 1 + 2^-8, 1 + 3 * 2^-8],
  // round(h) = [1, 1, 1, 0x1.04p+0] (ties to even). The norm of round(h) gives
  // [0x1.fep-1, 0x1.fep-1, 0x1.fep-1, 0x1.02p+0]; the norm of the f32 h moves the third
  // element to 1.0.
  const HostTensor x = Make(DType::kBF16, {1, 4}, {1, 1, 1, 1});
  const HostTensor res = Make(DType::kBF16, {1, 4}, {0, 0, 0x1.0p-8f, 3 * 0x1.0p-8f});
  const HostTensor w = Make(DType::kBF16, {4}, {1, 1, 1, 1});
  AllreduceRmsnormSpec spec = NormSpec(4, 0.0f);
  spec.has_residual = true;
  spec.emit.residual = true;
  std::vector<HostTensor> out = RunFused(spec, x, &res, w);
  EXPECT_EQ(Values(out[0]), (std::vector<float>{0x1.fep-1f, 0x1.fep-1f, 0x1.fep-1f, 0x1.02p+0f}));
  EXPECT_EQ(Values(out[1]), (std::vector<float>{1, 1, 1, 0x1.04p+0f}));
  spec.rounding.norm_input_f32 = true;
  out = RunFused(spec, x, &res, w);
  EXPECT_EQ(Values(out[0]), (std::vector<float>{0x1.fep-1f, 0x1.fep-1f, 1.0f, 0x1.02p+0f}));
  EXPECT_EQ(Values(out[1]), (std::vector<float>{1, 1, 1, 0x1.04p+0f}));  // residual_out: round(h)
}

TEST(CpuFusedRecipeTest, StaticScaleDivideOrMultiply) {
  // y = 10.9375, scale 7: y / 7 = 1.5625 exactly, an FP8 tie between 1.5 and 1.625 -> 1.5
  // (even); y * (1/7 in f32) lands above the tie -> 1.625.
  const HostTensor y = Make(DType::kBF16, {1, 2}, {10.9375f, -10.9375f});
  const HostTensor scale = Make(DType::kF32, {}, {7});
  EXPECT_EQ(Values(Unwrap(cpu::QuantFp8Tensor(y, scale, /*divides=*/false))),
            (std::vector<float>{1.625f, -1.625f}));
  EXPECT_EQ(Values(Unwrap(cpu::QuantFp8Tensor(y, scale, /*divides=*/true))),
            (std::vector<float>{1.5f, -1.5f}));
  // The fused op: h = [1, 1], eps 0 -> r = 1, y = w = [10.9375, -10.9375].
  AllreduceRmsnormSpec spec = NormSpec(2, 0.0f);
  spec.quant = QuantMode::kFp8Tensor;
  spec.emit.quant = true;
  const HostTensor ones = Make(DType::kBF16, {1, 2}, {1, 1});
  const HostTensor w = Make(DType::kBF16, {2}, {10.9375f, -10.9375f});
  EXPECT_EQ(Values(RunFused(spec, ones, nullptr, w, &scale)[1]),
            (std::vector<float>{1.625f, -1.625f}));
  spec.rounding.scale_op_swapped = true;
  EXPECT_EQ(Values(RunFused(spec, ones, nullptr, w, &scale)[1]),
            (std::vector<float>{1.5f, -1.5f}));
}

TEST(CpuFusedRecipeTest, DynamicScaleDivideOrMultiply) {
  // y = [3136, 10.9375]: amax 3136, s = 3136 / 448 = 7. Dividing: q = [448, 1.5] (1.5625 is an
  // FP8 tie); multiplying by 1/s: [448, 1.625].
  const HostTensor ones = Make(DType::kBF16, {1, 2}, {1, 1});
  const HostTensor w = Make(DType::kBF16, {2}, {3136, 10.9375f});
  AllreduceRmsnormSpec spec = NormSpec(2, 0.0f);
  spec.quant = QuantMode::kFp8Token;
  spec.emit.quant = true;
  std::vector<HostTensor> out = RunFused(spec, ones, nullptr, w);
  EXPECT_EQ(Values(out[1]), (std::vector<float>{448, 1.5f}));
  EXPECT_EQ(Values(out[2]), (std::vector<float>{7}));
  spec.rounding.scale_op_swapped = true;
  out = RunFused(spec, ones, nullptr, w);
  EXPECT_EQ(Values(out[1]), (std::vector<float>{448, 1.625f}));
  // ue8m0: s = 8 either way, and y / 8 = y * 0.125 exactly: 392 -> 384 and 1.3671875 -> 1.375.
  spec.scale_fmt = ScaleFormat::kUe8m0;
  for (bool swapped : {false, true}) {
    spec.rounding.scale_op_swapped = swapped;
    out = RunFused(spec, ones, nullptr, w);
    EXPECT_EQ(Values(out[1]), (std::vector<float>{384, 1.375f})) << swapped;
    EXPECT_EQ(Values(out[2]), (std::vector<float>{8})) << swapped;
  }
}

TEST(CpuFusedRecipeTest, DynamicScaleFlooredAfterTheDivision) {
  // Rows of y = w (eps 0, h = [1, 1]): amax 3136 and 0.5 (s = amax / 448 in both forms: above
  // the floor 1 / 229376), amax 2^-12 (default 2^-12 / 448; floored 1 / 229376, so q = 2^-12 *
  // 229376 = 56) and a zero row (default 1e-10 / 448; floored 1 / 229376; q = 0 either way).
  const HostTensor ones = Make(DType::kBF16, {1, 2}, {1, 1});
  AllreduceRmsnormSpec spec = NormSpec(2, 0.0f);
  spec.quant = QuantMode::kFp8Token;
  spec.emit.quant = true;
  const float floor = 1.0f / (448.0f * 512.0f);
  struct Row {
    float w0, w1;
    float s_default, s_floored;
    std::vector<float> q_default, q_floored;
  };
  const Row rows[] = {
      {3136, 10.9375f, 7, 7, {448, 1.5f}, {448, 1.5f}},
      {0.5f, -0.25f, 0.5f / 448.0f, 0.5f / 448.0f, {448, -224}, {448, -224}},
      {0x1p-12f, -0x1p-13f, 0x1p-12f / 448.0f, floor, {448, -224}, {56, -28}},
      {0, 0, 1e-10f / 448.0f, floor, {0, 0}, {0, 0}},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.w0);
    const HostTensor w = Make(DType::kBF16, {2}, {r.w0, r.w1});
    spec.rounding.scale_floor_after_div = false;
    std::vector<HostTensor> out = RunFused(spec, ones, nullptr, w);
    EXPECT_EQ(Values(out[1]), r.q_default);
    EXPECT_EQ(out[2].GetF32(0), r.s_default);
    spec.rounding.scale_floor_after_div = true;
    out = RunFused(spec, ones, nullptr, w);
    EXPECT_EQ(Values(out[1]), r.q_floored);
    EXPECT_EQ(out[2].GetF32(0), r.s_floored);
  }
  // ue8m0 of a zero row: 2^-42 from 1e-10 / 448, 2^-33 from max(s, 1e-10) (ue8m0_floor); the
  // rows above 2^-34 * 448 round the same either way.
  spec.rounding.scale_floor_after_div = false;
  spec.scale_fmt = ScaleFormat::kUe8m0;
  for (bool floored : {false, true}) {
    spec.rounding.ue8m0_floor = floored;
    std::vector<HostTensor> out = RunFused(spec, ones, nullptr, Make(DType::kBF16, {2}, {0, 0}));
    EXPECT_EQ(out[2].GetF32(0), floored ? 0x1p-33f : 0x1p-42f);
    EXPECT_EQ(Values(out[1]), (std::vector<float>{0, 0}));
    out = RunFused(spec, ones, nullptr, Make(DType::kBF16, {2}, {3136, 10.9375f}));
    EXPECT_EQ(out[2].GetF32(0), 8.0f);
  }
  // ue8m0 floored after the rounding (vLLM's QuantFP8 UE8M0 form): a zero row's scale is the
  // floor 1 / (448 * 512), no power of two; a row of amax 2^-9 (quotient the floor itself) rounds
  // up to 2^-17, and the row above to 8 as before.
  spec.rounding.scale_floor_after_div = true;
  for (bool floored : {false, true}) {
    spec.rounding.ue8m0_floor = floored;
    ASSERT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
    std::vector<HostTensor> out = RunFused(spec, ones, nullptr, Make(DType::kBF16, {2}, {0, 0}));
    EXPECT_EQ(out[2].GetF32(0), floor);
    EXPECT_EQ(Values(out[1]), (std::vector<float>{0, 0}));
    out = RunFused(spec, ones, nullptr, Make(DType::kBF16, {2}, {0x1p-9f, -0x1p-10f}));
    EXPECT_EQ(out[2].GetF32(0), 0x1p-17f);
    EXPECT_EQ(Values(out[1]), (std::vector<float>{256, -128}));
    out = RunFused(spec, ones, nullptr, Make(DType::kBF16, {2}, {3136, 10.9375f}));
    EXPECT_EQ(out[2].GetF32(0), 8.0f);
  }
  // Only dynamic scales take the floor after the division, only ue8m0 ones the ue8m0 floor.
  spec.rounding.scale_floor_after_div = false;
  EXPECT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
  spec.scale_fmt = ScaleFormat::kF32;
  EXPECT_FALSE(spec.Validate().ok());
  spec.rounding.ue8m0_floor = false;
  spec.rounding.scale_floor_after_div = true;
  spec.scale_fmt = ScaleFormat::kF32;
  spec.quant = QuantMode::kFp8Tensor;
  EXPECT_FALSE(spec.Validate().ok());
  spec.quant = QuantMode::kFp8Group;
  spec.group_size = 2;
  EXPECT_TRUE(spec.Validate().ok()) << spec.Validate().ToString();
}

TEST(CpuFusedRecipeTest, MinusZeroPartialsSumToPlusZeroAboveOneRank) {
  AllreduceRmsnormSpec spec = NormSpec(2, 1.0f);
  spec.emit.allreduce = true;
  const HostTensor z = Make(DType::kBF16, {1, 2}, {-0.0f, 1});
  const HostTensor w = Make(DType::kBF16, {2}, {1, 1});
  // One rank: a = x, -0.0 kept.
  std::vector<HostTensor> out =
      Unwrap(cpu::AllreduceRmsnorm(spec, std::vector<HostTensor>{z}, nullptr, w, nullptr));
  EXPECT_TRUE(SignBit(out[0].GetF32(0)));
  // Two ranks: -0.0 + -0.0 is +0.0 on every GPU strategy, and here.
  out = Unwrap(cpu::AllreduceRmsnorm(spec, std::vector<HostTensor>{z, z}, nullptr, w, nullptr));
  EXPECT_FALSE(SignBit(out[0].GetF32(0)));
  EXPECT_EQ(out[0].GetF32(1), 2.0f);
}

// ---------------------------------------------------------------- decomposed forms, bitwise

struct Form {
  const char* name;
  const char* unfused;  // %x, %res, %w [, %scale]; "HID" is replaced by the hidden size
  const char* fused;
};

// The forms real model code traces to, each with the fused op that replaces it.
const Form kForms[] = {
    {"llama_hf",  // LlamaRMSNorm: residual added in bf16, weight * x.to(input_dtype)
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %h = add(%res, %ar)\n"
     "  %c = cast(%h) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %nb = cast(%n) {to = bf16}\n"
     "  %y = mul(%w, %nb)\n"
     "  return %y, %h\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %y, %h = allreduce_rmsnorm(%x, %res, %w) {eps = 1e-06, emit = [\"norm\", \"residual\"], "
     "rounding = [\"weight_after_round\"]}\n"
     "  return %y, %h\n"
     "}\n"},
    {"vllm_native",  // forward_static: add in f32, normalize the f32 sum, round, then weight
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %a32 = cast(%ar) {to = f32}\n"
     "  %r32 = cast(%res) {to = f32}\n"
     "  %h32 = add(%a32, %r32)\n"
     "  %h = cast(%h32) {to = bf16}\n"
     "  %sq = mul(%h32, %h32)\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-05}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%h32, %r)\n"
     "  %nb = cast(%n) {to = bf16}\n"
     "  %y = mul(%nb, %w)\n"
     "  return %y, %h\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %y, %h = allreduce_rmsnorm(%x, %res, %w) {eps = 1e-05, emit = [\"norm\", \"residual\"], "
     "rounding = [\"norm_input_f32\", \"weight_after_round\"]}\n"
     "  return %y, %h\n"
     "}\n"},
    {"gemma_f32_bias",  // output * (1.0 + weight.float()), one rounding at the end
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %c = cast(%ar) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %wf = cast(%w) {to = f32}\n"
     "  %w1 = add(%wf) {scalar = 1}\n"
     "  %y32 = mul(%n, %w1)\n"
     "  %y = cast(%y32) {to = bf16}\n"
     "  return %y\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %y = allreduce_rmsnorm(%x, %w) {eps = 1e-06, weight_bias = 1, emit = [\"norm\"]}\n"
     "  return %y\n"
     "}\n"},
    {"gemma_bf16_bias",  // the 1 added in the weight's dtype
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %c = cast(%ar) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %w1 = add(%w) {scalar = 1}\n"
     "  %wf = cast(%w1) {to = f32}\n"
     "  %y32 = mul(%n, %wf)\n"
     "  %y = cast(%y32) {to = bf16}\n"
     "  return %y\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %y = allreduce_rmsnorm(%x, %w) {eps = 1e-06, weight_bias = 1, emit = [\"norm\"], "
     "rounding = [\"weight_bias_in_weight_dtype\"]}\n"
     "  return %y\n"
     "}\n"},
    {"static_quant_divide",  // y.to(f32) / scale, clamp, cast
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID], %scale: f32[]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %h = add(%ar, %res)\n"
     "  %c = cast(%h) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %nb = cast(%n) {to = bf16}\n"
     "  %y = mul(%w, %nb)\n"
     "  %yf = cast(%y) {to = f32}\n"
     "  %d = div(%yf, %scale)\n"
     "  %cl = clamp(%d) {min = -448, max = 448}\n"
     "  %q = cast(%cl) {to = f8e4m3}\n"
     "  return %q, %h\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID], %scale: f32[]) {\n"
     "  %h, %q = allreduce_rmsnorm(%x, %res, %w, %scale) {eps = 1e-06, quant = fp8_tensor, "
     "emit = [\"residual\", \"quant\"], rounding = [\"weight_after_round\", "
     "\"scale_op_swapped\"]}\n"
     "  return %q, %h\n"
     "}\n"},
    {"static_quant_reciprocal",  // y * scale.reciprocal() (pow(s, -1) is the same op)
     "func @f(%x: bf16[T, HID], %w: bf16[HID], %scale: f32[]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %c = cast(%ar) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %wf = cast(%w) {to = f32}\n"
     "  %y32 = mul(%n, %wf)\n"
     "  %y = cast(%y32) {to = bf16}\n"
     "  %yf = cast(%y) {to = f32}\n"
     "  %inv = pow(%scale) {exponent = -1}\n"
     "  %d = mul(%yf, %inv)\n"
     "  %cl = clamp(%d) {min = -448, max = 448}\n"
     "  %q = cast(%cl) {to = f8e4m3}\n"
     "  return %q, %y\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %w: bf16[HID], %scale: f32[]) {\n"
     "  %y, %q = allreduce_rmsnorm(%x, %w, %scale) {eps = 1e-06, quant = fp8_tensor, "
     "emit = [\"norm\", \"quant\"]}\n"
     "  return %q, %y\n"
     "}\n"},
    {"per_token_quant",  // abs -> amax -> clamp_min -> / 448 -> divide -> clamp -> cast
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %h = add(%ar, %res)\n"
     "  %c = cast(%h) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %nb = cast(%n) {to = bf16}\n"
     "  %y = mul(%w, %nb)\n"
     "  %yf = cast(%y) {to = f32}\n"
     "  %ab = abs(%yf)\n"
     "  %am = amax(%ab) {dim = -1, keepdim = true}\n"
     "  %cm = clamp(%am) {min = 1e-10}\n"
     "  %s = div(%cm) {scalar = 448}\n"
     "  %d = div(%yf, %s)\n"
     "  %cl = clamp(%d) {min = -448, max = 448}\n"
     "  %q = cast(%cl) {to = f8e4m3}\n"
     "  return %q, %s, %h\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %res: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %h, %q, %s = allreduce_rmsnorm(%x, %res, %w) {eps = 1e-06, quant = fp8_token, "
     "scale_layout = row, scale_fmt = f32, emit = [\"residual\", \"quant\"], "
     "rounding = [\"weight_after_round\"]}\n"
     "  return %q, %s, %h\n"
     "}\n"},
    {"per_group_quant_ue8m0",  // groups of 128 through views; s = 2^ceil(log2(s))
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %ar = all_reduce(%x)\n"
     "  %c = cast(%ar) {to = f32}\n"
     "  %sq = pow(%c) {exponent = 2}\n"
     "  %m = mean(%sq) {dim = -1, keepdim = true}\n"
     "  %e = add(%m) {scalar = 1e-06}\n"
     "  %r = rsqrt(%e)\n"
     "  %n = mul(%c, %r)\n"
     "  %nb = cast(%n) {to = bf16}\n"
     "  %y = mul(%w, %nb)\n"
     "  %yf = cast(%y) {to = f32}\n"
     "  %y3 = view(%yf) {shape = [T, GROUPS, 128]}\n"
     "  %ab = abs(%y3)\n"
     "  %am = amax(%ab) {dim = -1, keepdim = true}\n"
     "  %cm = clamp(%am) {min = 1e-10}\n"
     "  %s0 = div(%cm) {scalar = 448}\n"
     "  %l = log2(%s0)\n"
     "  %lc = ceil(%l)\n"
     "  %s3 = exp2(%lc)\n"
     "  %d = div(%y3, %s3)\n"
     "  %cl = clamp(%d) {min = -448, max = 448}\n"
     "  %q3 = cast(%cl) {to = f8e4m3}\n"
     "  %q = view(%q3) {shape = [T, HID]}\n"
     "  %s = view(%s3) {shape = [T, GROUPS]}\n"
     "  return %q, %s\n"
     "}\n",
     "func @f(%x: bf16[T, HID], %w: bf16[HID]) {\n"
     "  %q, %s = allreduce_rmsnorm(%x, %w) {eps = 1e-06, quant = fp8_group, group_size = 128, "
     "scale_layout = row, scale_fmt = ue8m0, emit = [\"quant\"], "
     "rounding = [\"weight_after_round\"]}\n"
     "  return %q, %s\n"
     "}\n"},
};

std::string Instantiate(std::string text, int64_t hidden) {
  for (const auto& [key, value] :
       {std::pair{std::string("GROUPS"), std::to_string(hidden / 128)},
        std::pair{std::string("HID"), std::to_string(hidden)}}) {
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at))
      text.replace(at, key.size(), value);
  }
  return text;
}

TEST(CpuExactFormsTest, DecomposedFormsEqualTheFusedOpBitwise) {
  for (const Form& form : kForms) {
    for (int64_t hidden : {int64_t{2048}, int64_t{4096}}) {
      auto unfused = ir::ParseGraph(Instantiate(form.unfused, hidden), form.name);
      auto fused = ir::ParseGraph(Instantiate(form.fused, hidden), form.name);
      ASSERT_TRUE(unfused.ok()) << unfused.status().message();
      ASSERT_TRUE(fused.ok()) << fused.status().message();
      for (int world : {1, 2}) {
        for (int64_t tokens : {1, 5, 33}) {
          for (uint64_t seed : {1, 2, 3}) {
            SCOPED_TRACE(StrCat(form.name, " H=", hidden, " N=", world, " T=", tokens,
                                " seed ", seed));
            const std::vector<runtime::TensorMap> inputs =
                Unwrap(runtime::MakeRandomInputs(**unfused, world, tokens, seed));
            auto exec = runtime::MakeCpuExecutor(world);
            const runtime::RankOutputs ref = Unwrap(exec->Run(**unfused, inputs));
            const runtime::RankOutputs got = Unwrap(exec->Run(**fused, inputs));
            const runtime::CheckReport report = Unwrap(runtime::CompareGraphOutputs(
                **unfused, ref, **fused, got, inputs, runtime::CompareMode::kBitwise));
            EXPECT_TRUE(report.ok) << report.ToString();
          }
        }
      }
    }
  }
}

// A chain of `sites` LlamaRMSNorm layers: all_reduce -> add -> norm (weight after the round)
// -> matmul -> all_reduce ..., unfused or with each site fused by hand.
std::string LlamaChain(int sites, int64_t hidden, bool fused) {
  const std::string h = std::to_string(hidden);
  std::string params = "%x: bf16[T, " + h + "], %res: bf16[T, " + h + "]";
  for (int i = 0; i < sites; ++i) {
    params += StrCat(", %w", i, ": bf16[", h, "]");
    if (i + 1 < sites) params += StrCat(", %m", i, ": bf16[", h, ", ", h, "]");
  }
  std::string body;
  std::string p = "%x", res = "%res";
  for (int i = 0; i < sites; ++i) {
    const std::string n = std::to_string(i);
    if (fused) {
      body += StrCat("  %y", n, ", %h", n, " = allreduce_rmsnorm(", p, ", ", res, ", %w", n,
                     ") {eps = 1e-06, emit = [\"norm\", \"residual\"], rounding = "
                     "[\"weight_after_round\"]}\n");
    } else {
      body += StrCat("  %ar", n, " = all_reduce(", p, ")\n", "  %h", n, " = add(%ar", n, ", ",
                     res, ")\n", "  %c", n, " = cast(%h", n, ") {to = f32}\n", "  %sq", n,
                     " = mul(%c", n, ", %c", n, ")\n", "  %mean", n, " = mean(%sq", n,
                     ") {dim = -1, keepdim = true}\n", "  %e", n, " = add(%mean", n,
                     ") {scalar = 1e-06}\n", "  %r", n, " = rsqrt(%e", n, ")\n", "  %n", n,
                     " = mul(%c", n, ", %r", n, ")\n", "  %nb", n, " = cast(%n", n,
                     ") {to = bf16}\n", "  %y", n, " = mul(%nb", n, ", %w", n, ")\n");
    }
    if (i + 1 < sites) body += StrCat("  %p", n, " = matmul(%y", n, ", %m", n, ")\n");
    p = "%p" + n;
    res = "%h" + n;
  }
  const std::string last = std::to_string(sites - 1);
  return StrCat("func @chain(", params, ") {\n", body, "  return %y", last, ", %h", last,
                "\n}\n");
}

TEST(CpuExactFormsTest, FourChainedSitesStayBitwiseEqual) {
  auto unfused = ir::ParseGraph(LlamaChain(4, 256, false), "unfused");
  auto fused = ir::ParseGraph(LlamaChain(4, 256, true), "fused");
  ASSERT_TRUE(unfused.ok()) << unfused.status().message();
  ASSERT_TRUE(fused.ok()) << fused.status().message();
  for (int64_t tokens : {1, 5, 33}) {
    for (uint64_t seed : {11, 12}) {
      SCOPED_TRACE(StrCat("T=", tokens, " seed ", seed));
      const std::vector<runtime::TensorMap> inputs =
          Unwrap(runtime::MakeRandomInputs(**unfused, 2, tokens, seed));
      auto exec = runtime::MakeCpuExecutor(2);
      const runtime::RankOutputs ref = Unwrap(exec->Run(**unfused, inputs));
      const runtime::RankOutputs got = Unwrap(exec->Run(**fused, inputs));
      const runtime::CheckReport report = Unwrap(runtime::CompareGraphOutputs(
          **unfused, ref, **fused, got, inputs, runtime::CompareMode::kBitwise));
      EXPECT_TRUE(report.ok) << report.ToString();
    }
  }
}

TEST(CpuExactFormsTest, ToleranceCheckFindsTheScaleBehindAReciprocal) {
  // y * pow(scale, -1): the FP8 output is dequantized with %scale itself, found from the
  // unfused graph alone (compared with itself here).
  const Form& form = kForms[5];
  ASSERT_EQ(std::string(form.name), "static_quant_reciprocal");
  auto unfused = ir::ParseGraph(Instantiate(form.unfused, 2048), form.name);
  ASSERT_TRUE(unfused.ok());
  const std::vector<runtime::TensorMap> inputs =
      Unwrap(runtime::MakeRandomInputs(**unfused, 2, 3, 1));
  const runtime::RankOutputs ref = Unwrap(runtime::MakeCpuExecutor(2)->Run(**unfused, inputs));
  const runtime::CheckReport report =
      Unwrap(runtime::CompareGraphOutputs(**unfused, ref, **unfused, ref, inputs));
  EXPECT_TRUE(report.ok) << report.ToString();
  EXPECT_EQ(report.outputs[0].basis, "static %scale") << report.ToString();
}

TEST(CpuExactFormsTest, LocalFusedOpReadsEachRanksOwnX) {
  // No all_reduce feeds a local op: a = x on each rank, whatever the other ranks hold.
  auto unfused = ir::ParseGraph(
      "func @f(%x: bf16[T, 256], %w: bf16[256]) {\n"
      "  %y = rms_norm(%x, %w) {eps = 1e-06}\n"
      "  return %y\n"
      "}\n");
  auto fused = ir::ParseGraph(
      "func @f(%x: bf16[T, 256], %w: bf16[256]) {\n"
      "  %y = allreduce_rmsnorm(%x, %w) {eps = 1e-06, local = true, emit = [\"norm\"]}\n"
      "  return %y\n"
      "}\n");
  ASSERT_TRUE(unfused.ok() && fused.ok());
  std::vector<runtime::TensorMap> inputs = Unwrap(runtime::MakeRandomInputs(**unfused, 2, 5, 4));
  // Rank 1's x differs from rank 0's.
  inputs[1]["x"] = Unwrap(runtime::MakeRandomInputs(**unfused, 1, 5, 9))[0].at("x");
  ASSERT_FALSE(inputs[1].at("x").BitwiseEquals(inputs[0].at("x")));
  auto exec = runtime::MakeCpuExecutor(2);
  const runtime::RankOutputs ref = Unwrap(exec->Run(**unfused, inputs));
  const runtime::RankOutputs got = Unwrap(exec->Run(**fused, inputs));
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(got[size_t(r)][0].BitwiseEquals(ref[size_t(r)][0])) << r;
  EXPECT_FALSE(got[0][0].BitwiseEquals(got[1][0]));
}

TEST(CpuExactFormsTest, GemmaWeightsThroughCastAndPlusOneAreNormWeights) {
  for (int i : {2, 3}) {
    const Form& form = kForms[i];
    auto g = ir::ParseGraph(Instantiate(form.unfused, 2048), form.name);
    ASSERT_TRUE(g.ok()) << g.status().message();
    const runtime::ParamInfo info = runtime::ClassifyParam(*(*g)->FindValue("w"));
    EXPECT_EQ(info.role, runtime::ParamRole::kNormWeight) << form.name;
    EXPECT_FALSE(info.per_rank) << form.name;
  }
}

TEST(CpuExactFormsTest, BitwiseCompareModeCatchesOneUlp) {
  auto g = ir::ParseGraph(
      "func @f(%x: bf16[T, 8]) {\n  %y = abs(%x)\n  return %y\n}\n");
  ASSERT_TRUE(g.ok());
  const std::vector<runtime::TensorMap> inputs = Unwrap(runtime::MakeRandomInputs(**g, 1, 2, 1));
  const runtime::RankOutputs ref = Unwrap(runtime::MakeCpuExecutor(1)->Run(**g, inputs));
  runtime::RankOutputs got = ref;
  HostTensor& y = got[0][0];
  y.SetF32(3, Bf16ToFloat(uint16_t(FloatToBf16(y.GetF32(3)) + 1)));  // one bf16 ulp away
  const runtime::CheckReport tol =
      Unwrap(runtime::CompareGraphOutputs(**g, ref, **g, got, inputs));
  EXPECT_TRUE(tol.ok) << tol.ToString();
  const runtime::CheckReport exact = Unwrap(
      runtime::CompareGraphOutputs(**g, ref, **g, got, inputs, runtime::CompareMode::kBitwise));
  EXPECT_FALSE(exact.ok);
  EXPECT_NE(exact.ToString().find("1 failed"), std::string::npos) << exact.ToString();
}

}  // namespace
}  // namespace tpfuse
