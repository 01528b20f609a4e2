// The op kinds (every registered op has one, names round-trip), the opaque op (parse, print,
// round trip, verifier, DCE, refusal by the executors), the elementwise and reduction ops real
// PyTorch forms need, and symbolic dims that are products (B*S).
#include <gtest/gtest.h>

#include <string>

#include "ir/ops.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/verifier.h"
#include "passes/pass.h"
#include "runtime/executor.h"

namespace tpfuse::ir {
namespace {

std::unique_ptr<Graph> Parse(const std::string& text) {
  StatusOr<std::unique_ptr<Graph>> g = ParseGraph(text);
  EXPECT_TRUE(g.ok()) << g.status().message();
  return g.ok() ? std::move(*g) : nullptr;
}

std::string ParseError(const std::string& text) {
  StatusOr<std::unique_ptr<Graph>> g = ParseGraph(text);
  EXPECT_FALSE(g.ok());
  return g.ok() ? "" : g.status().message();
}

// ---------------------------------------------------------------- op kinds

TEST(OpKindTest, EveryRegisteredOpHasItsKindAndName) {
  for (const OpDef& def : AllOps()) {
    EXPECT_NE(def.kind, OpKind::kUnknown) << def.name;
    EXPECT_EQ(OpKindName(def.kind), def.name);
    EXPECT_EQ(OpKindFromName(def.name), def.kind);
    EXPECT_EQ(&GetOpDef(def.kind), FindOp(def.name));
  }
  EXPECT_EQ(OpKindFromName("all_gather"), OpKind::kUnknown);
  EXPECT_EQ(OpKindFromName(""), OpKind::kUnknown);
}

TEST(OpKindTest, EveryKindButUnknownIsRegistered) {
  for (int k = 0; k < int(OpKind::kUnknown); ++k) {
    const OpKind kind = OpKind(k);
    EXPECT_EQ(GetOpDef(kind).kind, kind) << OpKindName(kind);
  }
}

TEST(OpKindTest, NodesCarryTheirKind) {
  auto g = Parse(
      "func @f(%x: bf16[T, 8]) {\n"
      "  %a = abs(%x)\n"
      "  %m = amax(%a) {dim = -1, keepdim = true}\n"
      "  return %m\n"
      "}\n");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->FindValue("a")->producer()->kind(), OpKind::kAbs);
  EXPECT_EQ(g->FindValue("m")->producer()->kind(), OpKind::kAmax);
  // A hand-built node with an unknown name has kind kUnknown; the verifier rejects it.
  Graph h;
  Value* x = h.AddParam("x", {DType::kBF16, {Dim::Const(8)}});
  Node* bogus = h.AddNode("frobnicate", {x}, {}, {"y"}, {x->type()});
  EXPECT_EQ(bogus->kind(), OpKind::kUnknown);
  h.SetOutputs({bogus->result()});
  EXPECT_NE(Verify(h).message().find("unknown op 'frobnicate'"), std::string::npos)
      << Verify(h).message();
}

// ---------------------------------------------------------------- new ops: inference

TEST(NewOpsTest, UnaryOpsKeepTypeAndRejectNonFloat) {
  for (const char* op : {"sqrt", "abs", "neg", "reciprocal", "log2", "exp2", "ceil"}) {
    StatusOr<std::vector<TensorType>> t =
        InferResultTypes(op, {{DType::kBF16, {Dim::Sym("T"), Dim::Const(16)}}}, {});
    ASSERT_TRUE(t.ok()) << op << ": " << t.status().message();
    EXPECT_EQ((*t)[0].ToString(), "bf16[T, 16]") << op;
    StatusOr<std::vector<TensorType>> bad =
        InferResultTypes(op, {{DType::kI32, {Dim::Const(4)}}}, {});
    ASSERT_FALSE(bad.ok()) << op;
    EXPECT_EQ(bad.status().message(),
              std::string(op) + ": x must be bf16, f16 or f32, got i32[4]");
  }
}

TEST(NewOpsTest, AmaxReducesTheLastDim) {
  const TensorType x{DType::kF32, {Dim::Sym("T"), Dim::Const(4), Dim::Const(128)}};
  StatusOr<std::vector<TensorType>> keep = InferResultTypes("amax", {x}, {});
  ASSERT_TRUE(keep.ok()) << keep.status().message();
  EXPECT_EQ((*keep)[0].ToString(), "f32[T, 4, 1]");
  StatusOr<std::vector<TensorType>> drop =
      InferResultTypes("amax", {x}, {{"keepdim", Attr::Bool(false)}, {"dim", Attr::Int(2)}});
  ASSERT_TRUE(drop.ok()) << drop.status().message();
  EXPECT_EQ((*drop)[0].ToString(), "f32[T, 4]");
  StatusOr<std::vector<TensorType>> other = InferResultTypes("amax", {x}, {{"dim", Attr::Int(0)}});
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().message(),
            "amax: only the last dim (-1 or 2) is supported, got dim = 0");
}

TEST(NewOpsTest, BroadcastingOfRank3Activations) {
  const TensorType x{DType::kBF16, {Dim::Sym("B"), Dim::Sym("S"), Dim::Const(64)}};
  const TensorType r{DType::kBF16, {Dim::Sym("B"), Dim::Sym("S"), Dim::Const(1)}};
  const TensorType w{DType::kBF16, {Dim::Const(64)}};
  for (const auto& [a, b] : {std::pair{x, r}, std::pair{r, x}, std::pair{x, w}, std::pair{w, x}}) {
    StatusOr<std::vector<TensorType>> t = InferResultTypes("mul", {a, b}, {});
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ((*t)[0].ToString(), "bf16[B, S, 64]");
  }
  StatusOr<std::vector<TensorType>> t =
      InferResultTypes("mul", {x, {DType::kBF16, {Dim::Const(32)}}}, {});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), "mul: shapes bf16[B, S, 64] and bf16[32] do not broadcast");
  // [S, 1] broadcasts over B as NumPy does; [B, 1] does not line up with [S, 64].
  const TensorType per_position{DType::kBF16, {Dim::Sym("S"), Dim::Const(1)}};
  StatusOr<std::vector<TensorType>> p = InferResultTypes("mul", {x, per_position}, {});
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ((*p)[0].ToString(), "bf16[B, S, 64]");
  const TensorType per_batch{DType::kBF16, {Dim::Sym("B"), Dim::Const(1)}};
  EXPECT_FALSE(InferResultTypes("mul", {x, per_batch}, {}).ok());
}

// ---------------------------------------------------------------- product dims

TEST(ProductDimTest, ParsePrintAndViewsThatFlattenAndUnflatten) {
  const std::string text =
      "func @f(%x: bf16[B, S, 64], %y: bf16[B*S, 64]) {\n"
      "  %flat = view(%x) {shape = [B*S, 64]}\n"
      "  %sum = add(%flat, %y)\n"
      "  %back = view(%sum) {shape = [B, S, 64]}\n"
      "  return %back\n"
      "}\n";
  auto g = Parse(text);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->FindValue("flat")->type().ToString(), "bf16[B*S, 64]");
  EXPECT_TRUE(g->FindValue("flat")->shape()[0].is_product());
  EXPECT_EQ(g->FindValue("flat")->shape()[0].Factors(), (std::vector<std::string>{"B", "S"}));
  EXPECT_EQ(g->FindValue("back")->type().ToString(), "bf16[B, S, 64]");
  const std::string printed = PrintGraph(*g, {.result_types = false});
  EXPECT_NE(printed.find("%flat = view(%x) {shape = [B*S, 64]}"), std::string::npos) << printed;
  auto again = Parse(printed);
  ASSERT_TRUE(again);
  EXPECT_EQ(PrintGraph(*again, {.result_types = false}), printed);
  EXPECT_EQ(*Dim::Sym("B*S").Resolve({{"B", 3}, {"S", 5}}), 15);
  EXPECT_EQ(*Dim::Sym("B*S", 4).Resolve({{"B", 3}, {"S", 5}}), 16);
  EXPECT_EQ(Dim::Sym("B*S").Resolve({{"B", 3}}).status().message(), "symbol S is not bound");
}

TEST(ProductDimTest, ViewWithOtherElementCountIsAnError) {
  EXPECT_EQ(ParseError("func @f(%x: bf16[B, S, 64]) {\n"
                       "  %v = view(%x) {shape = [B*T, 64]}\n"
                       "  return %v\n"
                       "}\n"),
            "<input>:2:8: view: cannot view bf16[B, S, 64] as bf16[B*T, 64]: element counts "
            "differ");
  EXPECT_EQ(ParseError("func @f(%x: bf16[B*, 64]) {\n  return %x\n}\n"),
            "<input>:1:20: expected a symbol after '*', found ','");
}

TEST(ProductDimTest, CpuExecutorBindsFactorsAndChecksProducts) {
  auto g = Parse(
      "func @f(%x: f32[B, S, 8], %y: f32[B*S, 8]) {\n"
      "  %flat = view(%x) {shape = [B*S, 8]}\n"
      "  %sum = add(%flat, %y)\n"
      "  return %sum\n"
      "}\n");
  ASSERT_TRUE(g);
  HostTensor x(DType::kF32, {2, 3, 8}), y(DType::kF32, {6, 8});
  for (int64_t i = 0; i < 48; ++i) {
    x.SetF32(i, float(i));
    y.SetF32(i, float(100 * i));
  }
  auto exec = runtime::MakeCpuExecutor(1);
  StatusOr<runtime::RankOutputs> out = exec->Run(*g, {{{"x", x}, {"y", y}}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  const HostTensor& sum = (*out)[0][0];
  EXPECT_EQ(sum.shape(), (std::vector<int64_t>{6, 8}));
  for (int64_t i = 0; i < 48; ++i) EXPECT_EQ(sum.GetF32(i), float(101 * i)) << i;
  // y with 5 rows where B*S = 6.
  HostTensor short_y(DType::kF32, {5, 8});
  StatusOr<runtime::RankOutputs> bad = exec->Run(*g, {{{"x", x}, {"y", short_y}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "input %y is f32[5, 8], expected f32[B*S, 8] (dim 0 must be B*S = 6)");
}

// ---------------------------------------------------------------- the opaque op

constexpr const char* kOpaqueGraph =
    "func @f(%x: bf16[T, 64], %w: bf16[64]) {\n"
    "  %n = rms_norm(%x, %w) {eps = 1e-06}\n"
    "  %v, %i = opaque(%n, %x) {k = 8, name = \"aten.topk\"} : bf16[T, 8], i32[T, 8]\n"
    "  %dead = opaque(%x) {name = \"aten.print\"} : bf16[T, 64]\n"
    "  return %v, %i\n"
    "}\n";

TEST(OpaqueOpTest, ParsesWithDeclaredTypesAndAnyAttributes) {
  auto g = Parse(kOpaqueGraph);
  ASSERT_TRUE(g);
  const Node* topk = g->FindValue("v")->producer();
  EXPECT_EQ(topk->kind(), OpKind::kOpaque);
  EXPECT_EQ(OpaqueName(*topk), "aten.topk");
  EXPECT_EQ(topk->num_operands(), 2);
  EXPECT_EQ(topk->attr("k")->i, 8);
  EXPECT_EQ(g->FindValue("v")->type().ToString(), "bf16[T, 8]");
  EXPECT_EQ(g->FindValue("i")->type().ToString(), "i32[T, 8]");
  EXPECT_EQ(OpaqueName(*g->FindValue("n")->producer()), "");
  EXPECT_TRUE(Verify(*g).ok());
}

TEST(OpaqueOpTest, PrintsItsDeclaredTypesAndRoundTrips) {
  auto g = Parse(kOpaqueGraph);
  ASSERT_TRUE(g);
  for (bool types : {false, true}) {
    const std::string printed = PrintGraph(*g, {.result_types = types});
    EXPECT_NE(printed.find("  %v, %i = opaque(%n, %x) {k = 8, name = \"aten.topk\"} : bf16[T, 8], "
                           "i32[T, 8]\n"),
              std::string::npos)
        << printed;
    auto again = Parse(printed);
    ASSERT_TRUE(again);
    EXPECT_EQ(PrintGraph(*again, {.result_types = types}), printed);
  }
  const auto clone = g->Clone();
  EXPECT_EQ(PrintGraph(*clone), PrintGraph(*g));
}

TEST(OpaqueOpTest, ParseErrors) {
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y = opaque(%x) {name = \"aten.silu\"}\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:8: opaque needs declared result types: '%y = opaque(%x) {name = "
            "\"aten.foo\"} : bf16[T, 4096]'");
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y = opaque(%x) : bf16[T, 64]\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:8: opaque: missing required attribute 'name'");
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y = opaque(%x) {name = \"\"} : bf16[T, 64]\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:8: opaque: 'name' must not be empty");
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y, %z = opaque(%x) {name = \"aten.silu\"} : bf16[T, 64]\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:3: opaque produces 1 result here, but 2 names are given");
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y = opaque(%x) {name = 3} : bf16[T, 64]\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:20: opaque: attribute 'name' must be a name or a \"string\", got 3");
}

TEST(OpaqueOpTest, DeclaredTypesOfKnownOpsAreChecked) {
  auto g = Parse(
      "func @f(%x: bf16[T, 64]) {\n"
      "  %y = abs(%x) : bf16[T, 64]\n"
      "  return %y\n"
      "}\n");
  EXPECT_TRUE(g);
  EXPECT_EQ(ParseError("func @f(%x: bf16[T, 64]) {\n"
                       "  %y = cast(%x) {to = f32} : bf16[T, 64]\n"
                       "  return %y\n"
                       "}\n"),
            "<input>:2:30: declared type bf16[T, 64] of result 0 differs from what cast gives: "
            "f32[T, 64]");
}

TEST(OpaqueOpTest, BuildOpaqueNodeAndVerifier) {
  Graph g;
  Value* x = g.AddParam("x", {DType::kBF16, {Dim::Sym("T"), Dim::Const(64)}});
  StatusOr<Node*> node =
      BuildOpaqueNode(g, "aten.silu", {x}, {x->type()}, {"y"}, {{"inplace", Attr::Bool(false)}});
  ASSERT_TRUE(node.ok()) << node.status().message();
  g.SetOutputs({(*node)->result()});
  EXPECT_TRUE(Verify(g).ok()) << Verify(g).message();
  EXPECT_EQ(PrintGraph(g, {.result_types = false}),
            "func @main(%x: bf16[T, 64]) {\n"
            "  %y = opaque(%x) {inplace = false, name = \"aten.silu\"} : bf16[T, 64]\n"
            "  return %y\n"
            "}\n");
  EXPECT_EQ(BuildOpaqueNode(g, "aten.nothing", {x}, {}, {}).status().message(),
            "opaque 'aten.nothing': declare at least one result type");
  EXPECT_EQ(BuildOpaqueNode(g, "", {x}, {x->type()}, {}).status().message(),
            "opaque: 'name' must not be empty");
  // Type inference has nothing to go on.
  EXPECT_FALSE(InferResultTypes("opaque", {x->type()}, {{"name", Attr::Str("a")}}).ok());
  // The verifier checks the attribute after a pass changed it.
  (*node)->set_attr("name", Attr::Str(""));
  EXPECT_EQ(Verify(g).message(), "opaque %y: opaque: 'name' must not be empty");
}

TEST(OpaqueOpTest, DceKeepsOpaqueNodes) {
  auto g = Parse(kOpaqueGraph);
  ASSERT_TRUE(g);
  passes::PassManager pm;
  pm.Add(passes::MakeDcePass());
  passes::PassContext ctx;
  ASSERT_TRUE(pm.Run(*g, ctx).ok());
  EXPECT_NE(g->FindValue("dead"), nullptr);
  EXPECT_EQ(g->OpCounts()["opaque"], 2);
}

TEST(OpaqueOpTest, CpuExecutorRefusesTheGraphNamingTheOp) {
  auto g = Parse(kOpaqueGraph);
  ASSERT_TRUE(g);
  HostTensor x(DType::kBF16, {3, 64}), w(DType::kBF16, {64});
  auto exec = runtime::MakeCpuExecutor(2);
  StatusOr<runtime::RankOutputs> out =
      exec->Run(*g, {{{"x", x}, {"w", w}}, {{"x", x}, {"w", w}}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(out.status().message(),
            "opaque op 'aten.topk' (%v, line 3) cannot be executed: backend cpu runs only the "
            "ops of DESIGN.md Contract 2 (the graph keeps ops it does not know as opaque; run it "
            "where they are defined)");
}

}  // namespace
}  // namespace tpfuse::ir
