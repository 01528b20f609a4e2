// The graph API: use lists under rewiring, per-use replacement (returns included), erasure,
// cloning, naming and reordering.
#include <gtest/gtest.h>

#include <string>

#include "ir/graph.h"
#include "ir/ops.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/verifier.h"

namespace tpfuse::ir {
namespace {

// %ar feeds the norm and the return list; %y feeds the quant and the matmul.
constexpr char kGraph[] = R"(
func @g(%x: bf16[T, 256], %res: bf16[T, 256], %w: bf16[256], %wk: bf16[256, 64]) {
  %ar = all_reduce(%x)
  %y, %h = fused_add_rms_norm(%ar, %res, %w) {eps = 1e-6}
  %q, %s = quant_fp8(%y) {mode = group}
  %k = matmul(%y, %wk)
  return %q, %s, %h, %k, %ar
}
)";

std::unique_ptr<Graph> Parse(const char* text = kGraph) {
  StatusOr<std::unique_ptr<Graph>> g = ParseGraph(text, "graph_test");
  EXPECT_TRUE(g.ok()) << g.status().message();
  return g.ok() ? std::move(g).value() : nullptr;
}

bool HasUse(const Value* v, const Node* user, int index) {
  for (const Use& u : v->uses()) {
    if (u.user == user && u.index == index) return true;
  }
  return false;
}

TEST(IrGraphTest, UseListsFromParsing) {
  auto g = Parse();
  ASSERT_TRUE(g);
  Value* ar = g->FindValue("ar");
  Value* y = g->FindValue("y");
  Node* norm = y->producer();
  EXPECT_EQ(ar->num_uses(), 2);
  EXPECT_TRUE(HasUse(ar, norm, 0));
  EXPECT_TRUE(HasUse(ar, nullptr, 4));  // returned in position 4
  EXPECT_TRUE(ar->is_returned());
  EXPECT_FALSE(y->is_returned());
  EXPECT_EQ(y->num_uses(), 2);
  EXPECT_EQ(y->result_index(), 0);
  EXPECT_EQ(g->FindValue("h")->result_index(), 1);
  EXPECT_TRUE(g->FindValue("x")->is_param());
  EXPECT_EQ(g->FindValue("missing"), nullptr);
  EXPECT_EQ((g->OpCounts()),
            (std::map<std::string, int>{
                {"all_reduce", 1}, {"fused_add_rms_norm", 1}, {"quant_fp8", 1}, {"matmul", 1}}));
}

TEST(IrGraphTest, ReplaceUsesIfMovesChosenUsesIncludingReturns) {
  auto g = Parse();
  ASSERT_TRUE(g);
  Value* x = g->FindValue("x");
  Value* ar = g->FindValue("ar");
  Node* norm = g->FindValue("y")->producer();

  // Only the return use moves: the norm still reads %ar.
  EXPECT_EQ(ar->ReplaceUsesIf(x, [](const Use& u) { return u.is_return(); }), 1);
  EXPECT_EQ(g->outputs()[4], x);
  EXPECT_TRUE(HasUse(x, nullptr, 4));
  EXPECT_FALSE(ar->is_returned());
  EXPECT_EQ(ar->num_uses(), 1);
  EXPECT_EQ(norm->operand(0), ar);
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  // Then the operand use.
  EXPECT_EQ(ar->ReplaceUsesIf(x, [&](const Use& u) { return u.user == norm; }), 1);
  EXPECT_EQ(norm->operand(0), x);
  EXPECT_FALSE(ar->has_uses());
  EXPECT_TRUE(HasUse(x, norm, 0));
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  // Nothing matches: nothing moves; replacing a value with itself is a no-op.
  EXPECT_EQ(x->ReplaceUsesIf(ar, [](const Use&) { return false; }), 0);
  EXPECT_EQ(x->ReplaceUsesIf(x, [](const Use&) { return true; }), 0);
  EXPECT_EQ(x->num_uses(), 3);  // all_reduce, norm, return
}

TEST(IrGraphTest, ReplaceAllUsesWithHandlesRepeatedOperands) {
  auto g = Parse(R"(
func @g(%a: f32[4], %b: f32[4]) {
  %sq = mul(%a, %a)
  return %sq, %a, %a
}
)");
  ASSERT_TRUE(g);
  Value* a = g->FindValue("a");
  Value* b = g->FindValue("b");
  a->ReplaceAllUsesWith(b);
  EXPECT_FALSE(a->has_uses());
  EXPECT_EQ(b->num_uses(), 4);
  Node* mul = g->FindValue("sq")->producer();
  EXPECT_EQ(mul->operand(0), b);
  EXPECT_EQ(mul->operand(1), b);
  EXPECT_EQ(g->outputs()[1], b);
  EXPECT_EQ(g->outputs()[2], b);
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();
}

TEST(IrGraphTest, SetOperandAndSetOutputsKeepUseListsConsistent) {
  auto g = Parse();
  ASSERT_TRUE(g);
  Node* matmul = g->FindValue("k")->producer();
  Value* y = g->FindValue("y");
  Value* h = g->FindValue("h");
  matmul->SetOperand(0, h);
  EXPECT_FALSE(HasUse(y, matmul, 0));
  EXPECT_TRUE(HasUse(h, matmul, 0));
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  g->SetOutputs({g->FindValue("k")});
  EXPECT_FALSE(h->is_returned());
  EXPECT_FALSE(g->FindValue("ar")->is_returned());
  EXPECT_TRUE(g->FindValue("k")->is_returned());
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();
}

TEST(IrGraphTest, EraseNodeRefusesWhileResultsAreUsed) {
  auto g = Parse();
  ASSERT_TRUE(g);
  Node* ar = g->FindValue("ar")->producer();
  Node* matmul = g->FindValue("k")->producer();
  Status refused = g->EraseNode(ar);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(refused.message(), "cannot erase all_reduce: result %ar still has uses");
  EXPECT_EQ(g->num_nodes(), 4);

  // A returned result is a use too.
  Status returned = g->EraseNode(matmul);
  EXPECT_EQ(returned.message(), "cannot erase matmul: result %k still has uses");

  g->SetOutputs({g->FindValue("q"), g->FindValue("s"), g->FindValue("h")});
  ASSERT_TRUE(g->EraseNode(matmul).ok());
  EXPECT_EQ(g->num_nodes(), 3);
  EXPECT_EQ(g->FindValue("k"), nullptr);
  EXPECT_EQ(g->FindValue("y")->num_uses(), 1);  // only the quant now
  EXPECT_EQ(g->FindValue("wk")->num_uses(), 0);
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  // A node of another graph is refused, not corrupted.
  auto other = Parse();
  Status foreign = g->EraseNode(other->FindValue("k")->producer());
  EXPECT_EQ(foreign.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(other->num_nodes(), 4);
}

TEST(IrGraphTest, CloneIsDeepAndIndependent) {
  auto g = Parse();
  ASSERT_TRUE(g);
  std::unique_ptr<Graph> copy = g->Clone();
  EXPECT_EQ(PrintGraph(*copy), PrintGraph(*g));
  EXPECT_TRUE(Verify(*copy).ok()) << Verify(*copy).message();
  EXPECT_EQ(copy->name(), "g");
  EXPECT_NE(copy->FindValue("y"), g->FindValue("y"));
  EXPECT_EQ(copy->FindValue("y")->producer()->graph(), copy.get());
  EXPECT_EQ(copy->FindValue("y")->producer()->line(), g->FindValue("y")->producer()->line());
  EXPECT_EQ(copy->FindValue("y")->num_uses(), 2);

  // Editing the copy leaves the original alone.
  copy->SetOutputs({copy->FindValue("q")});
  Node* matmul = copy->FindValue("k")->producer();
  ASSERT_TRUE(copy->EraseNode(matmul).ok());
  EXPECT_EQ(copy->num_nodes(), 3);
  EXPECT_EQ(g->num_nodes(), 4);
  EXPECT_EQ(g->outputs().size(), 5u);
  EXPECT_TRUE(Verify(*g).ok());
  EXPECT_TRUE(Verify(*copy).ok());
}

TEST(IrGraphTest, UniqueNames) {
  Graph g;
  const TensorType t{DType::kF32, {Dim::Const(4)}};
  EXPECT_EQ(g.UniqueName("x"), "x");
  Value* x = g.AddParam("x", t);
  EXPECT_EQ(x->name(), "x");
  EXPECT_EQ(g.UniqueName("x"), "x.1");
  Value* x1 = g.AddParam("x", t);  // a taken name gets a suffix
  EXPECT_EQ(x1->name(), "x.1");
  EXPECT_EQ(g.UniqueName("x"), "x.2");
  Node* n = g.AddNode("rsqrt", {x}, {}, {"x"}, {t});
  EXPECT_EQ(n->result()->name(), "x.2");
  Node* unnamed = g.AddNode("rsqrt", {x}, {}, {}, {t});
  EXPECT_EQ(unnamed->result()->name(), "rsqrt_0");
  // An erased name becomes free again.
  g.SetOutputs({x});
  ASSERT_TRUE(g.EraseNode(n).ok());
  EXPECT_EQ(g.UniqueName("x"), "x.2");
  EXPECT_TRUE(Verify(g).ok()) << Verify(g).message();
}

TEST(IrGraphTest, MoveBeforeAndIndexOf) {
  auto g = Parse();
  ASSERT_TRUE(g);
  Node* ar = g->FindValue("ar")->producer();
  Node* norm = g->FindValue("y")->producer();
  Node* quant = g->FindValue("q")->producer();
  Node* matmul = g->FindValue("k")->producer();
  EXPECT_EQ(g->IndexOf(ar), 0);
  EXPECT_EQ(g->IndexOf(matmul), 3);

  // matmul and quant are independent: swapping them keeps the order topological.
  g->MoveBefore(matmul, quant);
  EXPECT_EQ(g->IndexOf(matmul), 2);
  EXPECT_EQ(g->IndexOf(quant), 3);
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  // To the end, and before itself (no change).
  g->MoveBefore(matmul, nullptr);
  EXPECT_EQ(g->IndexOf(matmul), 3);
  g->MoveBefore(norm, norm);
  EXPECT_EQ(g->IndexOf(norm), 1);

  // Moving a user above its producer breaks the order; the verifier says so.
  g->MoveBefore(norm, ar);
  Status broken = Verify(*g);
  EXPECT_FALSE(broken.ok());
  EXPECT_EQ(broken.message(),
            "fused_add_rms_norm %y (line 4): operand 0 %ar is used before it is defined");
  g->MoveBefore(ar, norm);
  EXPECT_TRUE(Verify(*g).ok()) << Verify(*g).message();

  Graph other;
  EXPECT_EQ(other.IndexOf(ar), -1);
}

TEST(IrGraphTest, NodesSnapshotAllowsErasingWhileIterating) {
  auto g = Parse(R"(
func @g(%x: f32[4]) {
  %a = rsqrt(%x)
  %b = rsqrt(%a)
  %c = rsqrt(%x)
  return %c
}
)");
  ASSERT_TRUE(g);
  // Erase dead nodes back to front, as a DCE pass would.
  std::vector<Node*> nodes = g->NodesSnapshot();
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    if (!(*it)->result()->has_uses()) {
      ASSERT_TRUE(g->EraseNode(*it).ok());
    }
  }
  EXPECT_EQ(g->num_nodes(), 1);
  EXPECT_EQ(g->nodes().front()->result()->name(), "c");
  EXPECT_TRUE(Verify(*g).ok());
}

TEST(IrGraphTest, DimsAndTypesResolve) {
  const std::map<std::string, int64_t> bindings = {{"T", 19}};
  EXPECT_EQ(*Dim::Const(7).Resolve(bindings), 7);
  EXPECT_EQ(*Dim::Sym("T").Resolve(bindings), 19);
  EXPECT_EQ(*Dim::Sym("T", 4).Resolve(bindings), 20);
  EXPECT_EQ(Dim::Sym("S").Resolve(bindings).status().message(), "symbol S is not bound");
  EXPECT_EQ(Dim::Sym("T", 4).ToString(), "pad4(T)");
  const TensorType s{DType::kF32, {Dim::Const(32), Dim::Sym("T", 4)}};
  EXPECT_EQ(s.ToString(), "f32[32, pad4(T)]");
  EXPECT_EQ(*s.Resolve(bindings), (std::vector<int64_t>{32, 20}));
  EXPECT_EQ(TensorType{}.ToString(), "f32[]");
}

}  // namespace
}  // namespace tpfuse::ir
