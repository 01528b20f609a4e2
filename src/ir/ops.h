// The op set of DESIGN.md Contract 2 (and the fused op of Contract 3): arity, attributes,
// defaults, and result-type inference with a symbolic token count.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::ir {

// The largest constant dimension the IR accepts (parameter dims, view shapes). Keeps element
// counts of any rank-2 shape far from int64 overflow.
inline constexpr int64_t kMaxDimValue = (int64_t{1} << 31) - 1;

struct AttrSpec {
  std::string name;
  enum class Type { kNumber, kInt, kBool, kText, kTextList, kItemList } type;
  bool required = false;
};

struct OpDef {
  std::string name;
  int min_operands = 0;
  int max_operands = 0;
  std::vector<AttrSpec> attrs;  // every attribute the op accepts; anything else is an error
  // opaque only: attributes beyond `attrs` are kept as given (what the front end recorded).
  bool any_attrs = false;
  OpKind kind = OpKind::kUnknown;

  const AttrSpec* FindAttr(const std::string& attr_name) const;  // null if not accepted
};

// Null for an unknown op.
const OpDef* FindOp(const std::string& name);
// The definition of a known kind (not kUnknown).
const OpDef& GetOpDef(OpKind kind);
const std::vector<OpDef>& AllOps();
// The known op closest to `name` by edit distance, or empty when nothing is close
// ("all_reduse" -> "all_reduce"). For "did you mean" hints.
std::string ClosestOpName(const std::string& name);

// Whether `op` accepts an attribute `name` with this value's kind; the error names the op, the
// attribute and what it accepts. InferResultTypes checks every attribute this way.
Status CheckAttribute(const OpDef& def, const std::string& name, const Attr& value);

// Result types of `op` applied to operands of the given types with the given attributes.
// Checks arity, attribute names and types, dtypes and shapes (NumPy's broadcasting, of which
// Contract 2's forms are cases; a symbol meets only itself or a 1); the error names the problem
// ("add: shapes bf16[T, 4096] and bf16[128] do not broadcast").
// `opaque` has no inference (its result types are declared): use CheckOpaque.
StatusOr<std::vector<TensorType>> InferResultTypes(const std::string& op,
                                                   const std::vector<TensorType>& operands,
                                                   const AttrMap& attrs);

// Infers result types and adds the node (see Graph::AddNode). `result_names` may be empty
// (default names); otherwise it must name every result.
StatusOr<Node*> BuildNode(Graph& graph, const std::string& op, const std::vector<Value*>& operands,
                          AttrMap attrs, const std::vector<std::string>& result_names,
                          Node* insert_before = nullptr);

// ---- the opaque op
// `%y, %s = opaque(%a, %b) {name = "aten.topk", ...} : bf16[T, 8], i32[T, 8]`: an op the IR does
// not know (the PyTorch front end maps every op it cannot translate to one). It has a name
// (attribute `name`, required, non-empty), any operands, any further attributes, and declared
// result types (at least one). Passes leave it alone: DCE keeps it even when its results are
// unused (it may have side effects), and no pattern matches through it. No backend executes it:
// running a graph that holds one is an error naming the op.
inline constexpr const char* kOpaqueNameAttr = "name";
// Checks an opaque node's attributes and declared result types.
Status CheckOpaque(const AttrMap& attrs, const std::vector<TensorType>& result_types);
// The name an opaque node carries ("aten.topk"); empty for any other node.
std::string OpaqueName(const Node& node);
// Adds an opaque node with declared result types (see Graph::AddNode for names and placement).
StatusOr<Node*> BuildOpaqueNode(Graph& graph, const std::string& name,
                                const std::vector<Value*>& operands,
                                const std::vector<TensorType>& result_types,
                                const std::vector<std::string>& result_names, AttrMap attrs = {},
                                Node* insert_before = nullptr);
// "opaque op 'aten.topk' (%y, line 4) cannot be executed: backend cpu runs only the ops of
// DESIGN.md Contract 2" when `graph` holds an opaque node, else OK. Every executor calls it
// before running anything.
Status RefuseOpaque(const Graph& graph, std::string_view backend);

// ---- typed attribute access with Contract 2 defaults (errors name op and attribute)
StatusOr<double> GetNumberAttr(const Node& node, const std::string& name, double default_value);
StatusOr<std::string> GetTextAttr(const Node& node, const std::string& name,
                                  const std::string& default_value);

// ---- the fused op
// Reads an allreduce_rmsnorm node's attributes and operand types into a spec (hidden and
// dtypes from the operands). Operands are x, [x2 | bias], [residual], w, [pre_weight], [scale]:
// x2 iff second_sum, bias iff bias, pre_weight iff pre_residual_norm, scale iff quant =
// fp8_tensor; residual iff one operand remains beyond those.
StatusOr<AllreduceRmsnormSpec> FusedSpecFromNode(const Node& node);
// Attributes that describe `spec` on an allreduce_rmsnorm node.
AttrMap FusedAttrsFromSpec(const AllreduceRmsnormSpec& spec);

// Operand positions of an allreduce_rmsnorm node described by `spec` (-1: absent).
struct FusedOperandIndices {
  int x = 0;
  int residual = -1;
  int w = 1;
  int scale = -1;
  int count = 2;
  int x2 = -1;  // the second all_reduce's partial (spec.second_sum), right after x
  int bias = -1;  // the bias added to the sum (spec.has_bias), right after x
  int pre_weight = -1;  // the norm's weight before the residual add (spec.pre_residual_norm), after w
};
FusedOperandIndices FusedOperandLayout(const AllreduceRmsnormSpec& spec);

// Result positions of an allreduce_rmsnorm node described by `spec` (-1: not emitted).
struct FusedResultIndices {
  int allreduce = -1;
  int norm = -1;
  int residual = -1;
  int q = -1;
  int s = -1;
  int count = 0;
};
FusedResultIndices FusedResultLayout(const AllreduceRmsnormSpec& spec);

// The quant_fp8 op's parameters (tpfuse::QuantParams, fused_op.h).
using QuantParams = tpfuse::QuantParams;
StatusOr<QuantParams> QuantParamsFromNode(const Node& node);

// The rounding recipe a canonical norm carries (attribute `rounding`, the names of
// RoundingRecipe): rms_norm may say weight_after_round and weight_bias_in_weight_dtype,
// fused_add_rms_norm also norm_input_f32 (it normalizes the unrounded f32 sum). quant_fp8 may
// say scale_op_swapped, scale_floor_after_div and ue8m0_floor (QuantParams). Absent: Contract 3's
// defaults.
StatusOr<RoundingRecipe> NormRoundingFromNode(const Node& node);
// A canonical norm (rms_norm, fused_add_rms_norm) as the local fused op (a = x; emit norm and,
// with a residual, residual), where the unfused norm kernels would not compute it: a rounding
// recipe other than Contract 3's default, or an f32 residual. std::nullopt for a plain norm.
// `hidden` is x's last dim as run (the type's may be a symbol; <= 0: unknown, kUnimplemented
// where the spec is needed). Both executors run it so, bit for bit with the fused op.
StatusOr<std::optional<AllreduceRmsnormSpec>> NormAsLocalFusedSpec(const Node& node, int64_t hidden);
// `attrs` with the `rounding` attribute describing `rounding` (none for the defaults).
AttrMap WithRounding(AttrMap attrs, const RoundingRecipe& rounding);

// An f32 tensor of one element whatever its rank (f32[], f32[1], f32[1, 1]): a static FP8
// scale as graphs hold it (vLLM's tests and layers keep [1]-shaped scales).
bool IsOneElementF32(const TensorType& type);

// Whether two shapes hold the same number of elements: the same product of constants (a
// product dim's constant factor included) and symbols, [B, S] as B*S, [2, S] as 2*S. False where
// a count overflows.
bool SameElementCount(const Shape& a, const Shape& b);

// Follows no-op views back to the value they view.
const Value* SkipViews(const Value* value);

// How a scaled_matmul node's activation scale (operand 1) maps onto q: from the quant_fp8 or
// allreduce_rmsnorm that produced it (through views) when there is one, otherwise from the
// scale's type: f32[] per tensor, [M, 1] per token, [M, G] (first dim q's M) row-major groups,
// anything else column-major groups [G, pad4(M)]. Every executor reads a graph through this.
StatusOr<ActScaleLayout> ScaledMatmulScaleLayout(const Node& node);

}  // namespace tpfuse::ir
