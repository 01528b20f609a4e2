#include "ir/static_quant.h"

#include "ir/ops.h"

namespace tpfuse::ir {
namespace {

// A static scale: one f32 element of any rank (IsOneElementF32).
bool IsScaleF32(const Value* v) { return IsOneElementF32(v->type()); }

std::optional<double> NumberOf(const Node& node, const std::string& name) {
  const Attr* a = node.attr(name);
  return a ? a->AsNumber() : std::nullopt;
}

}  // namespace

const Value* ReciprocalOf(const Value* inv) {
  const Node* p = SkipViews(inv)->producer();
  if (p == nullptr) return nullptr;
  if (p->kind() == OpKind::kReciprocal) return p->operand(0);
  if (p->kind() == OpKind::kPow && NumberOf(*p, "exponent") == -1.0) return p->operand(0);
  return nullptr;
}

std::optional<StaticQuantForm> MatchStaticQuant(const Node& cast) {
  if (cast.kind() != OpKind::kCast) return std::nullopt;
  const Attr* to = cast.attr("to");
  if (to == nullptr || to->AsText() != "f8e4m3") return std::nullopt;
  StaticQuantForm form;
  form.cast = &cast;
  const Value* v = cast.operand(0);
  if (const Node* clamp = v->producer(); clamp && clamp->kind() == OpKind::kClamp) {
    form.clamp = clamp;
    form.clamp_is_fp8_range =
        NumberOf(*clamp, "min") == -448.0 && NumberOf(*clamp, "max") == 448.0;
    v = clamp->operand(0);
  }
  const Node* op = v->producer();
  if (op == nullptr || (op->kind() != OpKind::kDiv && op->kind() != OpKind::kMul))
    return std::nullopt;
  form.scale_op = op;
  form.divides = op->kind() == OpKind::kDiv;
  if (op->num_operands() == 1) {
    form.scalar = NumberOf(*op, "scalar");
    if (!form.scalar || *form.scalar == 0.0) return std::nullopt;
    form.y = op->operand(0);
  } else if (form.divides) {
    if (!IsScaleF32(op->operand(1))) return std::nullopt;
    form.y = op->operand(0);
    form.scale = op->operand(1);
  } else {
    for (int i : {0, 1}) {
      if (IsScaleF32(op->operand(i)) && !IsScaleF32(op->operand(1 - i))) {
        form.inv = op->operand(i);
        form.y = op->operand(1 - i);
      }
    }
    if (form.inv == nullptr) return std::nullopt;
    form.scale = ReciprocalOf(form.inv);
  }
  // A scale of higher rank than y would broadcast y up: not y's quantization.
  if (!(op->result()->shape() == form.y->shape())) return std::nullopt;
  if (const Node* w = form.y->producer(); w && w->kind() == OpKind::kCast &&
                                          w->result()->dtype() == DType::kF32 &&
                                          IsHalfType(w->operand(0)->dtype())) {
    form.widening = w;
    form.y = w->operand(0);
  }
  return form;
}

std::optional<StaticQuantForm> StaticQuantAt(const Node& scale_op) {
  const Value* v = scale_op.result();
  for (int hop = 0; hop < 2; ++hop) {
    if (v->num_uses() != 1 || v->uses()[0].is_return()) return std::nullopt;
    const Node* user = v->uses()[0].user;
    if (user->kind() == OpKind::kCast) {
      std::optional<StaticQuantForm> form = MatchStaticQuant(*user);
      if (form && form->scale_op == &scale_op) return form;
      return std::nullopt;
    }
    if (user->kind() != OpKind::kClamp) return std::nullopt;
    v = user->result();
  }
  return std::nullopt;
}

}  // namespace tpfuse::ir
