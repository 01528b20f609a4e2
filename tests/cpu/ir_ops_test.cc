// Result-type inference for every op of Contract 2 and the fused op of Contract 3, with the
// error for each way an op can be misused.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "ir/ops.h"

namespace tpfuse::ir {
namespace {

// "bf16[T, 4096]", "f32[]", "f32[56, pad4(T)]" -> TensorType (test inputs are well formed).
TensorType Ty(const std::string& text) {
  const size_t open = text.find('[');
  TensorType type{*ParseDType(text.substr(0, open)), {}};
  std::string body = text.substr(open + 1, text.size() - open - 2);
  size_t start = 0;
  while (start < body.size()) {
    size_t end = body.find(',', start);
    if (end == std::string::npos) end = body.size();
    std::string item = body.substr(start, end - start);
    item.erase(0, item.find_first_not_of(' '));
    if (item.rfind("pad", 0) == 0) {
      const size_t paren = item.find('(');
      type.shape.push_back(Dim::Sym(item.substr(paren + 1, item.size() - paren - 2),
                                    std::stoll(item.substr(3, paren - 3))));
    } else if (isdigit(item[0])) {
      type.shape.push_back(Dim::Const(std::stoll(item)));
    } else {
      type.shape.push_back(Dim::Sym(item));
    }
    start = end + 1;
  }
  return type;
}

// Result types joined by ", ", or "error: <message>".
std::string Infer(const std::string& op, const std::vector<std::string>& operands,
                  const AttrMap& attrs = {}) {
  std::vector<TensorType> types;
  for (const std::string& s : operands) types.push_back(Ty(s));
  StatusOr<std::vector<TensorType>> result = InferResultTypes(op, types, attrs);
  if (!result.ok()) return "error: " + result.status().message();
  std::string out;
  for (const TensorType& t : *result) out += (out.empty() ? "" : ", ") + t.ToString();
  return out;
}

Attr Names(const std::vector<std::string>& names) {
  std::vector<Attr> items;
  for (const std::string& n : names) items.push_back(Attr::Name(n));
  return Attr::List(items);
}

const Attr kEps = Attr::Float(1e-6);

// ---------------------------------------------------------------- registry

TEST(IrOpsTest, RegistryHasEveryOp) {
  for (const char* op : {"all_reduce", "add", "sub", "mul", "div", "pow", "mean", "rsqrt", "clamp",
                         "cast", "view", "rms_norm", "fused_add_rms_norm", "quant_fp8", "matmul",
                         "scaled_matmul", "allreduce_rmsnorm", "sqrt", "abs", "neg",
                         "reciprocal", "log2", "exp2", "ceil", "amax", "full", "opaque"}) {
    const OpDef* def = FindOp(op);
    ASSERT_NE(def, nullptr) << op;
    EXPECT_EQ(def->name, op);
  }
  EXPECT_EQ(AllOps().size(), 27u);
  EXPECT_EQ(FindOp("all_reduse"), nullptr);
  EXPECT_EQ(ClosestOpName("all_reduse"), "all_reduce");
  EXPECT_EQ(ClosestOpName("rmsnorm"), "rms_norm");
  EXPECT_EQ(ClosestOpName("completely_unrelated"), "");
  EXPECT_EQ(Infer("all_reduse", {"bf16[T, 8]"}),
            "error: unknown op 'all_reduse' (did you mean 'all_reduce'?)");
  EXPECT_EQ(Infer("frobnicate", {"bf16[T, 8]"}), "error: unknown op 'frobnicate'");
}

TEST(IrOpsTest, Full) {
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Int(64)})}, {"value", Attr::Int(1)},
                               {"dtype", Attr::Name("bf16")}}),
            "bf16[64]");
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Int(3), Attr::Int(64)})},
                               {"value", Attr::Float(-2.5)}, {"dtype", Attr::Name("f32")}}),
            "f32[3, 64]");
  // What the backends fill alike: a value the dtype holds, a constant shape, not -0.
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Int(64)})}, {"value", Attr::Float(1e5)},
                               {"dtype", Attr::Name("f16")}}),
            "error: full: 'value' 100000 is not a finite f16");
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Int(64)})}, {"value", Attr::Float(-0.0)},
                               {"dtype", Attr::Name("f32")}}),
            "error: full: 'value' -0 is not supported");
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Name("H")})}, {"value", Attr::Int(1)},
                               {"dtype", Attr::Name("f32")}}),
            "error: full: shape item H is not a constant in [0, " + std::to_string(kMaxDimValue) + "]");
  EXPECT_EQ(Infer("full", {}, {{"shape", Attr::List({Attr::Int(4)})}, {"value", Attr::Int(1)},
                               {"dtype", Attr::Name("f8e4m3")}}),
            "error: full: 'dtype' must be f32, bf16 or f16, got 'f8e4m3'");
}

TEST(IrOpsTest, ArityAndAttributeErrors) {
  EXPECT_EQ(Infer("all_reduce", {"bf16[T, 8]", "bf16[T, 8]"}),
            "error: all_reduce: expected 1 operand, got 2");
  EXPECT_EQ(Infer("add", {}), "error: add: expected 1 or 2 operands, got 0");
  EXPECT_EQ(Infer("scaled_matmul", {"f32[]"}), "error: scaled_matmul: expected 4 operands, got 1");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"bf16[T, 8]"}),
            "error: allreduce_rmsnorm: expected 2 to 5 operands, got 1");
  EXPECT_EQ(Infer("all_reduce", {"bf16[T, 8]"}, {{"grop", Attr::Str("tp")}}),
            "error: all_reduce: unknown attribute 'grop' (accepted: group)");
  EXPECT_EQ(Infer("rsqrt", {"bf16[T, 8]"}, {{"eps", kEps}}),
            "error: rsqrt: unknown attribute 'eps' (rsqrt takes no attributes)");
  EXPECT_EQ(Infer("pow", {"bf16[T, 8]"}, {{"exponent", Attr::Str("two")}}),
            "error: pow: attribute 'exponent' must be a number, got \"two\"");
  EXPECT_EQ(Infer("mean", {"bf16[T, 8]"}, {{"dim", Attr::Float(-1.0)}}),
            "error: mean: attribute 'dim' must be an integer, got -1.0");
  EXPECT_EQ(Infer("mean", {"bf16[T, 8]"}, {{"keepdim", Attr::Int(1)}}),
            "error: mean: attribute 'keepdim' must be true or false, got 1");
  EXPECT_EQ(Infer("cast", {"bf16[T, 8]"}, {{"to", Attr::Int(3)}}),
            "error: cast: attribute 'to' must be a name or a \"string\", got 3");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"bf16[T, 8]", "bf16[8]"},
                  {{"eps", kEps}, {"emit", Attr::Str("norm")}}),
            "error: allreduce_rmsnorm: attribute 'emit' must be a list of names or strings, got "
            "\"norm\"");
  EXPECT_EQ(Infer("view", {"bf16[T, 8]"}, {{"shape", Attr::Int(8)}}),
            "error: view: attribute 'shape' must be a list, got 8");
  EXPECT_EQ(Infer("pow", {"bf16[T, 8]"}), "error: pow: missing required attribute 'exponent'");
}

// ---------------------------------------------------------------- all_reduce

TEST(IrOpsTest, AllReduce) {
  EXPECT_EQ(Infer("all_reduce", {"bf16[T, 4096]"}), "bf16[T, 4096]");
  EXPECT_EQ(Infer("all_reduce", {"f32[3, 5]"}, {{"group", Attr::Str("tp")}}), "f32[3, 5]");
  EXPECT_EQ(Infer("all_reduce", {"f32[3, 5]"}, {{"group", Attr::Name("tp")}}), "f32[3, 5]");
  EXPECT_EQ(Infer("all_reduce", {"f32[3, 5]"}, {{"group", Attr::Str("")}}),
            "error: all_reduce: group must not be empty");
}

// ---------------------------------------------------------------- elementwise binary

TEST(IrOpsTest, BinaryBroadcasting) {
  for (const char* op : {"add", "sub", "mul", "div"}) {
    SCOPED_TRACE(op);
    EXPECT_EQ(Infer(op, {"bf16[T, 4096]", "bf16[T, 4096]"}), "bf16[T, 4096]");
    EXPECT_EQ(Infer(op, {"bf16[T, 4096]", "bf16[4096]"}), "bf16[T, 4096]");
    EXPECT_EQ(Infer(op, {"bf16[4096]", "bf16[T, 4096]"}), "bf16[T, 4096]");
    EXPECT_EQ(Infer(op, {"f32[T, 4096]", "f32[T, 1]"}), "f32[T, 4096]");
    EXPECT_EQ(Infer(op, {"f32[T, 1]", "f32[T, 4096]"}), "f32[T, 4096]");
    EXPECT_EQ(Infer(op, {"f32[]", "bf16[T, 4096]"}), "f32[T, 4096]");
    EXPECT_EQ(Infer(op, {"bf16[2, 3, 4]", "bf16[]"}), "bf16[2, 3, 4]");
    EXPECT_EQ(Infer(op, {"f32[]", "f32[]"}), "f32[]");
    // One element of any rank up to the other's broadcasts as a scalar does.
    EXPECT_EQ(Infer(op, {"f32[T, 4096]", "f32[1]"}), "f32[T, 4096]");
    EXPECT_EQ(Infer(op, {"f32[1, 1]", "bf16[T, 4096]"}), "f32[T, 4096]");
    EXPECT_EQ(Infer(op, {"f32[T, 1]", "f32[1]"}), "f32[T, 1]");
    EXPECT_EQ(Infer(op, {"bf16[T, 4096]"}, {{"scalar", Attr::Float(1e-6)}}), "bf16[T, 4096]");
    EXPECT_EQ(Infer(op, {"f16[8]"}, {{"scalar", Attr::Int(2)}}), "f16[8]");
  }
  EXPECT_EQ(Infer("add", {"bf16[T, 4096]", "bf16[128]"}),
            "error: add: shapes bf16[T, 4096] and bf16[128] do not broadcast");
  EXPECT_EQ(Infer("mul", {"bf16[T, 4096]", "bf16[S, 4096]"}),
            "error: mul: shapes bf16[T, 4096] and bf16[S, 4096] do not broadcast");
  EXPECT_EQ(Infer("mul", {"bf16[T, 4096]", "bf16[T, 2]"}),
            "error: mul: shapes bf16[T, 4096] and bf16[T, 2] do not broadcast");
  // NumPy's rule: a 1 stretches at any position, a missing leading dim counts as 1.
  EXPECT_EQ(Infer("mul", {"bf16[T, 4096]", "bf16[1, 4096]"}), "bf16[T, 4096]");
  EXPECT_EQ(Infer("sub", {"bf16[T, 1]", "bf16[1, 4096]"}), "bf16[T, 4096]");
  EXPECT_EQ(Infer("mul", {"f32[1, 1, 1]", "f32[T, 4096]"}), "f32[1, T, 4096]");
  EXPECT_EQ(Infer("div", {"f32[2, 5, 4, 4]", "f32[2, 5, 1, 4]"}), "f32[2, 5, 4, 4]");
  EXPECT_EQ(Infer("mul", {"f32[B, 4, S, 8]", "bf16[1, 1, S, 8]"}), "f32[B, 4, S, 8]");
  // Rank 3 activations: [B, S, H] with [H], with [B, S, 1] and with [S, H].
  EXPECT_EQ(Infer("add", {"bf16[2, T, 8]", "bf16[8]"}), "bf16[2, T, 8]");
  EXPECT_EQ(Infer("mul", {"f32[B, S, 1]", "f32[B, S, 8]"}), "f32[B, S, 8]");
  EXPECT_EQ(Infer("add", {"bf16[2, T, 8]", "bf16[T, 8]"}), "bf16[2, T, 8]");
  // A symbol meets only itself or a 1.
  EXPECT_EQ(Infer("add", {"bf16[2, T, 8]", "bf16[3, T, 8]"}),
            "error: add: shapes bf16[2, T, 8] and bf16[3, T, 8] do not broadcast");
  EXPECT_EQ(Infer("add", {"bf16[T, 8]", "bf16[4, 8]"}),
            "error: add: shapes bf16[T, 8] and bf16[4, 8] do not broadcast");
  // A padded symbol is a different dim from the plain one.
  EXPECT_EQ(Infer("add", {"f32[4, T]", "f32[4, pad4(T)]"}),
            "error: add: shapes f32[4, T] and f32[4, pad4(T)] do not broadcast");
}

TEST(IrOpsTest, BinaryDtypes) {
  EXPECT_EQ(Infer("add", {"f16[T, 8]", "f16[T, 8]"}), "f16[T, 8]");
  EXPECT_EQ(Infer("add", {"bf16[T, 8]", "f32[T, 8]"}), "f32[T, 8]");
  EXPECT_EQ(Infer("add", {"f32[8]", "f16[T, 8]"}), "f32[T, 8]");
  EXPECT_EQ(Infer("mul", {"bf16[T, 8]", "f16[T, 8]"}), "f32[T, 8]");
  EXPECT_EQ(Infer("add", {"f8e4m3[T, 8]", "bf16[T, 8]"}),
            "error: add: operand 0 is f8e4m3[T, 8]; arithmetic takes bf16, f16 or f32");
  EXPECT_EQ(Infer("div", {"bf16[T, 8]", "i32[T, 8]"}),
            "error: div: operand 1 is i32[T, 8]; arithmetic takes bf16, f16 or f32");
  EXPECT_EQ(Infer("mul", {"i32[T, 8]"}, {{"scalar", Attr::Int(2)}}),
            "error: mul: operand 0 is i32[T, 8]; arithmetic takes bf16, f16 or f32");
}

TEST(IrOpsTest, BinaryScalarForm) {
  EXPECT_EQ(Infer("add", {"bf16[T, 8]"}),
            "error: add: one operand needs a 'scalar' attribute (or give two operands)");
  EXPECT_EQ(Infer("add", {"bf16[T, 8]", "bf16[T, 8]"}, {{"scalar", Attr::Int(1)}}),
            "error: add: takes two operands or one operand and 'scalar', not both");
  EXPECT_EQ(Infer("add", {"bf16[T, 8]"}, {{"scalar", Attr::Name("eps")}}),
            "error: add: attribute 'scalar' must be a number, got eps");
}

// ---------------------------------------------------------------- elementwise unary

TEST(IrOpsTest, PowRsqrtClamp) {
  EXPECT_EQ(Infer("pow", {"f32[T, 8]"}, {{"exponent", Attr::Int(2)}}), "f32[T, 8]");
  EXPECT_EQ(Infer("pow", {"bf16[T, 8]"}, {{"exponent", Attr::Float(0.5)}}), "bf16[T, 8]");
  EXPECT_EQ(Infer("pow", {"f32[T, 8]"}, {{"exponent", Attr::Float(INFINITY)}}),
            "error: pow: exponent must be finite, got inf");
  EXPECT_EQ(Infer("pow", {"f8e4m3[T, 8]"}, {{"exponent", Attr::Int(2)}}),
            "error: pow: x must be bf16, f16 or f32, got f8e4m3[T, 8]");
  EXPECT_EQ(Infer("rsqrt", {"f32[T, 1]"}), "f32[T, 1]");
  EXPECT_EQ(Infer("rsqrt", {"i32[T, 1]"}),
            "error: rsqrt: x must be bf16, f16 or f32, got i32[T, 1]");
  EXPECT_EQ(Infer("clamp", {"f32[T, 8]"}, {{"min", Attr::Int(-448)}, {"max", Attr::Int(448)}}),
            "f32[T, 8]");
  EXPECT_EQ(Infer("clamp", {"bf16[T, 8]"}, {{"max", Attr::Float(448.0)}}), "bf16[T, 8]");
  EXPECT_EQ(Infer("clamp", {"bf16[T, 8]"}, {{"min", Attr::Float(0.0)}}), "bf16[T, 8]");
  EXPECT_EQ(Infer("clamp", {"bf16[T, 8]"}), "error: clamp: needs 'min' or 'max' (or both)");
  EXPECT_EQ(Infer("clamp", {"bf16[T, 8]"}, {{"min", Attr::Int(5)}, {"max", Attr::Int(1)}}),
            "error: clamp: min 5 is greater than max 1");
}

TEST(IrOpsTest, Cast) {
  EXPECT_EQ(Infer("cast", {"bf16[T, 8]"}, {{"to", Attr::Name("f32")}}), "f32[T, 8]");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}, {{"to", Attr::Str("bf16")}}), "bf16[T, 8]");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}, {{"to", Attr::Name("f16")}}), "f16[T, 8]");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}, {{"to", Attr::Name("f8e4m3")}}), "f8e4m3[T, 8]");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}, {{"to", Attr::Name("i32")}}),
            "error: cast: 'to' must be f32, bf16, f16 or f8e4m3, got 'i32'");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}, {{"to", Attr::Name("fp32")}}),
            "error: cast: 'to' must be f32, bf16, f16 or f8e4m3, got 'fp32'");
  EXPECT_EQ(Infer("cast", {"f32[T, 8]"}), "error: cast: missing required attribute 'to'");
}

TEST(IrOpsTest, Mean) {
  EXPECT_EQ(Infer("mean", {"f32[T, 4096]"}), "f32[T, 1]");
  EXPECT_EQ(Infer("mean", {"f32[T, 4096]"}, {{"dim", Attr::Int(1)}}), "f32[T, 1]");
  EXPECT_EQ(Infer("mean", {"f32[T, 4096]"}, {{"keepdim", Attr::Bool(false)}}), "f32[T]");
  EXPECT_EQ(
      Infer("mean", {"bf16[2, T, 8]"}, {{"dim", Attr::Int(-1)}, {"keepdim", Attr::Bool(true)}}),
      "bf16[2, T, 1]");
  EXPECT_EQ(Infer("mean", {"f32[8]"}, {{"keepdim", Attr::Bool(false)}}), "f32[]");
  EXPECT_EQ(Infer("mean", {"f32[T, 4096]"}, {{"dim", Attr::Int(0)}}),
            "error: mean: only the last dim (-1 or 1) is supported, got dim = 0");
  EXPECT_EQ(Infer("mean", {"f32[T, 4096]"}, {{"dim", Attr::Int(-2)}}),
            "error: mean: only the last dim (-1 or 1) is supported, got dim = -2");
  EXPECT_EQ(Infer("mean", {"f32[]"}), "error: mean: x must have rank >= 1, got f32[]");
  EXPECT_EQ(Infer("mean", {"f8e4m3[T, 4]"}),
            "error: mean: x must be bf16, f16 or f32, got f8e4m3[T, 4]");
}

TEST(IrOpsTest, View) {
  auto shape = [](std::vector<Attr> items) { return AttrMap{{"shape", Attr::List(items)}}; };
  EXPECT_EQ(
      Infer("view", {"bf16[T, 4096]"}, shape({Attr::Name("T"), Attr::Int(32), Attr::Int(128)})),
      "bf16[T, 32, 128]");
  EXPECT_EQ(Infer("view", {"bf16[T, 32, 128]"}, shape({Attr::Name("T"), Attr::Int(4096)})),
            "bf16[T, 4096]");
  EXPECT_EQ(
      Infer("view", {"f32[8, T, 64]"}, shape({Attr::Int(2), Attr::Name("T"), Attr::Int(256)})),
      "f32[2, T, 256]");
  EXPECT_EQ(Infer("view", {"f32[]"}, shape({Attr::Int(1), Attr::Int(1)})), "f32[1, 1]");
  EXPECT_EQ(Infer("view", {"f32[1]"}, shape({})), "f32[]");
  EXPECT_EQ(Infer("view", {"f32[4, 0]"}, shape({Attr::Int(0), Attr::Int(9)})), "f32[0, 9]");
  EXPECT_EQ(Infer("view", {"bf16[T, 4096]"}, shape({Attr::Name("T"), Attr::Int(2048)})),
            "error: view: cannot view bf16[T, 4096] as bf16[T, 2048]: element counts differ");
  EXPECT_EQ(Infer("view", {"bf16[T, 4096]"}, shape({Attr::Name("S"), Attr::Int(4096)})),
            "error: view: cannot view bf16[T, 4096] as bf16[S, 4096]: element counts differ");
  EXPECT_EQ(Infer("view", {"bf16[T, 4096]"}, shape({Attr::Int(4096)})),
            "error: view: cannot view bf16[T, 4096] as bf16[4096]: element counts differ");
  EXPECT_EQ(Infer("view", {"bf16[T, T]"}, shape({Attr::Name("T"), Attr::Int(1)})),
            "error: view: cannot view bf16[T, T] as bf16[T, 1]: element counts differ");
  // A padded symbol never matches a plain one.
  EXPECT_EQ(Infer("view", {"f32[2, pad4(T)]"}, shape({Attr::Int(2), Attr::Name("T")})),
            "error: view: cannot view f32[2, pad4(T)] as f32[2, T]: element counts differ");
  EXPECT_EQ(Infer("view", {"f32[4]"}, shape({Attr::Int(-1)})),
            "error: view: shape item -1 is out of range [0, 2147483647]");
  EXPECT_EQ(Infer("view", {"f32[4]"}, shape({Attr::Float(4.0)})),
            "error: view: shape item 4.0 is not an integer or a symbol");
  EXPECT_EQ(Infer("view", {"f32[4]"}, shape({Attr::Str("T")})),
            "error: view: shape item \"T\" is not an integer or a symbol");
  // Products past int64 are refused rather than wrapped.
  EXPECT_EQ(Infer("view", {"f32[2147483647, 2147483647, 2147483647]"}, shape({Attr::Int(1)})),
            "error: view: element count of f32[2147483647, 2147483647, 2147483647] or its view "
            "overflows");
}

// ---------------------------------------------------------------- norms

TEST(IrOpsTest, RmsNorm) {
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "bf16[4096]"}, {{"eps", kEps}}), "bf16[T, 4096]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "f32[4096]"},
                  {{"eps", kEps}, {"weight_bias", Attr::Int(1)}}),
            "bf16[T, 4096]");
  EXPECT_EQ(Infer("rms_norm", {"f16[4096]", "f16[4096]"}, {{"eps", kEps}}), "f16[4096]");
  EXPECT_EQ(Infer("rms_norm", {"f32[2, T, 64]", "bf16[64]"}, {{"eps", kEps}}), "f32[2, T, 64]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "bf16[4096]"}),
            "error: rms_norm: missing required attribute 'eps'");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "bf16[2048]"}, {{"eps", kEps}}),
            "error: rms_norm: weight bf16[2048] does not match the hidden dim of bf16[T, 4096]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "bf16[1, 4096]"}, {{"eps", kEps}}),
            "error: rms_norm: weight bf16[1, 4096] does not match the hidden dim of bf16[T, 4096]");
  EXPECT_EQ(Infer("rms_norm", {"i32[T, 4096]", "bf16[4096]"}, {{"eps", kEps}}),
            "error: rms_norm: x must be bf16, f16 or f32, got i32[T, 4096]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 4096]", "f8e4m3[4096]"}, {{"eps", kEps}}),
            "error: rms_norm: weight w must be bf16, f16 or f32, got f8e4m3[4096]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[]", "bf16[4096]"}, {{"eps", kEps}}),
            "error: rms_norm: x must have rank >= 1, got bf16[]");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 8]", "bf16[8]"}, {{"eps", Attr::Float(-1.0)}}),
            "error: rms_norm: eps must be >= 0, got -1");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 8]", "bf16[8]"},
                  {{"eps", kEps}, {"weight_bias", Attr::Float(NAN)}}),
            "error: rms_norm: weight_bias must be finite in f32, got nan");
  // Finite in double but not in f32, where the backends read them.
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 8]", "bf16[8]"}, {{"eps", Attr::Float(1e39)}}),
            "error: rms_norm: eps must be finite in f32, got 1e+39");
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 8]", "bf16[8]"},
                  {{"eps", kEps}, {"weight_bias", Attr::Float(-1e39)}}),
            "error: rms_norm: weight_bias must be finite in f32, got -1e+39");
}

TEST(IrOpsTest, FusedAddRmsNorm) {
  EXPECT_EQ(Infer("fused_add_rms_norm", {"bf16[T, 4096]", "bf16[T, 4096]", "bf16[4096]"},
                  {{"eps", kEps}}),
            "bf16[T, 4096], bf16[T, 4096]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"f16[3, 64]", "f16[3, 64]", "f32[64]"}, {{"eps", kEps}}),
            "f16[3, 64], f16[3, 64]");
  // A residual stream kept in f32: an f32 residual, and residual_out f32 under residual_out_f32.
  EXPECT_EQ(
      Infer("fused_add_rms_norm", {"bf16[T, 4096]", "f32[T, 4096]", "bf16[4096]"}, {{"eps", kEps}}),
      "bf16[T, 4096], bf16[T, 4096]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"f16[T, 64]", "f32[T, 64]", "f16[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"norm_input_f32", "residual_out_f32"})}}),
            "f16[T, 64], f32[T, 64]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"f16[T, 64]", "f16[T, 64]", "f16[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"residual_out_f32"})}}),
            "f16[T, 64], f32[T, 64]");
  EXPECT_EQ(Infer("rms_norm", {"f16[T, 64]", "f16[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"residual_out_f32"})}}),
            "error: rms_norm: rounding entry 'residual_out_f32' does not apply here "
            "(weight_after_round, weight_bias_in_weight_dtype, norm_out_f32)");
  // The norm output unrounded, in f32 (norm_out_f32), for either form.
  EXPECT_EQ(Infer("rms_norm", {"bf16[T, 64]", "bf16[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"norm_out_f32"})}}),
            "f32[T, 64]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"f16[T, 64]", "f16[T, 64]", "f32[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"norm_input_f32", "residual_out_f32", "norm_out_f32"})}}),
            "f32[T, 64], f32[T, 64]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"bf16[T, 64]", "bf16[T, 64]", "bf16[64]"},
                  {{"eps", kEps}, {"rounding", Attr::StrList({"norm_out_f32"})}}),
            "f32[T, 64], bf16[T, 64]");
  EXPECT_EQ(
      Infer("fused_add_rms_norm", {"bf16[T, 4096]", "f16[T, 4096]", "bf16[4096]"}, {{"eps", kEps}}),
      "error: fused_add_rms_norm: residual f16[T, 4096] does not match x bf16[T, 4096] (its type, "
      "or f32 of its shape)");
  EXPECT_EQ(
      Infer("fused_add_rms_norm", {"bf16[T, 4096]", "f32[4096]", "bf16[4096]"}, {{"eps", kEps}}),
      "error: fused_add_rms_norm: residual f32[4096] does not match x bf16[T, 4096] (its type, or "
      "f32 of its shape)");
  EXPECT_EQ(
      Infer("fused_add_rms_norm", {"bf16[T, 4096]", "bf16[4096]", "bf16[4096]"}, {{"eps", kEps}}),
      "error: fused_add_rms_norm: residual bf16[4096] does not match x bf16[T, 4096] (its type, or "
      "f32 of its shape)");
  EXPECT_EQ(
      Infer("fused_add_rms_norm", {"bf16[T, 4096]", "bf16[T, 4096]", "bf16[128]"}, {{"eps", kEps}}),
      "error: fused_add_rms_norm: weight bf16[128] does not match the hidden dim of "
      "bf16[T, 4096]");
  EXPECT_EQ(Infer("fused_add_rms_norm", {"bf16[T, 4096]", "bf16[T, 4096]"}, {{"eps", kEps}}),
            "error: fused_add_rms_norm: expected 3 operands, got 2");
}

// ---------------------------------------------------------------- quantization

TEST(IrOpsTest, QuantFp8Tensor) {
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[]"}, {{"mode", Attr::Str("tensor")}}),
            "f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("quant_fp8", {"f32[4096]", "f32[]"}, {{"mode", Attr::Name("tensor")}}),
            "f8e4m3[4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, {{"mode", Attr::Str("tensor")}}),
            "error: quant_fp8: mode tensor needs a scale operand (f32[])");
  // One element of any rank up to x's: f32[1] and f32[1, 1] are scales as f32[] is.
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[1]"}, {{"mode", Attr::Str("tensor")}}),
            "f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[1, 1]"}, {{"mode", Attr::Str("tensor")}}),
            "f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[1, 1, 1]"}, {{"mode", Attr::Str("tensor")}}),
            "error: quant_fp8: scale must be one f32 element (f32[], f32[1], ...) of rank <= x's, "
            "got f32[1, 1, 1]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[2]"}, {{"mode", Attr::Str("tensor")}}),
            "error: quant_fp8: scale must be one f32 element (f32[], f32[1], ...) of rank <= x's, "
            "got f32[2]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "bf16[]"}, {{"mode", Attr::Str("tensor")}}),
            "error: quant_fp8: scale must be one f32 element (f32[], f32[1], ...) of rank <= x's, "
            "got bf16[]");
  EXPECT_EQ(Infer("quant_fp8", {"f8e4m3[T, 4096]", "f32[]"}, {{"mode", Attr::Str("tensor")}}),
            "error: quant_fp8: x must be bf16, f16 or f32, got f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[]"}),
            "error: quant_fp8: missing required attribute 'mode'");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, {{"mode", Attr::Str("block")}}),
            "error: quant_fp8: unknown mode 'block' (expected tensor, token or group)");
}

TEST(IrOpsTest, QuantFp8Dynamic) {
  auto attrs = [](const char* mode, int64_t group, const char* layout) {
    return AttrMap{{"mode", Attr::Str(mode)},
                   {"group_size", Attr::Int(group)},
                   {"scale_layout", Attr::Str(layout)}};
  };
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", 128, "row")),
            "f8e4m3[T, 4096], f32[T, 32]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", 128, "col")),
            "f8e4m3[T, 4096], f32[32, pad4(T)]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[19, 4096]"}, attrs("group", 64, "col")),
            "f8e4m3[19, 4096], f32[64, 20]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[20, 4096]"}, attrs("group", 64, "col")),
            "f8e4m3[20, 4096], f32[64, 20]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[0, 256]"}, attrs("group", 128, "col")),
            "f8e4m3[0, 256], f32[2, 0]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("token", 100, "row")),
            "f8e4m3[T, 4096], f32[T, 1]");
  EXPECT_EQ(Infer("quant_fp8", {"f16[T, 4096]"}, attrs("token", 128, "col")),
            "f8e4m3[T, 4096], f32[1, pad4(T)]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, {{"mode", Attr::Name("group")}}),
            "f8e4m3[T, 4096], f32[T, 32]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"},
                  {{"mode", Attr::Name("group")}, {"scale_fmt", Attr::Name("ue8m0")}}),
            "f8e4m3[T, 4096], f32[T, 32]");
  // A padded token count stays padded once.
  EXPECT_EQ(Infer("quant_fp8", {"bf16[pad4(T), 256]"}, attrs("group", 128, "col")),
            "f8e4m3[pad4(T), 256], f32[2, pad4(T)]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[pad8(T), 256]"}, attrs("group", 128, "col")),
            "f8e4m3[pad8(T), 256], f32[2, pad8(T)]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[pad3(T), 256]"}, attrs("group", 128, "col")),
            "error: quant_fp8: cannot pad pad3(T) to a multiple of 4");

  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", 100, "row")),
            "error: quant_fp8: hidden 4096 is not a multiple of group_size 100");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", 0, "row")),
            "error: quant_fp8: group_size must be a positive 32-bit integer, got 0");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", int64_t{1} << 40, "row")),
            "error: quant_fp8: group_size must be a positive 32-bit integer, got 1099511627776");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, H]"}, attrs("group", 128, "row")),
            "error: quant_fp8: mode group needs a constant hidden dim, got bf16[T, H]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[4096]"}, attrs("group", 128, "row")),
            "error: quant_fp8: mode group needs x of rank 2 ([T, H]), got bf16[4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[2, T, 4096]"}, attrs("token", 128, "row")),
            "error: quant_fp8: mode token needs x of rank 2 ([T, H]), got bf16[2, T, 4096]");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]", "f32[]"}, attrs("token", 128, "row")),
            "error: quant_fp8: mode token takes no scale operand");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"}, attrs("group", 128, "diagonal")),
            "error: quant_fp8: unknown scale_layout 'diagonal' (expected row or col)");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[T, 4096]"},
                  {{"mode", Attr::Name("group")}, {"scale_fmt", Attr::Name("e8m0")}}),
            "error: quant_fp8: unknown scale_fmt 'e8m0' (expected f32 or ue8m0)");
  EXPECT_EQ(Infer("quant_fp8", {"bf16[9223372036854775807, 256]"}, attrs("group", 128, "col")),
            "error: quant_fp8: dim 9223372036854775807 is too large to pad");
}

// ---------------------------------------------------------------- GEMMs

TEST(IrOpsTest, Matmul) {
  EXPECT_EQ(Infer("matmul", {"bf16[T, 4096]", "bf16[4096, 128]"}), "bf16[T, 128]");
  EXPECT_EQ(Infer("matmul", {"f16[3, 8]", "f16[8, 5]"}), "f16[3, 5]");
  EXPECT_EQ(Infer("matmul", {"f32[T, K]", "f32[K, N]"}), "f32[T, N]");
  EXPECT_EQ(Infer("matmul", {"bf16[T, 4096]", "bf16[2048, 128]"}),
            "error: matmul: inner dims differ: bf16[T, 4096] x bf16[2048, 128]");
  EXPECT_EQ(Infer("matmul", {"bf16[T, 4096]", "f32[4096, 128]"}),
            "error: matmul: a and b must have one dtype, got bf16[T, 4096] and f32[4096, 128]");
  EXPECT_EQ(Infer("matmul", {"f8e4m3[T, 4096]", "f8e4m3[4096, 128]"}),
            "error: matmul: a must be bf16, f16 or f32, got f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("matmul", {"bf16[4096]", "bf16[4096, 128]"}),
            "error: matmul: a and b must have rank 2, got bf16[4096] and bf16[4096, 128]");
}

TEST(IrOpsTest, ScaledMatmul) {
  const std::string q = "f8e4m3[T, 7168]";
  const std::string w = "f8e4m3[7168, 2048]";
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", w, "f32[]"}), "bf16[T, 2048]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[T, 1]", w, "f32[]"}), "bf16[T, 2048]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[T, 56]", w, "f32[56, 16]"}), "bf16[T, 2048]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[56, pad4(T)]", w, "f32[56, 16]"}), "bf16[T, 2048]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[7168, pad4(T)]", w, "f32[7168, 2048]"}),
            "bf16[T, 2048]");
  EXPECT_EQ(
      Infer("scaled_matmul", {"f8e4m3[5, 256]", "f32[2, 8]", "f8e4m3[256, 128]", "f32[2, 1]"}),
      "bf16[5, 128]");
  EXPECT_EQ(Infer("scaled_matmul", {"f8e4m3[8, 256]", "f32[8, 2]", "f8e4m3[256, 128]", "f32[]"}),
            "bf16[8, 128]");

  const std::string s_error =
      " (expected f32[], f32[M, 1], f32[M, G] or f32[G, pad4(M)] with G "
      "dividing K)";
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[T, 100]", w, "f32[]"}),
            "error: scaled_matmul: scale s f32[T, 100] does not fit q f8e4m3[T, 7168]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[S, 1]", w, "f32[]"}),
            "error: scaled_matmul: scale s f32[S, 1] does not fit q f8e4m3[T, 7168]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[56, T]", w, "f32[]"}),
            "error: scaled_matmul: scale s f32[56, T] does not fit q f8e4m3[T, 7168]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[T]", w, "f32[]"}),
            "error: scaled_matmul: scale s f32[T] does not fit q f8e4m3[T, 7168]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "bf16[]", w, "f32[]"}),
            "error: scaled_matmul: scale s bf16[] does not fit q f8e4m3[T, 7168]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {"f8e4m3[5, 256]", "f32[2, 5]", "f8e4m3[256, 128]", "f32[]"}),
            "error: scaled_matmul: scale s f32[2, 5] does not fit q f8e4m3[5, 256]" + s_error);
  EXPECT_EQ(Infer("scaled_matmul", {"f8e4m3[5, 256]", "f32[5, 0]", "f8e4m3[256, 128]", "f32[]"}),
            "error: scaled_matmul: scale s f32[5, 0] does not fit q f8e4m3[5, 256]" + s_error);

  const std::string ws_error = " (expected f32[] or f32[K / bk, N / bn] with whole blocks)";
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", w, "f32[56, 15]"}),
            "error: scaled_matmul: weight scale ws f32[56, 15] does not fit w f8e4m3[7168, 2048]" +
                ws_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", w, "f32[57, 16]"}),
            "error: scaled_matmul: weight scale ws f32[57, 16] does not fit w f8e4m3[7168, 2048]" +
                ws_error);
  EXPECT_EQ(
      Infer("scaled_matmul", {q, "f32[]", w, "f32[56]"}),
      "error: scaled_matmul: weight scale ws f32[56] does not fit w f8e4m3[7168, 2048]" + ws_error);
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", w, "f32[0, 16]"}),
            "error: scaled_matmul: weight scale ws f32[0, 16] does not fit w f8e4m3[7168, 2048]" +
                ws_error);

  EXPECT_EQ(Infer("scaled_matmul", {"bf16[T, 7168]", "f32[]", w, "f32[]"}),
            "error: scaled_matmul: q must be f8e4m3 [M, K], got bf16[T, 7168]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", "bf16[7168, 2048]", "f32[]"}),
            "error: scaled_matmul: w must be f8e4m3 [K, N], got bf16[7168, 2048]");
  EXPECT_EQ(Infer("scaled_matmul", {q, "f32[]", "f8e4m3[4096, 2048]", "f32[]"}),
            "error: scaled_matmul: inner dims differ: f8e4m3[T, 7168] x f8e4m3[4096, 2048]");
}

// ---------------------------------------------------------------- the fused op

AttrMap Fused(std::vector<std::string> emit, const char* quant = "none") {
  return AttrMap{{"eps", kEps}, {"quant", Attr::Name(quant)}, {"emit", Names(emit)}};
}

TEST(IrOpsTest, AllreduceRmsnormResults) {
  const std::string x = "bf16[T, 4096]";
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[4096]"}, Fused({"norm"})), x);
  EXPECT_EQ(
      Infer("allreduce_rmsnorm", {x, x, "f32[4096]"}, Fused({"residual", "norm", "allreduce"})),
      x + ", " + x + ", " + x);
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, x, "bf16[4096]", "f32[]"},
                  Fused({"quant", "residual"}, "fp8_tensor")),
            x + ", f8e4m3[T, 4096]");
  // A residual stream kept in f32: the residual f32 in, and out under residual_out_f32.
  AttrMap f32_out = Fused({"norm", "residual"});
  f32_out["rounding"] = Names({"norm_input_f32", "residual_out_f32"});
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "f32[T, 4096]", "bf16[4096]"}, f32_out),
            x + ", f32[T, 4096]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, x, "bf16[4096]"}, f32_out), x + ", f32[T, 4096]");
  // The norm output in f32 (norm_out_f32): quant none only.
  AttrMap norm_f32 = Fused({"norm", "residual"});
  norm_f32["rounding"] = Names({"norm_out_f32"});
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, x, "bf16[4096]"}, norm_f32), "f32[T, 4096], " + x);
  AttrMap norm_f32_quant = Fused({"norm", "quant"}, "fp8_group");
  norm_f32_quant["rounding"] = Names({"norm_out_f32"});
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[4096]"}, norm_f32_quant),
            "error: allreduce_rmsnorm: rounding norm_out_f32 takes quant none: the quantization reads "
            "the norm output rounded to the activation dtype");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "f32[T, 4096]", "bf16[4096]"}, Fused({"norm", "residual"})),
            x + ", " + x);
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[4096]", "f32[]"}, Fused({"quant"}, "fp8_tensor")),
            "f8e4m3[T, 4096]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, x, "bf16[4096]"}, Fused({"quant"}, "fp8_token")),
            "f8e4m3[T, 4096], f32[T, 1]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[4096]"}, Fused({"norm", "quant"}, "fp8_group")),
            x + ", f8e4m3[T, 4096], f32[T, 32]");
  AttrMap col = Fused({"quant"}, "fp8_group");
  col["scale_layout"] = Attr::Str("col");
  col["group_size"] = Attr::Int(64);
  col["scale_fmt"] = Attr::Str("ue8m0");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[4096]"}, col),
            "f8e4m3[T, 4096], f32[64, pad4(T)]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"f16[3, 128]", "f16[128]"}, col),
            "f8e4m3[3, 128], f32[2, 4]");
}

TEST(IrOpsTest, AllreduceRmsnormErrors) {
  const std::string x = "bf16[T, 4096]";
  const std::string w = "bf16[4096]";
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, {{"eps", kEps}}),
            "error: allreduce_rmsnorm: missing required attribute 'emit'");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, {{"emit", Names({"norm"})}}),
            "error: allreduce_rmsnorm: missing required attribute 'eps'");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({})),
            "error: allreduce_rmsnorm: emit is empty: the fused op would produce nothing");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"norm", "norm"})),
            "error: allreduce_rmsnorm: emit entry 'norm' appears twice");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"output"})),
            "error: allreduce_rmsnorm: unknown emit entry 'output' (expected allreduce, norm, "
            "residual or quant)");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"norm"}, "fp8_block")),
            "error: allreduce_rmsnorm: unknown quant mode 'fp8_block' (expected none, fp8_tensor, "
            "fp8_token or fp8_group)");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"quant"})),
            "error: allreduce_rmsnorm: emit has quant but quant = none");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"norm"}, "fp8_group")),
            "error: allreduce_rmsnorm: quant is set but emit has no quant");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"residual"})),
            "error: allreduce_rmsnorm: emit has residual but the op has no residual operand");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, Fused({"quant"}, "fp8_tensor")),
            "error: allreduce_rmsnorm: quant fp8_tensor takes operands (x, [residual], w, scale), "
            "got 2");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, x, x, w}, Fused({"norm"})),
            "error: allreduce_rmsnorm: quant none takes operands (x, [residual], w), got 4");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w, "bf16[]"}, Fused({"quant"}, "fp8_tensor")),
            "error: allreduce_rmsnorm: scale must be f32[], got bf16[]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "bf16[2048]"}, Fused({"norm"})),
            "error: allreduce_rmsnorm: weight bf16[2048] does not match the hidden dim of "
            "bf16[T, 4096]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w, x}, Fused({"norm"})),
            "error: allreduce_rmsnorm: weight bf16[T, 4096] does not match the hidden dim of "
            "bf16[T, 4096]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "f16[T, 4096]", w}, Fused({"norm"})),
            "error: allreduce_rmsnorm: residual f16[T, 4096] does not match x bf16[T, 4096] (its "
            "type, or f32 of its shape)");
  AttrMap f32_out_no_residual = Fused({"norm"});
  f32_out_no_residual["rounding"] = Names({"residual_out_f32"});
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, f32_out_no_residual),
            "error: allreduce_rmsnorm: rounding residual_out_f32 needs a residual operand");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"bf16[4096]", w}, Fused({"norm"})),
            "error: allreduce_rmsnorm: x must be [T, H], got bf16[4096]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"bf16[T, H]", "bf16[H]"}, Fused({"norm"})),
            "error: allreduce_rmsnorm: x needs a constant hidden dim, got bf16[T, H]");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"f32[T, 4096]", w}, Fused({"norm"})),
            "error: allreduce_rmsnorm: activation dtype must be bf16 or f16, got f32");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, "i32[4096]"}, Fused({"norm"})),
            "error: allreduce_rmsnorm: norm weight dtype must be bf16, f16 or f32, got i32");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {"bf16[T, 0]", "bf16[0]"}, Fused({"norm"})),
            "error: allreduce_rmsnorm: hidden size must be positive, got 0");
  AttrMap bad_group = Fused({"quant"}, "fp8_group");
  bad_group["group_size"] = Attr::Int(96);
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, bad_group),
            "error: allreduce_rmsnorm: hidden 4096 is not a multiple of group_size 96");
  AttrMap bad_eps = Fused({"norm"});
  bad_eps["eps"] = Attr::Float(-1e-6);
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, bad_eps),
            "error: allreduce_rmsnorm: eps must be >= 0, got -1e-06");
  AttrMap bad_layout = Fused({"quant"}, "fp8_token");
  bad_layout["scale_layout"] = Attr::Name("column");
  EXPECT_EQ(Infer("allreduce_rmsnorm", {x, w}, bad_layout),
            "error: allreduce_rmsnorm: unknown scale_layout 'column' (expected row or col)");
}

// ---------------------------------------------------------------- node helpers

TEST(IrOpsTest, BuildNodeInfersTypes) {
  Graph g;
  Value* x = g.AddParam("x", Ty("bf16[T, 4096]"));
  Value* w = g.AddParam("w", Ty("bf16[4096]"));
  StatusOr<Node*> norm = BuildNode(g, "rms_norm", {x, w}, {{"eps", kEps}}, {"y"});
  ASSERT_TRUE(norm.ok()) << norm.status().ToString();
  EXPECT_EQ((*norm)->result()->name(), "y");
  EXPECT_EQ((*norm)->result()->type().ToString(), "bf16[T, 4096]");

  StatusOr<Node*> quant =
      BuildNode(g, "quant_fp8", {(*norm)->result()}, {{"mode", Attr::Name("group")}}, {});
  ASSERT_TRUE(quant.ok()) << quant.status().ToString();
  EXPECT_EQ((*quant)->num_results(), 2);
  EXPECT_EQ((*quant)->result(1)->type().ToString(), "f32[T, 32]");

  // Inserted before an existing node: program order keeps the new node first.
  StatusOr<Node*> ar = BuildNode(g, "all_reduce", {x}, {}, {"ar"}, *norm);
  ASSERT_TRUE(ar.ok());
  EXPECT_EQ(g.IndexOf(*ar), 0);

  StatusOr<Node*> bad = BuildNode(g, "add", {x, w, x}, {}, {"z"});
  EXPECT_EQ(bad.status().message(), "add: expected 1 or 2 operands, got 3");
  bad = BuildNode(g, "quant_fp8", {x}, {{"mode", Attr::Name("token")}}, {"q"});
  EXPECT_EQ(bad.status().message(), "quant_fp8: produces 2 results, 1 names given");
  bad = BuildNode(g, "all_reduce", {nullptr}, {}, {});
  EXPECT_EQ(bad.status().message(), "all_reduce: operand 0 is null");
  EXPECT_EQ(g.num_nodes(), 3);
}

TEST(IrOpsTest, TypedAttributeAccess) {
  Graph g;
  Value* x = g.AddParam("x", Ty("bf16[T, 4096]"));
  Node* n = *BuildNode(g, "quant_fp8", {x},
                       {{"mode", Attr::Name("group")}, {"group_size", Attr::Int(64)}}, {});
  EXPECT_EQ(*GetNumberAttr(*n, "group_size", 128), 64.0);
  EXPECT_EQ(*GetNumberAttr(*n, "absent", 7.5), 7.5);
  EXPECT_EQ(*GetTextAttr(*n, "mode", "token"), "group");
  EXPECT_EQ(*GetTextAttr(*n, "scale_layout", "row"), "row");
  EXPECT_EQ(GetNumberAttr(*n, "mode", 0).status().message(),
            "quant_fp8: attribute 'mode' must be a number, got group");
  EXPECT_EQ(GetTextAttr(*n, "group_size", "").status().message(),
            "quant_fp8: attribute 'group_size' must be a name or a \"string\", got 64");

  StatusOr<QuantParams> params = QuantParamsFromNode(*n);
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->mode, QuantMode::kFp8Group);
  EXPECT_EQ(params->group_size, 64);
  EXPECT_EQ(params->layout, ScaleLayout::kRow);
  EXPECT_EQ(params->format, ScaleFormat::kF32);

  Value* s = g.AddParam("s", Ty("f32[]"));
  Node* t = *BuildNode(g, "quant_fp8", {x, s}, {{"mode", Attr::Str("tensor")}}, {});
  EXPECT_EQ(QuantParamsFromNode(*t)->mode, QuantMode::kFp8Tensor);
  Node* k = *BuildNode(g, "quant_fp8", {x},
                       {{"mode", Attr::Str("token")},
                        {"scale_layout", Attr::Str("col")},
                        {"scale_fmt", Attr::Name("ue8m0")}},
                       {});
  EXPECT_EQ(QuantParamsFromNode(*k)->mode, QuantMode::kFp8Token);
  EXPECT_EQ(QuantParamsFromNode(*k)->layout, ScaleLayout::kCol);
  EXPECT_EQ(QuantParamsFromNode(*k)->format, ScaleFormat::kUe8m0);
  Node* ar = *BuildNode(g, "all_reduce", {x}, {}, {});
  EXPECT_EQ(QuantParamsFromNode(*ar).status().message(),
            "expected a quant_fp8 node, got all_reduce");
  EXPECT_EQ(FusedSpecFromNode(*ar).status().message(),
            "expected an allreduce_rmsnorm node, got all_reduce");
}

TEST(IrOpsTest, FusedSpecRoundTrip) {
  std::vector<AllreduceRmsnormSpec> specs;
  AllreduceRmsnormSpec base;
  base.hidden = 4096;
  base.emit.norm = true;
  specs.push_back(base);
  {
    AllreduceRmsnormSpec s = base;
    s.has_residual = true;
    s.weight_dtype = DType::kF32;
    s.eps = 1e-5f;
    s.emit = EmitSet{.allreduce = true, .norm = true, .residual = true};
    specs.push_back(s);
  }
  {
    AllreduceRmsnormSpec s = base;
    s.has_residual = true;
    s.quant = QuantMode::kFp8Tensor;
    s.emit = EmitSet{.residual = true, .quant = true};
    specs.push_back(s);
  }
  {
    AllreduceRmsnormSpec s = base;
    s.act_dtype = DType::kF16;
    s.weight_dtype = DType::kF16;
    s.quant = QuantMode::kFp8Group;
    s.group_size = 64;
    s.scale_layout = ScaleLayout::kCol;
    s.scale_fmt = ScaleFormat::kUe8m0;
    s.weight_bias = 1.0f;
    s.emit = EmitSet{.norm = true, .quant = true};
    specs.push_back(s);
  }
  {
    AllreduceRmsnormSpec s = base;
    s.quant = QuantMode::kFp8Token;
    s.emit = EmitSet{.quant = true};
    specs.push_back(s);
  }
  {
    AllreduceRmsnormSpec s = base;
    s.second_sum = true;
    s.first_scale = 0.5f;
    s.second_scale = 3.0f;
    s.sum_scale = 0.22f;
    s.has_residual = true;
    s.quant = QuantMode::kFp8Tensor;
    s.emit = EmitSet{.norm = true, .residual = true, .quant = true};
    specs.push_back(s);
  }
  for (const AllreduceRmsnormSpec& spec : specs) {
    SCOPED_TRACE(spec.ToString());
    ASSERT_TRUE(spec.Validate().ok());
    Graph g;
    const FusedOperandIndices at = FusedOperandLayout(spec);
    std::vector<Value*> operands(at.count);
    const TensorType x{spec.act_dtype, {Dim::Sym("T"), Dim::Const(spec.hidden)}};
    operands[at.x] = g.AddParam("x", x);
    if (at.x2 >= 0) operands[at.x2] = g.AddParam("x2", x);
    if (at.residual >= 0) operands[at.residual] = g.AddParam("res", x);
    operands[at.w] = g.AddParam("w", TensorType{spec.weight_dtype, {Dim::Const(spec.hidden)}});
    if (at.scale >= 0) operands[at.scale] = g.AddParam("scale", TensorType{DType::kF32, {}});
    StatusOr<Node*> node =
        BuildNode(g, "allreduce_rmsnorm", operands, FusedAttrsFromSpec(spec), {});
    ASSERT_TRUE(node.ok()) << node.status().ToString();
    EXPECT_EQ((*node)->num_results(), spec.NumResults());
    EXPECT_EQ(FusedResultLayout(spec).count, spec.NumResults());
    StatusOr<AllreduceRmsnormSpec> back = FusedSpecFromNode(**node);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->ToString(), spec.ToString());
    EXPECT_EQ(back->eps, spec.eps);
    EXPECT_EQ(back->weight_bias, spec.weight_bias);
    EXPECT_EQ(back->has_residual, spec.has_residual);
    EXPECT_EQ(back->emit, spec.emit);
    EXPECT_EQ(back->second_sum, spec.second_sum);
    EXPECT_EQ(back->first_scale, spec.first_scale);
    EXPECT_EQ(back->second_scale, spec.second_scale);
    EXPECT_EQ(back->sum_scale, spec.sum_scale);
  }
  // Float attributes print as the float they hold.
  AllreduceRmsnormSpec s = base;
  s.eps = 1e-6f;
  EXPECT_EQ(FusedAttrsFromSpec(s).at("eps").ToString(), "1e-06");
  EXPECT_EQ(FusedAttrsFromSpec(s).at("emit").ToString(), "[\"norm\"]");
}

TEST(IrOpsTest, FusedLayouts) {
  AllreduceRmsnormSpec spec;
  spec.hidden = 128;
  spec.has_residual = true;
  spec.quant = QuantMode::kFp8Tensor;
  FusedOperandIndices in = FusedOperandLayout(spec);
  EXPECT_EQ(in.x, 0);
  EXPECT_EQ(in.residual, 1);
  EXPECT_EQ(in.w, 2);
  EXPECT_EQ(in.scale, 3);
  EXPECT_EQ(in.count, 4);
  spec.has_residual = false;
  spec.quant = QuantMode::kFp8Group;
  in = FusedOperandLayout(spec);
  EXPECT_EQ(in.residual, -1);
  EXPECT_EQ(in.w, 1);
  EXPECT_EQ(in.scale, -1);
  EXPECT_EQ(in.count, 2);

  spec.second_sum = true;
  spec.has_residual = true;
  in = FusedOperandLayout(spec);
  EXPECT_EQ(in.x, 0);
  EXPECT_EQ(in.x2, 1);
  EXPECT_EQ(in.residual, 2);
  EXPECT_EQ(in.w, 3);
  EXPECT_EQ(in.count, 4);
  spec.second_sum = false;
  spec.has_residual = false;
  EXPECT_EQ(FusedOperandLayout(spec).x2, -1);

  spec.emit = EmitSet{.allreduce = true, .residual = true, .quant = true};
  FusedResultIndices out = FusedResultLayout(spec);
  EXPECT_EQ(out.allreduce, 0);
  EXPECT_EQ(out.norm, -1);
  EXPECT_EQ(out.residual, 1);
  EXPECT_EQ(out.q, 2);
  EXPECT_EQ(out.s, 3);
  EXPECT_EQ(out.count, 4);
}

// second_sum's operand x2 has x's type; the spec refuses an emitted all_reduce result beside it
// and scales of the two sums without it, each named. A local op takes it (world size 1).
TEST(IrOpsTest, SecondSumIsCheckedAndNamed) {
  Graph g;
  Value* x = g.AddParam("x", Ty("bf16[T, 256]"));
  Value* x2 = g.AddParam("x2", Ty("bf16[T, 256]"));
  Value* x2_f16 = g.AddParam("x2h", Ty("f16[T, 256]"));
  Value* w = g.AddParam("w", Ty("bf16[256]"));
  const auto attrs = [](std::vector<std::string> emit, bool local = false) {
    AttrMap a{{"eps", Attr::Float(1e-6)}, {"emit", Attr::StrList(emit)}, {"second_sum", Attr::Bool(true)}};
    if (local) a["local"] = Attr::Bool(true);
    return a;
  };
  StatusOr<Node*> ok = BuildNode(g, "allreduce_rmsnorm", {x, x2, w}, attrs({"norm"}), {});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(FusedSpecFromNode(**ok)->second_sum);
  const auto error = [&](std::vector<Value*> operands, AttrMap a) {
    StatusOr<Node*> n = BuildNode(g, "allreduce_rmsnorm", operands, a, {});
    return n.ok() ? std::string("ok") : n.status().message();
  };
  EXPECT_NE(error({x, x2_f16, w}, attrs({"norm"})).find("x2 f16[T, 256] does not match x bf16[T, 256]"),
            std::string::npos);
  EXPECT_NE(error({x, x2, w}, attrs({"allreduce", "norm"})).find("no one all_reduce result to emit"),
            std::string::npos);
  EXPECT_EQ(error({x, x2, w}, attrs({"norm"}, true)), "ok");
  EXPECT_NE(error({x, w}, attrs({"norm"})).find("with second_sum takes operands (x, x2, [residual], w)"),
            std::string::npos)
      << error({x, w}, attrs({"norm"}));
  AttrMap scaled{{"eps", Attr::Float(1e-6)}, {"emit", Attr::StrList({"norm"})}, {"first_scale", Attr::Float(2.0)}};
  EXPECT_NE(error({x, w}, scaled).find("scale the two sums of second_sum, which is not set"), std::string::npos)
      << error({x, w}, scaled);
}

}  // namespace
}  // namespace tpfuse::ir
