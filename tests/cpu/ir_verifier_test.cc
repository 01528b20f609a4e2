// The verifier on good graphs, and on graphs broken on purpose through the API (the way a buggy
// pass would break them).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "ir/ops.h"
#include "ir/parser.h"
#include "ir/verifier.h"

namespace tpfuse::ir {
namespace {

constexpr char kGraph[] = R"(func @g(%x: bf16[T, 256], %w: bf16[256]) {
  %ar = all_reduce(%x)
  %y = rms_norm(%ar, %w) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = group}
  return %q, %s
}
)";

std::unique_ptr<Graph> Parse() {
  StatusOr<std::unique_ptr<Graph>> g = ParseGraph(kGraph, "verifier_test");
  EXPECT_TRUE(g.ok()) << g.status().message();
  return g.ok() ? std::move(g).value() : nullptr;
}

TEST(IrVerifierTest, EveryTestGraphVerifies) {
  int funcs = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TPFUSE_TEST_DATA_DIR) + "/ir")) {
    if (entry.path().extension() != ".tpg") continue;
    StatusOr<Module> m = ParseModuleFile(entry.path().string());
    ASSERT_TRUE(m.ok()) << m.status().message();
    for (const auto& g : m->funcs) {
      EXPECT_TRUE(Verify(*g).ok()) << entry.path() << ": " << Verify(*g).message();
      ++funcs;
    }
  }
  EXPECT_GE(funcs, 20);
}

TEST(IrVerifierTest, UseBeforeDefinition) {
  auto g = Parse();
  Node* ar = g->FindValue("ar")->producer();
  Node* quant = g->FindValue("q")->producer();
  g->MoveBefore(quant, ar);
  EXPECT_EQ(Verify(*g).message(),
            "quant_fp8 %q (line 4): operand 0 %y is used before it is defined");
}

TEST(IrVerifierTest, ResultTypeDiffersFromInference) {
  auto g = Parse();
  g->FindValue("s")->set_type(TensorType{DType::kF32, {Dim::Sym("T"), Dim::Const(1)}});
  EXPECT_EQ(Verify(*g).message(),
            "quant_fp8 %q (line 4): result 1 %s has type f32[T, 1], but quant_fp8 gives "
            "f32[T, 2]");
}

TEST(IrVerifierTest, OperandTypeChangedUnderAUser) {
  // A pass retypes a parameter; the norm downstream no longer type-checks.
  auto g = Parse();
  g->FindValue("w")->set_type(TensorType{DType::kBF16, {Dim::Const(128)}});
  EXPECT_EQ(Verify(*g).message(),
            "rms_norm %y (line 3): rms_norm: weight bf16[128] does not match the hidden dim of "
            "bf16[T, 256]");
}

TEST(IrVerifierTest, InvalidAttributes) {
  auto g = Parse();
  Node* quant = g->FindValue("q")->producer();
  quant->set_attr("mode", Attr::Name("blockwise"));
  EXPECT_EQ(Verify(*g).message(),
            "quant_fp8 %q (line 4): quant_fp8: unknown mode 'blockwise' (expected tensor, token or "
            "group)");
  quant->set_attr("mode", Attr::Name("group"));
  quant->set_attr("colour", Attr::Name("blue"));
  EXPECT_EQ(Verify(*g).message(),
            "quant_fp8 %q (line 4): quant_fp8: unknown attribute 'colour' (accepted: mode, "
            "group_size, scale_layout, scale_fmt, rounding)");
  quant->mutable_attrs().erase("colour");
  EXPECT_TRUE(Verify(*g).ok());
}

TEST(IrVerifierTest, WrongResultCountAndUnknownOp) {
  auto g = Parse();
  Value* x = g->FindValue("x");
  const TensorType t = x->type();
  // Built by a pass (no source line), so the label has none.
  g->AddNode("all_reduce", {x}, {}, {"a", "b"}, {t, t});
  EXPECT_EQ(Verify(*g).message(), "all_reduce %a: has 2 results, but all_reduce produces 1");

  auto g2 = Parse();
  g2->AddNode("all_gather", {g2->FindValue("x")}, {}, {"z"}, {t});
  EXPECT_EQ(Verify(*g2).message(), "all_gather %z: unknown op 'all_gather'");

  auto g3 = Parse();
  g3->AddNode("rsqrt", {g3->FindValue("x")}, {}, {}, {});
  EXPECT_EQ(Verify(*g3).message(), "rsqrt: has no results");
}

TEST(IrVerifierTest, EmptyOutputs) {
  auto g = Parse();
  g->SetOutputs({});
  EXPECT_EQ(Verify(*g).message(), "func @g returns nothing");
}

TEST(IrVerifierTest, ValuesFromAnotherGraph) {
  auto g = Parse();
  auto other = Parse();
  // An operand taken from another graph.
  Node* norm = g->FindValue("y")->producer();
  norm->SetOperand(1, other->FindValue("w"));
  EXPECT_EQ(Verify(*g).message(), "rms_norm %y (line 3): operand 1 is not a value of this graph");
  // The other graph now records a use by a node it does not own.
  EXPECT_EQ(Verify(*other).message(), "%w records a use by a node outside the graph");
  norm->SetOperand(1, g->FindValue("w"));
  EXPECT_TRUE(Verify(*g).ok());
  EXPECT_TRUE(Verify(*other).ok());

  // A returned value from another graph.
  g->SetOutputs({other->FindValue("y")});
  EXPECT_EQ(Verify(*g).message(), "return value 0 is not a value of this graph");
  EXPECT_EQ(Verify(*other).message(), "%y records return use 0 but is not returned there");
}

TEST(IrVerifierTest, MissingRequiredAttribute) {
  auto g = Parse();
  g->FindValue("y")->producer()->mutable_attrs().erase("eps");
  EXPECT_EQ(Verify(*g).message(),
            "rms_norm %y (line 3): rms_norm: missing required attribute 'eps'");
}

}  // namespace
}  // namespace tpfuse::ir
