// Small helpers the patterns use to read the graph: "is this value produced by op X", typed
// attribute reads with Contract 2 defaults, use checks. Reading only; nothing here mutates.
#pragma once

#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "ir/op_kind.h"
#include "tpfuse/dtype.h"

namespace tpfuse::passes {

// The node that produces `value` if its op is `op`, else null (also null for parameters).
inline ir::Node* ProducedBy(const ir::Value* value, std::string_view op) {
  ir::Node* producer = value->producer();
  return producer != nullptr && producer->op() == op ? producer : nullptr;
}

// A numeric attribute, or `default_value` when absent; nullopt when present but not a number.
inline std::optional<double> NumberAttr(const ir::Node* node, const std::string& name,
                                        std::optional<double> default_value = std::nullopt) {
  const ir::Attr* a = node->attr(name);
  if (a == nullptr) return default_value;
  return a->AsNumber();
}

// A string or bare-name attribute, or `default_value` when absent.
inline std::optional<std::string> TextAttr(const ir::Node* node, const std::string& name,
                                           std::optional<std::string> default_value = {}) {
  const ir::Attr* a = node->attr(name);
  if (a == nullptr) return default_value;
  return a->AsText();
}

// A bool attribute, or `default_value` when absent.
inline std::optional<bool> BoolAttr(const ir::Node* node, const std::string& name,
                                    bool default_value) {
  const ir::Attr* a = node->attr(name);
  if (a == nullptr) return default_value;
  if (a->kind != ir::Attr::Kind::kBool) return std::nullopt;
  return a->b;
}

// An elementwise op applied to one operand and its `scalar` attribute (`add(%m) {scalar = 1e-6}`).
inline std::optional<double> ScalarOperand(const ir::Node* node) {
  if (node->num_operands() != 1) return std::nullopt;
  return NumberAttr(node, "scalar");
}

// The factor of a scale the fused op takes over (its sum_scale): `mul(%a) {scalar = s}` with a
// finite s and a result of a's half-precision type, so the graph computes round(a * s) in f32
// (Granite's and Falcon-H1's `residual + out * multiplier`). nullopt for any other node.
inline std::optional<double> SumScaleOf(const ir::Node* node) {
  if (node == nullptr || node->kind() != ir::OpKind::kMul) return std::nullopt;
  const std::optional<double> s = ScalarOperand(node);
  if (!s || !std::isfinite(*s)) return std::nullopt;
  if (!IsHalfType(node->operand(0)->dtype()) || node->result()->type() != node->operand(0)->type())
    return std::nullopt;
  return s;
}

// A bias added to every row of a sum: a row-parallel layer's bias added after its all_reduce
// (transformers' row-wise plan: `out + bias`), which the fused op takes over as spec.has_bias.
// `add(s, b)` or `add(b, s)` with s [..., H] of a half-precision dtype, b [H] of s's dtype, and
// the result of s's type, so the graph computes round(s + b) in f32.
struct RowBias {
  ir::Value* sum = nullptr;   // s
  ir::Value* bias = nullptr;  // b; null: `node` is no such add
};
inline RowBias RowBiasOf(const ir::Node* node) {
  if (node == nullptr || node->kind() != ir::OpKind::kAdd || node->num_operands() != 2) return {};
  for (int i : {0, 1}) {
    ir::Value* s = node->operand(i);
    ir::Value* b = node->operand(1 - i);
    const ir::TensorType& t = s->type();
    if (!IsHalfType(t.dtype) || t.rank() < 2 || node->result()->type() != t) continue;
    if (b->type().rank() == 1 && b->dtype() == t.dtype && b->shape()[0] == t.shape.back()) return {s, b};
  }
  return {};
}
// Whether `v` carries an all_reduce's sum: is one, through views, scales by a constant and adds of
// anything to it (a bias, a residual stream). A tensor that does is no bias per token: it is
// another all_reduce's sum, or a residual stream one was added into (two all_reduces summed,
// spec.second_sum). Nearest first: a residual stream meets the last all_reduce added into it at
// once, not after walking back through every layer's add (the canonicalizer asks this of every
// residual add, so a walk to the stream's start would make compiling quadratic in the layers).
inline bool CarriesAnAllReduceSum(const ir::Value* v) {
  std::vector<const ir::Value*> todo = {v};
  std::set<const ir::Value*> seen;
  for (size_t next = 0; next < todo.size(); ++next) {
    const ir::Value* u = todo[next];
    if (!seen.insert(u).second) continue;
    const ir::Node* p = u->producer();
    if (p == nullptr) continue;
    if (p->kind() == ir::OpKind::kAllReduce) return true;
    if (p->op() == "view" || SumScaleOf(p)) {
      todo.push_back(p->operand(0));
    } else if (p->kind() == ir::OpKind::kAdd && !p->attr("scalar")) {
      for (const ir::Value* o : p->operands()) todo.push_back(o);
    }
  }
  return false;
}

// With the sum `sum` known: the add of a bias to it, b [H] as above or a tensor of the sum's own
// type [..., H], one row per token (spec.bias_per_token: a tensor computed beside the sum, as
// transformers' MoE plans add the shared experts' output, or a routed sum, to an all_reduce's
// sum). Whether the graph can run the fused op after b is computed is the insertion point's
// question (FindInsertionPoint), not this one's.
inline RowBias RowBiasOf(const ir::Node* node, const ir::Value* sum) {
  if (node == nullptr || node->kind() != ir::OpKind::kAdd || node->num_operands() != 2) return {};
  const RowBias row = RowBiasOf(node);
  if (row.sum == sum) return row;
  for (int i : {0, 1}) {
    ir::Value* b = node->operand(1 - i);
    const ir::TensorType& t = sum->type();
    if (node->operand(i) != sum || b == sum) continue;
    if (IsHalfType(t.dtype) && t.rank() >= 2 && node->result()->type() == t && b->type() == t)
      return {node->operand(i), b};
  }
  return {};
}

// RowBiasOf(node, sum) where the fused op takes b as its bias: b carries no all_reduce's sum
// (one that does fuses with `sum` as a second sum). The one test of both the canonicalizer's add
// order and the fusion pass.
inline RowBias BiasOfSum(const ir::Node* node, const ir::Value* sum) {
  const RowBias biased = RowBiasOf(node, sum);
  return biased.bias != nullptr && !CarriesAnAllReduceSum(biased.bias) ? biased : RowBias{};
}

// The node computing `value` as pow(v, 2) or mul(v, v), else null.
inline ir::Node* SquareOf(const ir::Value* value, const ir::Value* v) {
  if (ir::Node* pow = ProducedBy(value, "pow")) {
    return pow->operand(0) == v && NumberAttr(pow, "exponent") == 2.0 ? pow : nullptr;
  }
  if (ir::Node* mul = ProducedBy(value, "mul")) {
    return mul->num_operands() == 2 && mul->operand(0) == v && mul->operand(1) == v ? mul
                                                                                     : nullptr;
  }
  return nullptr;
}

// The value `node` widens when it is a cast the canonicalizer wrote for a promotion
// (explicit_promotion names it "<value>.f32"), else null: the user's graph has no node for it.
inline const ir::Value* PromotionOf(const ir::Node* node) {
  if (node == nullptr || node->kind() != ir::OpKind::kCast || node->num_operands() != 1)
    return nullptr;
  const ir::Value* in = node->operand(0);
  const bool promotion = IsHalfType(in->dtype()) && node->result()->dtype() == DType::kF32 &&
                         node->result()->name().rfind(in->name() + ".f32", 0) == 0;
  return promotion ? in : nullptr;
}

// Exactly one use, by `user`.
inline bool SoleUser(const ir::Value* value, const ir::Node* user) {
  return value->num_uses() == 1 && value->uses()[0].user == user;
}

// "%name".
inline std::string Ref(const ir::Value* value) { return "%" + value->name(); }

// "matmul %o": how messages name a node.
inline std::string NodeRef(const ir::Node* node) {
  return node->num_results() > 0 ? node->op() + " " + Ref(node->result(0)) : node->op();
}

}  // namespace tpfuse::passes
