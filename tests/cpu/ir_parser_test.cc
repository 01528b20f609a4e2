// The .tpg parser (DESIGN.md Contract 1): what it accepts, and the exact line, column and words
// of every kind of error.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ir/ops.h"
#include "ir/parser.h"
#include "ir/printer.h"

namespace tpfuse::ir {
namespace {

std::string DataPath(const std::string& name) {
  return std::string(TPFUSE_TEST_DATA_DIR) + "/ir/" + name;
}

// Values of a graph by name, asserting they exist.
const Value& V(const Graph& g, const std::string& name) {
  const Value* v = g.FindValue(name);
  EXPECT_NE(v, nullptr) << "%" << name;
  static const Value kMissing{};
  return v ? *v : kMissing;
}

// ---------------------------------------------------------------- happy paths

TEST(IrParserTest, ContractExample) {
  StatusOr<Module> module = ParseModuleFile(DataPath("contract1_example.tpg"));
  ASSERT_TRUE(module.ok()) << module.status().message();
  ASSERT_EQ(module->funcs.size(), 1u);
  const Graph& g = *module->funcs[0];
  EXPECT_EQ(g.name(), "layer");
  ASSERT_EQ(g.params().size(), 4u);
  EXPECT_EQ(g.params()[0]->name(), "x");
  EXPECT_EQ(g.params()[0]->type().ToString(), "bf16[T, 4096]");
  EXPECT_EQ(g.params()[3]->type().ToString(), "bf16[4096, 128]");
  EXPECT_EQ(g.num_nodes(), 4);
  EXPECT_EQ((std::map<std::string, int>{
                {"all_reduce", 1}, {"fused_add_rms_norm", 1}, {"quant_fp8", 1}, {"matmul", 1}}),
            g.OpCounts());
  EXPECT_EQ(V(g, "ar").type().ToString(), "bf16[T, 4096]");
  EXPECT_EQ(V(g, "r").type().ToString(), "bf16[T, 4096]");
  EXPECT_EQ(V(g, "q").type().ToString(), "f8e4m3[T, 4096]");
  EXPECT_EQ(V(g, "s").type().ToString(), "f32[T, 32]");
  EXPECT_EQ(V(g, "k").type().ToString(), "bf16[T, 128]");
  ASSERT_EQ(g.outputs().size(), 4u);
  EXPECT_EQ(g.outputs()[0]->name(), "q");
  EXPECT_EQ(g.outputs()[3]->name(), "k");
  // Use lists: %y feeds quant_fp8 and matmul; %r is only returned.
  EXPECT_EQ(V(g, "y").num_uses(), 2);
  EXPECT_TRUE(V(g, "r").is_returned());
  EXPECT_EQ(V(g, "r").num_uses(), 1);
  // Source locations: the statement's first result.
  const Node* norm = V(g, "y").producer();
  EXPECT_EQ(norm->line(), 4);
  EXPECT_EQ(norm->column(), 3);
  EXPECT_EQ(norm->attr("eps")->kind, Attr::Kind::kFloat);
  EXPECT_EQ(norm->attr("eps")->f, 1e-6);
}

TEST(IrParserTest, MultipleFuncs) {
  StatusOr<Module> module = ParseModuleFile(DataPath("fused.tpg"));
  ASSERT_TRUE(module.ok()) << module.status().message();
  ASSERT_EQ(module->funcs.size(), 8u);
  EXPECT_EQ(module->funcs[0]->name(), "none_norm_only");
  EXPECT_EQ(module->funcs[7]->name(), "gemma");
  const Graph& col = *module->funcs[5];
  EXPECT_EQ(V(col, "s").type().ToString(), "f32[56, pad4(T)]");
  const Graph& konst = *module->funcs[6];
  EXPECT_EQ(V(konst, "s").type().ToString(), "f32[64, 20]");
  StatusOr<AllreduceRmsnormSpec> spec = FusedSpecFromNode(*V(col, "y").producer());
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->quant, QuantMode::kFp8Group);
  EXPECT_EQ(spec->scale_layout, ScaleLayout::kCol);
  EXPECT_EQ(spec->scale_fmt, ScaleFormat::kUe8m0);
  EXPECT_EQ(spec->hidden, 7168);

  // ParseGraph wants exactly one func and points at the second.
  const std::string two =
      "func @a(%x: f32[2]) {\n  return %x\n}\nfunc @b(%x: f32[2]) {\n"
      "  return %x\n}\n";
  EXPECT_EQ(ParseGraph(two, "two.tpg").status().message(),
            "two.tpg:4:1: expected exactly one func, found 2");
  StatusOr<std::unique_ptr<Graph>> one = ParseGraph("func @a(%x: f32[2]) { return %x }");
  ASSERT_TRUE(one.ok()) << one.status().message();
  EXPECT_EQ((*one)->name(), "a");
  EXPECT_EQ((*one)->num_nodes(), 0);
}

TEST(IrParserTest, EveryAttributeKind) {
  StatusOr<Module> module = ParseModuleFile(DataPath("attrs.tpg"));
  ASSERT_TRUE(module.ok()) << module.status().message();
  const Graph& g = *module->funcs[0];
  auto attr = [&](const char* value, const char* name) -> const Attr& {
    return *V(g, value).producer()->attr(name);
  };
  EXPECT_EQ(attr("a", "scalar"), Attr::Int(3));
  EXPECT_EQ(attr("b", "scalar"), Attr::Float(-2.5));
  EXPECT_EQ(attr("c", "scalar"), Attr::Float(1500.0));
  EXPECT_EQ(attr("d", "scalar"), Attr::Float(0.125));
  EXPECT_EQ(attr("e", "min"), Attr::Float(-INFINITY));
  EXPECT_EQ(attr("e", "max"), Attr::Float(INFINITY));
  EXPECT_EQ(attr("f", "min"), Attr::Float(-1e30));
  EXPECT_EQ(attr("m", "dim"), Attr::Int(-1));
  EXPECT_EQ(attr("m", "keepdim"), Attr::Bool(false));
  EXPECT_EQ(attr("mk", "keepdim"), Attr::Bool(true));
  EXPECT_EQ(attr("v", "shape"), Attr::List({Attr::Name("T"), Attr::Int(16), Attr::Int(16)}));
  EXPECT_EQ(attr("ar", "group"), Attr::Str("tp"));
  EXPECT_EQ(attr("ar2", "group"), Attr::Name("tp_inner"));
  EXPECT_EQ(attr("q", "mode"), Attr::Name("token"));
  EXPECT_EQ(attr("q", "scale_fmt"), Attr::Str("ue8m0"));
  EXPECT_EQ(attr("z", "emit"), Attr::List({Attr::Str("norm")}));
  EXPECT_EQ(attr("z", "eps"), Attr::Float(0.0));
  EXPECT_EQ(V(g, "m").type().ToString(), "bf16[T]");
  EXPECT_EQ(V(g, "mk").type().ToString(), "bf16[T, 1]");
  EXPECT_EQ(V(g, "v").type().ToString(), "bf16[T, 16, 16]");
  EXPECT_EQ(V(g, "s").type().ToString(), "f32[T, 1]");

  // Strings with escapes, lists of mixed items, nan, and a leading '+'.
  StatusOr<std::unique_ptr<Graph>> esc = ParseGraph(
      "func @f(%x: f32[4]) {\n"
      "  %y = all_reduce(%x) {group = \"a \\\"quoted\\\" \\\\ name\"}\n"
      "  %z = clamp(%y) {min = nan, max = +4}\n"
      "  %w = view(%z) {shape = [+2, 2]}\n"
      "  return %w\n"
      "}\n");
  ASSERT_TRUE(esc.ok()) << esc.status().message();
  EXPECT_EQ(V(**esc, "y").producer()->attr("group")->s, "a \"quoted\" \\ name");
  EXPECT_TRUE(std::isnan(V(**esc, "z").producer()->attr("min")->f));
  EXPECT_EQ(*V(**esc, "z").producer()->attr("max"), Attr::Int(4));
  EXPECT_EQ(V(**esc, "w").type().ToString(), "f32[2, 2]");
}

TEST(IrParserTest, CommentsWhitespaceAndSymbols) {
  StatusOr<Module> module = ParseModuleFile(DataPath("comments_whitespace.tpg"));
  ASSERT_TRUE(module.ok()) << module.status().message();
  const Graph& g = *module->funcs[0];
  EXPECT_EQ(g.name(), "spaced");
  EXPECT_EQ(g.params()[0]->type().ToString(), "bf16[T, 128]");
  EXPECT_EQ(V(g, "d.1").type().ToString(), "bf16[T, 128]");
  EXPECT_EQ(V(g, "a").producer()->line(), 5);
  EXPECT_EQ(V(g, "a").producer()->column(), 2);  // after a tab
  EXPECT_EQ(g.outputs()[0]->name(), "d.1");

  StatusOr<Module> no_newline = ParseModuleFile(DataPath("no_trailing_newline.tpg"));
  ASSERT_TRUE(no_newline.ok()) << no_newline.status().message();

  // Several symbols, padded symbols and zero-sized dims are all dims.
  StatusOr<std::unique_ptr<Graph>> g2 = ParseGraph(
      "func @f(%a: f32[B, T, 0], %b: f32[16, pad4(T)], %c: i32[]) { return %a, %b, %c }");
  ASSERT_TRUE(g2.ok()) << g2.status().message();
  EXPECT_EQ((*g2)->params()[0]->type().shape[0], Dim::Sym("B"));
  EXPECT_EQ((*g2)->params()[0]->type().shape[2], Dim::Const(0));
  EXPECT_EQ((*g2)->params()[1]->type().shape[1], Dim::Sym("T", 4));
  EXPECT_EQ((*g2)->params()[2]->type().ToString(), "i32[]");

  // Products, with a constant factor first (the rows of [2, T, H]), padded too; in a shape
  // attribute as in a type.
  StatusOr<std::unique_ptr<Graph>> g3 = ParseGraph(
      "func @f(%a: f32[2*T, 8], %b: f32[2, pad4(2*T)]) {\n"
      "  %v = view(%a) {shape = [2*T, 8]}\n"
      "  return %v, %b\n}");
  ASSERT_TRUE(g3.ok()) << g3.status().message();
  EXPECT_EQ((*g3)->params()[0]->type().shape[0], Dim::Sym("2*T"));
  EXPECT_EQ((*g3)->params()[1]->type().shape[1], Dim::Sym("2*T", 4));
  // A constant factor of 0 or 1 would be another spelling of a plain dim; after a symbol, a
  // constant is no factor.
  for (const char* bad : {"f32[1*T, 8]", "f32[0*T, 8]", "f32[T*2, 8]"}) {
    StatusOr<std::unique_ptr<Graph>> g = ParseGraph(std::string("func @f(%a: ") + bad + ") { return %a }");
    EXPECT_FALSE(g.ok()) << bad;
  }
}

TEST(IrParserTest, MissingFileIsNotFound) {
  StatusOr<Module> m = ParseModuleFile(DataPath("does_not_exist.tpg"));
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("does_not_exist.tpg"), std::string::npos);
}

// ---------------------------------------------------------------- errors

// Parses `marked` with "<!>" removed and expects "t.tpg:<line>:<col>: <message>" where
// line:col is the position of the marker.
void ExpectError(std::string marked, const std::string& message) {
  const size_t at = marked.find("<!>");
  ASSERT_NE(at, std::string::npos) << "test text has no <!> marker";
  marked.erase(at, 3);
  int line = 1, column = 1;
  for (size_t i = 0; i < at; ++i) {
    if (marked[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  StatusOr<Module> result = ParseModule(marked, "t.tpg");
  ASSERT_FALSE(result.ok()) << "parsed without error:\n" << marked;
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(), StrCat("t.tpg:", line, ":", column, ": ", message))
      << marked;
}

// A func around `body` (statement lines); params x bf16[T, 8], w bf16[8], s f32[].
std::string Func(const std::string& body) {
  return "func @f(%x: bf16[T, 8], %w: bf16[8], %s: f32[]) {\n" + body + "}\n";
}

TEST(IrParserTest, UnknownOp) {
  ExpectError(Func("  %y = <!>all_reduse(%x)\n  return %y\n"),
              "unknown op 'all_reduse' (did you mean 'all_reduce'?)");
  ExpectError(Func("  %y = <!>rmsnorm(%x, %w) {eps = 1e-6}\n  return %y\n"),
              "unknown op 'rmsnorm' (did you mean 'rms_norm'?)");
  ExpectError(Func("  %y = <!>frobnicate(%x)\n  return %y\n"), "unknown op 'frobnicate'");
}

TEST(IrParserTest, WrongArity) {
  ExpectError(Func("  %y = <!>all_reduce(%x, %x)\n  return %y\n"),
              "all_reduce: expected 1 operand, got 2");
  ExpectError(Func("  %y = <!>matmul(%x)\n  return %y\n"), "matmul: expected 2 operands, got 1");
  ExpectError(Func("  %y = <!>rsqrt()\n  return %y\n"), "rsqrt: expected 1 operand, got 0");
  ExpectError(Func("  <!>%q = quant_fp8(%x) {mode = \"group\", group_size = 4}\n  return %q\n"),
              "quant_fp8 produces 2 results here, but 1 name is given");
  ExpectError(Func("  <!>%a, %b = all_reduce(%x)\n  return %a\n"),
              "all_reduce produces 1 result here, but 2 names are given");
}

TEST(IrParserTest, InferenceErrorsPointAtTheOp) {
  ExpectError(
      "func @f(%x: bf16[T, 4096], %b: bf16[128]) {\n  %y = <!>add(%x, %b)\n"
      "  return %y\n}\n",
      "add: shapes bf16[T, 4096] and bf16[128] do not broadcast");
  ExpectError(Func("  %y = <!>matmul(%x, %s)\n  return %y\n"),
              "matmul: a and b must have one dtype, got bf16[T, 8] and f32[]");
  ExpectError(Func("  %a = all_reduce(%x)\n  %y, %r = <!>fused_add_rms_norm(%a, %w, %w) "
                   "{eps = 1e-6}\n  return %y\n"),
              "fused_add_rms_norm: residual bf16[8] does not match x bf16[T, 8] (its type, or f32 of its shape)");
  ExpectError(Func("  %q = <!>quant_fp8(%x) {mode = tensor}\n  return %q\n"),
              "quant_fp8: mode tensor needs a scale operand (f32[])");
  ExpectError(Func("  %y = <!>rms_norm(%x, %w)\n  return %y\n"),
              "rms_norm: missing required attribute 'eps'");
}

TEST(IrParserTest, AttributeErrorsPointAtTheAttribute) {
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = 1e-6, <!>epsilon = 1}\n  return %y\n"),
              "rms_norm: unknown attribute 'epsilon' (accepted: eps, weight_bias, rounding)");
  ExpectError(Func("  %y = rsqrt(%x) {<!>eps = 1}\n  return %y\n"),
              "rsqrt: unknown attribute 'eps' (rsqrt takes no attributes)");
  ExpectError(Func("  %y = rms_norm(%x, %w) {<!>eps = \"small\"}\n  return %y\n"),
              "rms_norm: attribute 'eps' must be a number, got \"small\"");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = 1e-6, <!>eps = 1e-5}\n  return %y\n"),
              "attribute 'eps' given twice");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = <!>}\n  return %y\n"),
              "expected an attribute value (number, \"string\", true, false, name or [list]), "
              "found '}'");
  ExpectError(Func("  %y = view(%x) {shape = [T, <!>[8]]}\n  return %y\n"),
              "expected a list item (number, \"string\" or name), found '['");
  ExpectError(Func("  %y = rms_norm(%x, %w) {<!>}\n  return %y\n"),
              "expected an attribute name, found '}'");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps <!>1e-6}\n  return %y\n"),
              "expected '=', found '1e-6'");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = 1e-6\n  <!>return %y\n"),
              "expected '}', found 'return'");
}

TEST(IrParserTest, UndefinedValue) {
  ExpectError(Func("  %y = all_reduce(<!>%z)\n  return %y\n"), "undefined value %z");
  ExpectError(Func("  %y = all_reduce(%x)\n  return %y, <!>%q\n"), "undefined value %q");
  // A statement cannot use its own result.
  ExpectError(Func("  %y = add(%x, <!>%y)\n  return %y\n"), "undefined value %y");
  // Values do not leak between funcs.
  ExpectError(
      "func @a(%x: f32[2]) {\n  %y = rsqrt(%x)\n  return %y\n}\n"
      "func @b(%z: f32[2]) {\n  return <!>%y\n}\n",
      "undefined value %y");
}

TEST(IrParserTest, DefinedTwice) {
  ExpectError(Func("  <!>%x = all_reduce(%x)\n  return %x\n"),
              "value %x defined twice (first at 1:9)");
  ExpectError(Func("  %y = all_reduce(%x)\n  <!>%y = rsqrt(%y)\n  return %y\n"),
              "value %y defined twice (first at 2:3)");
  ExpectError(Func("  %a, <!>%a = fused_add_rms_norm(%x, %x, %w) {eps = 1e-6}\n  return %a\n"),
              "value %a defined twice (first at 2:3)");
  ExpectError("func @f(%x: f32[2], <!>%x: f32[2]) {\n  return %x\n}\n",
              "value %x defined twice (first at 1:9)");
  ExpectError("func @f(%x: f32[2]) {\n  return %x\n}\nfunc <!>@f(%x: f32[2]) {\n  return %x\n}\n",
              "func @f defined twice (first at 1:6)");
}

TEST(IrParserTest, Syntax) {
  ExpectError(Func("  %y <!>all_reduce(%x)\n  return %y\n"), "expected '=', found 'all_reduce'");
  ExpectError(Func("  %y = all_reduce(%x\n  <!>return %y\n"), "expected ')', found 'return'");
  ExpectError(Func("  %y = all_reduce <!>%x\n  return %y\n"), "expected '(', found '%x'");
  ExpectError(Func("  %y = <!>(%x)\n  return %y\n"), "expected an op name, found '('");
  ExpectError(Func("  %y = all_reduce(%x,<!>)\n  return %y\n"),
              "expected an operand '%name', found ')'");
  ExpectError(Func("  <!>y = all_reduce(%x)\n  return %y\n"),
              "expected a statement '%name = op(...)' or 'return', found 'y'");
  ExpectError(Func("  %y = all_reduce(%x)\n  return \n<!>"),
              "expected a returned value '%name', found '}'");
  ExpectError(Func("  %y = all_reduce(%x)\n  return %y\n  <!>%z = rsqrt(%y)\n"),
              "expected '}', found '%z'");
  ExpectError("func <!>f(%x: f32[2]) {\n  return %x\n}\n",
              "expected a function name '@name', found 'f'");
  ExpectError("func @f(<!>x: f32[2]) {\n  return %x\n}\n",
              "expected a parameter '%name', found 'x'");
  ExpectError("func @f(%x <!>f32[2]) {\n  return %x\n}\n", "expected ':', found 'f32'");
  ExpectError("func @f(%x: f32<!>) {\n  return %x\n}\n", "expected '[', found ')'");
  ExpectError("func @f(%x: f32[2, <!>]) {\n  return %x\n}\n",
              "expected a dimension (integer or symbol), found ']'");
  ExpectError("func @f(%x: f32[2 <!>3]) {\n  return %x\n}\n", "expected ']', found '3'");
  ExpectError("func @f(%x: f32[<!>T(4)]) {\n  return %x\n}\n",
              "expected a dimension (integer, symbol or padN(symbol)), found 'T('");
  ExpectError("func @f(%x: f32[<!>pad0(T)]) {\n  return %x\n}\n",
              "expected a dimension (integer, symbol or padN(symbol)), found 'pad0('");
  ExpectError("func @f(%x: f32[2]) <!>return %x\n}\n", "expected '{', found 'return'");
  ExpectError("<!>fun @f(%x: f32[2]) {\n  return %x\n}\n", "expected 'func', found 'fun'");
  ExpectError("<!>", "expected 'func', found end of input");
  ExpectError("  # only a comment\n<!>", "expected 'func', found end of input");
  ExpectError("func @f(%x: f32[2]) {\n  return %x\n<!>", "expected '}', found end of input");
  ExpectError("func @f(%x: f32[2]) {\n  %y = rsqrt(%x)<!>",
              "expected a statement '%name = op(...)' or 'return', found end of input");
}

TEST(IrParserTest, MissingReturn) {
  ExpectError(Func("  %y = all_reduce(%x)\n<!>"), "missing 'return' at the end of func @f");
  ExpectError("func @empty() {\n<!>}\n", "missing 'return' at the end of func @empty");
}

TEST(IrParserTest, UnknownDtype) {
  ExpectError("func @f(%x: <!>bf61[T, 8]) {\n  return %x\n}\n",
              "unknown dtype 'bf61' (expected bf16, f16, f32, f8e4m3 or i32)");
  ExpectError("func @f(%x: <!>[T, 8]) {\n  return %x\n}\n", "expected a dtype, found '['");
}

TEST(IrParserTest, LexicalErrors) {
  ExpectError(Func("  %y = all_reduce(%x) {group = <!>\"tp}\n  return %y\n"),
              "unterminated string");
  ExpectError(Func("  %y = all_reduce(%x) {group = <!>\"tp"), "unterminated string");
  ExpectError(Func("  %y = all_reduce(%x) {group = \"t<!>\\n\"}\n  return %y\n"),
              "unknown escape '\\n' in string (only \\\" and \\\\ are allowed)");
  ExpectError(Func("  %y = all_reduce(%x) <!>$\n  return %y\n"), "unexpected character '$'");
  ExpectError(Func("  %y = all_reduce(%x) <!>\x01\n  return %y\n"), "unexpected character '\\x01'");
  ExpectError(Func("  %y = all_reduce(<!>%)\n  return %y\n"),
              "expected a name after '%', found ')'");
  ExpectError("func <!>@", "expected a name after '@'");
  ExpectError("func @f(%x: f32[<!>99999999999999999999]) {\n  return %x\n}\n",
              "number 99999999999999999999 is out of range");
  ExpectError("func @f(%x: f32[<!>3000000000]) {\n  return %x\n}\n",
              "dimension 3000000000 is out of range [0, 2147483647]");
  ExpectError("func @f(%x: f32[<!>-3]) {\n  return %x\n}\n",
              "dimension -3 is out of range [0, 2147483647]");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = <!>1e}\n  return %y\n"),
              "malformed number '1e'");
  ExpectError("func @f(%x: f32[<!>12abc]) {\n  return %x\n}\n", "malformed number '12abc'");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = <!>1.5.2}\n  return %y\n"),
              "malformed number '1.5.2'");
  ExpectError(Func("  %y = rms_norm(%x, %w) {eps = <!>1e999}\n  return %y\n"),
              "number 1e999 is out of range");
  ExpectError(Func("  %y = all_reduce(%x) <!>-\n  return %y\n"), "unexpected character '-'");
  // Errors come out in source order: the syntax error on line 2 wins over the string on line 3.
  ExpectError(Func("  %y <!>all_reduce(%x)\n  %z = all_reduce(%x) {group = \"oops\n"),
              "expected '=', found 'all_reduce'");
}

TEST(IrParserTest, TrailingGarbage) {
  ExpectError("func @f(%x: f32[2]) {\n  return %x\n}\n<!>garbage\n",
              "expected 'func' or end of input, found 'garbage'");
  ExpectError("func @f(%x: f32[2]) {\n  return %x\n} <!>}\n",
              "expected 'func' or end of input, found '}'");
  ExpectError("func @f(%x: f32[2]) {\n  return %x\n}\n<!>\"text\"",
              "expected 'func' or end of input, found string \"text\"");
}

}  // namespace
}  // namespace tpfuse::ir
