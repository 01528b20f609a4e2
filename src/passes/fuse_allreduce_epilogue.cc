// fuse_allreduce_epilogue: one rule, anchored at every all_reduce.
//
//   all_reduce(x) -> rms_norm(., w) | fused_add_rms_norm(., residual, w) -> [quant_fp8(y)]
//     ->  allreduce_rmsnorm(x, [residual], w, [scale]) {emit = what the rest of the graph uses}
//
// The rule absorbs the norm that reads the all_reduce and at most one quant_fp8 of the norm
// output, then decides `emit` from the uses left outside the chain: the all_reduce result used
// elsewhere -> allreduce; y used by anything but the fused quant (a bf16 GEMM, a second quant,
// the return) -> norm; residual_out used -> residual; a fused quant -> quant. Legality is asked
// of ctx.caps; when the whole chain is not supported the largest supported prefix is fused
// (the quant stays a separate op reading the emitted norm) and the record says why. An
// all_reduce left alone gets a Rejection whose reason a user can act on.
#include <algorithm>
#include <variant>

#include "ir/ops.h"
#include "passes/match.h"
#include "passes/pass.h"
#include "passes/rewriter.h"

namespace tpfuse::passes {
namespace {

constexpr char kRule[] = "fuse_allreduce_epilogue";

// The nodes after one all_reduce that the fused op can take over.
struct Chain {
  ir::Node* anchor = nullptr;  // all_reduce
  ir::Node* norm = nullptr;    // rms_norm or fused_add_rms_norm reading the anchor
  ir::Value* x = nullptr;      // this rank's partial sum (the all_reduce operand)
  ir::Value* residual = nullptr;
  ir::Value* w = nullptr;
  ir::Value* y = nullptr;             // the norm output
  ir::Value* residual_out = nullptr;  // fused_add_rms_norm only
  std::vector<ir::Node*> quants;      // quant_fp8 nodes reading y, in program order
};

// A chain that can become one fused node.
struct Plan {
  Chain chain;
  AllreduceRmsnormSpec spec;
  ir::Node* quant = nullptr;  // the quant_fp8 absorbed, if any
  InsertionPoint point;
  std::vector<std::string> notes;
  int quants_dropped = 0;  // quant consumers the backend or the structure kept out
};

// A failure to fuse: the counter kind and the reason shown to the user.
struct Refusal {
  std::string kind;
  std::string reason;
};

// "its only use is matmul %o", "its uses are matmul %o and add %h", "it is only returned".
std::string DescribeUses(const ir::Value* value) {
  std::vector<std::string> uses;
  for (const ir::Use& u : value->uses()) {
    std::string d = DescribeUse(u);
    if (std::find(uses.begin(), uses.end(), d) == uses.end()) uses.push_back(d);
  }
  if (uses.empty()) return "it has no uses";
  if (uses.size() == 1) {
    return uses[0] == "the return" ? "it is only returned" : "its only use is " + uses[0];
  }
  std::string list;
  for (size_t i = 0; i < uses.size(); ++i) {
    list += (i == 0 ? "" : i + 1 == uses.size() ? " and " : ", ") + uses[i];
  }
  return "its uses are " + list;
}

std::string TypeOf(const ir::Value* v) { return v->type().ToString(); }

// The norm that reads the anchor: the first in program order, as x (or, since the add is
// commutative, as fused_add_rms_norm's residual when the other operand is not an all_reduce).
std::optional<Chain> FindChain(ir::Node* anchor) {
  const ir::Graph& graph = *anchor->graph();
  ir::Value* a = anchor->result();
  ir::Node* best = nullptr;
  int best_index = 0;
  for (const ir::Use& u : a->uses()) {
    if (u.is_return()) continue;
    const std::string& op = u.user->op();
    const bool as_x = u.index == 0 && (op == "rms_norm" || op == "fused_add_rms_norm");
    const bool as_residual = op == "fused_add_rms_norm" && u.index == 1 &&
                             u.user->operand(0) != a;
    if (!as_x && !as_residual) continue;
    const int index = graph.IndexOf(u.user);
    if (best == nullptr || index < best_index) {
      best = u.user;
      best_index = index;
    }
  }
  if (best == nullptr) return std::nullopt;

  Chain c;
  c.anchor = anchor;
  c.norm = best;
  c.x = anchor->operand(0);
  c.y = best->result(0);
  if (best->op() == "rms_norm") {
    c.w = best->operand(1);
  } else {
    c.residual = best->operand(0) == a ? best->operand(1) : best->operand(0);
    c.w = best->operand(2);
    c.residual_out = best->result(1);
  }
  std::set<ir::Node*> seen;
  for (const ir::Use& u : c.y->uses()) {
    if (!u.is_return() && u.index == 0 && u.user->op() == "quant_fp8" && seen.insert(u.user).second)
      c.quants.push_back(u.user);
  }
  std::sort(c.quants.begin(), c.quants.end(), [&](const ir::Node* p, const ir::Node* q) {
    return graph.IndexOf(p) < graph.IndexOf(q);
  });
  return c;
}

// The part of the spec fixed by the all_reduce and the norm, after checking what the fused op's
// operands must look like (Contract 3: x [T, H] bf16/f16, w [H] bf16/f16/f32). Empty on
// success; otherwise why not, in words.
std::string BaseSpec(const Chain& c, AllreduceRmsnormSpec& spec) {
  const ir::Value* a = c.anchor->result();
  const ir::TensorType& t = a->type();
  if (!IsHalfType(t.dtype)) {
    return StrCat("all_reduce ", Ref(a), " has dtype ", DTypeName(t.dtype),
                  "; the fused op takes bf16 or f16 activations");
  }
  if (t.rank() != 2 || !t.shape[1].is_const() || t.shape[1].value <= 0) {
    return StrCat("all_reduce ", Ref(a), " has type ", TypeOf(a),
                  "; the fused op takes [T, H] with a constant H");
  }
  const int64_t hidden = t.shape[1].value;
  const DType wd = c.w->dtype();
  if (!(IsHalfType(wd) || wd == DType::kF32)) {
    return StrCat("norm weight ", Ref(c.w), " has dtype ", DTypeName(wd),
                  "; the fused op takes bf16, f16 or f32");
  }
  if (c.w->type().rank() != 1 || !(c.w->shape()[0] == ir::Dim::Const(hidden))) {
    return StrCat("norm weight ", Ref(c.w), " has type ", TypeOf(c.w), "; expected [", hidden,
                  "] to match the all_reduce's hidden size");
  }
  if (c.residual && c.residual->type() != t) {
    return StrCat("residual ", Ref(c.residual), " has type ", TypeOf(c.residual),
                  "; expected ", t.ToString(), " like all_reduce ", Ref(a));
  }
  if (c.y->type() != t) {
    return StrCat("norm output ", Ref(c.y), " has type ", TypeOf(c.y), "; expected ",
                  t.ToString());
  }
  const std::optional<double> eps = NumberAttr(c.norm, "eps", 1e-6);
  const std::optional<double> bias = NumberAttr(c.norm, "weight_bias", 0.0);
  if (!eps || !bias) return StrCat(NodeRef(c.norm), " has a non-numeric eps or weight_bias");
  spec = AllreduceRmsnormSpec{};
  spec.act_dtype = t.dtype;
  spec.weight_dtype = wd;
  spec.hidden = hidden;
  spec.has_residual = c.residual != nullptr;
  spec.eps = float(*eps);
  spec.weight_bias = float(*bias);
  return {};
}

// Adds `quant`'s parameters to `spec`, or says why that quant cannot be absorbed.
std::string AddQuant(const ir::Node* quant, AllreduceRmsnormSpec& spec) {
  StatusOr<ir::QuantParams> params = ir::QuantParamsFromNode(*quant);
  if (!params.ok()) return params.status().message();
  if (params->mode == QuantMode::kFp8Tensor &&
      (quant->num_operands() != 2 || !IsScalarF32(quant->operand(1)))) {
    return StrCat(NodeRef(quant), " has no f32[] scale operand");
  }
  spec.quant = params->mode;
  spec.group_size = params->group_size;
  spec.scale_layout = params->layout;
  spec.scale_fmt = params->format;
  return {};
}

bool UsedOutside(const ir::Value* v, const std::set<const ir::Node*>& absorbed) {
  return std::any_of(v->uses().begin(), v->uses().end(), [&](const ir::Use& u) {
    return u.is_return() || absorbed.count(u.user) == 0;
  });
}

// The fused node's operands and the values it takes over, for a chain with `quant` absorbed.
std::vector<ir::Value*> FusedOperands(const Chain& c, const ir::Node* quant) {
  std::vector<ir::Value*> operands = {c.x};
  if (c.residual) operands.push_back(c.residual);
  operands.push_back(c.w);
  if (quant && quant->num_operands() == 2) operands.push_back(quant->operand(1));
  return operands;
}

std::set<const ir::Node*> Absorbed(const Chain& c, const ir::Node* quant) {
  std::set<const ir::Node*> absorbed = {c.anchor, c.norm};
  if (quant) absorbed.insert(quant);
  return absorbed;
}

// Decides emit for the chain with `quant` absorbed (null: none), asks the backend, and finds
// where the fused node goes.
std::variant<Plan, Refusal> PlanFusion(const Chain& c, ir::Node* quant,
                                       const AllreduceRmsnormSpec& base, const PassContext& ctx) {
  Plan plan;
  plan.chain = c;
  plan.spec = base;
  plan.quant = quant;
  if (quant) {
    if (std::string why = AddQuant(quant, plan.spec); !why.empty()) return Refusal{"quant", why};
  }
  const std::set<const ir::Node*> absorbed = Absorbed(c, quant);
  EmitSet& emit = plan.spec.emit;
  emit.allreduce = UsedOutside(c.anchor->result(), absorbed);
  emit.norm = UsedOutside(c.y, absorbed);
  emit.residual = c.residual_out && c.residual_out->has_uses();
  emit.quant = quant != nullptr;
  if (emit.empty()) {
    return Refusal{"unused results", StrCat("nothing after all_reduce ", Ref(c.anchor->result()),
                                            " is used: the norm and its inputs are dead code")};
  }
  if (std::string why = ctx.caps.WhyUnsupported(plan.spec, ctx.world_size); !why.empty())
    return Refusal{"backend", why};
  if (Status valid = plan.spec.Validate(); !valid.ok()) return Refusal{"invalid", valid.message()};

  std::vector<ir::Value*> replaced;
  if (emit.allreduce) replaced.push_back(c.anchor->result());
  if (emit.norm) replaced.push_back(c.y);
  if (emit.residual) replaced.push_back(c.residual_out);
  if (quant) replaced.insert(replaced.end(), quant->results().begin(), quant->results().end());
  const ir::Graph& graph = *c.anchor->graph();
  const ir::Node* last = c.norm;
  if (quant && graph.IndexOf(quant) > graph.IndexOf(last)) last = quant;
  StatusOr<InsertionPoint> point =
      FindInsertionPoint(graph, FusedOperands(c, quant), replaced, absorbed, last);
  if (!point.ok()) {
    return Refusal{"no legal position",
                   "no position for the fused op: " + point.status().message()};
  }
  plan.point = *point;
  return plan;
}

class FuseAllreduceEpiloguePass final : public Pass {
 public:
  std::string name() const override { return kRule; }

  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) override {
    if (ctx.world_size < 1) return InvalidArgument("world size must be >= 1, got ", ctx.world_size);
    Rewriter rw(graph);
    for (ir::Node* node : graph.NodesSnapshot()) {
      if (rw.IsErased(node) || node->op() != "all_reduce") continue;
      ctx.Count(kRule, "anchors_seen");
      std::variant<Plan, Refusal> decision = Decide(node, ctx);
      if (auto* refusal = std::get_if<Refusal>(&decision)) {
        ctx.Count(kRule, "rejected: " + refusal->kind);
        ctx.rejections.push_back(Rejection{node->result()->name(), refusal->reason});
        continue;
      }
      const Plan& plan = std::get<Plan>(decision);
      const std::string anchor_name = node->result()->name();
      TPFUSE_ASSIGN_OR_RETURN(FusionRecord record, Fuse(plan, rw));
      record.anchor = anchor_name;
      ctx.Count(kRule, "fused");
      if (plan.quants_dropped > 0) ctx.Count(kRule, "quant left unfused", plan.quants_dropped);
      ctx.fusions.push_back(std::move(record));
    }
    return rw.changed();
  }

 private:
  static std::variant<Plan, Refusal> Decide(ir::Node* anchor, const PassContext& ctx) {
    const ir::Value* a = anchor->result();
    const std::optional<std::string> group = TextAttr(anchor, "group", "tp");
    if (group != "tp") {
      return Refusal{"not the tp group",
                     StrCat("all_reduce group \"", group.value_or("?"),
                            "\" is not the tensor-parallel group (\"tp\")")};
    }
    if (ctx.world_size == 1) {
      return Refusal{"world size 1",
                     "world size 1: all_reduce is the identity, nothing to fuse across ranks"};
    }
    std::optional<Chain> chain = FindChain(anchor);
    if (!chain) {
      return Refusal{"no rms_norm", StrCat("all_reduce ", Ref(a), " is not followed by an "
                                           "RMSNorm (", DescribeUses(a), ")")};
    }
    if (std::string why = ctx.caps.WhyWorldSizeUnsupported(ctx.world_size); !why.empty())
      return Refusal{"backend", why};
    AllreduceRmsnormSpec base;
    if (std::string why = BaseSpec(*chain, base); !why.empty())
      return Refusal{"dtype or shape", why};

    // The whole chain with the first quant that works, else the norm alone.
    std::vector<std::string> notes;
    std::set<const ir::Node*> dropped;
    for (ir::Node* quant : chain->quants) {
      std::variant<Plan, Refusal> with_quant = PlanFusion(*chain, quant, base, ctx);
      if (auto* refusal = std::get_if<Refusal>(&with_quant)) {
        dropped.insert(quant);
        notes.push_back(
            StrCat("quant_fp8 ", Ref(quant->result()), " stays unfused: ", refusal->reason));
        continue;
      }
      Plan& plan = std::get<Plan>(with_quant);
      for (ir::Node* other : chain->quants) {
        if (other == quant || dropped.count(other)) continue;
        notes.push_back(StrCat("quant_fp8 ", Ref(other->result()),
                               " reads the emitted norm: one quant is fused per chain"));
      }
      plan.notes = std::move(notes);
      plan.quants_dropped = int(dropped.size());
      return plan;
    }
    std::variant<Plan, Refusal> norm_only = PlanFusion(*chain, nullptr, base, ctx);
    if (auto* plan = std::get_if<Plan>(&norm_only)) {
      plan->notes = std::move(notes);
      plan->quants_dropped = int(dropped.size());
    }
    return norm_only;
  }

  static StatusOr<FusionRecord> Fuse(const Plan& plan, Rewriter& rw) {
    const Chain& c = plan.chain;
    const EmitSet& emit = plan.spec.emit;

    // Results in Contract 3's order, each named after the value it takes over.
    std::vector<ir::Value*> taken_over;
    if (emit.allreduce) taken_over.push_back(c.anchor->result());
    if (emit.norm) taken_over.push_back(c.y);
    if (emit.residual) taken_over.push_back(c.residual_out);
    if (emit.quant) {
      taken_over.push_back(plan.quant->result(0));
      if (IsDynamicQuant(plan.spec.quant)) taken_over.push_back(plan.quant->result(1));
    }
    std::vector<std::string> names;
    for (const ir::Value* v : taken_over) names.push_back(v->name());

    rw.SetInsertionPoint(plan.point);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * fused,
                            rw.Create("allreduce_rmsnorm", FusedOperands(c, plan.quant),
                                      ir::FusedAttrsFromSpec(plan.spec), names));
    if (fused->num_results() != int(taken_over.size())) {
      return Internal("allreduce_rmsnorm has ", fused->num_results(), " results; ",
                      plan.spec.ToString(), " needs ", taken_over.size());
    }
    const std::set<const ir::Node*> absorbed = Absorbed(c, plan.quant);
    for (size_t i = 0; i < taken_over.size(); ++i) {
      rw.ReplaceUsesIf(taken_over[i], fused->result(int(i)), [&](const ir::Use& u) {
        return u.is_return() || absorbed.count(u.user) == 0;
      });
    }
    std::vector<ir::Node*> erase = {c.anchor, c.norm};
    if (plan.quant) erase.push_back(plan.quant);
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(erase));
    for (ir::Node* n : erase) {
      if (!rw.IsErased(n))
        return Internal(NodeRef(n), " is still used after fusing all_reduce ",
                        Ref(c.anchor->result()));
    }
    TPFUSE_ASSIGN_OR_RETURN(fused, rw.RestoreNames(fused, names));

    FusionRecord record;
    record.spec = plan.spec;
    record.fused_value = fused->result(0)->name();
    record.notes = plan.notes;
    return record;
  }
};

}  // namespace

std::unique_ptr<Pass> MakeFuseAllreduceEpiloguePass() {
  return std::make_unique<FuseAllreduceEpiloguePass>();
}

}  // namespace tpfuse::passes
