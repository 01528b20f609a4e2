// canonicalize: every form of Contract 2 that a graph exported without custom ops contains
// becomes the canonical op and then fuses like it; the "does not fire" cases leave the graph
// alone and say why in the counters. Numeric halves run unfused vs fused on the CPU oracle.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backends/cpu/reference_ops.h"
#include "common/numerics.h"
#include "common/quotient.h"
#include "passes_test_util.h"

namespace tpfuse::passes::testing {
namespace {

// Parses `text` and runs canonicalize alone.
Compiled Canonicalize(std::string_view text) {
  PassManager canonicalize;
  canonicalize.Add(MakeCanonicalizePass());
  return Compile(text, {}, &canonicalize);
}

// ---------------------------------------------------------------- decomposed RMSNorm

struct RmsForm {
  std::string name;
  bool input_cast = true;  // cast(h, f32) first
  bool pow = true;         // pow(v, 2), else mul(v, v)
  bool weight_before_cast = false;
  bool weight_first = false;  // mul(w, n) rather than mul(n, w); rsqrt first in the core mul
  std::string weight = "%g";  // how the weight reaches the multiply: %g, %gf, %g1
  std::string weight_defs;    // the statements that compute it
  float weight_bias = 0.0f;
  // The numeric reference: empty for the form's own unfused graph, else the name of the form
  // computed in f32 with one rounding at the end. A chain without casts rounds every
  // intermediate to bf16, and a bf16 add(w, 1) rounds 1 + w: a few ulps of error of their own,
  // which the folded op (f32 inside, Contract 3 step 3) does not have. Those forms are checked
  // against the f32 chain rather than against their own rounding.
  std::string reference;
};

std::ostream& operator<<(std::ostream& os, const RmsForm& f) { return os << f.name; }

// all_reduce -> add -> the decomposed norm in `form` -> per-group quant.
std::string DecomposedRmsNormLayer(const RmsForm& f) {
  const std::string v = f.input_cast ? "%v" : "%h";
  std::string s =
      "func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {\n"
      "  %ar = all_reduce(%x)\n"
      "  %h = add(%ar, %res)\n";
  if (f.input_cast) s += "  %v = cast(%h) {to = f32}\n";
  s += f.pow ? "  %sq = pow(" + v + ") {exponent = 2}\n" : "  %sq = mul(" + v + ", " + v + ")\n";
  s += "  %var = mean(%sq) {dim = -1, keepdim = true}\n"
       "  %ve = add(%var) {scalar = 1e-6}\n"
       "  %rs = rsqrt(%ve)\n";
  s += f.weight_first ? "  %n = mul(%rs, " + v + ")\n" : "  %n = mul(" + v + ", %rs)\n";
  s += f.weight_defs;
  auto weighted = [&](const std::string& out, const std::string& normed) {
    return f.weight_first ? "  " + out + " = mul(" + f.weight + ", " + normed + ")\n"
                          : "  " + out + " = mul(" + normed + ", " + f.weight + ")\n";
  };
  if (!f.input_cast) {
    s += weighted("%y", "%n");
  } else if (f.weight_before_cast) {
    s += weighted("%nw", "%n");
    s += "  %y = cast(%nw) {to = bf16}\n";
  } else {
    s += "  %nb = cast(%n) {to = bf16}\n";
    s += weighted("%y", "%nb");
  }
  s += "  %q, %s = quant_fp8(%y) {mode = \"group\", group_size = 128}\n"
       "  return %q, %s, %h\n}\n";
  return s;
}

const std::vector<RmsForm> kRmsForms = {
    // Hugging Face LlamaRMSNorm: f32 inside, weight times the bf16 result.
    {.name = "CastPowWeightAfterCast"},
    {.name = "CastMulSquareSwappedOperands", .pow = false, .weight_first = true},
    {.name = "CastPowWeightBeforeCastF32Weight",
     .weight_before_cast = true,
     .weight = "%gf",
     .weight_defs = "  %gf = cast(%g) {to = f32}\n"},
    // bf16 weight times the f32 normalized value: mixed precision computes in f32.
    {.name = "CastPowWeightBeforeCastBf16Weight", .weight_before_cast = true},
    // Hugging Face Gemma: output * (1.0 + weight.float()).
    {.name = "GemmaOnePlusF32Weight",
     .weight_before_cast = true,
     .weight = "%g1",
     .weight_defs = "  %gf = cast(%g) {to = f32}\n  %g1 = add(%gf) {scalar = 1}\n",
     .weight_bias = 1.0f},
    {.name = "GemmaOnePlusBf16WeightAfterCast",
     .weight_first = true,
     .weight = "%g1",
     .weight_defs = "  %g1 = add(%g) {scalar = 1}\n",
     .weight_bias = 1.0f},
};

class PassesDecomposedRmsNorm : public ::testing::TestWithParam<RmsForm> {};

TEST_P(PassesDecomposedRmsNorm, FoldsToRmsNormAndFuses) {
  const RmsForm& form = GetParam();
  const std::string text = DecomposedRmsNormLayer(form);

  Compiled canonical = Canonicalize(text);
  ASSERT_TRUE(canonical.ok());
  FileCheck(Print(*canonical.after), R"(
    CHECK: %ar = all_reduce(%x)
    CHECK: %y, %h = fused_add_rms_norm(%ar, %res, %g)
    CHECK-SAME: eps = 1e-06
    CHECK-NOT: rsqrt
    CHECK-NOT: mean
    CHECK-NOT: cast
    CHECK: %q, %s = quant_fp8(%y)
  )");
  EXPECT_EQ(Counter(canonical.ctx, "decomposed_rms_norm", "applied"), 1);
  EXPECT_EQ(canonical.after->num_nodes(), 3) << Print(*canonical.after);
  const auto norms = NodesOf(*canonical.after, "fused_add_rms_norm");
  ASSERT_EQ(norms.size(), 1u);
  const ir::Attr* bias = norms[0]->attr("weight_bias");
  EXPECT_EQ(bias ? *bias->AsNumber() : 0.0, form.weight_bias);

  Compiled fused = Compile(text);
  ASSERT_TRUE(fused.ok());
  FileCheck(Print(*fused.after), R"(
    CHECK: %h, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["residual", "quant"]
    CHECK: return %q, %s, %h
  )");
  EXPECT_EQ(fused.after->num_nodes(), 1) << Print(*fused.after);
  if (!form.reference.empty()) {
    auto reference = std::find_if(kRmsForms.begin(), kRmsForms.end(),
                                  [&](const RmsForm& f) { return f.name == form.reference; });
    ASSERT_NE(reference, kRmsForms.end());
    std::unique_ptr<ir::Graph> f32_chain = ParseOrFail(DecomposedRmsNormLayer(*reference));
    ASSERT_TRUE(f32_chain);
    ExpectSameOutputs(*f32_chain, *fused.after);
  } else {
    ExpectSameOutputs(fused);
  }
}

INSTANTIATE_TEST_SUITE_P(PassesForms, PassesDecomposedRmsNorm, ::testing::ValuesIn(kRmsForms),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------- decomposed static quant

struct QuantForm {
  std::string name;
  std::string scale_op;  // the statement computing %d from %y
  bool clamp = true;
  std::string scale_operand;  // what allreduce_rmsnorm reads as its scale
  // The clamp as torch's post-grad graph writes it: clamp_min then clamp_max (or the reverse
  // with `split_clamp_max_first`), one bound each.
  bool split_clamp = false;
  bool split_clamp_max_first = false;
};

std::ostream& operator<<(std::ostream& os, const QuantForm& f) { return os << f.name; }

std::string StaticQuantLayer(const QuantForm& f) {
  std::string s =
      "func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %scale: f32[],\n"
      "            %inv: f32[]) {\n"
      "  %ar = all_reduce(%x)\n"
      "  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-5}\n" +
      f.scale_op;
  if (f.clamp && f.split_clamp) {
    s += f.split_clamp_max_first
             ? "  %c1 = clamp(%d) {max = 448}\n  %c = clamp(%c1) {min = -448}\n"
             : "  %c1 = clamp(%d) {min = -448}\n  %c = clamp(%c1) {max = 448}\n";
  } else if (f.clamp) {
    s += "  %c = clamp(%d) {min = -448, max = 448}\n";
  }
  s += std::string("  %q = cast(") + (f.clamp ? "%c" : "%d") + ") {to = f8e4m3}\n";
  s += "  return %q, %r\n}\n";
  return s;
}

const std::vector<QuantForm> kQuantForms = {
    {"DivClamp", "  %d = div(%y, %scale)\n", true, "%scale"},
    {"DivNoClamp", "  %d = div(%y, %scale)\n", false, "%scale"},
    {"WidenedDivClamp", "  %yf = cast(%y) {to = f32}\n  %d = div(%yf, %scale)\n", true, "%scale"},
    {"MulReciprocalClamp", "  %ri = reciprocal(%scale)\n  %d = mul(%y, %ri)\n", true, "%scale"},
    {"MulPowScaleFirstNoClamp", "  %ri = pow(%scale) {exponent = -1}\n  %d = mul(%ri, %y)\n",
     false, "%scale"},
    {"WidenedDivClampMinThenMax", "  %yf = cast(%y) {to = f32}\n  %d = div(%yf, %scale)\n", true,
     "%scale", true},
    {"MulReciprocalClampMaxThenMin", "  %ri = reciprocal(%scale)\n  %d = mul(%y, %ri)\n", true,
     "%scale", true, true},
};

class PassesDecomposedStaticQuant : public ::testing::TestWithParam<QuantForm> {};

TEST_P(PassesDecomposedStaticQuant, FoldsToQuantFp8AndFuses) {
  const QuantForm& form = GetParam();
  Compiled c = Compile(StaticQuantLayer(form));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_static_quant", "applied"), 1);
  const std::string fused_line =
      "CHECK: %r, %q = allreduce_rmsnorm(%x, %res, %g, " + form.scale_operand + ")";
  FileCheck(Print(*c.after), fused_line + R"(
    CHECK-SAME: emit = ["residual", "quant"], eps = 1e-05, quant = "fp8_tensor"
    CHECK-NOT: cast
    CHECK: return %q, %r
  )");
  ExpectSameOutputs(c);
}

INSTANTIATE_TEST_SUITE_P(PassesForms, PassesDecomposedStaticQuant, ::testing::ValuesIn(kQuantForms),
                         [](const auto& info) { return info.param.name; });

// Two static quants of one scale, one dividing and one multiplying by its reciprocal: each
// keeps its own rounding.
TEST(PassesCanonicalize, StaticQuantsKeepTheirScaleStep) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256], %b: bf16[T, 256], %s: f32[]) {
      %da = div(%a, %s)
      %qa = cast(%da) {to = f8e4m3}
      %inv = reciprocal(%s)
      %db = mul(%b, %inv)
      %qb = cast(%db) {to = f8e4m3}
      return %qa, %qb
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %qa = quant_fp8(%a, %s) {mode = "tensor", rounding = ["scale_op_swapped"]}
    CHECK: %qb = quant_fp8(%b, %s) {mode = "tensor"}
  )");
  EXPECT_EQ(CountOp(*c.after, "reciprocal"), 0);
  ExpectSameOutputs(c);
}

// F.rms_norm without a weight (nanochat's norm): it stays as written, and the counters say why;
// Llama's form, whose cast the weight multiplies, says nothing of the kind.
// A norm that multiplies by no weight (nanochat's, F.rms_norm without one) folds with a unit
// weight, full([H], 1) in x's dtype: round(n * 1) = round(n), bit for bit, alone and in vLLM's
// f32-sum form. With a symbolic H it stays, and says why. A weight multiply after the cast is
// the weighted form (matched at the multiply), and a weight of another shape is named as such.
TEST(PassesCanonicalize, AWeightlessNormFoldsWithAUnitWeight) {
  // The norm of %x, its values suffixed with k, cast back to dtype as %y<k>.
  const auto norm = [](const std::string& x, const std::string& k, const std::string& dtype) {
    return StrCat("  %v", k, " = cast(%", x, ") {to = f32}\n  %sq", k, " = pow(%v", k,
                  ") {exponent = 2}\n  %m", k, " = mean(%sq", k,
                  ") {dim = -1, keepdim = true}\n  %me", k, " = add(%m", k,
                  ") {scalar = 1e-6}\n  %r", k, " = rsqrt(%me", k, ")\n  %n", k, " = mul(%v", k,
                  ", %r", k, ")\n  %y", k, " = cast(%n", k, ") {to = ", dtype, "}\n");
  };
  const std::string core = norm("x", "", "bf16");
  Compiled bare = Canonicalize("func @f(%x: bf16[T, 64]) {" + core + "  return %y\n}\n");
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(Counter(bare.ctx, "decomposed_rms_norm", "applied"), 1) << DescribeReport(bare.ctx);
  FileCheck(Print(*bare.after), R"(
    CHECK: %y.unit_weight = full() {dtype = bf16, shape = [64], value = 1}
    CHECK: %y = rms_norm(%x, %y.unit_weight) {eps = 1e-06}
  )");
  ExpectBitwiseOutputs(*bare.before, *bare.after, 1, {1, 5, 33}, {2, 9});
  // Two such norms share one unit weight; one of another dtype gets its own.
  Compiled two = Canonicalize("func @f(%x: bf16[T, 64], %z: bf16[T, 64], %u: f16[T, 64]) {\n" +
                              norm("x", "1", "bf16") + norm("z", "2", "bf16") +
                              norm("u", "3", "f16") + "  return %y1, %y2, %y3\n}\n");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(CountOp(*two.after, "rms_norm"), 3) << Print(*two.after);
  EXPECT_EQ(CountOp(*two.after, "full"), 2) << Print(*two.after);
  EXPECT_EQ(Counter(two.ctx, "common_subexpression", "applied"), 1) << DescribeReport(two.ctx);
  ExpectBitwiseOutputs(*two.before, *two.after, 1, {1, 5}, {3});

  Compiled fused_add = Canonicalize(R"(
    func @f(%x: f16[T, 64], %res: f16[T, 64]) {
      %xf = cast(%x) {to = f32}
      %rf = cast(%res) {to = f32}
      %v = add(%xf, %rf)
      %h = cast(%v) {to = f16}
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %y = cast(%n) {to = f16}
      return %y, %h
    }
  )");
  ASSERT_TRUE(fused_add.ok());
  FileCheck(Print(*fused_add.after), R"(
    CHECK: full() {dtype = f16, shape = [64], value = 1}
    CHECK: %y, %h = fused_add_rms_norm(%x, %res,
    CHECK-SAME: rounding = ["norm_input_f32"]
  )");
  ExpectBitwiseOutputs(*fused_add.before, *fused_add.after, 1, {1, 5, 33}, {2, 9});

  Compiled symbolic = Canonicalize("func @f(%x: bf16[T, H]) {" + core + "  return %y\n}\n");
  ASSERT_TRUE(symbolic.ok());
  EXPECT_EQ(Counter(symbolic.ctx, "decomposed_rms_norm",
                    "declined: the norm multiplies by no weight and its hidden size is not a "
                    "constant: no unit weight can be made for it"),
            1)
      << DescribeReport(symbolic.ctx);
  EXPECT_EQ(CountOp(*symbolic.after, "rms_norm"), 0);

  Compiled llama = Canonicalize("func @f(%x: bf16[T, 64], %g: bf16[64]) {" + core +
                                "  %o = mul(%g, %y)\n  return %o\n}\n");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(CountOp(*llama.after, "rms_norm"), 1) << Print(*llama.after);
  EXPECT_EQ(CountOp(*llama.after, "full"), 0) << Print(*llama.after);
  // A multiply by a scalar after the cast is no weight: the norm takes the unit weight.
  Compiled scaled = Canonicalize("func @f(%x: bf16[T, 64]) {" + core +
                                 "  %o = mul(%y) {scalar = 2}\n  return %o\n}\n");
  ASSERT_TRUE(scaled.ok());
  EXPECT_EQ(CountOp(*scaled.after, "rms_norm"), 1) << Print(*scaled.after);
  EXPECT_EQ(CountOp(*scaled.after, "full"), 1) << Print(*scaled.after);
  ExpectBitwiseOutputs(*scaled.before, *scaled.after, 1, {1, 5}, {4});
  // A weight of another shape is named as such, and no unit weight is made.
  Compiled row = Canonicalize("func @f(%x: bf16[T, 64], %g: bf16[1, 64]) {" + core +
                              "  %o = mul(%g, %y)\n  return %o\n}\n");
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(CountOp(*row.after, "full"), 0) << Print(*row.after);
  EXPECT_EQ(Counter(row.ctx, "decomposed_rms_norm",
                    "declined: the weight bf16[1, 64] is not one value per column of bf16[T, 64]"),
            1)
      << DescribeReport(row.ctx);
}

// vLLM's f32 residual sum whose second operand is no residual of x's type (a broadcast row)
// declines and says so.
TEST(PassesCanonicalize, AnF32SumOfABroadcastDeclinesAndSaysWhy) {
  Compiled c = Canonicalize(R"(
    func @f(%x: bf16[T, 64], %b: bf16[1, 64], %g: bf16[64]) {
      %xf = cast(%x) {to = f32}
      %bf = cast(%b) {to = f32}
      %v = add(%xf, %bf)
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %nc = cast(%n) {to = bf16}
      %y = mul(%g, %nc)
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: the f32 sum adds bf16[T, 64] and bf16[1, 64]: not a residual of "
                    "the activation's type"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "fused_add_rms_norm") + CountOp(*c.after, "rms_norm"), 0);
}

// vLLM's Gemma norm at f16 keeps the f32 sum itself as the residual (and SGLang's
// fp32_residual): the sum folds into fused_add_rms_norm whose residual_out is that f32 sum
// (rounding residual_out_f32), and the graph returns it. A target whose fused op keeps the
// residual in the activation dtype (FusionCapabilities::residual_f32 off) leaves the norm as
// written and says why.
constexpr std::string_view kF32ResidualSum = R"(
    func @f(%x: f16[T, 64], %res: f16[T, 64], %g: f16[64]) {
      %xf = cast(%x) {to = f32}
      %rf = cast(%res) {to = f32}
      %v = add(%xf, %rf)
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %gf = cast(%g) {to = f32}
      %w1 = add(%gf) {scalar = 1}
      %y = mul(%n, %w1)
      %yc = cast(%y) {to = f16}
      %vc = cast(%v) {to = f16}
      return %yc, %v, %vc
    }
  )";

TEST(PassesCanonicalize, AnF32ResidualSumReadUnroundedIsTheResidualOutInF32) {
  Compiled c = Canonicalize(kF32ResidualSum);
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %yc, %v = fused_add_rms_norm(%x, %res, %g)
    CHECK-SAME: rounding = ["norm_input_f32", "residual_out_f32"]
    CHECK-SAME: weight_bias = 1
    CHECK: %vc = cast(%v) {to = f16}
    CHECK: return %yc, %v, %vc
  )");
  EXPECT_EQ(c.after->FindValue("v")->type().ToString(), "f32[T, 64]");
}

TEST(PassesCanonicalize, AnF32ResidualOperandIsTheResidualStreamInF32) {
  Compiled c = Canonicalize(R"(
    func @f(%x: bf16[T, 64], %res: f32[T, 64], %g: bf16[64]) {
      %xf = cast(%x) {to = f32}
      %v = add(%res, %xf)
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %y = mul(%n, %g)
      %yc = cast(%y) {to = bf16}
      return %yc, %v
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %yc, %v = fused_add_rms_norm(%x, %res, %g)
    CHECK-SAME: rounding = ["norm_input_f32", "residual_out_f32"]
    CHECK: return %yc, %v
  )");
}

TEST(PassesCanonicalize, AnF32ResidualOnATargetWithoutOneDeclinesAndSaysWhy) {
  PassManager canonicalize;
  canonicalize.Add(MakeCanonicalizePass());
  PassContext without;
  without.caps.residual_f32 = false;
  Compiled c = Compile(kF32ResidualSum, without, &canonicalize);
  ASSERT_TRUE(c.ok());
  // Declined at each node the form may end at: the weight multiply and the cast after it.
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: the f32 residual sum %v is also read by the return: the target's "
                    "fused op gives the residual only rounded to f16"),
            2)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "fused_add_rms_norm") + CountOp(*c.after, "rms_norm"), 0);
}

// A norm returned in f32 (FlashInfer's fusion tests' reference: the weight multiply's f32 product
// with no cast back) folds with rounding norm_out_f32, its result f32; a cast back to 16 bits
// that other readers share stays a cast of that result. With the weight multiply after a cast
// of n to bf16 the folded norm rounds n first (weight_after_round). A target without an f32 norm
// output (FusionCapabilities::norm_out_f32 off) leaves it as written and says why.
constexpr std::string_view kF32NormOutput = R"(
    func @f(%x: bf16[T, 64], %res: bf16[T, 64], %g: bf16[64], %x2: bf16[T, 64]) {
      %xf = cast(%x) {to = f32}
      %rf = cast(%res) {to = f32}
      %v = add(%xf, %rf)
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-3}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %gf = cast(%g) {to = f32}
      %w1 = add(%gf) {scalar = 1}
      %y = mul(%w1, %n)
      %yc = cast(%y) {to = bf16}
      %x2f = cast(%x2) {to = f32}
      %sq2 = pow(%x2f) {exponent = 2}
      %m2 = mean(%sq2) {dim = -1, keepdim = true}
      %me2 = add(%m2) {scalar = 1e-6}
      %r2 = rsqrt(%me2)
      %n2 = mul(%x2f, %r2)
      %n2c = cast(%n2) {to = bf16}
      %y2 = mul(%n2c, %gf)
      return %y, %v, %yc, %y2
    }
  )";

TEST(PassesCanonicalize, ANormReturnedInF32FoldsWithItsOutputUnrounded) {
  Compiled c = Canonicalize(kF32NormOutput);
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %v = fused_add_rms_norm(%x, %res, %g)
    CHECK-SAME: rounding = ["norm_input_f32", "residual_out_f32", "norm_out_f32"]
    CHECK-SAME: weight_bias = 1
    CHECK: %yc = cast(%y) {to = bf16}
    CHECK: %y2 = rms_norm(%x2, %g)
    CHECK-SAME: rounding = ["weight_after_round", "norm_out_f32"]
    CHECK: return %y, %v, %yc, %y2
  )");
  EXPECT_EQ(c.after->FindValue("y")->type().ToString(), "f32[T, 64]");
  EXPECT_EQ(c.after->FindValue("y2")->type().ToString(), "f32[T, 64]");
}

TEST(PassesCanonicalize, AnF32NormOutputOnATargetWithoutOneDeclinesAndSaysWhy) {
  PassManager canonicalize;
  canonicalize.Add(MakeCanonicalizePass());
  PassContext without;
  without.caps.norm_out_f32 = false;
  Compiled c = Compile(kF32NormOutput, without, &canonicalize);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: the norm's result %y is f32: the target's fused op and norm kernels "
                    "give it in the activation dtype, bf16"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "fused_add_rms_norm") + CountOp(*c.after, "rms_norm"), 0);
}

// A norm of an f32 value that is neither a cast of a 16-bit one nor vLLM's f32 sum (here a
// difference of two casts) stays as written: rms_norm and the fused op take bf16 or f16
// activations, and an rms_norm of f32 would leave a graph no backend runs. It says so, and the
// graph still runs.
TEST(PassesCanonicalize, ANormOfAnF32ValueStaysAndSaysWhy) {
  Compiled c = Canonicalize(R"(
    func @f(%x: f16[T, 64], %res: f16[T, 64], %g: f16[64]) {
      %xf = cast(%x) {to = f32}
      %rf = cast(%res) {to = f32}
      %v = sub(%xf, %rf)
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %gf = cast(%g) {to = f32}
      %nw = mul(%gf, %n)
      %y = cast(%nw) {to = f16}
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: the norm's input %v is f32: rms_norm and the fused op take bf16 or "
                    "f16 activations"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "fused_add_rms_norm") + CountOp(*c.after, "rms_norm"), 0);
  ExpectSameOutputs(c);
}

// Gemma 4's norm writes rsqrt as pow(., -0.5): the one exponent that is rsqrt folds (also
// written as an f32 reads it), 0.5 and -0.25 stay, and the values are the same bits.
TEST(PassesCanonicalize, PowOfMinusOneHalfIsRsqrt) {
  Compiled c = Canonicalize(R"(
    func @f(%a: f32[T, 64], %b: bf16[T, 64]) {
      %ra = pow(%a) {exponent = -0.5}
      %rb = pow(%b) {exponent = -0.50000000001}
      %sa = pow(%a) {exponent = 0.5}
      %qa = pow(%a) {exponent = -0.25}
      return %ra, %rb, %sa, %qa
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %ra = rsqrt(%a)
    CHECK: %rb = rsqrt(%b)
    CHECK: %sa = pow(%a) {exponent = 0.5}
    CHECK: %qa = pow(%a) {exponent = -0.25}
  )");
  ExpectSameOutputs(c);
}

// ---------------------------------------------------------------- dynamic FP8 quant

// The per-token quant in torch ops, with the two scale steps: y / s and y * s.reciprocal().
TEST(PassesCanonicalize, DynamicTokenQuantFoldsToQuantFp8) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256], %b: bf16[T, 256]) {
      %af = cast(%a) {to = f32}
      %aa = abs(%af)
      %am = amax(%aa) {dim = -1, keepdim = true}
      %ac = clamp(%am) {min = 1e-10}
      %sa = div(%ac) {scalar = 448}
      %da = div(%af, %sa)
      %ca = clamp(%da) {min = -448, max = 448}
      %qa = cast(%ca) {to = f8e4m3}
      %bf = cast(%b) {to = f32}
      %ba = abs(%bf)
      %bm = amax(%ba) {dim = -1, keepdim = true}
      %bc = clamp(%bm) {min = 1e-10}
      %sb = div(%bc) {scalar = 448}
      %ib = reciprocal(%sb)
      %db = mul(%bf, %ib)
      %qb = cast(%db) {to = f8e4m3}
      return %qa, %sa, %qb, %sb
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 2);
  FileCheck(Print(*c.after), R"(
    CHECK: %qa, %sa = quant_fp8(%a) {mode = "token"}
    CHECK: %qb, %sb = quant_fp8(%b) {mode = "token", rounding = ["scale_op_swapped"]}
    CHECK: return %qa, %sa, %qb, %sb
  )");
  EXPECT_EQ(c.after->num_nodes(), 2) << Print(*c.after);
  ExpectSameOutputs(c);
}

// One row (a decode step of batch 1): the per-token scale has one element, and the static
// per-tensor form, whose scale may be any one-element value, matches it too. The per-token fold
// comes first: a tensor-mode quant_fp8 would read a scale computed from its own input.
TEST(PassesCanonicalize, DynamicTokenQuantOfOneRowFoldsAsPerToken) {
  Compiled c = Canonicalize(R"(
    func @f(%b: bf16[1, 256]) {
      %bf = cast(%b) {to = f32}
      %ba = abs(%bf)
      %bm = amax(%ba) {dim = -1, keepdim = true}
      %sd = div(%bm) {scalar = 448}
      %sb = clamp(%sd) {min = 4.359654017857143e-06}
      %ib = reciprocal(%sb)
      %db = mul(%bf, %ib)
      %cb = clamp(%db) {min = -448, max = 448}
      %qb = cast(%cb) {to = f8e4m3}
      return %qb, %sb
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1) << DescribeReport(c.ctx);
  EXPECT_EQ(Counter(c.ctx, "decomposed_static_quant", "applied"), 0) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %qb, %sb = quant_fp8(%b) {mode = "token", rounding = ["scale_op_swapped", "scale_floor_after_div"]}
    CHECK: return %qb, %sb
  )");
  ExpectSameOutputs(c);
}

// Per group of 128 with UE8M0 scales: the view to [T, H/g, g] before or after the cast; the
// views of q and s back to [T, H] and [T, H/g] cancel the ones the rewrite adds. The graph
// views s before it computes q: quant_fp8 goes before that first use.
TEST(PassesCanonicalize, DynamicGroupQuantUe8m0FoldsToQuantFp8) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256]) {
      %av = view(%a) {shape = [T, 2, 128]}
      %d = cast(%av) {to = f32}
      %ab = abs(%d)
      %am = amax(%ab) {dim = -1, keepdim = true}
      %ac = clamp(%am) {min = 1e-10}
      %s0 = div(%ac) {scalar = 448}
      %lg = log2(%s0)
      %ce = ceil(%lg)
      %s = exp2(%ce)
      %s2 = view(%s) {shape = [T, 2]}
      %dq = div(%d, %s)
      %c = clamp(%dq) {min = -448, max = 448}
      %q3 = cast(%c) {to = f8e4m3}
      %q = view(%q3) {shape = [T, 256]}
      return %q, %s2
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1);
  FileCheck(Print(*c.after), R"(
    CHECK: = quant_fp8(%a) {group_size = 128, mode = "group", scale_fmt = "ue8m0"}
  )");
  EXPECT_EQ(c.after->num_nodes(), 1) << Print(*c.after);
  ExpectSameOutputs(c);
}

// A per-token quant whose scale step is `text` (what follows `%ac` = clamp(amax, 1e-10)).
std::string DynamicQuantWithScale(const std::string& scale_defs) {
  return "func @f(%a: bf16[T, 256]) {\n"
         "  %af = cast(%a) {to = f32}\n"
         "  %aa = abs(%af)\n"
         "  %am = amax(%aa) {dim = -1, keepdim = true}\n" +
         scale_defs +
         "  %da = div(%af, %s)\n"
         "  %ca = clamp(%da) {min = -448, max = 448}\n"
         "  %qa = cast(%ca) {to = f8e4m3}\n"
         "  return %qa, %s\n"
         "}\n";
}

// amax * (1/448) does not fold: the fused quant computes the IEEE quotient amax / 448, and the
// f32 constant 1/448 is not 1/448, so the two scales differ for some amax (found below).
TEST(PassesCanonicalize, DynamicQuantDeclinesAScaleTimesTheReciprocalOf448) {
  Compiled c = Canonicalize(DynamicQuantWithScale(
      "  %ac = clamp(%am) {min = 1e-10}\n"
      "  %s = mul(%ac) {scalar = 0.002232142857142857}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant",
                    "declined: the scale is amax * (1/448): the fused quant divides amax / 448, "
                    "which rounds differently for some amax"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0);
  EXPECT_EQ(CountOp(*c.after, "amax"), 1);
  // The reason is true: some bf16 amax gives another scale.
  int differ = 0;
  for (uint32_t bits = 0; bits < 0x7F80; ++bits) {
    const float amax = std::fmax(Bf16ToFloat(uint16_t(bits)), 1e-10f);
    differ += amax / 448.0f != amax * float(1.0 / 448.0);
  }
  EXPECT_GT(differ, 0);
}

// The amax's last dim named by its index (dim = 1 of a rank-2 value) is the same reduction.
TEST(PassesCanonicalize, DynamicQuantWithTheLastDimByIndexFolds) {
  std::string text = DynamicQuantWithScale(
      "  %ac = clamp(%am) {min = 1e-10}\n"
      "  %s = div(%ac) {scalar = 448}\n");
  const std::string last = "{dim = -1, keepdim = true}";
  text.replace(text.find(last), last.size(), "{dim = 1, keepdim = true}");
  Compiled c = Canonicalize(text);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1) << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "amax"), 0) << Print(*c.after);
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, DynamicQuantDeclinesAnotherAmaxFloor) {
  Compiled c = Canonicalize(DynamicQuantWithScale(
      "  %ac = clamp(%am) {min = 1e-12}\n"
      "  %s = div(%ac) {scalar = 448}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant",
                    "declined: the amax floor is not clamp(min = 1e-10), the fused quant's"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0);
}

TEST(PassesCanonicalize, DynamicQuantDeclinesAnotherDivisor) {
  Compiled c = Canonicalize(DynamicQuantWithScale(
      "  %ac = clamp(%am) {min = 1e-10}\n"
      "  %s = div(%ac) {scalar = 127}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "declined: the scale is not amax / 448"), 1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0);
}

// The floor after the division (vLLM's QuantFP8 torch forms): s = clamp(amax / 448, min =
// 1 / (448 * 512)) folds with rounding scale_floor_after_div, the amax on f32 or on the bf16 y;
// another floor there, or a floor after the power-of-two rounding, is declined with the reason.
TEST(PassesCanonicalize, DynamicQuantWithTheFloorAfterTheDivisionFolds) {
  Compiled c = Canonicalize(DynamicQuantWithScale(
      "  %sd = div(%am) {scalar = 448}\n"
      "  %s = clamp(%sd) {min = 4.359654017857143e-06}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %qa, %s = quant_fp8(%a) {mode = "token", rounding = ["scale_floor_after_div"]}
  )");
  ExpectSameOutputs(c);
}

// vLLM's per-group kernel's UE8M0: exp2(ceil(log2(max(|s|, 1e-10)))), rounding ue8m0_floor.
TEST(PassesCanonicalize, DynamicQuantUe8m0OfTheFlooredScaleFolds) {
  // With and without the abs, with and without the floor before the division (which changes
  // nothing under this floor: both give 1e-10 for every amax below 4.48e-8).
  for (const std::string abs : {"", "  %sa = abs(%sd)\n"})
  for (const std::string before : {"  %ac = clamp(%am) {min = 1e-10}\n"
                                   "  %sd = div(%ac) {scalar = 448}\n",
                                   "  %sd = div(%am) {scalar = 448}\n"}) {
    const std::string floored = abs.empty() ? "%sd" : "%sa";
    Compiled c = Canonicalize(DynamicQuantWithScale(
        before + abs +
        "  %sc = clamp(" + floored + ") {min = 1e-10}\n"
        "  %lg = log2(%sc)\n"
        "  %ce = ceil(%lg)\n"
        "  %s = exp2(%ce)\n"));
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1) << DescribeReport(c.ctx);
    FileCheck(Print(*c.after), R"(
      CHECK: %qa, %s = quant_fp8(%a) {mode = "token", rounding = ["ue8m0_floor"], scale_fmt = "ue8m0"}
    )");
    ExpectSameOutputs(c);
  }
}

// vLLM's QuantFP8 UE8M0 form (_quantize_group_native with use_ue8m0): the quotient rounded up to
// a power of two, then floored, exp2(ceil(log2(amax / 448))).clamp(min = 1 / (448 * 512)): ue8m0
// scales with rounding scale_floor_after_div, by division and by the reciprocal, with and
// without the amax floored at 1e-10 before the division (which changes nothing). Bitwise the
// graph's own ops on rows whose amaxes lie about the floor's 448 * 2^-18 (scales of the floor,
// no power of two, and of 2^-17), a zero row, and rows with inf and NaN.
TEST(PassesCanonicalize, DynamicQuantUe8m0FlooredAfterTheRoundingFolds) {
  const auto poke = [](runtime::TensorMap& in) {
    HostTensor& a = in.at("a");
    const int64_t rows = a.dim(0);
    const float amaxes[] = {0.0f, 1e-3f, 1.8e-3f, 0x1p-9f, INFINITY,
                            std::numeric_limits<float>::quiet_NaN()};
    for (int64_t row = 0; row < rows && row < 6; ++row)
      for (int64_t col = 0; col < 256; ++col)
        a.SetF32(row * 256 + col, col == 7                     ? amaxes[row]
                                  : std::isfinite(amaxes[row]) ? amaxes[row] * float(col % 5) / 8.0f
                                                               : 0.5f);
  };
  for (const bool amax_floor : {false, true})
  for (const bool reciprocal : {false, true}) {
    SCOPED_TRACE(StrCat(reciprocal ? "y * (1 / s)" : "y / s",
                        amax_floor ? ", the amax floored at 1e-10 first" : ""));
    std::string text = DynamicQuantWithScale(
        std::string(amax_floor ? "  %ac = clamp(%am) {min = 1e-10}\n"
                                 "  %sd = div(%ac) {scalar = 448}\n"
                               : "  %sd = div(%am) {scalar = 448}\n") +
        "  %lg = log2(%sd)\n"
        "  %ce = ceil(%lg)\n"
        "  %ex = exp2(%ce)\n"
        "  %s = clamp(%ex) {min = 4.359654017857143e-06}\n");
    if (reciprocal) {
      const std::string div = "  %da = div(%af, %s)\n";
      text.replace(text.find(div), div.size(), "  %is = reciprocal(%s)\n  %da = mul(%af, %is)\n");
    }
    Compiled c = Canonicalize(text);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1) << DescribeReport(c.ctx);
    FileCheck(Print(*c.after), reciprocal ? R"(
      CHECK: %qa, %s = quant_fp8(%a) {mode = "token", rounding = ["scale_op_swapped", "scale_floor_after_div"], scale_fmt = "ue8m0"}
    )" : R"(
      CHECK: %qa, %s = quant_fp8(%a) {mode = "token", rounding = ["scale_floor_after_div"], scale_fmt = "ue8m0"}
    )");
    for (const char* op : {"log2", "exp2", "clamp", "amax"})
      EXPECT_EQ(CountOp(*c.after, op), 0) << op << "\n" << Print(*c.after);
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {6, 9}, {3, 5}, poke);
    // The rows' scales: the floor for amaxes 0 and 1e-3; 2^-17 for 1.8e-3 (whose quotient lies
    // below the floor) and for 2^-9 (whose quotient is the floor itself); inf; NaN.
    std::unique_ptr<runtime::Executor> cpu = runtime::MakeCpuExecutor(1);
    StatusOr<std::vector<runtime::TensorMap>> inputs = runtime::MakeRandomInputs(*c.after, 1, 6, 1);
    ASSERT_TRUE(inputs.ok());
    poke((*inputs)[0]);
    StatusOr<runtime::RankOutputs> out = cpu->Run(*c.after, *inputs);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    const HostTensor& s = (*out)[0][1];
    EXPECT_EQ(s.GetF32(0), kScaleFloorAfterDiv);
    EXPECT_EQ(s.GetF32(1), kScaleFloorAfterDiv);
    EXPECT_EQ(s.GetF32(2), 0x1p-17f);
    EXPECT_EQ(s.GetF32(3), 0x1p-17f);
    EXPECT_EQ(s.GetF32(4), INFINITY);
    EXPECT_TRUE(std::isnan(s.GetF32(5)));
  }
}

TEST(PassesCanonicalize, DynamicQuantWithTheAmaxOfTheHalfInputFolds) {
  // vLLM's per-token form: y.abs().max(dim=-1) (no keepdim), unsqueeze(-1), .to(f32); and its
  // per-group form: the bf16 group view's amax with keepdim, .float(), the bf16 view / s.
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256], %b: bf16[2, 3, 256]) {
      %aa = abs(%a)
      %am = amax(%aa) {dim = -1, keepdim = false}
      %au = view(%am) {shape = [T, 1]}
      %af = cast(%au) {to = f32}
      %sd = div(%af) {scalar = 448}
      %sa = clamp(%sd) {min = 4.359654017857143e-06}
      %ad = cast(%a) {to = f32}
      %ia = reciprocal(%sa)
      %da = mul(%ad, %ia)
      %ca = clamp(%da) {min = -448, max = 448}
      %qa = cast(%ca) {to = f8e4m3}
      %bg = view(%b) {shape = [6, 2, 128]}
      %ba = abs(%bg)
      %bm = amax(%ba) {dim = -1, keepdim = true}
      %bf = cast(%bm) {to = f32}
      %sbd = div(%bf) {scalar = 448}
      %sb = clamp(%sbd) {min = 4.359654017857143e-06}
      %db = div(%bg, %sb)
      %cb = clamp(%db) {min = -448, max = 448}
      %qb = cast(%cb) {to = f8e4m3}
      return %qa, %sa, %qb, %sb
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 2) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %qa, %sa = quant_fp8(%a) {mode = "token", rounding = ["scale_op_swapped", "scale_floor_after_div"]}
    CHECK: = quant_fp8(%b.rows) {group_size = 128, mode = "group", rounding = ["scale_floor_after_div"]}
  )");
  for (const char* op : {"abs", "amax", "clamp", "div", "reciprocal"})
    EXPECT_EQ(CountOp(*c.after, op), 0) << op << "\n" << Print(*c.after);
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, DynamicQuantDeclinesOtherFloorsAfterTheDivision) {
  const struct {
    const char* scale;   // what follows %am = amax(...) and defines %s
    const char* reason;
  } cases[] = {
      {"  %sd = div(%am) {scalar = 448}\n"
       "  %s = clamp(%sd) {min = 1e-10}\n",
       "the scale's floor after the division is not clamp(min = 1 / (448 * 512)), the fused quant's"},
      // A floor after the division, then the rounding: not a scale the fused op makes (vLLM's
      // form rounds first: DynamicQuantUe8m0FlooredAfterTheRoundingFolds).
      {"  %sd = div(%am) {scalar = 448}\n"
       "  %sc = clamp(%sd) {min = 4.359654017857143e-06}\n"
       "  %lg = log2(%sc)\n"
       "  %ce = ceil(%lg)\n"
       "  %s = exp2(%ce)\n",
       "the scale is floored after the division and then rounded to a power of two: the fused "
       "quant floors such scales before the division or after the rounding"},
      // Floored both before and after the rounding.
      {"  %sd = div(%am) {scalar = 448}\n"
       "  %sc = clamp(%sd) {min = 4.359654017857143e-06}\n"
       "  %lg = log2(%sc)\n"
       "  %ce = ceil(%lg)\n"
       "  %ex = exp2(%ce)\n"
       "  %s = clamp(%ex) {min = 4.359654017857143e-06}\n",
       "the scale is floored both before and after its power-of-two rounding"},
      // The floor after the rounding that is not 1 / (448 * 512).
      {"  %sd = div(%am) {scalar = 448}\n"
       "  %lg = log2(%sd)\n"
       "  %ce = ceil(%lg)\n"
       "  %ex = exp2(%ce)\n"
       "  %s = clamp(%ex) {min = 1e-10}\n",
       "the scale's floor after the division is not clamp(min = 1 / (448 * 512)), the fused quant's"},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.reason);
    Compiled c = Canonicalize(DynamicQuantWithScale(k.scale));
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", std::string("declined: ") + k.reason), 1)
        << DescribeReport(c.ctx);
    EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0) << Print(*c.after);
  }
  // A scale computed in bf16 (the amax divided and floored in bf16, the division promoting it)
  // rounds differently.
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256]) {
      %aa = abs(%a)
      %am = amax(%aa) {dim = -1, keepdim = true}
      %sd = div(%am) {scalar = 448}
      %s = clamp(%sd) {min = 4.359654017857143e-06}
      %ad = cast(%a) {to = f32}
      %da = div(%ad, %s)
      %qa = cast(%da) {to = f8e4m3}
      return %qa, %s
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "declined: the scale is computed in bf16, not f32"),
            1)
      << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0) << Print(*c.after);
}

// UE8M0 written as exp2(ceil(log2(s))) is the kernels' bitwise round-up to a power of two for
// every scale s = max(amax, 1e-10) / 448 that a bf16 or f16 activation gives (all of them,
// checked here on the oracle's ops). Why it holds: amax = M * 2^e with M < 2^11, so s is a power
// of two exactly when M / 7 is, and otherwise lies at least 1/1792 (relative) away from one:
// log2(s) is then >= 5e-4 from an integer, far more than any f32 log2 error at |log2(s)| < 150,
// and at an exact power of two log2 returns the integer. torch's CPU log2 / exp2 agree on the
// same exhaustive set (python/tests/test_ue8m0_torch.py).
TEST(PassesCanonicalize, Ue8m0AsExp2CeilLog2IsTheKernelsRoundUp) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    HostTensor amax(DType::kF32, {0x10000});
    int64_t n = 0;
    for (uint32_t bits = 0; bits < 0x10000; ++bits) {
      const float v = dtype == DType::kBF16 ? Bf16ToFloat(uint16_t(bits)) : F16ToFloat(uint16_t(bits));
      if (std::isfinite(v) && v >= 0.0f) amax.SetF32(n++, std::fmax(v, 1e-10f));
    }
    HostTensor s = cpu::BinaryScalar(cpu::BinaryOp::kDiv, amax, 448.0f, DType::kF32);
    HostTensor p = cpu::Unary(
        cpu::UnaryOp::kExp2,
        cpu::Unary(cpu::UnaryOp::kCeil, cpu::Unary(cpu::UnaryOp::kLog2, s, DType::kF32), DType::kF32),
        DType::kF32);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(p.GetF32(i), RoundUpToPowerOfTwo(s.GetF32(i)))
          << DTypeName(dtype) << " amax " << amax.GetF32(i);
    }
  }
}

// ---------------------------------------------------------------- add order and views

// fused_add_rms_norm(%res, %ar, %g) -> fused_add_rms_norm(%ar, %res, %g): the add order's one
// home is here, and the fusion looks for the all_reduce as x only.
TEST(PassesCanonicalize, FusedAddRmsNormOperandOrder) {
  Compiled c = Canonicalize(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%res, %ar, %g) {eps = 1e-6}
      return %y, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "add_operand_order", "applied"), 1);
  FileCheck(Print(*c.after), "CHECK: %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-06}");
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, SwappedAddOperands) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%res, %ar)
      %y = rms_norm(%h, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "add_operand_order", "applied"), 1);
  FileCheck(Print(*c.after), "CHECK: %h, %q, %s = allreduce_rmsnorm(%x, %res, %g)");
  ExpectSameOutputs(c);
}

// The residual stream of the next layer (a computed value) against a parameter: the computed
// one is the activation and goes first; two parameters keep their order.
TEST(PassesCanonicalize, AddOrderPutsTheActivationFirst) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256], %b: bf16[T, 256], %g: bf16[256]) {
      %n = rms_norm(%a, %g) {eps = 1e-6}
      %h1 = add(%b, %n)
      %h2 = add(%b, %a)
      return %h1, %h2
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %h1 = add(%n, %b)
    CHECK: %h2 = add(%b, %a)
  )");
}

// The all_reduce ran on [T, 2, 128] and a view made it [T, 256]: the view moves before the
// all_reduce (which is elementwise) and the chain fuses.
TEST(PassesCanonicalize, ViewAfterAllReduceMovesBeforeIt) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 2, 128], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %v = view(%ar) {shape = [T, 256]}
      %y, %r = fused_add_rms_norm(%v, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
      return %q, %s, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "view_before_all_reduce", "applied"), 1);
  FileCheck(Print(*c.after), R"(
    CHECK: %x.view = view(%x) {shape = [T, 256]}
    CHECK: %r, %q, %s = allreduce_rmsnorm(%x.view, %res, %g)
  )");
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, NoOpViewsBetweenTheOpsDisappear) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %v0 = view(%ar) {shape = [T, 256]}
      %h = add(%v0, %res)
      %v1 = view(%h) {shape = [T, 256]}
      %y = rms_norm(%v1, %g) {eps = 1e-6}
      %v2 = view(%y) {shape = [T, 2, 128]}
      %v3 = view(%v2) {shape = [T, 256]}
      %q, %s = quant_fp8(%v3) {mode = "group", group_size = 128}
      return %q, %s, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "view"), 0) << Print(*c.after);
  EXPECT_EQ(Counter(c.ctx, "view_of_view", "applied"), 1);
  FileCheck(Print(*c.after), R"(
    CHECK: %h, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["residual", "quant"]
  )");
  ExpectSameOutputs(c);
}

// The all_reduce result is also returned: moving the view would need a second all_reduce.
TEST(PassesCanonicalize, ViewDoesNotMoveWhenTheAllReduceHasOtherUses) {
  Compiled c = Canonicalize(R"(
    func @f(%x: bf16[T, 2, 128]) {
      %ar = all_reduce(%x)
      %v = view(%ar) {shape = [T, 256]}
      return %v, %ar
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c.changed);
  EXPECT_EQ(Print(*c.after), Print(*c.before));
}

// The sum's other uses are taken over by residual_out, and the fused node goes before the
// first of them.
TEST(PassesCanonicalize, AddRmsNormKeepsTheSumsOtherUses) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256], %b: bf16[T, 256], %g: bf16[256], %w: bf16[256, 64]) {
      %h = add(%a, %b)
      %o = matmul(%h, %w)
      %y = rms_norm(%h, %g) {eps = 1e-6}
      return %y, %o, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %h = fused_add_rms_norm(%a, %b, %g) {eps = 1e-06}
    CHECK: %o = matmul(%h, %w)
    CHECK: return %y, %o, %h
  )");
  ExpectSameOutputs(c);
}

// ---------------------------------------------------------------- does not fire

// One layer whose norm is decomposed; `edit` changes it into a form that must not fold.
std::string DecomposedWith(const std::string& from, const std::string& to) {
  std::string text = DecomposedRmsNormLayer(kRmsForms[0]);
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(PassesCanonicalize, RmsNormDoesNotFireWhenAnIntermediateHasAnotherUse) {
  Compiled c = Compile(DecomposedWith("return %q, %s, %h", "return %q, %s, %h, %rs"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rms_norm") + CountOp(*c.after, "fused_add_rms_norm"), 0);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm", "declined: an intermediate value has other uses"),
            1);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm", "applied"), 0);
  // And the all_reduce says what it saw instead: an RMSNorm it reaches but cannot take over.
  const std::string reason = OnlyRejection(c.ctx);
  EXPECT_NE(reason.find("all_reduce %ar reaches the rsqrt %rs"), std::string::npos) << reason;
  EXPECT_EQ(reason.find("not followed by"), std::string::npos) << reason;
  // With the canonicalizer's own reason for leaving the norm.
  EXPECT_NE(reason.find("RMSNorm that stays as written (an intermediate value has other uses)"),
            std::string::npos)
      << reason;
}

// The norm reads x itself: the widening cast of x stays for its other use.
TEST(PassesCanonicalize, RmsNormFoldsWhenTheInputCastHasAnotherUseAndTheCastStays) {
  Compiled c = Compile(DecomposedWith("return %q, %s, %h", "return %q, %s, %h, %v"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 0) << Print(*c.after);
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: allreduce_rmsnorm(%x, %res, %g)
    CHECK: %v = cast(%h) {to = f32}
    CHECK: return %q, %s, %h, %v
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {1, 7});
}

TEST(PassesCanonicalize, RmsNormDoesNotFireForATensorEps) {
  std::string text = DecomposedWith("%ve = add(%var) {scalar = 1e-6}", "%ve = add(%var, %eps)");
  text.replace(text.find("%g: bf16[256]"), 13, "%g: bf16[256], %eps: f32[]");
  Compiled c = Compile(text);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 1);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: eps is not a scalar attribute of the add"),
            1);
}

// An eps the front end kept opaque with a reason (a Python float torch.compile passed as a tensor
// input): the decline carries the reason.
TEST(PassesCanonicalize, RmsNormDeclinesATensorEpsWithTheFrontEndsReason) {
  std::string text = DecomposedWith(
      "%ve = add(%var) {scalar = 1e-6}",
      "%e32 = opaque(%eps) {name = \"prims.convert_element_type.default\", why = \"a graph input\"} : f32[]\n"
      "  %ve = add(%var, %e32)");
  text.replace(text.find("%g: bf16[256]"), 13, "%g: bf16[256], %eps: f32[]");
  Compiled c = Compile(text);
  ASSERT_TRUE(c.ok()) << c.status.message();
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 1);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: eps is not a scalar attribute of the add: a graph input"),
            1);
}

TEST(PassesCanonicalize, RmsNormDoesNotFireForEpsAddedAfterTheRsqrt) {
  Compiled c = Compile(DecomposedWith(
      "  %ve = add(%var) {scalar = 1e-6}\n  %rs = rsqrt(%ve)\n",
      "  %rv = rsqrt(%var)\n  %rs = add(%rv) {scalar = 1e-6}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 1);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm", "applied"), 0);
}

TEST(PassesCanonicalize, RmsNormDoesNotFireForEpsAddedBeforeTheMean) {
  Compiled c = Compile(DecomposedWith(
      "  %var = mean(%sq) {dim = -1, keepdim = true}\n  %ve = add(%var) {scalar = 1e-6}\n",
      "  %sqe = add(%sq) {scalar = 1e-6}\n  %ve = mean(%sqe) {dim = -1, keepdim = true}\n"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 1);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm", "applied"), 0);
}

TEST(PassesCanonicalize, RmsNormDoesNotFireForAnotherPower) {
  Compiled c = Compile(DecomposedWith("{exponent = 2}", "{exponent = 3}"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 1);
}

// Without keepdim the mean is [T] and the broadcast multiplies it along the wrong axis (the
// shapes are square so the graph type-checks): not an RMSNorm.
TEST(PassesCanonicalize, RmsNormDoesNotFireForTheWrongReductionAxis) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[128, 128], %g: bf16[128]) {
      %v = cast(%x) {to = f32}
      %sq = pow(%v) {exponent = 2}
      %var = mean(%sq) {dim = -1, keepdim = false}
      %ve = add(%var) {scalar = 1e-6}
      %rs = rsqrt(%ve)
      %n = mul(%v, %rs)
      %nb = cast(%n) {to = bf16}
      %y = mul(%nb, %g)
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "rms_norm"), 0);
  EXPECT_EQ(Counter(c.ctx, "decomposed_rms_norm",
                    "declined: mean is not over the last dim with keepdim = true"),
            1);
}

// A norm that stays in f32 (no cast back) is rms_norm of bf16 x with its output unrounded (rounding
// norm_out_f32), not rms_norm's default bf16 result.
TEST(PassesCanonicalize, ANormThatStaysInF32FoldsWithItsOutputInF32) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %g: f32[256]) {
      %v = cast(%x) {to = f32}
      %sq = pow(%v) {exponent = 2}
      %var = mean(%sq) {dim = -1, keepdim = true}
      %ve = add(%var) {scalar = 1e-6}
      %rs = rsqrt(%ve)
      %n = mul(%v, %rs)
      %y = mul(%n, %g)
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y = rms_norm(%x, %g) {eps = 1e-06, rounding = ["norm_out_f32"]}
    CHECK: return %y
  )");
  EXPECT_EQ(c.after->FindValue("y")->type().ToString(), "f32[T, 256]");
}

TEST(PassesCanonicalize, StaticQuantDoesNotFireForOtherClampBounds) {
  Compiled narrow = Compile([] {
    std::string t = StaticQuantLayer({"", "  %d = div(%y, %scale)\n", true, ""});
    t.replace(t.find("min = -448, max = 448"), 21, "min = -240, max = 240");
    return t;
  }());
  ASSERT_TRUE(narrow.ok());
  EXPECT_EQ(Counter(narrow.ctx, "decomposed_static_quant",
                    "declined: the clamp bounds are not the FP8 e4m3 range +-448"),
            1);
  // The norm still fuses; the quant reads its emitted output (widened for the division, the
  // IR's promotion written out).
  FileCheck(Print(*narrow.after), R"(
    CHECK: %y, %r = allreduce_rmsnorm(%x, %res, %g)
    CHECK: %y.f32 = cast(%y) {to = f32}
    CHECK: %d = div(%y.f32, %scale)
    CHECK: %q = cast(%c) {to = f8e4m3}
  )");
  ExpectSameOutputs(narrow);
}

// ---------------------------------------------------------------- clamp pairs

// ---------------------------------------------------------------- casts and twins

// Arithmetic on two dtypes reads explicit casts to f32 (the IR's promotion written out), which
// computes the same bits.
TEST(PassesCanonicalize, MixedDtypeArithmeticReadsExplicitCasts) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 64], %b: f32[T, 64], %h: f16[T, 64], %g: bf16[64]) {
      %s = add(%a, %b)
      %p = mul(%b, %g)
      %m = sub(%a, %h)
      %same = div(%a, %g)
      return %s, %p, %m, %same
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "explicit_promotion", "applied"), 3) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %a.f32 = cast(%a) {to = f32}
    CHECK: %s = add(%a.f32, %b)
    CHECK: %g.f32 = cast(%g) {to = f32}
    CHECK: %p = mul(%b, %g.f32)
    CHECK: %h.f32 = cast(%h) {to = f32}
    CHECK: %m = sub(%a.f32, %h.f32)
    CHECK: %same = div(%a, %g)
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 1, {1, 5}, {1, 2});
}

// cast(cast(x, f32), x's dtype) is x; a cast to another 16-bit type is no round trip.
TEST(PassesCanonicalize, AWideningRoundTripIsTheValueItself) {
  Compiled c = Canonicalize(R"(
    func @f(%x: bf16[T, 64]) {
      %w = cast(%x) {to = f32}
      %back = cast(%w) {to = bf16}
      %other = cast(%w) {to = f16}
      return %back, %other
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "widening_round_trip", "applied"), 1) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %w = cast(%x) {to = f32}
    CHECK: %other = cast(%w) {to = f16}
    CHECK: return %x, %other
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 1, {1, 5}, {1, 2});
}

// Twin computations merge into the first; all_reduces, views and ops with other attributes or
// operands do not.
TEST(PassesCanonicalize, TwinComputationsMergeButNotCollectivesOrViews) {
  Compiled c = Canonicalize(R"(
    func @f(%x: bf16[T, 64], %z: bf16[T, 64]) {
      %a1 = all_reduce(%x)
      %a2 = all_reduce(%x)
      %c1 = cast(%x) {to = f32}
      %c2 = cast(%x) {to = f32}
      %c3 = cast(%z) {to = f32}
      %v1 = view(%x) {shape = [T, 2, 32]}
      %v2 = view(%x) {shape = [T, 2, 32]}
      %m1 = mul(%c1) {scalar = 2}
      %m2 = mul(%c2) {scalar = 2}
      %m3 = mul(%c2) {scalar = 3}
      return %a1, %a2, %m1, %m2, %m3, %c3, %v1, %v2
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "common_subexpression", "applied"), 2) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %a1 = all_reduce(%x)
    CHECK: %a2 = all_reduce(%x)
    CHECK: %c1 = cast(%x) {to = f32}
    CHECK: %c3 = cast(%z) {to = f32}
    CHECK: %v1 = view(%x)
    CHECK: %v2 = view(%x)
    CHECK: %m1 = mul(%c1) {scalar = 2}
    CHECK: %m3 = mul(%c1) {scalar = 3}
    CHECK: return %a1, %a2, %m1, %m1, %m3, %c3, %v1, %v2
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5}, {1, 2});
}

// A view between the clamp and the cast to FP8 moves after the cast.
TEST(PassesCanonicalize, AViewBeforeTheCastToFp8MovesAfterIt) {
  Compiled c = Canonicalize(R"(
    func @f(%d: f32[T, 2, 32]) {
      %c = clamp(%d) {min = -448, max = 448}
      %r = view(%c) {shape = [T, 64]}
      %q = cast(%r) {to = f8e4m3}
      return %q
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "view_after_fp8_cast", "applied"), 1) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: %q.unviewed = cast(%c) {to = f8e4m3}
    CHECK: %q = view(%q.unviewed) {shape = [T, 64]}
    CHECK: return %q
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 1, {1, 5}, {1, 2});
}

TEST(PassesCanonicalize, ClampMinThenMaxBecomesOneClamp) {
  Compiled c = Canonicalize(R"(
    func @f(%a: f32[T, 256], %b: f32[T, 256]) {
      %a1 = clamp(%a) {min = -2}
      %a2 = clamp(%a1) {max = 3}
      %b1 = clamp(%b) {max = 3}
      %b2 = clamp(%b1) {min = -2}
      return %a2, %b2
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "clamp_pair", "applied"), 2);
  EXPECT_EQ(CountOp(*c.after, "clamp"), 2);
  FileCheck(Print(*c.after), R"(
    CHECK: %a2 = clamp(%a) {max = 3, min = -2}
    CHECK: %b2 = clamp(%b) {max = 3, min = -2}
  )");
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, ClampPairDoesNotMergeEmptyRangesOrSharedValues) {
  Compiled c = Canonicalize(R"(
    func @f(%a: f32[T, 256], %b: f32[T, 256], %c: f32[T, 256]) {
      %a1 = clamp(%a) {min = 3}
      %a2 = clamp(%a1) {max = -2}
      %b1 = clamp(%b) {min = -2}
      %b2 = clamp(%b1) {max = 3}
      %c1 = clamp(%c) {min = -2}
      %c2 = clamp(%c1) {min = -1}
      return %a2, %b2, %b1, %c2
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c.changed);
}

TEST(PassesCanonicalize, DynamicGroupQuantWithAClampPairFoldsToQuantFp8) {
  Compiled c = Canonicalize(R"(
    func @f(%a: bf16[T, 256]) {
      %af = cast(%a) {to = f32}
      %ag = view(%af) {shape = [T, 2, 128]}
      %aa = abs(%ag)
      %am = amax(%aa) {dim = -1, keepdim = true}
      %ac = clamp(%am) {min = 1e-10}
      %as = div(%ac) {scalar = 448}
      %da = div(%ag, %as)
      %c1 = clamp(%da) {min = -448}
      %c2 = clamp(%c1) {max = 448}
      %qa = cast(%c2) {to = f8e4m3}
      return %qa, %as
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Counter(c.ctx, "decomposed_dynamic_quant", "applied"), 1);
  EXPECT_EQ(CountOp(*c.after, "clamp"), 0);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 1);
  ExpectSameOutputs(c);
}

TEST(PassesCanonicalize, StaticQuantDoesNotFireWhenAnIntermediateHasAnotherUse) {
  std::string t = StaticQuantLayer({"", "  %d = div(%y, %scale)\n", true, ""});
  t.replace(t.find("return %q, %r"), 13, "return %q, %r, %d");
  Compiled c = Compile(t);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0);
  EXPECT_EQ(Counter(c.ctx, "decomposed_static_quant",
                    "declined: an intermediate value has other uses"),
            1);
}

TEST(PassesCanonicalize, StaticQuantDoesNotFireForATensorScale) {
  Compiled c = Compile(R"(
    func @f(%y: bf16[T, 256], %scale: bf16[256]) {
      %d = div(%y, %scale)
      %q = cast(%d) {to = f8e4m3}
      return %q
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c.changed);
}

}  // namespace
}  // namespace tpfuse::passes::testing
