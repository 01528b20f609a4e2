// fuse_allreduce_epilogue through the default pipeline: IR text in; the fused op, its emit list
// and the rejection reasons out; every fusion also run unfused vs fused on the CPU oracle at 2
// ranks within Contract 3's tolerance.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "passes_test_util.h"

namespace tpfuse::passes::testing {
namespace {

std::string ReadTestFile(const std::string& name) {
  std::ifstream in(std::string(TPFUSE_TEST_DATA_DIR) + "/passes/" + name);
  EXPECT_TRUE(in.good()) << "cannot open tests/data/passes/" << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------- the chain shapes

TEST(PassesFuse, NoResidualGroupQuant) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
      return %q, %s
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %q, %s = allreduce_rmsnorm(%x, %g)
    CHECK-SAME: emit = ["quant"], eps = 1e-06, group_size = 128, quant = "fp8_group"
    CHECK-NOT: all_reduce(
    CHECK-NOT: rms_norm(
    CHECK-NOT: quant_fp8(
    CHECK: return %q, %s
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"quant"}}});
  EXPECT_TRUE(c.ctx.rejections.empty());
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "anchors_seen"), 1);
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "fused"), 1);
  ExpectSameOutputs(c);
}

TEST(PassesFuse, ResidualGroupQuantOneConsumer) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
      return %q, %s, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %r, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["residual", "quant"]
    CHECK-SAME: quant = "fp8_group"
    CHECK: return %q, %s, %r
  )");
  EXPECT_EQ(c.after->num_nodes(), 1);
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"residual", "quant"}}});
  ExpectSameOutputs(c);
}

// DeepSeek-V3.2's indexer: the norm output feeds a bf16 GEMM and is returned besides its
// FP8 quantization, so the fused op emits the norm and the quant together.
constexpr char kIndexerFanOut[] = R"(
  func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %wk: bf16[256, 128]) {
    %ar = all_reduce(%x)
    %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
    %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
    %k = matmul(%y, %wk)
    return %q, %s, %r, %k, %y
  }
)";

TEST(PassesFuse, IndexerFanOutEmitsNormAndQuant) {
  Compiled c = Compile(kIndexerFanOut);
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %r, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["norm", "residual", "quant"]
    CHECK: %k = matmul(%y, %wk)
    CHECK: return %q, %s, %r, %k, %y
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"norm", "residual", "quant"}}});
  ExpectSameOutputs(c);
}

TEST(PassesFuse, IndexerFanOutWithoutResidual) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256], %wk: bf16[256, 128]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128, scale_layout = "col"}
      %k = matmul(%y, %wk)
      return %q, %s, %k, %y
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %q, %s = allreduce_rmsnorm(%x, %g)
    CHECK-SAME: emit = ["norm", "quant"]
    CHECK-SAME: scale_layout = "col"
    CHECK: %k = matmul(%y, %wk)
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"norm", "quant"}}});
  ExpectSameOutputs(c);
}

// Llama-3.1-8B-FP8: a separate add and rms_norm, static per-tensor quant into a scaled GEMM.
TEST(PassesFuse, AddRmsNormStaticQuantScaledMatmul) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %scale: f32[],
                %wq: f8e4m3[256, 128], %wscale: f32[]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %y = rms_norm(%h, %g) {eps = 1e-5}
      %q = quant_fp8(%y, %scale) {mode = "tensor"}
      %o = scaled_matmul(%q, %scale, %wq, %wscale)
      return %o, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %h, %q = allreduce_rmsnorm(%x, %res, %g, %scale)
    CHECK-SAME: emit = ["residual", "quant"], eps = 1e-05, quant = "fp8_tensor"
    CHECK: %o = scaled_matmul(%q, %scale, %wq, %wscale)
    CHECK: return %o, %h
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Tensor, {"residual", "quant"}}});
  EXPECT_EQ(Counter(c.ctx, "add_rms_norm", "applied"), 1);
  ExpectSameOutputs(c);
}

TEST(PassesFuse, PerTokenDynamicQuant) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %r, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: quant = "fp8_token"
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Token, {"residual", "quant"}}});
  ExpectSameOutputs(c);
}

// Qwen3-Next: the norm weight is f32 while activations are bf16.
TEST(PassesFuse, F32NormWeightWithBf16Activations) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: f32[256], %w: bf16[256, 64]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %o = matmul(%y, %w)
      return %o, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %r = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["norm", "residual"], eps = 1e-06, quant = "none"
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm", "residual"}}});
  ASSERT_EQ(c.ctx.fusions.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].spec.weight_dtype, DType::kF32);
  EXPECT_EQ(c.ctx.fusions[0].spec.act_dtype, DType::kBF16);
  ExpectSameOutputs(c);
}

TEST(PassesFuse, GemmaWeightBias) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6, weight_bias = 1}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: weight_bias = 1.0
  )");
  ASSERT_EQ(c.ctx.fusions.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].spec.weight_bias, 1.0f);
  ExpectSameOutputs(c);
}

TEST(PassesFuse, F16Activations) {
  Compiled c = Compile(R"(
    func @layer(%x: f16[T, 256], %res: f16[T, 256], %g: f16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %y = rms_norm(%h, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 64, scale_fmt = "ue8m0"}
      return %q, %s, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %h, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: group_size = 64, quant = "fp8_group", scale_fmt = "ue8m0"
  )");
  ASSERT_EQ(c.ctx.fusions.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].spec.act_dtype, DType::kF16);
  ExpectSameOutputs(c);
}

// ---------------------------------------------------------------- emit from remaining uses

// Two norms read one all_reduce: the first is fused and emits the sum, which the second reads.
TEST(PassesFuse, TwoNormsOfOneAllReduce) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g1: bf16[256], %g2: f32[256]) {
      %ar = all_reduce(%x)
      %y1 = rms_norm(%ar, %g1) {eps = 1e-6}
      %y2 = rms_norm(%ar, %g2) {eps = 1e-5}
      return %y1, %y2
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %ar, %y1 = allreduce_rmsnorm(%x, %g1)
    CHECK-SAME: emit = ["allreduce", "norm"]
    CHECK: %y2 = rms_norm(%ar, %g2)
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"allreduce", "norm"}}});
  ExpectSameOutputs(c);
}

TEST(PassesFuse, DeadResidualIsNotEmitted) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128}
      return %q, %s
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["quant"]
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"quant"}}});
  ExpectSameOutputs(c);
}

TEST(PassesFuse, AllReduceUsedElsewhereIsEmitted) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %w: bf16[256, 64]) {
      %ar = all_reduce(%x)
      %side = matmul(%ar, %w)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s, %r, %side, %ar
    }
  )");
  ASSERT_TRUE(c.ok());
  // The fused op goes before the first use of any result it takes over: the matmul.
  FileCheck(Print(*c.after), R"(
    CHECK: %ar, %r, %q, %s = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["allreduce", "residual", "quant"]
    CHECK: %side = matmul(%ar, %w)
    CHECK: return %q, %s, %r, %side, %ar
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Token, {"allreduce", "residual", "quant"}}});
  ExpectSameOutputs(c);
}

TEST(PassesFuse, TwoQuantConsumersFuseTheFirstOtherReadsNorm) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q1, %s1 = quant_fp8(%y) {mode = "group", group_size = 128}
      %q2, %s2 = quant_fp8(%y) {mode = "token"}
      return %q1, %s1, %q2, %s2, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %r, %q1, %s1 = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["norm", "residual", "quant"]
    CHECK-SAME: quant = "fp8_group"
    CHECK: %q2, %s2 = quant_fp8(%y) {mode = "token"}
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"norm", "residual", "quant"}}});
  ASSERT_EQ(c.ctx.fusions.size(), 1u);
  ASSERT_EQ(c.ctx.fusions[0].notes.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].notes[0],
            "quant_fp8 %q2 reads the emitted norm: one quant is fused per chain");
  ExpectSameOutputs(c);
}

// A post-norm block (OLMo 2, EXAONE 4: `residual + norm(a)`, the sum read by the next block's
// GEMMs with no norm): the all_reduce and its norm fuse, and the note says why the residual add
// and the quant of its sum stay.
TEST(PassesFuse, APostNormResidualAddStaysWithANote) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %w: bf16[256, 256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %h = add(%res, %y)
      %q, %s = quant_fp8(%h) {mode = "token"}
      %o = matmul(%h, %w)
      return %q, %s, %o, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm"}}});
  ASSERT_EQ(c.ctx.fusions[0].notes.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].notes[0],
            "add %h, the residual add that reads the norm output %y, is not taken over: no norm "
            "follows it, and the fused op ends in a norm (a post-norm block, `residual + norm(a)`); "
            "it stays an op, and so does any quantization of its sum");
  ExpectSameOutputs(c);
}

// An FP8 quantization of the fused norm written in ops that no quant form folds stays as
// written, and the fusion says why in the canonicalizer's words; one that folds no form at all
// (here: y * 0.01 cast) says that. An FP8 cast of y times another activation is no
// quantization of y, and goes unnamed.
TEST(PassesFuse, AQuantOfTheNormLeftInOpsIsNamedWithTheReason) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256], %gate: f32[T, 256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %yf = cast(%y) {to = f32}
      %ab = abs(%yf)
      %am = amax(%ab) {dim = -1, keepdim = true}
      %sd = div(%am) {scalar = 448}
      %sc = clamp(%sd) {min = 4.359654017857143e-06}
      %lg = log2(%sc)
      %ce = ceil(%lg)
      %s = exp2(%ce)
      %dq = div(%yf, %s)
      %q = cast(%dq) {to = f8e4m3}
      %t = mul(%yf) {scalar = 0.01}
      %q2 = cast(%t) {to = f8e4m3}
      %gt = mul(%yf, %gate)
      %q3 = cast(%gt) {to = f8e4m3}
      return %q, %s, %q2, %q3
    }
  )");
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm"}}});
  EXPECT_EQ(c.ctx.fusions[0].notes,
            (std::vector<std::string>{
                "the FP8 quantization %q of the norm stays as written: decomposed_dynamic_quant: "
                "the scale is floored after the division and then rounded to a power of two: the "
                "fused quant floors such scales before the division or after the rounding",
                "the FP8 quantization %q2 of the norm stays as written: it matches no "
                "quantization form the compiler folds"}));
  ExpectSameOutputs(c);
  // Beside a quant the fused op takes, too.
  Compiled both = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "token"}
      %yf = cast(%y) {to = f32}
      %t = mul(%yf) {scalar = 0.01}
      %q2 = cast(%t) {to = f8e4m3}
      return %q, %s, %q2
    }
  )");
  ASSERT_TRUE(both.ok());
  ExpectFusions(both.ctx, {{"ar", QuantMode::kFp8Token, {"norm", "quant"}}});
  EXPECT_EQ(both.ctx.fusions[0].notes,
            (std::vector<std::string>{"the FP8 quantization %q2 of the norm stays as written: it "
                                      "matches no quantization form the compiler folds"}));
  ExpectSameOutputs(both);
}

// vLLM's group quant of a row its groups do not divide (H 200, group 128) pads the row with
// zeros to whole groups first (F.pad, opaque in the IR): the norm fuses, and the note names the
// pad as the reason its quantization stays as written. A pad that does not widen the row's last
// dim is no such pad, and the walk stops there. (The CPU backend runs no opaque op, so the
// outputs are not compared here; test_pass.py runs the form in torch.)
TEST(PassesFuse, AGroupQuantOfAPaddedRowNamesThePad) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 200], %g: bf16[200]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %yp = opaque(%y) {name = "aten.constant_pad_nd.default"} : bf16[T, 256]
      %v = view(%yp) {shape = [T, 2, 128]}
      %ab = abs(%v)
      %am = amax(%ab) {dim = -1, keepdim = true}
      %amf = cast(%am) {to = f32}
      %sd = div(%amf) {scalar = 448}
      %s = clamp(%sd) {min = 4.359654017857143e-06}
      %dq = div(%v, %s)
      %cl = clamp(%dq) {min = -448, max = 448}
      %q = cast(%cl) {to = f8e4m3}
      %t = mul(%v) {scalar = 0.01}
      %q3 = cast(%t) {to = f8e4m3}
      %yc = opaque(%y) {name = "aten.constant_pad_nd.default"} : bf16[T, 200]
      %yf = cast(%yc) {to = f32}
      %q2 = cast(%yf) {to = f8e4m3}
      return %q, %s, %q2, %q3
    }
  )");
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm"}}});
  const std::string pad = "the row is padded with opaque %yp (aten.constant_pad_nd.default) from 200 to 256 "
                          "elements before it is quantized: the fused quant takes groups that divide the row";
  // %q folds into a quant_fp8 of the padded groups; %q3, folding no form, stays a cast.
  EXPECT_EQ(c.ctx.fusions[0].notes,
            (std::vector<std::string>{"the FP8 quantization %q of the norm stays as written: " + pad,
                                      "the FP8 quantization %q3 of the norm stays as written: " + pad}));
}

// ---------------------------------------------------------------- rejections

TEST(PassesFuse, PlainAllReduceIsLeftAloneWithItsReason) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %w: bf16[256, 64]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      return %o
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Print(*c.after), Print(*c.before));
  EXPECT_FALSE(c.changed);
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar is not followed by an RMSNorm (its only use is matmul %o)");
  EXPECT_EQ(c.ctx.rejections[0].anchor, "ar");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "rejected: no rms_norm"), 1);
}

// A norm the front end kept opaque (torch's aten._fused_rms_norm with its rstd read) is named,
// with the front end's reason, not taken for the absence of a norm.
TEST(PassesFuse, AnOpaqueNormAfterTheSumIsNamedWithItsReason) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %y, %r = opaque(%h, %w) {name = "aten._fused_rms_norm.default",
                               why = "its rstd is read"} : bf16[T, 256], f32[T, 1]
      return %y, %h, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar is followed by a norm the compiler cannot read, opaque %y "
            "(aten._fused_rms_norm.default): its rstd is read; it stays as written (its only "
            "use is add %h)");
}

// An op kept opaque between the sum and the rsqrt (vLLM's variance_size_override squares a
// slice of the row) is named as what the compiler cannot read.
TEST(PassesFuse, AnOpaqueOpOnTheWayToTheRsqrtIsNamed) {
  // The norm of %h, squaring half of the row.
  const std::string norm = R"(
      %f = cast(%h) {to = f32}
      %part = opaque(%f) {name = "aten.slice.Tensor"} : f32[T, 128]
      %sq = pow(%part) {exponent = 2}
      %var = mean(%sq) {dim = -1, keepdim = true}
      %ve = add(%var) {scalar = 1e-6}
      %rs = rsqrt(%ve)
      %n = mul(%f, %rs)
      %nb = cast(%n) {to = bf16}
      %y = mul(%nb, %w)
  )";
  Compiled c = Compile("func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256]) {\n"
                       "  %ar = all_reduce(%x)\n  %h = add(%ar, %res)\n" +
                       norm + "  return %y, %h\n}\n");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar reaches the rsqrt %rs of a norm only through add %h, cast %f, "
            "opaque %part, pow %sq, mean %var, add %ve; the compiler cannot read opaque %part "
            "(aten.slice.Tensor), so the fused op cannot take them over (its only use is add "
            "%h)");

  // The same norm with no all_reduce before it, among the local chains left as written.
  PassContext ctx;
  ctx.world_size = 1;
  ctx.fuse_local = true;
  Compiled local = Compile(
      "func @layer(%h: bf16[T, 256], %w: bf16[256]) {\n" + norm + "  return %y\n}\n", ctx);
  ASSERT_TRUE(local.ok());
  ASSERT_EQ(local.ctx.local_unfused.size(), 1u);
  EXPECT_EQ(local.ctx.local_unfused[0].reason,
            "the norm whose rsqrt is %rs squares the result of opaque %part (aten.slice.Tensor), "
            "which the compiler cannot read");
}

// A row-parallel layer's bias added after its all_reduce (DTensor's row-wise plan), then the
// residual: the fused op takes the bias as its operand after x (spec.has_bias), and the add goes.
TEST(PassesFuse, ABiasAfterTheAllReduceIsTakenOver) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %b: bf16[256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %ab = add(%ar, %b)
      %y, %h = fused_add_rms_norm(%ab, %res, %g) {eps = 1e-6}
      return %y, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  FileCheck(Print(*c.after), R"(
    CHECK: = allreduce_rmsnorm(%x, %b, %res, %g)
    CHECK-SAME: bias = true
    CHECK-NOT: add(
    CHECK: return %y, %h
  )");
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {5, 6});
}

// The sum added to the embeddings, and that the residual of a norm whose input is a matmul's
// output (Zamba2's hybrid layer): two residual adds, which the reason says.
TEST(PassesFuse, TwoResidualAddsOrAGemmBeforeTheNormAreNamed) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %emb: bf16[T, 256], %m: bf16[T, 256], %w: bf16[256, 256],
                %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h0 = add(%emb, %ar)
      %o = matmul(%m, %w)
      %y, %h = fused_add_rms_norm(%o, %h0, %g) {eps = 1e-6}
      return %y, %h, %h0
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Print(*c.after).find("allreduce_rmsnorm"), std::string::npos) << Print(*c.after);
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar reaches fused_add_rms_norm %y only through add %h0, and "
            "fused_add_rms_norm %y adds matmul %o to that: two residual adds, where the fused op "
            "takes one (its only use is add %h0)");

  // The sum multiplied by a matrix before the norm reads it.
  Compiled gemm = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      %y, %h = fused_add_rms_norm(%o, %res, %g) {eps = 1e-6}
      return %y, %h
    }
  )");
  ASSERT_TRUE(gemm.ok());
  EXPECT_EQ(OnlyRejection(gemm.ctx),
            "all_reduce %ar reaches fused_add_rms_norm %y only through matmul %o, where matmul "
            "%o multiplies it by a matrix: the fused op's norm reads the sum itself (its only "
            "use is matmul %o)");
}

TEST(PassesFuse, ReturnedAllReduceReason) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256]) {
      %ar = all_reduce(%x)
      return %ar
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar is not followed by an RMSNorm (it is only returned); its sum leaves "
            "the graph, so a norm in a later graph (after a graph break) cannot be fused with it");
  // The residual add returned (the norm in the next graph): the same hint. A sum that goes
  // elsewhere does not get it.
  Compiled added = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256, 256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %o = matmul(%ar, %w)
      return %h, %o
    }
  )");
  ASSERT_TRUE(added.ok());
  EXPECT_NE(OnlyRejection(added.ctx).find("its uses are add %h and matmul %o); its sum leaves "
                                          "the graph"),
            std::string::npos)
      << OnlyRejection(added.ctx);
  Compiled elsewhere = Compile(R"(
    func @layer(%x: bf16[T, 256], %w: bf16[256, 256]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      return %o
    }
  )");
  ASSERT_TRUE(elsewhere.ok());
  EXPECT_EQ(OnlyRejection(elsewhere.ctx),
            "all_reduce %ar is not followed by an RMSNorm (its only use is matmul %o)");
  // Through views: the sum viewed and returned, and a view of it added and the sum's view
  // returned (a rank-3 model's [B, S, H] flattened for the add).
  for (const char* text : {R"(
    func @layer(%x: bf16[T, 256]) {
      %ar = all_reduce(%x)
      %v = view(%ar) {shape = [T, 256]}
      %vv = view(%v) {shape = [T, 256]}
      return %vv
    }
  )", R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256, 256]) {
      %ar = all_reduce(%x)
      %v = view(%ar) {shape = [T, 256]}
      %h = add(%v, %res)
      %hv = view(%h) {shape = [T, 256]}
      %o = matmul(%ar, %w)
      return %hv, %o
    }
  )"}) {
    Compiled viewed = Compile(text);
    ASSERT_TRUE(viewed.ok());
    EXPECT_NE(OnlyRejection(viewed.ctx).find("; its sum leaves the graph, so a norm in a later graph"),
              std::string::npos)
        << OnlyRejection(viewed.ctx);
  }
}

TEST(PassesFuse, WorldSizeOneWithoutLocalFusionLeavesTheGraphUnchanged) {
  PassContext ctx;
  ctx.world_size = 1;
  Compiled c = Compile(kIndexerFanOut, ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c.changed);
  EXPECT_EQ(Print(*c.after), Print(*c.before));
  EXPECT_EQ(OnlyRejection(c.ctx),
            "world size 1: all_reduce is the identity, and local fusion is off (compile with "
            "--fuse-local auto or on to fuse its chain on one GPU)");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "rejected: world size 1"), 1);
}

TEST(PassesFuse, OtherGroupIsNotFused) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x) {group = "dp"}
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 0);
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce group \"dp\" is not the tensor-parallel group (\"tp\")");
}

TEST(PassesFuse, UnsupportedWorldSizeNamesWhatTheBackendSupports) {
  PassContext ctx;
  ctx.world_size = 3;
  ctx.caps = CudaFusionCapabilities();
  ctx.caps.world_sizes = {2, 4, 8};  // a build whose peer-memory kernels stop at powers of two
  Compiled c = Compile(kIndexerFanOut, ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 0);
  EXPECT_EQ(CountOp(*c.after, "all_reduce"), 1);
  EXPECT_EQ(OnlyRejection(c.ctx),
            "world size 3 is not supported by backend cuda's fused op (it supports 2, 4, 8)");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "rejected: backend"), 1);
}

// A backend without per-token quant: the norm is fused, the quant stays a separate op reading
// the emitted norm, and the record says why.
TEST(PassesFuse, CapabilityLimitedFusionKeepsTheLargestSupportedPrefix) {
  PassContext ctx;
  ctx.caps = CpuFusionCapabilities();
  ctx.caps.backend = "no-token";
  ctx.caps.quant_modes = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Group};
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s, %r
    }
  )", ctx);
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %r = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["norm", "residual"]
    CHECK: %q, %s = quant_fp8(%y) {mode = "token"}
  )");
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm", "residual"}}});
  ASSERT_EQ(c.ctx.fusions[0].notes.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].notes[0],
            "quant_fp8 %q stays unfused: quant fp8_token is not supported by backend no-token");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "quant left unfused"), 1);
  ExpectSameOutputs(c);
}

// With two quant consumers the first one the backend supports is fused.
TEST(PassesFuse, CapabilityLimitedFusionPicksASupportedQuant) {
  PassContext ctx;
  ctx.caps = CpuFusionCapabilities();
  ctx.caps.backend = "group-only";
  ctx.caps.quant_modes = {QuantMode::kNone, QuantMode::kFp8Group};
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      %qt, %st = quant_fp8(%y) {mode = "token"}
      %qg, %sg = quant_fp8(%y) {mode = "group", group_size = 128}
      return %qt, %st, %qg, %sg
    }
  )", ctx);
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"ar", QuantMode::kFp8Group, {"norm", "quant"}}});
  EXPECT_EQ(c.ctx.fusions[0].notes,
            (std::vector<std::string>{
                "quant_fp8 %qt stays unfused: quant fp8_token is not supported by backend "
                "group-only"}));
  ExpectSameOutputs(c);
}

// A backend that cannot return y and q together gets the norm fused for the indexer fan-out,
// with the group quant as a separate op.
TEST(PassesFuse, BackendWithoutNormAndQuantTogether) {
  PassContext ctx;
  ctx.caps = CpuFusionCapabilities();
  ctx.caps.backend = "single-output";
  ctx.caps.emit_norm_with_quant = false;
  Compiled c = Compile(kIndexerFanOut, ctx);
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), R"(
    CHECK: %y, %r = allreduce_rmsnorm(%x, %res, %g)
    CHECK-SAME: emit = ["norm", "residual"]
    CHECK: %q, %s = quant_fp8(%y)
    CHECK: %k = matmul(%y, %wk)
  )");
  ASSERT_EQ(c.ctx.fusions.size(), 1u);
  EXPECT_EQ(c.ctx.fusions[0].notes,
            (std::vector<std::string>{"quant_fp8 %q stays unfused: backend single-output cannot "
                                      "return the norm output and its quantization together"}));
  ExpectSameOutputs(c);
}

TEST(PassesFuse, UnsupportedWeightDtypeIsRejectedWithTheBackendsWords) {
  PassContext ctx;
  ctx.caps = CpuFusionCapabilities();
  ctx.caps.backend = "bf16-weights";
  ctx.caps.weight_dtypes = {DType::kBF16};
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: f32[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      return %y
    }
  )", ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 0);
  EXPECT_EQ(OnlyRejection(c.ctx), "norm weight dtype f32 is not supported by backend bf16-weights");
}

TEST(PassesFuse, F32ActivationsAreRejected) {
  Compiled c = Compile(R"(
    func @layer(%x: f32[T, 256], %g: f32[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar has dtype f32; the fused op takes bf16 or f16 activations");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "rejected: dtype or shape"), 1);
}

// [B, S, H] fuses through views (passes_forms_test.cc), a constant batch beside a symbolic
// length too (what torch.compile gives a model called at one batch size and several lengths).
// The rows of any leading dims are one canonical product: the constants folded first, the
// symbols sorted (as the PyTorch translator writes them), whatever the dims' order or their own
// products; printed and parsed back, and the fused graph computes the unfused one's bits.
TEST(PassesFuse, RowsOfLeadingDimsAreOneCanonicalProduct) {
  // (A parameter whose only S is inside 2*S gives the CPU executor no S to bind: those run
  // through the compiler and the parser only.)
  const struct {
    const char* leading;
    const char* rows;
    bool runs;
  } cases[] = {{"2, T", "2*T", true},
               {"S, 2, B", "2*B*S", true},
               {"T, 2*S", "2*S*T", false},
               {"3*T, 2", "6*T", false}};
  for (const auto& k : cases) {
    SCOPED_TRACE(k.leading);
    const std::string act = std::string("bf16[") + k.leading + ", 256]";
    Compiled c = Compile("func @layer(%x: " + act + ", %res: " + act + ", %g: bf16[256]) {\n"
                         "  %ar = all_reduce(%x)\n"
                         "  %h = add(%ar, %res)\n"
                         "  %y = rms_norm(%h, %g) {eps = 1e-6}\n"
                         "  return %y, %h\n}\n");
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
    FileCheck(Print(*c.after), std::string("CHECK: %x.rows = view(%x) {shape = [") + k.rows +
                                   ", 256]}\nCHECK: = allreduce_rmsnorm(%x.rows, %res.rows, %g)");
    StatusOr<std::unique_ptr<ir::Graph>> reparsed = ir::ParseGraph(Print(*c.after));
    ASSERT_TRUE(reparsed.ok()) << reparsed.status().ToString();
    if (k.runs) ExpectSameOutputs(c);
  }
}

// The norm weight is computed after the all_reduce result's first other use: no single place
// can hold the fused op.
TEST(PassesFuse, NoLegalPositionIsRejected) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256], %w: bf16[256, 64]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      %g2 = mul(%g) {scalar = 0.5}
      %y = rms_norm(%ar, %g2) {eps = 1e-6}
      return %o, %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 0);
  EXPECT_EQ(OnlyRejection(c.ctx),
            "no position for the fused op: %g2 is defined by mul after matmul %o uses %ar");
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "rejected: no legal position"), 1);
}

// Nothing after the all_reduce is used: nothing to emit. The chain is dead code, which dce
// then removes.
TEST(PassesFuse, DeadChainIsRejectedAndRemoved) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y = rms_norm(%ar, %g) {eps = 1e-6}
      return %x
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "nothing after all_reduce %ar is used: the norm and its inputs are dead code");
  EXPECT_EQ(c.after->num_nodes(), 0);
}

// fused_add_rms_norm is commutative in x and residual: the all_reduce may be either operand.
TEST(PassesFuse, AllReduceAsTheResidualOperand) {
  Compiled c = Compile(R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%res, %ar, %g) {eps = 1e-6}
      return %y, %r
    }
  )");
  ASSERT_TRUE(c.ok());
  FileCheck(Print(*c.after), "CHECK: %y, %r = allreduce_rmsnorm(%x, %res, %g)");
  ExpectSameOutputs(c);
}

// ---------------------------------------------------------------- a whole model

// Two decode layers, four all_reduce sites (attention out and MLP down of each), in four
// different shapes: no residual + group quant, add + norm + group quant with the indexer
// fan-out, fused add norm + token quant, and a last norm returned in bf16.
TEST(PassesFuse, FourSitesGiveExactlyFourFusions) {
  Compiled c = Compile(ReadTestFile("four_sites.tpg"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx);
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 4);
  EXPECT_EQ(CountOp(*c.after, "all_reduce"), 0);
  EXPECT_EQ(CountOp(*c.after, "rms_norm"), 0);
  EXPECT_EQ(CountOp(*c.after, "fused_add_rms_norm"), 0);
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0);
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "anchors_seen"), 4);
  EXPECT_EQ(Counter(c.ctx, "fuse_allreduce_epilogue", "fused"), 4);
  ExpectSameOutputs(c);
}

}  // namespace
}  // namespace tpfuse::passes::testing
