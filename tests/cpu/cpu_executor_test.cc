// The CPU executor (graphs built with the graph API and parsed from text), the random-input
// sharding rule, and the output check classes.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "common/numerics.h"
#include "common/quotient.h"
#include "ir/ops.h"
#include "ir/parser.h"
#include "runtime/check.h"
#include "runtime/executor.h"
#include "runtime/inputs.h"

namespace tpfuse::runtime {
namespace {

using ir::Attr;
using ir::AttrMap;
using ir::Dim;
using ir::Graph;
using ir::TensorType;
using ir::Value;

const Dim kT = Dim::Sym("T");
Dim C(int64_t v) { return Dim::Const(v); }

template <class T>
T Unwrap(StatusOr<T> s) {
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

ir::Node* Build(Graph& g, const std::string& op, const std::vector<Value*>& operands,
                AttrMap attrs, const std::vector<std::string>& names) {
  StatusOr<ir::Node*> node = ir::BuildNode(g, op, operands, std::move(attrs), names);
  EXPECT_TRUE(node.ok()) << op << ": " << node.status().ToString();
  return node.ok() ? *node : nullptr;
}

// all_reduce -> fused_add_rms_norm -> quant_fp8 (group 128) and a bf16 matmul on the norm.
// Returns q, s, r, k (the Contract 1 example at H = 256).
std::unique_ptr<Graph> UnfusedLayer(int64_t hidden = 256) {
  auto g = std::make_unique<Graph>("layer");
  Value* x = g->AddParam("x", {DType::kBF16, {kT, C(hidden)}});
  Value* res = g->AddParam("res", {DType::kBF16, {kT, C(hidden)}});
  Value* w = g->AddParam("w", {DType::kBF16, {C(hidden)}});
  Value* wk = g->AddParam("wk", {DType::kBF16, {C(hidden), C(64)}});
  ir::Node* ar = Build(*g, "all_reduce", {x}, {}, {"ar"});
  ir::Node* norm = Build(*g, "fused_add_rms_norm", {ar->result(), res, w},
                         {{"eps", Attr::Float(1e-6)}}, {"y", "r"});
  ir::Node* quant = Build(*g, "quant_fp8", {norm->result(0)},
                          {{"mode", Attr::Str("group")}, {"group_size", Attr::Int(128)}},
                          {"q", "s"});
  ir::Node* k = Build(*g, "matmul", {norm->result(0), wk}, {}, {"k"});
  g->SetOutputs({quant->result(0), quant->result(1), norm->result(1), k->result()});
  return g;
}

// The same layer with the chain fused by hand: allreduce_rmsnorm emitting norm, residual and
// quant (the norm feeds the matmul).
std::unique_ptr<Graph> FusedLayer(int64_t hidden = 256) {
  auto g = std::make_unique<Graph>("layer");
  Value* x = g->AddParam("x", {DType::kBF16, {kT, C(hidden)}});
  Value* res = g->AddParam("res", {DType::kBF16, {kT, C(hidden)}});
  Value* w = g->AddParam("w", {DType::kBF16, {C(hidden)}});
  Value* wk = g->AddParam("wk", {DType::kBF16, {C(hidden), C(64)}});
  AllreduceRmsnormSpec spec;
  spec.hidden = hidden;
  spec.has_residual = true;
  spec.quant = QuantMode::kFp8Group;
  spec.emit = {.allreduce = false, .norm = true, .residual = true, .quant = true};
  ir::Node* f = Build(*g, "allreduce_rmsnorm", {x, res, w}, ir::FusedAttrsFromSpec(spec),
                      {"y", "r", "q", "s"});
  ir::Node* k = Build(*g, "matmul", {f->result(0), wk}, {}, {"k"});
  g->SetOutputs({f->result(2), f->result(3), f->result(1), k->result()});
  return g;
}

// ---------------------------------------------------------------- executor

TEST(CpuExecutorTest, UnfusedLayerMatchesTheReferenceOps) {
  const auto g = UnfusedLayer();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*g, 2, 19, 1));
  const RankOutputs out = Unwrap(MakeCpuExecutor(2)->Run(*g, inputs));
  ASSERT_EQ(out.size(), 2u);
  ASSERT_EQ(out[0].size(), 4u);

  AllreduceRmsnormSpec spec;
  spec.hidden = 256;
  spec.has_residual = true;
  spec.quant = QuantMode::kFp8Group;
  spec.emit = {.allreduce = false, .norm = true, .residual = true, .quant = true};
  const std::vector<HostTensor> want = Unwrap(cpu::AllreduceRmsnorm(
      spec, std::vector<HostTensor>{inputs[0].at("x"), inputs[1].at("x")}, &inputs[0].at("res"),
      inputs[0].at("w"), nullptr));  // y, r, q, s
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(out[size_t(r)][0].BitwiseEquals(want[2])) << "q, rank " << r;
    EXPECT_TRUE(out[size_t(r)][1].BitwiseEquals(want[3])) << "s, rank " << r;
    EXPECT_TRUE(out[size_t(r)][2].BitwiseEquals(want[1])) << "r, rank " << r;
    const HostTensor k = Unwrap(cpu::Matmul(want[0], inputs[size_t(r)].at("wk"), DType::kBF16));
    EXPECT_TRUE(out[size_t(r)][3].BitwiseEquals(k)) << "k, rank " << r;
  }
  EXPECT_EQ(out[0][1].shape(), (std::vector<int64_t>{19, 2}));
  // q, s and r are identical on both ranks; k uses each rank's own weight shard.
  EXPECT_TRUE(CheckRanksIdentical(*g, out, {0, 1, 2}).ok());
  EXPECT_FALSE(CheckRanksIdentical(*g, out, {3}).ok());
}

TEST(CpuExecutorTest, FusedLayerIsBitwiseEqualToUnfused) {
  const auto unfused = UnfusedLayer();
  const auto fused = FusedLayer();
  for (int world : {1, 2, 4}) {
    for (int64_t tokens : {1, 3, 19}) {
      const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*unfused, world, tokens, 9));
      const RankOutputs ref = Unwrap(MakeCpuExecutor(world)->Run(*unfused, inputs));
      const RankOutputs got = Unwrap(MakeCpuExecutor(world)->Run(*fused, inputs));
      for (int r = 0; r < world; ++r)
        for (size_t i = 0; i < 4; ++i)
          EXPECT_TRUE(got[size_t(r)][i].BitwiseEquals(ref[size_t(r)][i]))
              << "world " << world << " T " << tokens << " rank " << r << " output " << i;
      const CheckReport report = Unwrap(CompareGraphOutputs(*unfused, ref, *fused, got, inputs));
      EXPECT_TRUE(report.ok) << report.ToString();
    }
  }
}

TEST(CpuExecutorTest, AllReduceRoutesEveryRankExactly) {
  // Rank r contributes r + 1 at the elements i with i % world == r and 0 elsewhere, plus 1000
  // in column 0: every sum is a small exact integer, and a rank that is dropped, doubled or
  // swapped changes some element exactly.
  for (int world : {1, 2, 3, 4, 8}) {
    Graph g;
    Value* x = g.AddParam("x", {DType::kBF16, {kT, C(8)}});
    ir::Node* ar = Build(g, "all_reduce", {x}, {}, {"y"});
    g.SetOutputs({ar->result()});
    std::vector<TensorMap> inputs(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      HostTensor t(DType::kBF16, {3, 8});
      for (int64_t i = 0; i < t.numel(); ++i)
        t.SetF32(i, (i % world == r ? float(r + 1) : 0.0f) + (i % 8 == 0 ? 1000.0f : 0.0f));
      inputs[size_t(r)]["x"] = t;
    }
    const RankOutputs out = Unwrap(MakeCpuExecutor(world)->Run(g, inputs));
    for (int r = 0; r < world; ++r) {
      for (int64_t i = 0; i < 24; ++i) {
        const float want = float(i % world + 1) + (i % 8 == 0 ? 1000.0f * world : 0.0f);
        ASSERT_EQ(out[size_t(r)][0].GetF32(i), RoundTo(DType::kBF16, want))
            << "world " << world << " rank " << r << " element " << i;
      }
    }
    EXPECT_TRUE(CheckRanksIdentical(g, out).ok());
  }
}

// Decomposed RMSNorm and static quant, op by op: every attribute reaches its reference op.
TEST(CpuExecutorTest, DecomposedOpsMapToTheReferenceOps) {
  Graph g;
  Value* x = g.AddParam("x", {DType::kBF16, {kT, C(128)}});
  Value* w = g.AddParam("w", {DType::kBF16, {C(128)}});
  Value* scale = g.AddParam("scale", {DType::kF32, {}});
  Value* xf = Build(g, "cast", {x}, {{"to", Attr::Name("f32")}}, {"xf"})->result();
  Value* sq = Build(g, "pow", {xf}, {{"exponent", Attr::Float(2.0)}}, {"sq"})->result();
  Value* ms = Build(g, "mean", {sq}, {{"dim", Attr::Int(-1)}, {"keepdim", Attr::Bool(true)}},
                    {"ms"})->result();
  Value* mse = Build(g, "add", {ms}, {{"scalar", Attr::Float(1e-5)}}, {"mse"})->result();
  Value* r = Build(g, "rsqrt", {mse}, {}, {"r"})->result();
  Value* xr = Build(g, "mul", {xf, r}, {}, {"xr"})->result();
  Value* xb = Build(g, "cast", {xr}, {{"to", Attr::Name("bf16")}}, {"xb"})->result();
  Value* y = Build(g, "mul", {xb, w}, {}, {"y"})->result();
  Value* v = Build(g, "view", {y}, {{"shape", Attr::List({Attr::Name("T"), Attr::Int(128)})}},
                   {"v"})->result();
  Value* d = Build(g, "div", {v, scale}, {}, {"d"})->result();
  Value* c = Build(g, "clamp", {d}, {{"min", Attr::Float(-448)}, {"max", Attr::Float(448)}},
                   {"c"})->result();
  Value* q = Build(g, "cast", {c}, {{"to", Attr::Name("f8e4m3")}}, {"q"})->result();
  Value* sub = Build(g, "sub", {y}, {{"scalar", Attr::Float(0.5)}}, {"sub"})->result();
  g.SetOutputs({y, q, sub});

  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(g, 1, 3, 2));
  const RankOutputs out = Unwrap(MakeCpuExecutor(1)->Run(g, inputs));
  const TensorMap& in = inputs[0];
  using cpu::BinaryOp;
  const HostTensor xf_ = cpu::Cast(in.at("x"), DType::kF32);
  const HostTensor ms_ = Unwrap(cpu::Mean(cpu::Pow(xf_, 2.0f, DType::kF32), -1, true, DType::kF32));
  const HostTensor r_ =
      cpu::Rsqrt(cpu::BinaryScalar(BinaryOp::kAdd, ms_, 1e-5f, DType::kF32), DType::kF32);
  const HostTensor xb_ =
      cpu::Cast(Unwrap(cpu::Binary(BinaryOp::kMul, xf_, r_, DType::kF32)), DType::kBF16);
  const HostTensor y_ = Unwrap(cpu::Binary(BinaryOp::kMul, xb_, in.at("w"), DType::kBF16));
  const HostTensor q_ = cpu::Cast(
      cpu::Clamp(Unwrap(cpu::Binary(BinaryOp::kDiv, y_, in.at("scale"), DType::kF32)), -448, 448,
                 DType::kF32),
      DType::kF8E4M3);
  EXPECT_TRUE(out[0][0].BitwiseEquals(y_));
  EXPECT_TRUE(out[0][1].BitwiseEquals(q_));
  EXPECT_TRUE(out[0][2].BitwiseEquals(cpu::BinaryScalar(BinaryOp::kSub, y_, 0.5f, DType::kBF16)));
  // And the decomposed norm stays within the tolerance of rms_norm.
  const HostTensor norm = Unwrap(cpu::RmsNorm(in.at("x"), in.at("w"), 1e-5f, 0.0f, DType::kBF16));
  const CompareResult cmp = CompareHalf(out[0][0], norm);
  EXPECT_TRUE(cmp.ok) << cmp.summary;
}

TEST(CpuExecutorTest, ScaledMatmulReadsTheScaleLayoutFromItsProducer) {
  for (const char* layout : {"row", "col"}) {
    for (const char* mode : {"token", "group"}) {
      Graph g;
      Value* y = g.AddParam("y", {DType::kBF16, {kT, C(256)}});
      Value* w8 = g.AddParam("w8", {DType::kF8E4M3, {C(256), C(64)}});
      Value* ws = g.AddParam("ws", {DType::kF32, {C(2), C(1)}});
      ir::Node* quant = Build(g, "quant_fp8", {y},
                              {{"mode", Attr::Str(mode)}, {"group_size", Attr::Int(128)},
                               {"scale_layout", Attr::Str(layout)}},
                              {"q", "s"});
      ir::Node* mm =
          Build(g, "scaled_matmul", {quant->result(0), quant->result(1), w8, ws}, {}, {"o"});
      g.SetOutputs({mm->result(), quant->result(1)});
      const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(g, 2, 5, 3));
      const RankOutputs out = Unwrap(MakeCpuExecutor(2)->Run(g, inputs));
      const bool col = std::string(layout) == "col";
      const cpu::ActScaleLayout want_layout =
          std::string(mode) == "token" ? cpu::ActScaleLayout::kPerToken
          : col                        ? cpu::ActScaleLayout::kPerGroupCol
                                       : cpu::ActScaleLayout::kPerGroupRow;
      const cpu::DynamicQuantResult qs = Unwrap(cpu::QuantFp8Dynamic(
          inputs[0].at("y"), {std::string(mode) == "token" ? QuantMode::kFp8Token
                                                           : QuantMode::kFp8Group,
                              128, col ? ScaleLayout::kCol : ScaleLayout::kRow,
                              ScaleFormat::kF32}));
      for (int r = 0; r < 2; ++r) {
        const HostTensor want = Unwrap(cpu::ScaledMatmul(qs.q, qs.s, want_layout,
                                                         inputs[size_t(r)].at("w8"),
                                                         inputs[size_t(r)].at("ws"), DType::kBF16));
        EXPECT_TRUE(out[size_t(r)][0].BitwiseEquals(want)) << mode << " " << layout << " rank " << r;
      }
    }
  }
}

TEST(CpuExecutorTest, RunsParsedText) {
  constexpr const char* kText = R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: f32[256], %wk: bf16[256, 32],
                %scale: f32[]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6, weight_bias = 1}
      %q = quant_fp8(%y, %scale) {mode = "tensor"}
      %q2, %s2 = quant_fp8(%y) {mode = "token", scale_layout = "col", scale_fmt = "ue8m0"}
      %k = matmul(%y, %wk)
      return %q, %q2, %s2, %r, %k
    }
  )";
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(kText, "layer.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(**g, 2, 7, 4));
  const RankOutputs out = Unwrap(MakeCpuExecutor(2)->Run(**g, inputs));
  ASSERT_EQ(out[0].size(), 5u);
  EXPECT_EQ(out[0][0].TypeString(), "f8e4m3[7, 256]");
  EXPECT_EQ(out[0][2].TypeString(), "f32[1, 8]");  // [1, pad4(7)]
  EXPECT_EQ(out[0][2].GetF32(7), 0.0f);            // padding
  EXPECT_EQ(out[1][4].TypeString(), "bf16[7, 32]");
  for (int64_t t = 0; t < 7; ++t) {
    const float s = out[0][2].GetF32(t);
    EXPECT_EQ(RoundUpToPowerOfTwo(s), s) << "ue8m0 scales are powers of two";
  }
  // The fused form from text agrees bitwise.
  constexpr const char* kFused = R"(
    func @layer(%x: bf16[T, 256], %res: bf16[T, 256], %g: f32[256], %wk: bf16[256, 32],
                %scale: f32[]) {
      %y, %r, %q = allreduce_rmsnorm(%x, %res, %g, %scale) {eps = 1e-6, weight_bias = 1,
          quant = fp8_tensor, emit = ["norm", "residual", "quant"]}
      %q2, %s2 = quant_fp8(%y) {mode = "token", scale_layout = "col", scale_fmt = "ue8m0"}
      %k = matmul(%y, %wk)
      return %q, %q2, %s2, %r, %k
    }
  )";
  StatusOr<std::unique_ptr<Graph>> f = ir::ParseGraph(kFused, "fused.tpg");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const RankOutputs got = Unwrap(MakeCpuExecutor(2)->Run(**f, inputs));
  for (int r = 0; r < 2; ++r)
    for (size_t i = 0; i < 5; ++i)
      EXPECT_TRUE(got[size_t(r)][i].BitwiseEquals(out[size_t(r)][i])) << "rank " << r << " " << i;
}

TEST(CpuExecutorTest, ErrorsNameTheParameter) {
  const auto g = UnfusedLayer();
  std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*g, 2, 3, 5));
  const auto run = [&](const std::vector<TensorMap>& in) {
    return MakeCpuExecutor(2)->Run(*g, in).status();
  };
  {
    std::vector<TensorMap> bad = inputs;
    bad[1].erase("res");
    const Status s = run(bad);
    EXPECT_EQ(s.code(), StatusCode::kNotFound);
    EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("missing input %res (bf16[T, 256])"), std::string::npos)
        << s.message();
  }
  {
    std::vector<TensorMap> bad = inputs;
    bad[0]["w"] = HostTensor(DType::kF32, {256});
    const Status s = run(bad);
    EXPECT_NE(s.message().find("input %w is f32[256], expected bf16[256] (wrong dtype)"),
              std::string::npos)
        << s.message();
  }
  {
    std::vector<TensorMap> bad = inputs;
    bad[0]["wk"] = HostTensor(DType::kBF16, {256, 63});
    const Status s = run(bad);
    EXPECT_NE(s.message().find("%wk"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("dim 1 must be 64"), std::string::npos) << s.message();
  }
  {
    std::vector<TensorMap> bad = inputs;
    bad[0]["res"] = HostTensor(DType::kBF16, {4, 256});  // T = 3 from %x
    const Status s = run(bad);
    EXPECT_NE(s.message().find("binds T = 4"), std::string::npos) << s.message();
  }
  {
    std::vector<TensorMap> bad = inputs;
    bad[1]["x"] = HostTensor(DType::kBF16, {4, 256});
    bad[1]["res"] = HostTensor(DType::kBF16, {4, 256});
    const Status s = run(bad);
    EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(MakeCpuExecutor(2)->Run(*g, {inputs[0]}).ok());  // one rank's inputs for two
}

TEST(CpuExecutorTest, ErrorsNameTheNode) {
  Graph g;
  Value* x = g.AddParam("x", {DType::kBF16, {kT, C(8)}});
  ir::Node* bogus = g.AddNode("frobnicate", {x}, {}, {"z"}, {{DType::kBF16, {kT, C(8)}}});
  bogus->set_location(7, 3);
  g.SetOutputs({bogus->result()});
  std::vector<TensorMap> inputs(1);
  inputs[0]["x"] = HostTensor(DType::kBF16, {2, 8});
  const Status s = MakeCpuExecutor(1)->Run(g, inputs).status();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("frobnicate %z (line 7)"), std::string::npos) << s.message();
}

TEST(CpuExecutorTest, BindSymbolsChecksPaddedDims) {
  Graph g;
  g.AddParam("x", {DType::kBF16, {kT, C(8)}});
  g.AddParam("s", {DType::kF32, {C(2), Dim::Sym("T", 4)}});
  TensorMap in;
  in["x"] = HostTensor(DType::kBF16, {3, 8});
  in["s"] = HostTensor(DType::kF32, {2, 4});
  const std::map<std::string, int64_t> b = Unwrap(BindSymbols(g, in));
  EXPECT_EQ(b.at("T"), 3);
  in["s"] = HostTensor(DType::kF32, {2, 3});
  const Status s = BindSymbols(g, in).status();
  EXPECT_NE(s.message().find("pad4(T) = 4"), std::string::npos) << s.message();
  // Inputs that are not parameters are ignored (a graph and its fused form share input maps).
  in["s"] = HostTensor(DType::kF32, {2, 4});
  in["unused"] = HostTensor(DType::kF32, {1});
  EXPECT_TRUE(BindSymbols(g, in).ok());
}

// A symbol that appears only inside products binds from them: 2*S gives S, then B*S gives B.
TEST(CpuExecutorTest, BindSymbolsSolvesProducts) {
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(
      "func @f(%x: bf16[2*S, 8], %y: bf16[B*S, 8]) {\n  %z = add(%x, %x)\n  return %z, %y\n}\n",
      "p.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  TensorMap in;
  in["x"] = HostTensor(DType::kBF16, {6, 8});
  in["y"] = HostTensor(DType::kBF16, {12, 8});
  const std::map<std::string, int64_t> b = Unwrap(BindSymbols(**g, in));
  EXPECT_EQ(b.at("S"), 3);
  EXPECT_EQ(b.at("B"), 4);
  // An odd row count is no 2*S, and says which dim.
  in["x"] = HostTensor(DType::kBF16, {7, 8});
  Status s = BindSymbols(**g, in).status();
  EXPECT_NE(s.message().find("dim 0 is 2*S, and 7 is not a multiple of 2 (cannot bind S)"),
            std::string::npos)
      << s.message();
  // 12 rows for B*S with S = 3 is B = 4; 13 is no multiple of 3.
  in["x"] = HostTensor(DType::kBF16, {6, 8});
  in["y"] = HostTensor(DType::kBF16, {13, 8});
  s = BindSymbols(**g, in).status();
  EXPECT_NE(s.message().find("13 is not a multiple of 3 (cannot bind B)"), std::string::npos)
      << s.message();
  // Both symbols only in one product: nothing to solve from.
  StatusOr<std::unique_ptr<Graph>> two = ir::ParseGraph(
      "func @f(%y: bf16[B*S, 8]) {\n  return %y\n}\n", "q.tpg");
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  TensorMap only;
  only["y"] = HostTensor(DType::kBF16, {12, 8});
  s = BindSymbols(**two, only).status();
  EXPECT_NE(s.message().find("cannot bind B, S from it alone"), std::string::npos) << s.message();
  // S*S names S once.
  StatusOr<std::unique_ptr<Graph>> square = ir::ParseGraph(
      "func @f(%y: bf16[S*S, 8]) {\n  return %y\n}\n", "s.tpg");
  ASSERT_TRUE(square.ok()) << square.status().ToString();
  s = BindSymbols(**square, only).status();
  EXPECT_NE(s.message().find("cannot bind S from it alone"), std::string::npos) << s.message();
  // S = 0 leaves B of B*S undetermined.
  in["x"] = HostTensor(DType::kBF16, {0, 8});
  in["y"] = HostTensor(DType::kBF16, {0, 8});
  s = BindSymbols(**g, in).status();
  EXPECT_NE(s.message().find("whose other factors are 0: B is undetermined"), std::string::npos)
      << s.message();
  // Two products that bind S differently: the one that binds it first wins and the other is
  // named.
  StatusOr<std::unique_ptr<Graph>> both = ir::ParseGraph(
      "func @f(%x: bf16[2*S, 8], %z: bf16[3*S, 8]) {\n  return %x, %z\n}\n", "b.tpg");
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  TensorMap mixed;
  mixed["x"] = HostTensor(DType::kBF16, {6, 8});
  mixed["z"] = HostTensor(DType::kBF16, {12, 8});
  s = BindSymbols(**both, mixed).status();
  EXPECT_NE(
      s.message().find("input %z is bf16[12, 8], expected bf16[3*S, 8] (dim 0 must be 3*S = 9)"),
      std::string::npos)
      << s.message();
}

// ---------------------------------------------------------------- inputs

TEST(CpuInputsTest, ShardingRuleAndRoles) {
  Graph g;
  Value* x = g.AddParam("x", {DType::kBF16, {kT, C(256)}});
  Value* res = g.AddParam("res", {DType::kBF16, {kT, C(256)}});
  Value* w = g.AddParam("w", {DType::kBF16, {C(256)}});
  Value* wk = g.AddParam("wk", {DType::kBF16, {C(256), C(64)}});
  Value* scale = g.AddParam("scale", {DType::kF32, {}});
  Value* w8 = g.AddParam("w8", {DType::kF8E4M3, {C(256), C(64)}});
  Value* ws = g.AddParam("ws", {DType::kF32, {C(2), C(1)}});
  Value* xv = Build(g, "view", {x}, {{"shape", Attr::List({Attr::Name("T"), Attr::Int(256)})}},
                    {"xv"})->result();
  Value* ar = Build(g, "all_reduce", {xv}, {}, {"ar"})->result();
  ir::Node* norm = Build(g, "fused_add_rms_norm", {ar, res, w}, {{"eps", Attr::Float(1e-6)}},
                         {"y", "r"});
  Value* q = Build(g, "quant_fp8", {norm->result(0), scale}, {{"mode", Attr::Str("tensor")}},
                   {"q"})->result();
  Value* o = Build(g, "scaled_matmul", {q, scale, w8, ws}, {}, {"o"})->result();
  Value* k = Build(g, "matmul", {norm->result(0), wk}, {}, {"k"})->result();
  g.SetOutputs({o, k, norm->result(1)});

  struct Want {
    Value* v;
    ParamRole role;
    bool per_rank;
  };
  for (const Want& want : {Want{x, ParamRole::kActivation, true},
                           Want{res, ParamRole::kActivation, false},
                           Want{w, ParamRole::kNormWeight, false},
                           Want{wk, ParamRole::kActivation, true},
                           Want{scale, ParamRole::kStaticScale, false},
                           Want{w8, ParamRole::kFp8, true},
                           Want{ws, ParamRole::kGemmScale, true}}) {
    const ParamInfo info = ClassifyParam(*want.v);
    EXPECT_EQ(info.role, want.role) << want.v->name() << ": " << ParamRoleName(info.role);
    EXPECT_EQ(info.per_rank, want.per_rank) << want.v->name();
  }

  const std::vector<TensorMap> in = Unwrap(MakeRandomInputs(g, 3, 5, 11));
  ASSERT_EQ(in.size(), 3u);
  for (const Value* p : g.params()) {
    const bool per_rank = ClassifyParam(*p).per_rank;
    for (int r = 1; r < 3; ++r) {
      EXPECT_EQ(in[size_t(r)].at(p->name()).BitwiseEquals(in[0].at(p->name())), !per_rank)
          << p->name() << " rank " << r;
    }
  }
  EXPECT_EQ(in[0].at("x").shape(), (std::vector<int64_t>{5, 256}));
  // Values by role.
  const HostTensor& wt = in[0].at("w");
  for (int64_t i = 0; i < wt.numel(); ++i) {
    ASSERT_GE(wt.GetF32(i), 0.5f);
    ASSERT_LE(wt.GetF32(i), 1.5f);
  }
  EXPECT_GE(in[0].at("scale").GetF32(0), 0.005f);
  EXPECT_LE(in[0].at("scale").GetF32(0), 0.02f);
  for (int r = 0; r < 3; ++r) {
    const HostTensor& codes = in[size_t(r)].at("w8");
    for (int64_t i = 0; i < codes.numel(); ++i) ASSERT_FALSE(std::isnan(codes.GetF32(i)));
    const HostTensor& wsr = in[size_t(r)].at("ws");
    for (int64_t i = 0; i < wsr.numel(); ++i) ASSERT_GT(wsr.GetF32(i), 0.0f);
  }
  for (const char* name : {"x", "res", "wk"}) {
    const HostTensor& t = in[0].at(name);
    int negative = 0, zero = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      negative += t.GetF32(i) < 0;
      zero += t.GetF32(i) == 0;
    }
    EXPECT_GT(negative, t.numel() / 4) << name;
    EXPECT_LT(zero, t.numel()) << name;
  }
}

TEST(CpuInputsTest, DeterministicPerSeed) {
  const auto g = UnfusedLayer();
  const std::vector<TensorMap> a = Unwrap(MakeRandomInputs(*g, 2, 3, 42));
  const std::vector<TensorMap> b = Unwrap(MakeRandomInputs(*g, 2, 3, 42));
  const std::vector<TensorMap> c = Unwrap(MakeRandomInputs(*g, 2, 3, 43));
  for (int r = 0; r < 2; ++r) {
    for (const auto& [name, t] : a[size_t(r)]) {
      EXPECT_TRUE(t.BitwiseEquals(b[size_t(r)].at(name))) << name;
      EXPECT_FALSE(t.BitwiseEquals(c[size_t(r)].at(name))) << name;
    }
  }
  // The fused form of the graph gets the same inputs (values follow parameter names).
  const auto f = FusedLayer();
  const std::vector<TensorMap> d = Unwrap(MakeRandomInputs(*f, 2, 3, 42));
  for (int r = 0; r < 2; ++r)
    for (const auto& [name, t] : a[size_t(r)]) EXPECT_TRUE(t.BitwiseEquals(d[size_t(r)].at(name))) << name;
  EXPECT_FALSE(MakeRandomInputs(*g, 0, 3, 1).ok());
  EXPECT_FALSE(MakeRandomInputs(*g, 2, 0, 1).ok());
}

// Each symbol takes the token count unless given; rows are the largest product of symbols in
// one parameter's shape, and the inputs take those shapes.
TEST(CpuInputsTest, ShapeSymbolsBindToTheTokenCountOrTheirGivenValue) {
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(R"(
    func @f(%x: bf16[B, S, 64], %r: bf16[B*S, 64], %s: f32[S], %w: bf16[64, 32]) {
      %y = add(%x, %x)
      return %y
    }
  )", "f.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(ShapeSymbols(**g), (std::vector<std::string>{"B", "S"}));

  const std::vector<std::string> symbols = ShapeSymbols(**g);
  const ShapeBindings alike = Unwrap(BindShapeSymbols(symbols, 3));
  EXPECT_EQ(alike, (ShapeBindings{{"B", 3}, {"S", 3}}));
  EXPECT_EQ(SymbolRows(**g, alike), 9);
  EXPECT_EQ(FormatBindings(alike), "B = S = 3");

  const ShapeBindings given = Unwrap(BindShapeSymbols(symbols, 3, {{"B", 2}}));
  EXPECT_EQ(given, (ShapeBindings{{"B", 2}, {"S", 3}}));
  EXPECT_EQ(SymbolRows(**g, given), 6);
  EXPECT_EQ(FormatBindings(given), "B = 2, S = 3");
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(**g, 1, given, 5));
  EXPECT_EQ(inputs[0].at("x").shape(), (std::vector<int64_t>{2, 3, 64}));
  EXPECT_EQ(inputs[0].at("r").shape(), (std::vector<int64_t>{6, 64}));
  EXPECT_EQ(inputs[0].at("s").shape(), (std::vector<int64_t>{3}));
  // The token count's form draws the same values as its bindings.
  const std::vector<TensorMap> by_tokens = Unwrap(MakeRandomInputs(**g, 1, 3, 5));
  const std::vector<TensorMap> by_bindings = Unwrap(MakeRandomInputs(**g, 1, alike, 5));
  for (const auto& [name, t] : by_tokens[0])
    EXPECT_TRUE(t.BitwiseEquals(by_bindings[0].at(name))) << name;

  const StatusOr<ShapeBindings> unknown = BindShapeSymbols(symbols, 3, {{"T", 2}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("no shape symbol T (the shape symbols: B, S)"),
            std::string::npos)
      << unknown.status().ToString();
  EXPECT_FALSE(BindShapeSymbols(symbols, 3, {{"B", 0}}).ok());
  EXPECT_FALSE(BindShapeSymbols(symbols, 0).ok());
  // Only constant dims: no symbols, no rows.
  StatusOr<std::unique_ptr<Graph>> fixed = ir::ParseGraph(
      "func @c(%x: bf16[4, 64]) {\n  %y = add(%x, %x)\n  return %y\n}\n", "c.tpg");
  ASSERT_TRUE(fixed.ok()) << fixed.status().ToString();
  EXPECT_TRUE(ShapeSymbols(**fixed).empty());
  EXPECT_EQ(SymbolRows(**fixed, {}), 0);
  EXPECT_EQ(FormatBindings({}), "");
}

// ---------------------------------------------------------------- check

TEST(CpuCheckTest, ClassesPerOutput) {
  constexpr const char* kText = R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256], %wk: bf16[256, 32],
            %scale: f32[], %p: f32[4]) {
      %ar = all_reduce(%x)
      %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}
      %q, %s = quant_fp8(%y) {mode = "group", group_size = 128, scale_layout = "col"}
      %qt = quant_fp8(%y, %scale) {mode = "tensor"}
      %qn, %sn = quant_fp8(%y) {mode = "token"}
      %k = matmul(%y, %wk)
      %kv = view(%k) {shape = [T, 32]}
      return %q, %s, %qt, %qn, %r, %kv, %p, %res
    }
  )";
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(kText, "check.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(**g, 2, 3, 6));
  const RankOutputs ref = Unwrap(MakeCpuExecutor(2)->Run(**g, inputs));
  CheckReport report = Unwrap(CompareGraphOutputs(**g, ref, **g, ref, inputs));
  EXPECT_TRUE(report.ok) << report.ToString();
  ASSERT_EQ(report.outputs.size(), 8u);
  const std::vector<ToleranceClass> classes = {
      ToleranceClass::kFp8Dequantized, ToleranceClass::kScale, ToleranceClass::kFp8Dequantized,
      ToleranceClass::kFp8Dequantized, ToleranceClass::kHalf,  ToleranceClass::kGemm,
      ToleranceClass::kExact,          ToleranceClass::kHalf};
  for (size_t i = 0; i < 8; ++i)
    EXPECT_EQ(report.outputs[i].cls, classes[i]) << report.outputs[i].ToString();
  EXPECT_EQ(report.outputs[0].basis, "returned %s");
  EXPECT_EQ(report.outputs[2].basis, "static %scale");
  EXPECT_EQ(report.outputs[3].basis, "code step");  // %sn is not returned
  EXPECT_NE(report.ToString().find("8 outputs checked: all within tolerance"), std::string::npos)
      << report.ToString();

  // One ulp off in %r passes; two fail, naming the output and the rank.
  RankOutputs got = ref;
  HostTensor& r1 = got[1][4];
  const float v = r1.GetF32(5);
  r1.SetF32(5, v + float(UlpOf(DType::kBF16, v)));
  EXPECT_TRUE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).ok);
  r1.SetF32(5, v + 2 * float(UlpOf(DType::kBF16, v)));
  report = Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs));
  EXPECT_FALSE(report.ok);
  EXPECT_FALSE(report.outputs[4].ok);
  EXPECT_EQ(report.outputs[4].failed_rank, 1);
  EXPECT_TRUE(report.outputs[5].ok);
  const std::string line = report.outputs[4].ToString();
  EXPECT_NE(line.find("%r"), std::string::npos) << line;
  EXPECT_NE(line.find("FAIL on rank 1"), std::string::npos) << line;
  EXPECT_NE(line.find("[5] (row 0, col 5)"), std::string::npos) << line;
  EXPECT_NE(report.ToString().find("1 failed"), std::string::npos);

  // The exact class catches a one-ulp change in an f32 value.
  got = ref;
  got[0][6].SetF32(0, std::nextafter(ref[0][6].GetF32(0), 10.0f));
  EXPECT_FALSE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[6].ok);
  // The scale of a dynamic quant: 2^-7 relative.
  got = ref;
  got[0][1].SetF32(0, ref[0][1].GetF32(0) * 1.01f);
  EXPECT_FALSE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[1].ok);
  got[0][1].SetF32(0, ref[0][1].GetF32(0) * 1.005f);
  EXPECT_TRUE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[1].ok);
  // Structural mismatches are errors.
  got = ref;
  got[0].pop_back();
  EXPECT_FALSE(CompareGraphOutputs(**g, ref, **g, got, inputs).ok());
}

// A residual stream after a GEMM (the next layer's sum and norm) holds the GEMM's bound, not
// 1 ulp: the backends' accumulation orders differ, and the difference travels down the stream.
TEST(CpuCheckTest, ValuesAGemmReachesHoldTheGemmsBound) {
  constexpr const char* kText = R"(
    func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g0: bf16[256], %g1: bf16[256], %w: bf16[256, 256]) {
      %ar0 = all_reduce(%x)
      %y0, %h0 = fused_add_rms_norm(%ar0, %res, %g0) {eps = 1e-6}
      %p = matmul(%y0, %w)
      %ar1 = all_reduce(%p)
      %y1, %h1 = fused_add_rms_norm(%ar1, %h0, %g1) {eps = 1e-6}
      return %h0, %h1, %y1
    }
  )";
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(kText, "after_gemm.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(**g, 2, 3, 8));
  const RankOutputs ref = Unwrap(MakeCpuExecutor(2)->Run(**g, inputs));
  CheckReport report = Unwrap(CompareGraphOutputs(**g, ref, **g, ref, inputs));
  ASSERT_EQ(report.outputs.size(), 3u);
  EXPECT_EQ(report.outputs[0].cls, ToleranceClass::kHalf);  // before the GEMM: 1 ulp
  EXPECT_EQ(report.outputs[1].cls, ToleranceClass::kAfterGemm);
  EXPECT_EQ(report.outputs[2].cls, ToleranceClass::kAfterGemm);
  EXPECT_NE(report.outputs[1].ToString().find("after-gemm"), std::string::npos) << report.outputs[1].ToString();

  // Four ulps of a small element of %h1 pass (2 ulp + 2^-7 of the row's largest); before the
  // GEMM they fail.
  int64_t small = 0;
  for (int64_t i = 1; i < 256; ++i)
    if (std::fabs(ref[0][1].GetF32(i)) < std::fabs(ref[0][1].GetF32(small))) small = i;
  RankOutputs got = ref;
  const float v = ref[0][1].GetF32(small);
  got[0][1].SetF32(small, v + 4 * float(UlpOf(DType::kBF16, v)));
  EXPECT_TRUE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[1].ok);
  got = ref;
  got[0][0].SetF32(small, ref[0][0].GetF32(small) + 4 * float(UlpOf(DType::kBF16, ref[0][0].GetF32(small))));
  EXPECT_FALSE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[0].ok);
  // A change of the row's size fails after the GEMM too.
  got = ref;
  got[0][1].SetF32(small, v + 1.0f);
  EXPECT_FALSE(Unwrap(CompareGraphOutputs(**g, ref, **g, got, inputs)).outputs[1].ok);
}

TEST(CpuCheckTest, Fp8AgainstTheStaticScaleOfADecomposedQuant) {
  constexpr const char* kText = R"(
    func @f(%y: bf16[T, 128], %scale: f32[]) {
      %d = div(%y, %scale)
      %c = clamp(%d) {min = -448, max = 448}
      %q = cast(%c) {to = f8e4m3}
      %m = mul(%y) {scalar = 64}
      %q2 = cast(%m) {to = f8e4m3}
      return %q, %q2
    }
  )";
  StatusOr<std::unique_ptr<Graph>> g = ir::ParseGraph(kText, "static.tpg");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(**g, 1, 3, 8));
  const RankOutputs ref = Unwrap(MakeCpuExecutor(1)->Run(**g, inputs));
  const CheckReport report = Unwrap(CompareGraphOutputs(**g, ref, **g, ref, inputs));
  ASSERT_EQ(report.outputs.size(), 2u);
  EXPECT_EQ(report.outputs[0].basis, "static %scale");
  EXPECT_EQ(report.outputs[1].basis, "static 1/64");
  EXPECT_TRUE(report.ok) << report.ToString();
}

TEST(CpuCheckTest, RanksIdenticalNamesTheOutput) {
  const auto g = UnfusedLayer();
  const std::vector<TensorMap> inputs = Unwrap(MakeRandomInputs(*g, 2, 3, 5));
  RankOutputs out = Unwrap(MakeCpuExecutor(2)->Run(*g, inputs));
  EXPECT_TRUE(CheckRanksIdentical(*g, out, {0, 1, 2}).ok());
  out[1][2].SetF32(4, out[1][2].GetF32(4) + 1.0f);
  const Status s = CheckRanksIdentical(*g, out, {0, 1, 2});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("output %r differs between rank 0 and rank 1"), std::string::npos)
      << s.message();
  EXPECT_FALSE(CheckRanksIdentical(*g, out, {9}).ok());
}

}  // namespace
}  // namespace tpfuse::runtime
