// The forms real model code traces to (tests/data/forms/*.tpg): each folds to the canonical op
// with the rounding recipe of the form, fuses at every site, and the fused graph computes the
// same bits as the graph it replaced on the CPU oracle (T in {1, 5, 33}, several seeds). Also:
// rejection reasons that stay true, world size 1 and local chains, the compile API.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "passes/compile.h"
#include "passes/local_fusion.h"
#include "passes_test_util.h"

namespace tpfuse::passes::testing {
namespace {

std::string ReadForm(const std::string& name) {
  std::ifstream in(std::string(TPFUSE_TEST_DATA_DIR) + "/forms/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_FALSE(ss.str().empty()) << "missing test data forms/" << name;
  return ss.str();
}

struct FormCase {
  std::string file;
  int fusions = 4;
  std::vector<std::string> rounding;  // of every fusion (sites may add scale_op_swapped)
};

std::ostream& operator<<(std::ostream& os, const FormCase& c) { return os << c.file; }

class PassesChainedForms : public ::testing::TestWithParam<FormCase> {};

TEST_P(PassesChainedForms, FusesEverySiteAndChangesNoBit) {
  const FormCase& form = GetParam();
  Compiled c = Compile(ReadForm(form.file));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(int(c.ctx.fusions.size()), form.fusions) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  EXPECT_EQ(CountOp(*c.after, "all_reduce"), 0) << Print(*c.after);
  EXPECT_EQ(CountOp(*c.after, "rsqrt"), 0) << Print(*c.after);
  // Every FP8 quantization of a norm went into its fused op.
  EXPECT_EQ(CountOp(*c.after, "quant_fp8"), 0) << Print(*c.after);
  for (const ir::Node* cast : NodesOf(*c.after, "cast"))
    EXPECT_NE(cast->result()->dtype(), DType::kF8E4M3) << Print(*c.after);
  for (const FusionRecord& f : c.ctx.fusions) {
    std::vector<std::string> names = f.spec.rounding.Names();
    std::erase(names, "scale_op_swapped");
    EXPECT_EQ(names, form.rounding) << f.spec.ToString();
  }
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {1, 7, 1234});
}

INSTANTIATE_TEST_SUITE_P(
    Forms, PassesChainedForms,
    ::testing::Values(FormCase{"llama_bf16.tpg", 4, {"weight_after_round"}},
                      FormCase{"llama_f16.tpg", 4, {"weight_after_round"}},
                      FormCase{"vllm_native_static_quant.tpg", 4,
                               {"norm_input_f32", "weight_after_round"}},
                      FormCase{"rank3_views.tpg", 4, {"weight_after_round"}},
                      FormCase{"rank3_static_quant.tpg", 4, {"weight_after_round"}},
                      FormCase{"rank3_group_quant.tpg", 4, {"weight_after_round"}},
                      FormCase{"dynamic_token_quant.tpg", 4, {"weight_after_round"}},
                      FormCase{"dynamic_group_quant.tpg", 4, {"weight_after_round"}},
                      FormCase{"granite.tpg", 4, {"weight_after_round"}},
                      FormCase{"row_bias.tpg", 4, {"weight_after_round"}},
                      FormCase{"summed_blocks.tpg", 2, {"weight_after_round"}},
                      FormCase{"parallel_blocks.tpg", 2, {"weight_after_round"}},
                      FormCase{"gemma4.tpg", 4, {}},
                      FormCase{"nanochat.tpg", 4, {}},
                      FormCase{"vllm_quantfp8_native.tpg", 4,
                               {"weight_after_round", "scale_floor_after_div"}},
                      FormCase{"vllm_promoted_residual.tpg", 2,
                               {"norm_input_f32", "weight_after_round"}},
                      FormCase{"trtllm_reference.tpg", 2, {}},
                      FormCase{"flashinfer_token_quant.tpg", 2, {"scale_floor_after_div"}},
                      FormCase{"flashinfer_group_quant.tpg", 2, {"ue8m0_floor"}}),
    [](const auto& info) {
      std::string n = info.param.file.substr(0, info.param.file.find('.'));
      return n;
    });

// A static quant that reads the rank-3 norm output itself: the fused op's q ([B*S, H]) is viewed
// back to [B, S, H] for the dequantization that reads it.
TEST(PassesForms, Rank3StaticQuantFusesAndItsQIsViewedBack) {
  Compiled c = Compile(ReadForm("rank3_static_quant.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
  for (const FusionRecord& f : c.ctx.fusions) {
    EXPECT_EQ(f.spec.quant, QuantMode::kFp8Tensor) << f.spec.ToString();
    EXPECT_TRUE(f.spec.rounding.scale_op_swapped) << f.spec.ToString();
  }
  for (const char* op : {"div", "clamp"}) EXPECT_EQ(CountOp(*c.after, op), 0) << op;
  FileCheck(Print(*c.after), R"(
    CHECK: %h0.rows, %q0.rows = allreduce_rmsnorm(%p0.rows, %res.rows, %g0, %s0)
    CHECK: %q0 = view(%q0.rows) {shape = [B, S, 256]}
    CHECK: %qf0 = cast(%q0) {to = f32}
  )");
}

// A per-group quant written on the [B, S, H/g, g] view of the rank-3 norm output: quant_fp8 reads
// y as [B*S, H], and its q and s are viewed back to the shapes the dequantization reads; the
// views carry the graph's names (the PyTorch pass maps results back by name).
TEST(PassesForms, Rank3GroupQuantFuses) {
  Compiled c = Compile(ReadForm("rank3_group_quant.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
  for (const FusionRecord& f : c.ctx.fusions) {
    EXPECT_EQ(f.spec.quant, QuantMode::kFp8Group) << f.spec.ToString();
    EXPECT_EQ(f.spec.group_size, 128) << f.spec.ToString();
  }
  for (const char* op : {"abs", "amax", "clamp", "div"}) EXPECT_EQ(CountOp(*c.after, op), 0) << op;
  FileCheck(Print(*c.after), R"(
    CHECK: %h0.rows, %q0.rows, %s0.rows = allreduce_rmsnorm(%p0.rows, %res.rows, %g0)
    CHECK: %q0 = view(%q0.rows) {shape = [B, S, 2, 128]}
    CHECK: %s0 = view(%s0.rows) {shape = [B, S, 2, 1]}
    CHECK: %qf0 = cast(%q0) {to = f32}
    CHECK: %dq0 = mul(%qf0, %s0)
  )");
}

// The dynamic quants written in torch ops: each site's mode, scale format and scale step
// (y / s is the dynamic modes' default, y * s.reciprocal() swaps it), and nothing of the
// written-out quant left (abs, amax, log2, the views of q and s).
TEST(PassesForms, DynamicQuantsKeepTheirModeFormatAndScaleStep) {
  struct Site {
    bool ue8m0;
    bool swapped;
  };
  const struct {
    std::string file;
    QuantMode mode;
    std::vector<Site> sites;
  } cases[] = {
      {"dynamic_token_quant.tpg", QuantMode::kFp8Token,
       {{false, false}, {false, true}, {true, false}, {true, true}}},
      {"dynamic_group_quant.tpg", QuantMode::kFp8Group,
       {{false, false}, {false, false}, {true, true}, {true, true}}},
  };
  for (const auto& form : cases) {
    SCOPED_TRACE(form.file);
    Compiled c = Compile(ReadForm(form.file));
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
    for (size_t i = 0; i < 4; ++i) {
      const AllreduceRmsnormSpec& spec = c.ctx.fusions[i].spec;
      EXPECT_EQ(spec.quant, form.mode) << spec.ToString();
      if (form.mode == QuantMode::kFp8Group) EXPECT_EQ(spec.group_size, 128);
      EXPECT_EQ(spec.scale_layout, ScaleLayout::kRow);
      EXPECT_EQ(spec.scale_fmt == ScaleFormat::kUe8m0, form.sites[i].ue8m0) << spec.ToString();
      EXPECT_EQ(spec.rounding.scale_op_swapped, form.sites[i].swapped) << spec.ToString();
    }
    for (const char* op : {"abs", "amax", "log2", "exp2", "reciprocal", "view", "cast", "clamp"})
      EXPECT_EQ(CountOp(*c.after, op), 0) << op << "\n" << Print(*c.after);
  }
}

TEST(PassesForms, GemmaWeightBiasInF32AndInTheWeightDtype) {
  Compiled c = Compile(ReadForm("gemma.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(c.ctx.fusions[i].spec.weight_bias, 1.0f);
    EXPECT_EQ(c.ctx.fusions[i].spec.rounding.weight_bias_in_weight_dtype, i % 2 == 1)
        << c.ctx.fusions[i].spec.ToString();
  }
  EXPECT_EQ(CountOp(*c.after, "add"), 0) << Print(*c.after);
  EXPECT_EQ(CountOp(*c.after, "cast"), 0) << Print(*c.after);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {1, 7, 1234});
}

// World size 1 with local fusion on: every chain becomes the local fused op.
PassContext WorldSizeOneLocal() {
  PassContext ctx;
  ctx.world_size = 1;
  ctx.fuse_local = true;
  return ctx;
}

TEST(PassesForms, GraniteScaleOfTheSumIsTakenOver) {
  Compiled c = Compile(ReadForm("granite.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
  for (const FusionRecord& f : c.ctx.fusions) EXPECT_EQ(f.spec.sum_scale, 0.22f) << f.spec.ToString();
  EXPECT_EQ(CountOp(*c.after, "mul"), 0) << Print(*c.after);
}

// A row-parallel layer's bias added after its all_reduce (forms/row_bias.tpg: either operand
// order, the last site scaled after it) is taken over at every site, for the CPU and the CUDA
// targets, and no add stays.
TEST(PassesForms, ARowBiasAfterTheAllReduceIsTakenOver) {
  PassContext cuda;
  cuda.caps = CudaFusionCapabilities();
  for (PassContext ctx : {PassContext{}, cuda}) {
    Compiled c = Compile(ReadForm("row_bias.tpg"), ctx);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx) << Print(*c.after);
    for (size_t i = 0; i < c.ctx.fusions.size(); ++i) {
      const AllreduceRmsnormSpec& spec = c.ctx.fusions[i].spec;
      EXPECT_TRUE(spec.has_bias) << spec.ToString();
      EXPECT_EQ(spec.sum_scale, i == 3 ? 0.25f : 1.0f) << spec.ToString();
    }
    EXPECT_EQ(CountOp(*c.after, "add"), 0) << Print(*c.after);
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {2, 9});
  }
}

// A tensor of the sum's shape added to an all_reduce's sum (forms/token_bias.tpg: GLM-4-MoE-Lite's
// replicated shared experts, Llama 4's routed sum computed after the shared expert's all_reduce
// and viewed back to [B, S, H], a returned addend before a per-token quant) is taken over at
// every site as a per-token bias, for the CPU and the CUDA targets; bitwise.
TEST(PassesForms, ATensorAddedToTheSumIsTakenOverAsAPerTokenBias) {
  PassContext cuda;
  cuda.caps = CudaFusionCapabilities();
  for (PassContext ctx : {PassContext{}, cuda}) {
    Compiled c = Compile(ReadForm("token_bias.tpg"), ctx);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(c.ctx.fusions.size(), 3u) << DescribeReport(c.ctx) << Print(*c.after);
    EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
    for (const FusionRecord& f : c.ctx.fusions) {
      EXPECT_TRUE(f.spec.has_bias && f.spec.bias_per_token) << f.spec.ToString();
      EXPECT_NE(f.spec.ToString().find(" bias=[T,H]"), std::string::npos) << f.spec.ToString();
    }
    EXPECT_EQ(c.ctx.fusions[2].spec.quant, QuantMode::kFp8Token) << c.ctx.fusions[2].spec.ToString();
    EXPECT_EQ(CountOp(*c.after, "add"), 0) << Print(*c.after);
    EXPECT_EQ(CountOp(*c.after, "all_reduce"), 0) << Print(*c.after);
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {2, 9});
  }
  Compiled one = Compile(ReadForm("token_bias.tpg"), WorldSizeOneLocal());
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one.ctx.fusions.size(), 3u) << DescribeReport(one.ctx) << Print(*one.after);
  for (const FusionRecord& f : one.ctx.fusions) EXPECT_TRUE(f.spec.bias_per_token && f.spec.local);
  ExpectBitwiseOutputs(*one.before, *one.after, 1, {1, 5, 33}, {4, 8});
}

// An addend computed from the all_reduce's own sum (a cycle: the fused op would need its own
// result as an operand), or the same sum twice, is no bias: the chain stays, with the reason.
constexpr char kNoTokenBias[] = R"(
  func @f(%x0: bf16[T, 256], %x1: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %w: bf16[256, 256]) {
    %ar0 = all_reduce(%x0)
    %t0 = matmul(%ar0, %w)
    %o0 = add(%ar0, %t0)
    %y0, %h0 = fused_add_rms_norm(%o0, %res, %g) {eps = 1e-6}
    %ar1 = all_reduce(%x1)
    %o1 = add(%ar1, %ar1)
    %y1, %h1 = fused_add_rms_norm(%o1, %h0, %g) {eps = 1e-6}
    return %y0, %y1, %h1
  }
)";

TEST(PassesForms, AnAddendComputedFromTheSumIsNoBias) {
  Compiled c = Compile(kNoTokenBias);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.ctx.fusions.size(), 0u) << DescribeReport(c.ctx) << Print(*c.after);
  ASSERT_EQ(c.ctx.rejections.size(), 2u) << DescribeReport(c.ctx);
  for (const Rejection& r : c.ctx.rejections) EXPECT_FALSE(r.reason.empty()) << r.anchor;
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5}, {3});
}

// A bias the fused op does not take over stays, with the reason: the biased sum also returned
// (site 0), a bias of f32 that promotes the sum (site 1). Site 2's all_reduce, returned too, is
// emitted without its bias. At world size 1 the local op takes the bias over.
constexpr char kBiases[] = R"(
  func @f(%x0: bf16[T, 256], %x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %b0: bf16[256],
          %b1: f32[256], %b2: bf16[256], %g: bf16[256]) {
    %ar0 = all_reduce(%x0)
    %o0 = add(%ar0, %b0)
    %y0, %h0 = fused_add_rms_norm(%o0, %res, %g) {eps = 1e-6}
    %ar1 = all_reduce(%x1)
    %o1 = add(%ar1, %b1)
    %y1 = rms_norm(%o1, %g) {eps = 1e-6}
    %ar2 = all_reduce(%x2)
    %o2 = add(%b2, %ar2)
    %y2 = rms_norm(%o2, %g) {eps = 1e-6}
    return %y0, %h0, %o0, %y1, %y2, %ar2
  }
)";

TEST(PassesForms, ABiasTheFusedOpCannotTakeStaysAndTheReasonSaysWhy) {
  Compiled c = Compile(kBiases);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_EQ(c.ctx.fusions[0].anchor, "ar2");
  EXPECT_TRUE(c.ctx.fusions[0].spec.has_bias);
  EXPECT_TRUE(c.ctx.fusions[0].spec.emit.allreduce);
  ASSERT_EQ(c.ctx.rejections.size(), 2u) << DescribeReport(c.ctx);
  std::map<std::string, std::string> why;
  for (const Rejection& r : c.ctx.rejections) why[r.anchor] = r.reason;
  EXPECT_NE(why["ar0"].find("add %o0 adds the bias %b0 to every row: the fused op takes a bias over only where the "
                            "biased sum goes to the norm alone (its uses are fused_add_rms_norm %y0 and the return)"),
            std::string::npos)
      << why["ar0"];
  EXPECT_NE(why["ar1"].find("(f32[256]) to every row, a bias the fused op cannot take over"), std::string::npos)
      << why["ar1"];
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {3, 11});

  Compiled one = Compile(kBiases, WorldSizeOneLocal());
  ASSERT_TRUE(one.ok());
  int biased = 0;
  for (const FusionRecord& f : one.ctx.fusions) biased += f.spec.has_bias && f.spec.local;
  EXPECT_EQ(biased, 1) << DescribeReport(one.ctx) << Print(*one.after);
  ExpectBitwiseOutputs(*one.before, *one.after, 1, {1, 5, 33}, {4, 8});
}

// A scale the fused op cannot take over: the scaled sum is also returned (site 0). Site 1's is
// taken over, and its all_reduce, returned too, is emitted unscaled.
constexpr char kScaledSums[] = R"(
  func @f(%x0: bf16[T, 256], %x1: bf16[T, 256], %res: bf16[T, 256], %g0: bf16[256], %g1: bf16[256]) {
    %ar0 = all_reduce(%x0)
    %s0 = mul(%ar0) {scalar = 0.5}
    %y0, %h0 = fused_add_rms_norm(%s0, %res, %g0) {eps = 1e-6}
    %ar1 = all_reduce(%x1)
    %s1 = mul(%ar1) {scalar = 0.5}
    %y1 = rms_norm(%s1, %g1) {eps = 1e-6}
    return %y0, %h0, %s0, %y1, %ar1
  }
)";

TEST(PassesForms, AScaledSumUsedElsewhereStaysAndTheReasonSaysWhy) {
  Compiled c = Compile(kScaledSums);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_EQ(c.ctx.fusions[0].anchor, "ar1");
  EXPECT_EQ(c.ctx.fusions[0].spec.sum_scale, 0.5f);
  EXPECT_FALSE(c.ctx.fusions[0].spec.has_residual);
  EXPECT_TRUE(c.ctx.fusions[0].spec.emit.allreduce);
  ASSERT_EQ(c.ctx.rejections.size(), 1u) << DescribeReport(c.ctx);
  const std::string& why = c.ctx.rejections[0].reason;
  EXPECT_NE(why.find("all_reduce %ar0 is scaled by mul %s0 before fused_add_rms_norm"), std::string::npos) << why;
  EXPECT_NE(why.find("only use"), std::string::npos) << why;
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {3, 11});
}

TEST(PassesForms, AScaledLocalChainFusesAtWorldSizeOne) {
  constexpr char kLocal[] = R"(
    func @f(%x: f16[T, 512], %res: f16[T, 512], %g: f16[512]) {
      %s = mul(%x) {scalar = 0.015625}
      %h = add(%res, %s)
      %y = rms_norm(%h, %g) {eps = 1e-5}
      return %y, %h
    }
  )";
  Compiled c = Compile(kLocal, WorldSizeOneLocal());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.fusions[0].spec.local);
  EXPECT_EQ(c.ctx.fusions[0].spec.sum_scale, 0.015625f);
  EXPECT_EQ(CountOp(*c.after, "mul"), 0) << Print(*c.after);
  ExpectBitwiseOutputs(*c.before, *c.after, 1, {1, 5, 33}, {4, 8});
}

// A residual stream kept in f32 (SGLang's fp32_residual, vLLM's f16 Gemma): the first layer adds
// an f16 residual and keeps the f32 sum, the second adds that f32 residual ([B, S, H], viewed as
// rows) and quantizes the norm with a static scale. Both fuse, each with its residual's dtype and
// the f32 output, and change no bit, for the CPU and the CUDA targets (forms/
// f32_residual_stream.tpg). A target whose fused op keeps the residual in f16 says why not.
TEST(PassesForms, AnF32ResidualStreamFusesWithItsDtypes) {
  PassContext cuda;
  cuda.caps = CudaFusionCapabilities();
  EXPECT_EQ(Compile(ReadForm("f32_residual_stream.tpg"), cuda).ctx.fusions.size(), 2u);
  Compiled c = Compile(ReadForm("f32_residual_stream.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 2u) << DescribeReport(c.ctx) << Print(*c.after);
  const AllreduceRmsnormSpec& first = c.ctx.fusions[0].spec;
  const AllreduceRmsnormSpec& second = c.ctx.fusions[1].spec;
  EXPECT_FALSE(first.residual_f32_in) << first.ToString();
  EXPECT_TRUE(second.residual_f32_in) << second.ToString();
  for (const AllreduceRmsnormSpec& spec : {first, second}) {
    EXPECT_TRUE(spec.emit.residual) << spec.ToString();
    EXPECT_TRUE(spec.rounding.residual_out_f32) << spec.ToString();
    EXPECT_TRUE(spec.rounding.norm_input_f32) << spec.ToString();
  }
  EXPECT_EQ(second.quant, QuantMode::kFp8Tensor);
  EXPECT_EQ(CountOp(*c.after, "cast"), 0) << Print(*c.after);
  EXPECT_EQ(c.after->FindValue("h1")->type().ToString(), "f32[B, S, 256]") << Print(*c.after);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {2, 9});
  // Every rank's sum in the residual: values far from bf16's grid still add exactly in f32.
  ExpectBitwiseOutputs(*c.before, *c.after, 3, {7}, {5});
}

TEST(PassesForms, AnF32ResidualStreamOnATargetWithoutOneSaysWhy) {
  PassContext without;
  without.caps.residual_f32 = false;
  Compiled c = Compile(ReadForm("f32_residual_stream.tpg"), without);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.ctx.fusions.size(), 0u) << DescribeReport(c.ctx) << Print(*c.after);
  ASSERT_EQ(c.ctx.rejections.size(), 2u) << DescribeReport(c.ctx);
  EXPECT_NE(c.ctx.rejections[0].reason.find(
                "the f32 residual sum %h0 is also read by add %h1: the target's fused op gives "
                "the residual only rounded to f16"),
            std::string::npos)
      << c.ctx.rejections[0].reason;
  EXPECT_NE(c.ctx.rejections[1].reason.find("the residual %h0 is f32"), std::string::npos)
      << c.ctx.rejections[1].reason;
  // The canonical op written with an f32 residual: the fusion's own reason.
  Compiled canonical = Compile(R"(
    func @f(%x: bf16[T, 64], %res: f32[T, 64], %g: bf16[64]) {
      %a = all_reduce(%x)
      %y, %h = fused_add_rms_norm(%a, %res, %g) {eps = 1e-6, rounding = ["norm_input_f32"]}
      return %y, %h
    }
  )",
                               without);
  ASSERT_TRUE(canonical.ok());
  const std::string why = OnlyRejection(canonical.ctx);
  EXPECT_NE(why.find("backend cpu's fused op keeps the residual in the activation dtype (bf16): an "
                     "f32 residual operand is not supported"),
            std::string::npos)
      << why;
}

// FlashInfer's fusion tests' reference returns the norm and the residual in f32, unrounded
// (forms/flashinfer_f32_reference.tpg): both layers fuse with norm_out_f32 and residual_out_f32,
// for the CPU and the CUDA targets, and change no bit. A quantization of the f32 norm output stays
// unfused and says why: the fused op quantizes the rounded norm.
TEST(PassesForms, AnF32NormOutputFusesUnrounded) {
  PassContext cuda;
  cuda.caps = CudaFusionCapabilities();
  EXPECT_EQ(Compile(ReadForm("flashinfer_f32_reference.tpg"), cuda).ctx.fusions.size(), 2u);
  Compiled c = Compile(ReadForm("flashinfer_f32_reference.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 2u) << DescribeReport(c.ctx) << Print(*c.after);
  for (const FusionRecord& f : c.ctx.fusions) {
    EXPECT_TRUE(f.spec.rounding.norm_out_f32) << f.spec.ToString();
    EXPECT_TRUE(f.spec.rounding.residual_out_f32) << f.spec.ToString();
    EXPECT_EQ(f.spec.weight_bias, 1.0f) << f.spec.ToString();
  }
  EXPECT_EQ(c.after->FindValue("y1")->type().ToString(), "f32[T, 512]") << Print(*c.after);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {2, 9});

  Compiled quantized = Compile(R"(
    func @f(%x: bf16[T, 64], %g: bf16[64]) {
      %a = all_reduce(%x)
      %y = rms_norm(%a, %g) {eps = 1e-6, rounding = ["norm_out_f32"]}
      %q, %s = quant_fp8(%y) {mode = "token"}
      return %q, %s
    }
  )");
  ASSERT_TRUE(quantized.ok());
  ASSERT_EQ(quantized.ctx.fusions.size(), 1u) << DescribeReport(quantized.ctx);
  EXPECT_EQ(quantized.ctx.fusions[0].spec.quant, QuantMode::kNone);
  EXPECT_TRUE(quantized.ctx.fusions[0].spec.rounding.norm_out_f32);
  EXPECT_NE(DescribeReport(quantized.ctx)
                .find("stays unfused: it quantizes the norm output unrounded, in f32; the fused op "
                      "quantizes the norm output rounded to bf16"),
            std::string::npos)
      << DescribeReport(quantized.ctx);
}

TEST(PassesForms, StaticQuantDividesOrMultipliesByTheReciprocal) {
  Compiled c = Compile(ReadForm("vllm_native_static_quant.tpg"));
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 4u) << DescribeReport(c.ctx);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(c.ctx.fusions[i].spec.quant, QuantMode::kFp8Tensor);
    EXPECT_EQ(c.ctx.fusions[i].spec.rounding.scale_op_swapped, i % 2 == 0)
        << c.ctx.fusions[i].spec.ToString();
  }
}

// An inverse scale given as a parameter is not a reciprocal the fused op can take: the quant
// stays outside, the norm fuses, and nothing changes a bit.
TEST(PassesForms, InverseScaleParameterKeepsTheQuantOutside) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %inv: f32[]) {
      %ar = all_reduce(%x)
      %y, %h = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %d = mul(%y, %inv)
      %c = clamp(%d) {min = -448, max = 448}
      %q = cast(%c) {to = f8e4m3}
      return %q, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"ar", QuantMode::kNone, {"norm", "residual"}}});
  EXPECT_GE(Counter(c.ctx, "decomposed_static_quant",
                    "declined: the multiplier is not the reciprocal of a scale (reciprocal(s) or "
                    "pow(s, -1)): quant_fp8 would round differently"),
            1);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5}, {3});
}

// A norm written in bf16 throughout is not what the fused op computes: it stays, and the
// all_reduce's rejection says what follows it.
TEST(PassesForms, Bf16NormIsNotFoldedAndTheReasonSaysWhatFollows) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %sq = pow(%ar) {exponent = 2}
      %var = mean(%sq) {dim = -1, keepdim = true}
      %ve = add(%var) {scalar = 1e-6}
      %rs = rsqrt(%ve)
      %n = mul(%ar, %rs)
      %y = mul(%n, %g)
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  const std::string reason = OnlyRejection(c.ctx);
  EXPECT_EQ(reason.find("not followed by an RMSNorm"), std::string::npos) << reason;
  EXPECT_NE(reason.find("reaches the rsqrt %rs"), std::string::npos) << reason;
  EXPECT_NE(reason.find("pow %sq"), std::string::npos) << reason;
}

TEST(PassesForms, ALayerNormIsNamedAsOne) {
  // Cohere's LayerNorm: the mean subtracted before the variance, and again for the output.
  // (With one subtraction for both, the rest is an RMSNorm of x - mean, and folds as one.)
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %hf = cast(%h) {to = f32}
      %mu = mean(%hf) {dim = -1, keepdim = true}
      %c = sub(%hf, %mu)
      %sq = pow(%c) {exponent = 2}
      %var = mean(%sq) {dim = -1, keepdim = true}
      %ve = add(%var) {scalar = 1e-5}
      %rs = rsqrt(%ve)
      %c2 = sub(%hf, %mu)
      %n = mul(%c2, %rs)
      %gf = cast(%g) {to = f32}
      %y = mul(%gf, %n)
      %yb = cast(%y) {to = bf16}
      return %yb, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  const std::string reason = OnlyRejection(c.ctx);
  EXPECT_NE(reason.find("reaches the rsqrt %rs of a LayerNorm (it subtracts the mean"), std::string::npos)
      << reason;
}

TEST(PassesForms, ALayerNormOfTorchsVarMeanIsNamedAsOne) {
  // F.layer_norm as torch decomposes it: var_mean (kept opaque), rsqrt(var + eps), and the mean
  // subtracted on the other branch, after the rsqrt.
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %hf = cast(%h) {to = f32}
      %var, %mu = opaque(%hf) {name = "aten.var_mean.correction"} : f32[T, 1], f32[T, 1]
      %ve = add(%var) {scalar = 1e-5}
      %rs = rsqrt(%ve)
      %c = sub(%hf, %mu)
      %n = mul(%c, %rs)
      %gf = cast(%g) {to = f32}
      %y = mul(%gf, %n)
      %yb = cast(%y) {to = bf16}
      return %yb, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  const std::string reason = OnlyRejection(c.ctx);
  EXPECT_NE(reason.find("reaches the rsqrt %rs of a LayerNorm (it subtracts the mean"), std::string::npos)
      << reason;
}

TEST(PassesForms, NotFollowedByAnRmsNormOnlyWhenNoneFollows) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %w: bf16[256, 128]) {
      %ar = all_reduce(%x)
      %o = matmul(%ar, %w)
      return %o
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar is not followed by an RMSNorm (its only use is matmul %o)");
}

// Both operands of the add are the all_reduce: a rejection with its reason, never an error.
TEST(PassesForms, AllReduceAddedToItselfIsARejection) {
  for (const char* text : {R"(
    func @f(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %y, %h = fused_add_rms_norm(%ar, %ar, %g) {eps = 1e-6}
      return %y, %h
    })",
                           R"(
    func @f(%x: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %ar)
      %y = rms_norm(%h, %g) {eps = 1e-6}
      return %y, %h
    })"}) {
    Compiled c = Compile(text);
    ASSERT_TRUE(c.ok()) << c.status.ToString();
    EXPECT_NE(OnlyRejection(c.ctx).find("adds all_reduce %ar to itself"), std::string::npos)
        << DescribeReport(c.ctx);
    EXPECT_EQ(CountOp(*c.after, "all_reduce"), 1);
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {3}, {5});
  }
}

// ---------------------------------------------------------------- world size 1 and local chains

constexpr char kTwoNorms[] = R"(
  func @f(%emb: bf16[T, 256], %x: bf16[T, 256], %g0: bf16[256], %g1: bf16[256], %w: bf16[256, 256]) {
    %y0 = rms_norm(%emb, %g0) {eps = 1e-6}
    %q0, %s0 = quant_fp8(%y0) {mode = "group", group_size = 128}
    %p = matmul(%y0, %w)
    %ar = all_reduce(%p)
    %h = add(%ar, %emb)
    %y1 = rms_norm(%h, %g1) {eps = 1e-6}
    return %q0, %s0, %y1, %h
  }
)";

TEST(PassesForms, WorldSizeOneFusesEveryChainLocally) {
  Compiled c = Compile(kTwoNorms, WorldSizeOneLocal());
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 2u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  for (const FusionRecord& f : c.ctx.fusions) EXPECT_TRUE(f.spec.local) << f.spec.ToString();
  EXPECT_EQ(CountOp(*c.after, "all_reduce"), 0) << Print(*c.after);
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 2) << Print(*c.after);
  ExpectBitwiseOutputs(*c.before, *c.after, 1, {1, 5, 33}, {2, 9});
}

TEST(PassesForms, WorldSizeOneWithoutLocalFusionSaysSo) {
  PassContext ctx;
  ctx.world_size = 1;
  Compiled c = Compile(kTwoNorms, ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c.ctx.fusions.empty());
  EXPECT_NE(OnlyRejection(c.ctx).find("local fusion is off"), std::string::npos);
}

TEST(PassesForms, LocalChainsAtWorldSizeTwo) {
  PassContext ctx;
  ctx.world_size = 2;
  ctx.fuse_local = true;
  Compiled c = Compile(kTwoNorms, ctx);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 2u) << DescribeReport(c.ctx);
  EXPECT_FALSE(c.ctx.fusions[0].spec.local);  // the all_reduce's chain comes first
  EXPECT_TRUE(c.ctx.fusions[1].spec.local);
  EXPECT_EQ(c.ctx.fusions[1].anchor, "emb");
  EXPECT_EQ(c.ctx.fusions[1].spec.quant, QuantMode::kFp8Group);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {4});
}

// A norm the canonicalizer leaves in ops and no all_reduce feeds is reported among the local
// chains left unfused, with the canonicalizer's reason; one an all_reduce reaches is reported
// once, by that all_reduce.
TEST(PassesForms, ANormLeftInOpsIsReportedOnceWithTheReason) {
  PassContext ctx;
  ctx.world_size = 2;
  ctx.fuse_local = true;
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %e: bf16[T, 256], %g: bf16[256]) {
      %sq = pow(%e) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%e, %r)
      %y = mul(%n, %g)
      %ar = all_reduce(%x)
      %sq2 = pow(%ar) {exponent = 2}
      %m2 = mean(%sq2) {dim = -1, keepdim = true}
      %me2 = add(%m2) {scalar = 1e-6}
      %r2 = rsqrt(%me2)
      %n2 = mul(%ar, %r2)
      %y2 = mul(%n2, %g)
      return %y, %y2
    }
  )", ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c.ctx.fusions.empty()) << DescribeReport(c.ctx);
  const std::string bf16 =
      "the norm is computed in bf16, not in f32: folding would change its result";
  EXPECT_NE(
      OnlyRejection(c.ctx).find("rsqrt %r2 of an RMSNorm that stays as written (" + bf16 + ")"),
      std::string::npos)
      << DescribeReport(c.ctx);
  ASSERT_EQ(c.ctx.local_unfused.size(), 1u) << DescribeReport(c.ctx);
  EXPECT_EQ(c.ctx.local_unfused[0].anchor, "r");
  EXPECT_EQ(c.ctx.local_unfused[0].reason,
            "the RMSNorm whose rsqrt is %r stays as written: " + bf16);
}

// vLLM's dynamic per-tensor QuantFP8: the scale is the amax of the whole norm output, so the
// quant reads a scale computed from the chain's own result and stays in the graph; the norm
// fuses, and the note says why the quant did not. (The whole-tensor max is opaque: no backend
// runs this graph, so only the decision is checked.)
TEST(PassesForms, APerTensorScaleComputedFromTheNormStaysWithTheReason) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %ar = all_reduce(%x)
      %h = add(%ar, %res)
      %v = cast(%h) {to = f32}
      %sq = pow(%v) {exponent = 2}
      %m = mean(%sq) {dim = -1, keepdim = true}
      %me = add(%m) {scalar = 1e-6}
      %r = rsqrt(%me)
      %n = mul(%v, %r)
      %c = cast(%n) {to = bf16}
      %y = mul(%c, %g)
      %ab = abs(%y)
      %am = opaque(%ab) {name = "aten.max.default"} : bf16[]
      %amf = cast(%am) {to = f32}
      %s = div(%amf) {scalar = 448}
      %yf = cast(%y) {to = f32}
      %d = div(%yf, %s)
      %cl = clamp(%d) {min = -448, max = 448}
      %q = cast(%cl) {to = f8e4m3}
      return %q, %s, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx);
  EXPECT_EQ(c.ctx.fusions[0].spec.quant, QuantMode::kNone);
  std::string notes;
  for (const std::string& n : c.ctx.fusions[0].notes) notes += n + "\n";
  EXPECT_NE(notes.find("the per-tensor scale %s of quant_fp8 %q is computed from %y, a result of "
                       "the chain (a dynamic per-tensor scale)"),
            std::string::npos)
      << notes;
}

// A quantization the graph calls as an opaque op (vLLM's NVFP4 quant) reads the emitted norm;
// the fusion's notes name it.
TEST(PassesForms, AnOpaqueQuantizationOfTheNormIsNamedInTheNotes) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %gs: f32[]) {
      %ar = all_reduce(%x)
      %y, %h = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %sf = opaque(%y, %gs) {name = "vllm._C.scaled_fp4_quant"} : i32[T, 32], i32[T, 16]
      return %q, %sf, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx);
  std::string notes;
  for (const std::string& n : c.ctx.fusions[0].notes) notes += n + "\n";
  EXPECT_NE(notes.find("the norm output is quantized by vllm._C.scaled_fp4_quant (opaque %q), an "
                       "op the compiler cannot see into"),
            std::string::npos)
      << notes;
}

// The reason names the ops of the user's graph, not the cast that writes out the promotion of
// the bf16 all_reduce for its multiply by an f32 scale.
TEST(PassesForms, AReasonNamesNoCastTheCompilerWrote) {
  Compiled c = Compile(R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %s: f32[256]) {
      %ar = all_reduce(%x)
      %m = mul(%ar, %s)
      %h = add(%m, %res)
      %y = rms_norm(%h, %g) {eps = 1e-6}
      return %y
    }
  )");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %ar reaches fused_add_rms_norm %y only through mul %m, which the fused op "
            "cannot take over (its only use is mul %m)");
}

// Sandwich norms (sandwich.tpg: Gemma 2/3's written-out norms, GLM-4's LlamaRMSNorm with another
// eps before the add): each all_reduce, the norm of its sum, the residual add and the next norm
// become one fused op (pre_residual_norm, pre_eps the first norm's), bitwise the graph it
// replaced. Backend CUDA takes it at world size 1 (a local op), and at world size 2 fuses the
// all_reduce with the first norm and the add with the next as a local op, with a note that says
// why; bitwise too. A first norm whose output is read elsewhere, or whose weight is applied in
// another form, leaves the add and the next norm a chain of their own, with the reason.
TEST(PassesForms, SandwichNormsFuseWithTheResidualAddAndTheNextNorm) {
  const std::string text = ReadForm("sandwich.tpg");
  Compiled c = Compile(text);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 2u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  const float pre_eps[] = {1e-6f, 1e-5f};
  for (size_t i = 0; i < 2; ++i) {
    const AllreduceRmsnormSpec& spec = c.ctx.fusions[i].spec;
    EXPECT_TRUE(spec.pre_residual_norm) << spec.ToString();
    EXPECT_EQ(spec.pre_eps, pre_eps[i]) << spec.ToString();
    EXPECT_EQ(spec.eps, 1e-6f) << spec.ToString();
    EXPECT_EQ(spec.emit, (EmitSet{.norm = true, .residual = true})) << spec.ToString();
  }
  EXPECT_EQ(c.ctx.fusions[0].spec.weight_bias, 1.0f);
  EXPECT_TRUE(c.ctx.fusions[1].spec.rounding.weight_after_round);
  EXPECT_EQ(CountOp(*c.after, "allreduce_rmsnorm"), 2) << Print(*c.after);
  EXPECT_EQ(int(c.after->nodes().size()), 4) << Print(*c.after);  // and the two matmuls
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {1, 7, 1234});
  ExpectBitwiseOutputs(*c.before, *c.after, 3, {7}, {5});

  for (int world_size : {1, 2}) {
    SCOPED_TRACE(world_size);
    PassContext cuda;
    cuda.caps = CudaFusionCapabilities();
    cuda.world_size = world_size;
    cuda.fuse_local = true;
    Compiled on_cuda = Compile(text, cuda);
    ASSERT_TRUE(on_cuda.ok());
    EXPECT_TRUE(on_cuda.ctx.rejections.empty()) << DescribeReport(on_cuda.ctx);
    EXPECT_EQ(CountOp(*on_cuda.after, "all_reduce"), 0) << Print(*on_cuda.after);
    EXPECT_EQ(CountOp(*on_cuda.after, "rsqrt"), 0) << Print(*on_cuda.after);
    ExpectBitwiseOutputs(*on_cuda.before, *on_cuda.after, world_size, {1, 33}, {3});
    const std::vector<FusionRecord>& fused = on_cuda.ctx.fusions;
    if (world_size == 1) {
      ASSERT_EQ(fused.size(), 2u) << DescribeReport(on_cuda.ctx);
      for (const FusionRecord& f : fused) EXPECT_TRUE(f.spec.pre_residual_norm && f.spec.local) << f.spec.ToString();
      continue;
    }
    ASSERT_EQ(fused.size(), 4u) << DescribeReport(on_cuda.ctx);
    for (const std::string& y : {"y0", "y2"}) {
      const auto f = std::find_if(fused.begin(), fused.end(), [&](const FusionRecord& r) {
        return !r.spec.local && !r.notes.empty() && r.notes[0].find("read %" + y + " ") != std::string::npos;
      });
      ASSERT_NE(f, fused.end()) << y << "\n" << DescribeReport(on_cuda.ctx);
      EXPECT_FALSE(f->spec.pre_residual_norm);
      EXPECT_EQ(f->notes[0], StrCat("the residual add and the norm that read %", y,
                                    " are not taken over: backend cuda's fused op runs a norm before the residual "
                                    "add at world size 1 only, not 2"));
    }
  }

  // The first norm's output read elsewhere (returned), or its weight applied in another form (no
  // weight_bias where the next norm's is 1): the norm's chain fuses alone.
  for (const char* change : {"return %p2, %h1, %y0", "%gb1 = add(%gf1) {scalar = 0}"}) {
    SCOPED_TRACE(change);
    std::string other = text;
    if (std::string(change).starts_with("return")) {
      other.replace(other.find("return %p2, %h1"), std::string("return %p2, %h1").size(), change);
    } else {
      const std::string was = "%gb1 = add(%gf1) {scalar = 1}";
      other.replace(other.find(was), was.size(), change);
    }
    Compiled apart = Compile(other);
    ASSERT_TRUE(apart.ok());
    ASSERT_FALSE(apart.ctx.fusions.empty()) << DescribeReport(apart.ctx);
    const FusionRecord& first = apart.ctx.fusions[0];
    EXPECT_EQ(first.anchor, "ar0");
    EXPECT_FALSE(first.spec.pre_residual_norm) << first.spec.ToString();
    if (std::string(change).starts_with("%gb1")) {
      ASSERT_FALSE(first.notes.empty());
      EXPECT_NE(first.notes[0].find("the two norms apply their weights in different forms"), std::string::npos)
          << first.notes[0];
    }
    ExpectBitwiseOutputs(*apart.before, *apart.after, 2, {5}, {9});
  }
}

// The one fusion of `c`, of all_reduces `anchor` and `second` (second_sum), which leaves no
// rejection, no all_reduce and none of the adds and scales between them, and emits the norm and
// the residual; null (and a failure) when `c` has not exactly one fusion.
const FusionRecord* OneFusionOfBoth(const Compiled& c, const std::string& anchor, const std::string& second) {
  EXPECT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.rejections.empty()) << DescribeReport(c.ctx);
  if (c.ctx.fusions.size() != 1) return nullptr;
  const FusionRecord& f = c.ctx.fusions[0];
  EXPECT_EQ(f.anchor, anchor);
  EXPECT_EQ(f.second_anchor, second);
  EXPECT_TRUE(f.spec.second_sum) << f.spec.ToString();
  EXPECT_EQ(f.spec.emit, (EmitSet{.norm = true, .residual = true})) << f.spec.ToString();
  for (const char* op : {"all_reduce", "add", "mul"}) EXPECT_EQ(CountOp(*c.after, op), 0) << op << Print(*c.after);
  return &f;
}

// Two all_reduces summed before the residual add (Granite-MoE's `moe + shared_mlp`, then the
// scaled residual add; Falcon-H1's two mixers, each scaled; the sum alone): one fused op takes
// both over (second_sum, the scales where the graph scales), in either operand order, and
// changes no bit; for the CUDA target too. A backend without it leaves both with that reason.
TEST(PassesForms, TwoAllReducesSummedBeforeTheNormFuseAsOne) {
  struct Case {
    const char* sum;
    float first, second, outer;
  };
  for (const Case& k : {Case{"%s = add(%a1, %a2)\n %m = mul(%s) {scalar = 0.22}", 1.0f, 1.0f, 0.22f},
                        Case{"%s = add(%a2, %a1)\n %m = mul(%s) {scalar = 0.22}", 1.0f, 1.0f, 0.22f},
                        Case{"%m1 = mul(%a1) {scalar = 0.5}\n %m2 = mul(%a2) {scalar = 3.0}\n"
                             " %m = add(%m2, %m1)",
                             0.5f, 3.0f, 1.0f},
                        Case{"%m = add(%a1, %a2)", 1.0f, 1.0f, 1.0f}}) {
    SCOPED_TRACE(k.sum);
    const std::string text = StrCat(R"(
      func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
        %a1 = all_reduce(%x1)
        %a2 = all_reduce(%x2)
        )", k.sum, R"(
        %h = add(%res, %m)
        %y = rms_norm(%h, %g) {eps = 1e-6}
        return %y, %h
      }
    )");
    Compiled c = Compile(text);
    ASSERT_TRUE(c.ok());
    const FusionRecord* fused = OneFusionOfBoth(c, "a1", "a2");
    ASSERT_NE(fused, nullptr);
    const FusionRecord& f = *fused;
    EXPECT_FALSE(f.spec.second_sum_into_residual) << f.spec.ToString();
    EXPECT_EQ(f.spec.first_scale, k.first) << f.spec.ToString();
    EXPECT_EQ(f.spec.second_scale, k.second) << f.spec.ToString();
    EXPECT_EQ(f.spec.sum_scale, k.outer) << f.spec.ToString();
    ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {3, 17});
    ExpectBitwiseOutputs(*c.before, *c.after, 3, {7}, {5});

    PassContext cuda;
    cuda.caps = CudaFusionCapabilities();
    Compiled on_cuda = Compile(text, cuda);
    ASSERT_TRUE(on_cuda.ok());
    ASSERT_EQ(on_cuda.ctx.fusions.size(), 1u) << DescribeReport(on_cuda.ctx);
    EXPECT_EQ(on_cuda.ctx.fusions[0].spec.ToString(), f.spec.ToString());
    PassContext without;
    without.caps = CpuFusionCapabilities();
    without.caps.second_sum = false;
    Compiled refused = Compile(text, without);
    ASSERT_TRUE(refused.ok());
    EXPECT_TRUE(refused.ctx.fusions.empty()) << DescribeReport(refused.ctx);
    ASSERT_EQ(refused.ctx.rejections.size(), 2u) << DescribeReport(refused.ctx);
    for (const Rejection& r : refused.ctx.rejections)
      EXPECT_EQ(r.reason, "backend cpu's fused op reduces one all_reduce: two all_reduces summed before the norm "
                          "are not supported");
  }
}

// Two summed all_reduces whose sum, or one of whose sums, is read outside the chain: the fused op
// returns neither, so both stay, each with a reason that names the value read elsewhere. Rank-3
// sums ([B, S, H]) fuse on rows, x2 viewed like x.
TEST(PassesForms, TwoSummedAllReducesReadElsewhereStayAndRank3Fuses) {
  for (const char* extra : {"%a2", "%s"}) {
    SCOPED_TRACE(extra);
    Compiled c = Compile(StrCat(R"(
      func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
        %a1 = all_reduce(%x1)
        %a2 = all_reduce(%x2)
        %s = add(%a1, %a2)
        %y, %h = fused_add_rms_norm(%s, %res, %g) {eps = 1e-6}
        return %y, %h, )", extra, R"(
      }
    )"));
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c.ctx.fusions.empty()) << DescribeReport(c.ctx);
    ASSERT_EQ(c.ctx.rejections.size(), 2u) << DescribeReport(c.ctx);
    EXPECT_NE(c.ctx.rejections[0].reason.find(StrCat(
                  "all_reduce %a1 and all_reduce %a2 are summed by add %s before fused_add_rms_norm %y, but ", extra,
                  " is also read outside that chain (")),
              std::string::npos)
        << c.ctx.rejections[0].reason;
    EXPECT_NE(c.ctx.rejections[0].reason.find("the fused op of two summed all_reduces returns neither sum nor "
                                              "their sum"),
              std::string::npos)
        << c.ctx.rejections[0].reason;
  }
  // The norm adds one of the sums as its residual too: no residual for the fused op.
  Compiled self = Compile(R"(
    func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %g: bf16[256]) {
      %a1 = all_reduce(%x1)
      %a2 = all_reduce(%x2)
      %s = add(%a1, %a2)
      %y, %h = fused_add_rms_norm(%s, %a2, %g) {eps = 1e-6}
      return %y, %h
    }
  )");
  ASSERT_TRUE(self.ok());
  EXPECT_TRUE(self.ctx.fusions.empty()) << DescribeReport(self.ctx);
  ASSERT_FALSE(self.ctx.rejections.empty()) << DescribeReport(self.ctx);
  EXPECT_NE(self.ctx.rejections[0].reason.find("and %a2 is the residual too"), std::string::npos)
      << self.ctx.rejections[0].reason;
  ExpectBitwiseOutputs(*self.before, *self.after, 2, {3}, {2});

  Compiled c = Compile(R"(
    func @f(%x1: bf16[B, S, 256], %x2: bf16[B, S, 256], %res: bf16[B, S, 256], %g: bf16[256]) {
      %a1 = all_reduce(%x1)
      %a2 = all_reduce(%x2)
      %s = add(%a1, %a2)
      %y, %h = fused_add_rms_norm(%s, %res, %g) {eps = 1e-6}
      return %y, %h
    }
  )");
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c.ctx.fusions.size(), 1u) << DescribeReport(c.ctx) << Print(*c.after);
  EXPECT_TRUE(c.ctx.fusions[0].spec.second_sum);
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5}, {9});

  // World size 1: the all_reduces are the identity; the chain fuses as a local op that reads both
  // partials as the two sums, and neither all_reduce stays.
  Compiled one = Compile(R"(
    func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %a1 = all_reduce(%x1)
      %a2 = all_reduce(%x2)
      %s = add(%a1, %a2)
      %y, %h = fused_add_rms_norm(%s, %res, %g) {eps = 1e-6}
      return %y, %h
    }
  )", WorldSizeOneLocal());
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one.ctx.fusions.size(), 1u) << DescribeReport(one.ctx);
  EXPECT_TRUE(one.ctx.fusions[0].spec.local);
  EXPECT_TRUE(one.ctx.fusions[0].spec.second_sum);
  EXPECT_TRUE(one.ctx.rejections.empty()) << DescribeReport(one.ctx);
  for (const char* op : {"all_reduce", "add"}) EXPECT_EQ(CountOp(*one.after, op), 0) << op << Print(*one.after);
  ExpectBitwiseOutputs(*one.before, *one.after, 1, {1, 5}, {9});
}

// Two all_reduces added to the residual one after the other (`residual + attention + mlp`:
// Cohere2-MoE's and LongCat-Flash's parallel blocks): one fused op takes both, the first into the
// residual (second_sum_into_residual), whichever all_reduce comes first in the graph, and changes
// no bit; with the second scaled too. A backend without second_sum fuses the norm's own
// all_reduce with the first's sum in its residual, and the first's reason names the backend.
TEST(PassesForms, AnAllReduceInTheResidualOfAnotherAllReducesNormFusesWithIt) {
  for (const bool fused_first : {false, true}) {
    for (const char* h1 : {"%h1 = add(%res, %a1)", "%s1 = mul(%a1) {scalar = 0.5}\n %h1 = add(%s1, %res)"}) {
      SCOPED_TRACE(StrCat(fused_first ? "the norm's all_reduce first, " : "the norm's all_reduce second, ", h1));
      const std::string ar1 = "%a1 = all_reduce(%x1)\n";
      const std::string ar2 = "%a2 = all_reduce(%x2)\n";
      const std::string text = StrCat(R"(
        func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
          )", fused_first ? ar2 + ar1 : ar1 + ar2, h1, R"(
          %h2 = add(%h1, %a2)
          %y = rms_norm(%h2, %g) {eps = 1e-6}
          return %y, %h2
        }
      )");
      Compiled c = Compile(text);
      ASSERT_TRUE(c.ok());
      const FusionRecord* f = OneFusionOfBoth(c, "a2", "a1");
      ASSERT_NE(f, nullptr);
      EXPECT_TRUE(f->spec.second_sum_into_residual) << f->spec.ToString();
      EXPECT_EQ(f->spec.second_scale, std::string(h1).find("0.5") != std::string::npos ? 0.5f : 1.0f);
      ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5, 33}, {3, 8});

      PassContext without;
      without.caps = CpuFusionCapabilities();
      without.caps.second_sum = false;
      Compiled one = Compile(text, without);
      ASSERT_TRUE(one.ok());
      ExpectFusions(one.ctx, {{"a2", QuantMode::kNone, {"norm", "residual"}}});
      EXPECT_EQ(OnlyRejection(one.ctx), "backend cpu's fused op reduces one all_reduce: two all_reduces summed "
                                        "before the norm are not supported");
      ExpectBitwiseOutputs(*one.before, *one.after, 2, {1, 5}, {3});
    }
  }
  // The residual stream plus the first sum, read elsewhere too: the norm's own all_reduce fuses
  // with it in its residual, and the first's reason names the read.
  Compiled c = Compile(R"(
    func @f(%x1: bf16[T, 256], %x2: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {
      %a1 = all_reduce(%x1)
      %a2 = all_reduce(%x2)
      %h1 = add(%res, %a1)
      %h2 = add(%h1, %a2)
      %y = rms_norm(%h2, %g) {eps = 1e-6}
      return %y, %h2, %h1
    }
  )");
  ASSERT_TRUE(c.ok());
  ExpectFusions(c.ctx, {{"a2", QuantMode::kNone, {"norm", "residual"}}});
  EXPECT_EQ(OnlyRejection(c.ctx),
            "all_reduce %a2 and all_reduce %a1 meet in fused_add_rms_norm %y (all_reduce %a1 through add %h1, its "
            "residual), but %h1 is also read outside that chain (its uses are the return and fused_add_rms_norm %y): "
            "the fused op of two summed all_reduces returns neither sum nor the residual it adds the second to");
  ExpectBitwiseOutputs(*c.before, *c.after, 2, {1, 5}, {3});
}

// ---------------------------------------------------------------- the compile API

TEST(PassesCompileApi, TextInTextAndReportOut) {
  CompileOptions options;
  options.world_size = 2;
  StatusOr<CompileResult> r = CompileModuleText(ReadForm("vllm_native_static_quant.tpg"), options,
                                                "vllm.tpg");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NE(r->text.find("allreduce_rmsnorm"), std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(r->json);
  EXPECT_EQ(j["source"], "vllm.tpg");
  ASSERT_EQ(j["fusions"].size(), 4u);
  EXPECT_EQ(j["fusions"][0]["rounding"],
            nlohmann::json({"norm_input_f32", "weight_after_round", "scale_op_swapped"}));
  EXPECT_EQ(j["fusions"][1]["rounding"],
            nlohmann::json({"norm_input_f32", "weight_after_round"}));
  EXPECT_EQ(j["rejections"].size(), 0u);

  StatusOr<CompileResult> bad = CompileModuleText("func @f(", options, "bad.tpg");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.tpg:1:"), std::string::npos)
      << bad.status().message();
  options.world_size = 0;
  EXPECT_FALSE(CompileModuleText(ReadForm("gemma.tpg"), options).ok());
}

TEST(PassesCompileApi, FuseLocalFollowsTheBackendAndTheWorldSize) {
  CompileOptions options;
  options.world_size = 1;
  EXPECT_TRUE(options.FusesLocal());
  options.world_size = 2;
  EXPECT_FALSE(options.FusesLocal());
  // auto on CUDA: the fused local op was measured faster than Inductor's kernel.
  options.caps = CudaFusionCapabilities();
  EXPECT_TRUE(options.FusesLocal());
  options.world_size = 1;
  EXPECT_TRUE(options.FusesLocal());
  options.fuse_local = FuseLocal::kOff;
  EXPECT_FALSE(options.FusesLocal());
  options.caps = CpuFusionCapabilities();
  options.world_size = 2;
  options.fuse_local = FuseLocal::kAuto;
  EXPECT_FALSE(options.FusesLocal());
  options.fuse_local = FuseLocal::kOn;
  EXPECT_TRUE(options.FusesLocal());
  options.world_size = 1;
  options.fuse_local = FuseLocal::kOff;
  EXPECT_FALSE(options.FusesLocal());
  EXPECT_FALSE(ParseFuseLocal("sometimes").ok());
}

// A local chain left unfused is no rejection, but the report says it and why (the norm input's
// name), per func and merged: here an H that is a symbol (torch.compile's dynamic=True on an
// unspecialized weight).
TEST(PassesCompileApi, LocalChainsLeftUnfusedAreReportedWithTheReason) {
  CompileOptions options;
  options.world_size = 1;
  options.fuse_local = FuseLocal::kOn;
  StatusOr<CompileResult> r = CompileModuleText(
      "func @f(%x: bf16[T, H], %res: bf16[T, H], %w: bf16[H]) {\n"
      "  %y, %h = fused_add_rms_norm(%x, %res, %w) {eps = 1e-6}\n"
      "  return %y, %h\n"
      "}\n",
      options, "dyn.tpg");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const nlohmann::json j = nlohmann::json::parse(r->json);
  EXPECT_EQ(j["fusions"].size(), 0u);
  EXPECT_EQ(j["rejections"].size(), 0u);
  ASSERT_EQ(j["local_unfused"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["local_unfused"][0]["anchor"], "x");
  EXPECT_EQ(j["local_unfused"][0]["func"], "f");
  EXPECT_NE(j["local_unfused"][0]["reason"].get<std::string>().find("with a constant H"),
            std::string::npos)
      << j.dump(2);
  ASSERT_EQ(j["funcs"][0]["local_unfused"].size(), 1u);
  EXPECT_EQ(j["funcs"][0]["local_unfused"][0]["reason"], j["local_unfused"][0]["reason"]);
}

// ---------------------------------------------------------------- local chains against Inductor

// A table of one loss, as run 12 measured it (fp8_token with the residual add at H 8192 from
// T 4096), for the rule's mechanics.
constexpr MeasuredLoss kTokenLoss[] = {{QuantMode::kFp8Token, true, 8192, 4096}};

AllreduceRmsnormSpec LocalSpec(QuantMode quant, bool residual, int64_t hidden) {
  AllreduceRmsnormSpec spec;
  spec.quant = quant;
  spec.has_residual = residual;
  spec.hidden = hidden;
  spec.local = true;
  return spec;
}

TEST(PassesLocalFusion, TheMeasuredTableIsWellFormed) {
  const std::span<const int64_t> hidden = MeasuredHidden();
  EXPECT_TRUE(std::is_sorted(hidden.begin(), hidden.end()));
  for (size_t i = 0; i < MeasuredLosses().size(); ++i) {
    const MeasuredLoss& loss = MeasuredLosses()[i];
    EXPECT_NE(std::find(hidden.begin(), hidden.end(), loss.hidden), hidden.end()) << loss.hidden;
    EXPECT_GE(loss.from_tokens, 1);
    for (size_t j = 0; j < i; ++j) {  // one entry per chain kind
      const MeasuredLoss& other = MeasuredLosses()[j];
      EXPECT_FALSE(other.quant == loss.quant && other.residual == loss.residual && other.hidden == loss.hidden)
          << QuantModeName(loss.quant) << " " << loss.hidden;
    }
  }
}

TEST(PassesLocalFusion, InductorsMeasuredWinsFollowTheMeasurement) {
  // Run 45 (docs/perf/h200x1/inductor_epilogue.md). A layer's epilogue (the residual add) at the
  // model widths: the fused op at least as fast in every quant mode, for any T.
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int64_t h : {1024, 2048, 2880, 4096, 5120, 7168, 8192})
      EXPECT_EQ(WhyInductorIsFaster(LocalSpec(q, true, h), 0), "") << QuantModeName(q) << " " << h;
  // q_norm / k_norm over heads of 128 (the norm alone; rows packed into blocks): Inductor's from
  // 65536 rows (run 57's fused op against run 45's Inductor kernel, the fastest measured).
  const AllreduceRmsnormSpec head = LocalSpec(QuantMode::kNone, false, 128);
  const std::string why = WhyInductorIsFaster(head, 0);
  EXPECT_NE(why.find("none of the norm alone at H 128 from 65536 rows"), std::string::npos) << why;
  EXPECT_NE(why.find("a number of rows with no bound"), std::string::npos) << why;
  EXPECT_EQ(WhyInductorIsFaster(head, 65535), "");
  EXPECT_NE(WhyInductorIsFaster(head, 65536), "");
  // The dynamic modes at heads of 64-256: the fused op's at every T measured, against Inductor's
  // fastest run; MLA's kv_a_layernorm (H 512, the norm alone) Inductor's from 16384 rows (run
  // 60's fused op, a warp per row, against run 57's Inductor kernel), fp8_tensor, fp8_token and
  // fp8_group + norm the fused op's; DeepSeek's q_a_layernorm (H 1536) the fused op's.
  for (QuantMode q : {QuantMode::kFp8Token, QuantMode::kFp8Group})
    for (int64_t h : {64, 128, 256})
      for (bool residual : {true, false})
        EXPECT_EQ(WhyInductorIsFaster(LocalSpec(q, residual, h), 0), "") << QuantModeName(q) << " " << h;
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 512), 0), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 512), 16384), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 512), 16383), "");
  for (QuantMode q : {QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group})
    EXPECT_EQ(WhyInductorIsFaster(LocalSpec(q, false, 512), 0), "") << QuantModeName(q);
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 1536), 0), "");
  // fp8_token at H 512 with the residual: the fused op's at every T measured (0.98 x at 262144
  // rows, run 60); the norm alone at H 1024 (run 58) Inductor's from T 2048.
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 512), 0), "");
  // H 384 (run 60): quant none with the residual Inductor's from 65536 rows, the norm alone from
  // 16384; fp8_tensor's norm alone the fused op's. H 320 is as near 256 as 384: a tie, the larger.
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, true, 384), 65535), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, true, 384), 65536), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 384), 16384), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Tensor, false, 384), 0), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Tensor, true, 384), 65535), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Tensor, true, 384), 65536), "");
  // An f32 residual stream at rows of one or two warps (no packed rows for its kernels):
  // Inductor's from 2048 rows; at the model widths the fused op's (run 100: 0.47-0.98 x).
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Group}) {
    AllreduceRmsnormSpec s = LocalSpec(q, true, 256);
    s.residual_f32_in = true;
    EXPECT_EQ(WhyInductorIsFaster(s, 2047), "") << QuantModeName(q);
    const std::string f32_why = WhyInductorIsFaster(s, 0);
    EXPECT_NE(f32_why.find("(an f32 residual stream or norm output) hold rows of H <= 512 one to a block"),
              std::string::npos)
        << f32_why;
    s.residual_f32_in = false;
    s.rounding.residual_out_f32 = true;
    EXPECT_NE(WhyInductorIsFaster(s, 2048), "") << QuantModeName(q);
    s.hidden = 4096;
    EXPECT_EQ(WhyInductorIsFaster(s, 0), "") << QuantModeName(q);
  }
  // Quant none at H 512 with the residual: Inductor's from 16384 rows since run 60 (1.02-1.08 x).
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, true, 512), 16383), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, true, 512), 16384), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, true, 320), 0).find("H 384, the measured H nearest 320"),
            std::string::npos);
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 1024), 2047), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 1024), 2048), "");
  // The norm alone at H 7168 (a first layer's norm): Inductor's from T 2048, the fused op's below.
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 7168), 2048), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 7168), 1024), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Group, false, 7168), 0), "");

  for (const MeasuredLoss& loss : kTokenLoss) {
    const AllreduceRmsnormSpec spec = LocalSpec(loss.quant, loss.residual, loss.hidden);
    const std::string token_why = WhyInductorIsFaster(spec, /*max_tokens=*/0, kTokenLoss);
    EXPECT_NE(token_why.find(StrCat(QuantModeName(loss.quant), " with the residual add at H ", loss.hidden,
                                    " from ", loss.from_tokens, " rows")),
              std::string::npos)
        << token_why;
    EXPECT_NE(WhyInductorIsFaster(spec, loss.from_tokens, kTokenLoss), "");
    EXPECT_EQ(WhyInductorIsFaster(spec, loss.from_tokens - 1, kTokenLoss), "");
  }
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Group, true, 8192), 0, kTokenLoss), "");  // another mode
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, false, 8192), 0, kTokenLoss), "");  // the norm alone
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 4096), 8192, kTokenLoss), "");  // another H
  // An unmeasured H follows the nearest measured one; a tie the larger.
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 8000), 0, kTokenLoss)
                .find("H 8192, the measured H nearest 8000"),
            std::string::npos);
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 7680), 0, kTokenLoss), "");  // the tie
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 5120), 0, kTokenLoss), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 16384), 5000, kTokenLoss), "");
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kFp8Token, true, 16384), 4095, kTokenLoss), "");
  EXPECT_NE(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 96), 0).find("H 128, the measured H nearest 96"),
            std::string::npos);
  EXPECT_EQ(WhyInductorIsFaster(LocalSpec(QuantMode::kNone, false, 96), 65535), "");
}

// A local fp8_token chain at H 8192 (kTokenLoss lists it from T 4096) and an fp8_group one.
std::string LocalChains(const std::string& rows) {
  return StrCat(R"(
  func @f(%x: bf16[)", rows, R"(, 8192], %r: bf16[)", rows, R"(, 8192], %g0: bf16[8192], %g1: bf16[8192]) {
    %h = add(%x, %r)
    %y0 = rms_norm(%h, %g0) {eps = 1e-6}
    %q0, %s0 = quant_fp8(%y0) {mode = "token"}
    %y1 = rms_norm(%x, %g1) {eps = 1e-6}
    %q1, %s1 = quant_fp8(%y1) {mode = "group", group_size = 128}
    return %q0, %s0, %h, %q1, %s1
  }
)");
}

int LocalFusions(const CompileResult& r) {
  return int(nlohmann::json::parse(r.json)["fusions"].size());
}

TEST(PassesLocalFusion, TheInductorRuleLeavesInductorsFasterChainsAlone) {
  CompileOptions options;
  options.world_size = 2;
  options.caps = CudaFusionCapabilities();
  options.fuse_local = FuseLocal::kAuto;  // against tpfuse's own unfused ops: both fused
  StatusOr<CompileResult> r = CompileModuleText(LocalChains("T"), options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(LocalFusions(*r), 2);

  options.fuse_local = FuseLocal::kInductor;  // the measured table lists neither: both fused
  r = CompileModuleText(LocalChains("T"), options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(LocalFusions(*r), 2);

  options.inductor_losses = kTokenLoss;  // T unknown: the fp8_token chain stays
  r = CompileModuleText(LocalChains("T"), options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const nlohmann::json j = nlohmann::json::parse(r->json);
  ASSERT_EQ(j["fusions"].size(), 1u) << r->json;
  EXPECT_EQ(j["fusions"][0]["quant"], "fp8_group");
  EXPECT_EQ(j["fuse_local_mode"], "inductor");
  EXPECT_EQ(j["counters"]["fuse_allreduce_epilogue"]["local not fused: Inductor's kernel measured faster"], 1) << r->json;
  EXPECT_NE(r->text.find("quant_fp8(%y0)"), std::string::npos) << r->text;
  ASSERT_EQ(r->funcs.size(), 1u);
  ASSERT_EQ(r->funcs[0].ctx.local_unfused.size(), 1u);
  EXPECT_EQ(r->funcs[0].ctx.local_unfused[0].anchor, "x");  // the chain reads x (and r)
  EXPECT_NE(r->funcs[0].ctx.local_unfused[0].reason.find("fp8_token with the residual add at H 8192 from 4096 rows"),
            std::string::npos)
      << r->funcs[0].ctx.local_unfused[0].reason;

  options.max_tokens = 2048;  // below T 4096: fused
  r = CompileModuleText(LocalChains("T"), options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LocalFusions(*r), 2);
  options.max_tokens = 0;
  r = CompileModuleText(LocalChains("64"), options);  // a graph of 64 rows: fused
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LocalFusions(*r), 2);
  r = CompileModuleText(LocalChains("2048"), options);  // below T 4096: fused
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LocalFusions(*r), 2);
  r = CompileModuleText(LocalChains("4096"), options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LocalFusions(*r), 1);

  options.caps = CpuFusionCapabilities();  // measured on CUDA only: the CPU rule is auto's
  options.world_size = 1;
  r = CompileModuleText(LocalChains("T"), options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(LocalFusions(*r), 2);
  EXPECT_TRUE(ParseFuseLocal("inductor").ok());
}

TEST(PassesLocalFusion, AtWorldSizeOneTheAllReduceLeftToInductorSaysWhy) {
  PassContext ctx = WorldSizeOneLocal();
  ctx.local_vs_inductor = true;
  ctx.inductor_losses = kTokenLoss;
  Compiled c = Compile(R"(
  func @f(%p: bf16[T, 8192], %r: bf16[T, 8192], %g: bf16[8192]) {
    %ar = all_reduce(%p)
    %h = add(%ar, %r)
    %y = rms_norm(%h, %g) {eps = 1e-6}
    %q, %s = quant_fp8(%y) {mode = "token"}
    return %q, %s, %h
  }
)", ctx);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c.ctx.fusions.empty()) << DescribeReport(c.ctx);
  EXPECT_NE(OnlyRejection(c.ctx).find("Inductor's kernel for this chain was measured faster"), std::string::npos)
      << DescribeReport(c.ctx);
}

// Sandwich norms under the Inductor rule (the PyTorch pass's): the chain with a norm before the
// residual add follows its own table. Since run 118 it is empty (the fused op measured faster at
// every H and T), so the chain is one fused op with rows unknown, and the chain without the first
// norm keeps the other table. The rule's mechanics with the table runs 114-116 measured (H 5376
// quant none: Inductor's kernel from 1024 rows; fp8_token from 8192): with rows unknown both
// norms stay for Inductor, each with the reason (the second: it stays with the first); at 512
// rows, and at H 2304, one fused op.
constexpr MeasuredLoss kPreNormLosses[] = {{QuantMode::kNone, true, 5376, 1024},
                                           {QuantMode::kFp8Token, true, 5376, 8192}};

TEST(PassesLocalFusion, SandwichNormsFollowTheirOwnMeasurement) {
  AllreduceRmsnormSpec spec;
  spec.hidden = 5376;
  spec.has_residual = spec.pre_residual_norm = spec.local = true;
  for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Token}) {
    spec.quant = q;
    EXPECT_EQ(WhyInductorIsFaster(spec, 0), "") << QuantModeName(q);
  }
  spec.quant = QuantMode::kNone;
  const std::string why = WhyInductorIsFaster(spec, 0, MeasuredLosses(), kPreNormLosses);
  EXPECT_NE(why.find("none with a norm before the residual add at H 5376 from 1024 rows"), std::string::npos) << why;
  EXPECT_EQ(WhyInductorIsFaster(spec, 1023, MeasuredLosses(), kPreNormLosses), "");
  spec.quant = QuantMode::kFp8Token;
  EXPECT_EQ(WhyInductorIsFaster(spec, 4096, MeasuredLosses(), kPreNormLosses), "");
  EXPECT_NE(WhyInductorIsFaster(spec, 8192, MeasuredLosses(), kPreNormLosses), "");
  spec.quant = QuantMode::kNone;
  spec.hidden = 4096;  // nearest 3584: the fused op's
  EXPECT_EQ(WhyInductorIsFaster(spec, 0, MeasuredLosses(), kPreNormLosses), "");
  spec.pre_residual_norm = false;  // the chain without the first norm keeps the other table
  spec.hidden = 5376;
  EXPECT_EQ(WhyInductorIsFaster(spec, 0, MeasuredLosses(), kPreNormLosses), "");

  const auto sandwich = [](int64_t hidden, const std::string& rows) {
    const std::string h = std::to_string(hidden);
    return StrCat("func @f(%x: bf16[", rows, ", ", h, "], %res: bf16[", rows, ", ", h, "], %g0: bf16[", h,
                  "], %g1: bf16[", h, "]) {\n"
                  "  %a = rms_norm(%x, %g0) {eps = 1e-6}\n"
                  "  %y, %h = fused_add_rms_norm(%a, %res, %g1) {eps = 1e-6}\n"
                  "  return %y, %h\n"
                  "}\n");
  };
  CompileOptions options;
  options.world_size = 1;
  options.caps = CudaFusionCapabilities();
  options.fuse_local = FuseLocal::kInductor;
  const auto expect_one_op = [&](int64_t hidden, const std::string& rows) {
    SCOPED_TRACE(StrCat(hidden, " ", rows));
    StatusOr<CompileResult> r = CompileModuleText(sandwich(hidden, rows), options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->funcs[0].ctx.fusions.size(), 1u) << r->json;
    EXPECT_TRUE(r->funcs[0].ctx.fusions[0].spec.pre_residual_norm);
  };
  expect_one_op(5376, "T");  // the measured table

  options.inductor_pre_norm_losses = kPreNormLosses;
  StatusOr<CompileResult> r = CompileModuleText(sandwich(5376, "T"), options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->funcs.size(), 1u);
  EXPECT_TRUE(r->funcs[0].ctx.fusions.empty()) << r->text;
  const std::vector<Rejection>& left = r->funcs[0].ctx.local_unfused;
  ASSERT_EQ(left.size(), 2u) << r->json;
  EXPECT_EQ(left[0].anchor, "x");
  EXPECT_NE(left[0].reason.find("with a norm before the residual add at H 5376 from 1024 rows"), std::string::npos)
      << left[0].reason;
  EXPECT_EQ(left[1].anchor, "a");
  EXPECT_EQ(left[1].reason, "it stays with the norm before the residual add that it follows: " + left[0].reason);
  expect_one_op(5376, "512");
  expect_one_op(2304, "T");
}

}  // namespace
}  // namespace tpfuse::passes::testing
