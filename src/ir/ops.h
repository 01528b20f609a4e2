// The op set of DESIGN.md Contract 2 (and the fused op of Contract 3): arity, attributes,
// defaults, and result-type inference with a symbolic token count.
#pragma once

#include <cstdint>
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

  const AttrSpec* FindAttr(const std::string& attr_name) const;  // null if not accepted
};

// Null for an unknown op.
const OpDef* FindOp(const std::string& name);
const std::vector<OpDef>& AllOps();
// The known op closest to `name` by edit distance, or empty when nothing is close
// ("all_reduse" -> "all_reduce"). For "did you mean" hints.
std::string ClosestOpName(const std::string& name);

// Whether `op` accepts an attribute `name` with this value's kind; the error names the op, the
// attribute and what it accepts. InferResultTypes checks every attribute this way.
Status CheckAttribute(const OpDef& def, const std::string& name, const Attr& value);

// Result types of `op` applied to operands of the given types with the given attributes.
// Checks arity, attribute names and types, dtypes and shapes (broadcast rules of Contract 2);
// the error names the problem ("add: shapes bf16[T, 4096] and bf16[128] do not broadcast").
StatusOr<std::vector<TensorType>> InferResultTypes(const std::string& op,
                                                   const std::vector<TensorType>& operands,
                                                   const AttrMap& attrs);

// Infers result types and adds the node (see Graph::AddNode). `result_names` may be empty
// (default names); otherwise it must name every result.
StatusOr<Node*> BuildNode(Graph& graph, const std::string& op, const std::vector<Value*>& operands,
                          AttrMap attrs, const std::vector<std::string>& result_names,
                          Node* insert_before = nullptr);

// ---- typed attribute access with Contract 2 defaults (errors name op and attribute)
StatusOr<double> GetNumberAttr(const Node& node, const std::string& name, double default_value);
StatusOr<std::string> GetTextAttr(const Node& node, const std::string& name,
                                  const std::string& default_value);

// ---- the fused op
// Reads an allreduce_rmsnorm node's attributes and operand types into a spec (hidden and
// dtypes from the operands). Operands are x, [residual], w, [scale]: scale is present iff
// quant = fp8_tensor; residual iff one operand remains beyond x and w.
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

// The quant_fp8 op's parameters in one place (mode, group size, layout, format).
struct QuantParams {
  QuantMode mode = QuantMode::kFp8Token;
  int group_size = 128;
  ScaleLayout layout = ScaleLayout::kRow;
  ScaleFormat format = ScaleFormat::kF32;
};
StatusOr<QuantParams> QuantParamsFromNode(const Node& node);

// Follows no-op views back to the value they view.
const Value* SkipViews(const Value* value);

// How a scaled_matmul node's activation scale (operand 1) maps onto q: from the quant_fp8 or
// allreduce_rmsnorm that produced it (through views) when there is one, otherwise from the
// scale's type: f32[] per tensor, [M, 1] per token, [M, G] (first dim q's M) row-major groups,
// anything else column-major groups [G, pad4(M)]. Every executor reads a graph through this.
StatusOr<ActScaleLayout> ScaledMatmulScaleLayout(const Node& node);

}  // namespace tpfuse::ir
