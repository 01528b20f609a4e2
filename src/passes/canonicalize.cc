// canonicalize: rewrites the forms a model graph arrives in (DESIGN.md Contract 2: decomposed
// RMSNorm and static quant, either order of add, no-op views) into the canonical ops, so that
// fuse_allreduce_epilogue matches one form: all_reduce -> [fused_add_]rms_norm -> quant_fp8.
//
// Every rewrite here is value-preserving except where a comment says how the numerics move.
#include <cmath>

#include "ir/ops.h"
#include "passes/match.h"
#include "passes/pass.h"
#include "passes/rewriter.h"

namespace tpfuse::passes {
namespace {

// ---------------------------------------------------------------- RMSNorm

// The normalization core of a decomposed RMSNorm:
//   v * rsqrt(mean(pow(v, 2) | mul(v, v), dim = -1, keepdim) + eps)    (mul operands either way)
// with v = cast(x, f32) or v = x.
struct RmsCore {
  ir::Value* x = nullptr;
  double eps = 0.0;
  ir::Node* input_cast = nullptr;  // cast(x, f32), when present
  // Absorbed nodes, producers first: square, mean, add, rsqrt, core mul.
  std::vector<ir::Node*> nodes;
};

bool IsLastDimMean(const ir::Node* mean) {
  const int rank = mean->operand(0)->type().rank();
  const std::optional<double> dim = NumberAttr(mean, "dim", -1.0);
  const std::optional<bool> keepdim = BoolAttr(mean, "keepdim", true);
  return dim && keepdim && *keepdim && (*dim == -1.0 || *dim == double(rank - 1));
}

// pow(v, 2) or mul(v, v).
ir::Node* SquareOf(const ir::Value* value, const ir::Value* v) {
  if (ir::Node* pow = ProducedBy(value, "pow")) {
    return pow->operand(0) == v && NumberAttr(pow, "exponent") == 2.0 ? pow : nullptr;
  }
  if (ir::Node* mul = ProducedBy(value, "mul")) {
    return mul->num_operands() == 2 && mul->operand(0) == v && mul->operand(1) == v ? mul
                                                                                     : nullptr;
  }
  return nullptr;
}

// A cast that widens bf16/f16 to f32: exact, so the fused op may read the narrow value instead.
bool IsWideningCast(const ir::Node* node) {
  return node != nullptr && node->op() == "cast" && TextAttr(node, "to") == "f32" &&
         IsHalfType(node->operand(0)->dtype());
}

std::optional<RmsCore> MatchRmsCore(ir::Value* value, MatchNotes& notes) {
  ir::Node* mul = ProducedBy(value, "mul");
  if (mul == nullptr || mul->num_operands() != 2) return std::nullopt;
  for (int j : {0, 1}) {
    ir::Value* v = mul->operand(1 - j);
    ir::Node* rsqrt = ProducedBy(mul->operand(j), "rsqrt");
    if (rsqrt == nullptr) continue;
    ir::Node* add = ProducedBy(rsqrt->operand(0), "add");
    ir::Node* mean = add ? ProducedBy(add->operand(0), "mean") : nullptr;
    if (mean == nullptr) continue;
    ir::Node* square = SquareOf(mean->operand(0), v);
    if (square == nullptr) continue;
    // The shape is RMSNorm's from here on: say why it does not fold.
    const std::optional<double> eps = ScalarOperand(add);
    if (!eps) {
      notes.Decline("eps is not a scalar attribute of the add");
      return std::nullopt;
    }
    if (!IsLastDimMean(mean)) {
      notes.Decline("mean is not over the last dim with keepdim = true");
      return std::nullopt;
    }
    RmsCore core;
    core.eps = *eps;
    core.x = v;
    if (ir::Node* cast = v->producer(); IsWideningCast(cast)) {
      core.x = cast->operand(0);
      core.input_cast = cast;
      if (!OnlyUsedBy(v, {square, mul})) {
        notes.Decline("an intermediate value has other uses");
        return std::nullopt;
      }
    }
    for (ir::Node* n : {square, mean, add, rsqrt, mul}) core.nodes.push_back(n);
    return core;
  }
  return std::nullopt;
}

// The norm weight behind what the final multiply reads: w, cast(w, f32), and Gemma's
// add(w | cast(w, f32), scalar = 1), which is weight_bias = 1.
struct NormWeight {
  ir::Value* w = nullptr;
  double weight_bias = 0.0;
  std::vector<ir::Node*> nodes;  // the add / cast looked through: erased if they end up unused
};

NormWeight LookThroughWeight(ir::Value* value) {
  NormWeight weight{value, 0.0, {}};
  if (ir::Node* add = ProducedBy(weight.w, "add")) {
    if (std::optional<double> bias = ScalarOperand(add)) {
      weight.weight_bias = *bias;
      weight.nodes.push_back(add);
      weight.w = add->operand(0);
    }
  }
  if (ir::Node* cast = weight.w->producer(); IsWideningCast(cast)) {
    weight.nodes.push_back(cast);
    weight.w = cast->operand(0);
  }
  return weight;
}

struct RmsNormMatch {
  ir::Node* root = nullptr;
  ir::Value* x = nullptr;
  NormWeight weight;
  double eps = 0.0;
  ir::Node* input_cast = nullptr;
  std::vector<ir::Node*> chain;  // absorbed activation nodes after the input cast, the root last
};

// [cast(x, f32)] -> pow(2) | mul(v, v) -> mean -> add(eps) -> rsqrt -> mul(v, r) -> [cast]
//   -> mul(., w) (the weight multiply before or after the cast)  ->  rms_norm(x, w) {eps}
// mul(., add(w, scalar = 1))  ->  rms_norm(x, w) {eps, weight_bias = 1}
//
// Numerics: rms_norm computes in f32 and rounds once (Contract 3 step 3). The usual exported
// form (f32 inside, one cast back) agrees with it to the rounding of the final multiply. A chain
// without casts rounds every intermediate to x's dtype, and a bf16 `add(w, 1)` rounds 1 + w:
// the folded op is the more accurate of the two, and results move by the chain's own rounding
// error (a few ulps for the cast-free bf16 chain), not by anything the rewrite adds.
struct DecomposedRmsNorm final : TypedPattern<RmsNormMatch> {
  std::string_view name() const override { return "decomposed_rms_norm"; }
  int benefit() const override { return 10; }

  std::optional<RmsNormMatch> Match(ir::Node* root, MatchNotes& notes) const override {
    if (root->op() != "mul" && root->op() != "cast") return std::nullopt;
    // The multiply by the weight (`weighted`) and, between it and the core, at most one cast.
    ir::Node* weighted = root;
    if (root->op() == "cast") weighted = ProducedBy(root->operand(0), "mul");
    if (weighted == nullptr || weighted->num_operands() != 2) return std::nullopt;

    for (int i : {0, 1}) {
      ir::Value* side = weighted->operand(i);
      ir::Node* mid_cast = root == weighted ? ProducedBy(side, "cast") : nullptr;
      MatchNotes core_notes;
      std::optional<RmsCore> core =
          MatchRmsCore(mid_cast ? mid_cast->operand(0) : side, core_notes);
      if (!core) {
        for (const std::string& d : core_notes.declines()) notes.Decline(d);
        continue;
      }
      RmsNormMatch m;
      m.root = root;
      m.x = core->x;
      m.eps = core->eps;
      m.input_cast = core->input_cast;
      m.weight = LookThroughWeight(weighted->operand(1 - i));
      m.chain = core->nodes;
      if (mid_cast) m.chain.push_back(mid_cast);
      if (weighted != root) m.chain.push_back(weighted);
      m.chain.push_back(root);
      // Each link of the chain must feed only the next one: the other uses would still need the
      // value the rewrite removes. (The input cast feeds two links; MatchRmsCore checked it.)
      for (size_t k = 0; k + 1 < m.chain.size(); ++k) {
        ir::Node* n = m.chain[k];
        if (!SoleUser(n->result(), m.chain[k + 1])) {
          notes.Decline("an intermediate value has other uses");
          return std::nullopt;
        }
      }
      if (!ResultTypeMatches(m, notes)) return std::nullopt;
      return m;
    }
    return std::nullopt;
  }

  // The folded op must give the root's type: the same dtype as x (a chain that ends in f32 for
  // bf16 x is a different computation), a weight of shape [H].
  static bool ResultTypeMatches(const RmsNormMatch& m, MatchNotes& notes) {
    const ir::TensorType& x = m.x->type();
    const ir::TensorType& w = m.weight.w->type();
    if (x.rank() < 1 || w.rank() != 1 || !(w.shape[0] == x.shape.back())) return false;
    StatusOr<std::vector<ir::TensorType>> inferred =
        ir::InferResultTypes("rms_norm", {x, w}, Attrs(m));
    if (inferred.ok() && inferred->size() == 1 && (*inferred)[0] == m.root->result()->type())
      return true;
    // A chain whose only user is a cast is visited again at that cast; stay quiet here.
    const ir::Value* out = m.root->result();
    const bool cast_follows = out->num_uses() == 1 && !out->uses()[0].is_return() &&
                              out->uses()[0].user->op() == "cast";
    if (!cast_follows) notes.Decline("the result dtype differs from the input's");
    return false;
  }

  static ir::AttrMap Attrs(const RmsNormMatch& m) {
    ir::AttrMap attrs{{"eps", ir::Attr::Float(m.eps)}};
    if (m.weight.weight_bias != 0.0) attrs["weight_bias"] = ir::Attr::Float(m.weight.weight_bias);
    return attrs;
  }

  Status Rewrite(const RmsNormMatch& m, Rewriter& rw) const override {
    const std::string name = m.root->result()->name();
    rw.SetInsertionPointBefore(m.root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * norm,
                            rw.Create("rms_norm", {m.x, m.weight.w}, Attrs(m), {name}));
    rw.ReplaceAllUsesWith(m.root->result(), norm->result());
    std::vector<ir::Node*> absorbed = m.chain;
    absorbed.push_back(m.input_cast);
    absorbed.insert(absorbed.end(), m.weight.nodes.begin(), m.weight.nodes.end());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(absorbed));
    return rw.RestoreNames(norm, {name}).status();
  }
};

// ---------------------------------------------------------------- static FP8 quant

struct StaticQuantMatch {
  ir::Node* root = nullptr;  // the cast to f8e4m3
  ir::Value* y = nullptr;
  ir::Value* scale = nullptr;      // div form
  ir::Value* inv_scale = nullptr;  // mul form
  std::vector<ir::Node*> chain;    // scale op, [clamp], cast
};

// div(y, scale) | mul(y, inv_scale) -> [clamp(-448, 448)] -> cast(f8e4m3)
//   ->  quant_fp8(y, scale | pow(inv_scale, -1)) {mode = "tensor"}
//
// Numerics: the fused op computes fp8(y * (1/scale)) with the reciprocal taken once in f32. For
// the mul form, scale = pow(inv_scale, -1), so 1/scale is inv_scale up to one f32 rounding
// either way (2^-23 relative); the FP8 rounding that follows turns that into the same code or
// the neighbouring one: within Contract 3's 1-FP8-ulp tolerance. Without the clamp the cast
// saturates at +-448 itself, which is what the clamp would do.
struct DecomposedStaticQuant final : TypedPattern<StaticQuantMatch> {
  std::string_view name() const override { return "decomposed_static_quant"; }
  int benefit() const override { return 10; }

  std::optional<StaticQuantMatch> Match(ir::Node* root, MatchNotes& notes) const override {
    if (root->op() != "cast" || TextAttr(root, "to") != "f8e4m3") return std::nullopt;
    StaticQuantMatch m;
    m.root = root;
    ir::Value* v = root->operand(0);
    ir::Node* clamp = ProducedBy(v, "clamp");
    if (clamp) v = clamp->operand(0);

    ir::Node* scale_op = nullptr;
    if (ir::Node* div = ProducedBy(v, "div");
        div && div->num_operands() == 2 && IsScalarF32(div->operand(1))) {
      scale_op = div;
      m.y = div->operand(0);
      m.scale = div->operand(1);
    } else if (ir::Node* mul = ProducedBy(v, "mul"); mul && mul->num_operands() == 2) {
      for (int i : {0, 1}) {
        if (IsScalarF32(mul->operand(i)) && !IsScalarF32(mul->operand(1 - i))) {
          scale_op = mul;
          m.inv_scale = mul->operand(i);
          m.y = mul->operand(1 - i);
        }
      }
    }
    if (scale_op == nullptr) return std::nullopt;

    if (clamp && !(NumberAttr(clamp, "min") == -448.0 && NumberAttr(clamp, "max") == 448.0)) {
      notes.Decline("the clamp bounds are not the FP8 e4m3 range +-448");
      return std::nullopt;
    }
    m.chain = {scale_op};
    if (clamp) m.chain.push_back(clamp);
    m.chain.push_back(root);
    for (size_t k = 0; k + 1 < m.chain.size(); ++k) {
      if (!SoleUser(m.chain[k]->result(), m.chain[k + 1])) {
        notes.Decline("an intermediate value has other uses");
        return std::nullopt;
      }
    }
    StatusOr<std::vector<ir::TensorType>> inferred = ir::InferResultTypes(
        "quant_fp8", {m.y->type(), ir::TensorType{DType::kF32, {}}}, Attrs());
    if (!inferred.ok() || inferred->size() != 1 || (*inferred)[0] != root->result()->type()) {
      notes.Decline("quant_fp8 does not take this input");
      return std::nullopt;
    }
    return m;
  }

  static ir::AttrMap Attrs() { return {{"mode", ir::Attr::Str("tensor")}}; }

  Status Rewrite(const StaticQuantMatch& m, Rewriter& rw) const override {
    ir::Value* scale = m.scale;
    if (scale == nullptr) {
      TPFUSE_ASSIGN_OR_RETURN(scale, Reciprocal(m.inv_scale, m.root, rw));
    }
    const std::string name = m.root->result()->name();
    rw.SetInsertionPointBefore(m.root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * quant,
                            rw.Create("quant_fp8", {m.y, scale}, Attrs(), {name}));
    rw.ReplaceAllUsesWith(m.root->result(), quant->result());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(m.chain));
    return rw.RestoreNames(quant, {name}).status();
  }

  // pow(inv_scale, -1), placed right after inv_scale's definition so that any later consumer
  // (and the fused op, wherever it lands) can read it. An existing one before `user` is reused.
  static StatusOr<ir::Value*> Reciprocal(ir::Value* inv_scale, ir::Node* user, Rewriter& rw) {
    const int user_index = rw.graph().IndexOf(user);
    for (const ir::Use& u : inv_scale->uses()) {
      if (!u.is_return() && u.user->op() == "pow" && NumberAttr(u.user, "exponent") == -1.0 &&
          rw.graph().IndexOf(u.user) < user_index)
        return u.user->result();
    }
    rw.SetInsertionPointAfterDef(inv_scale);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * pow,
                            rw.Create("pow", {inv_scale}, {{"exponent", ir::Attr::Float(-1.0)}},
                                      {inv_scale->name() + ".recip"}));
    return pow->result();
  }
};

// ---------------------------------------------------------------- add operand order

// How strongly a value is "the activation" of an add: the all_reduce result (through views)
// first, then anything computed, then parameters.
int ActivationRank(const ir::Value* v) {
  while (ir::Node* view = ProducedBy(v, "view")) v = view->operand(0);
  if (ProducedBy(v, "all_reduce")) return 2;
  return v->is_param() ? 0 : 1;
}

// add(%res, %ar) -> add(%ar, %res): the all_reduce-derived operand first
struct AddOperandOrder final : Pattern {
  std::string_view name() const override { return "add_operand_order"; }
  int benefit() const override { return 5; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "add" || root->num_operands() != 2 || root->attr("scalar")) return false;
    ir::Value* a = root->operand(0);
    ir::Value* b = root->operand(1);
    // Only same-typed operands: broadcasting adds keep the order the op defines.
    if (a->type() != b->type() || ActivationRank(b) <= ActivationRank(a)) return false;
    rw.SetOperand(root, 0, b);
    rw.SetOperand(root, 1, a);
    return true;
  }
};

// ---------------------------------------------------------------- views

// view(%x) {shape = <the shape of %x>} -> %x
struct NoOpView final : Pattern {
  std::string_view name() const override { return "noop_view"; }
  int benefit() const override { return 9; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "view" || root->result()->type() != root->operand(0)->type()) return false;
    rw.ReplaceAllUsesWith(root->result(), root->operand(0));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(root));
    return true;
  }
};

// view(view(%x)) -> view(%x)
struct ViewOfView final : Pattern {
  std::string_view name() const override { return "view_of_view"; }
  int benefit() const override { return 8; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "view") return false;
    ir::Node* inner = ProducedBy(root->operand(0), "view");
    if (inner == nullptr) return false;
    rw.SetOperand(root, 0, inner->operand(0));
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead({inner}));
    return true;
  }
};

// view(all_reduce(%x)) -> all_reduce(view(%x)): the reduction is elementwise, so the view can
// move before it and the all_reduce sits right before the add / norm it feeds
struct ViewBeforeAllReduce final : Pattern {
  std::string_view name() const override { return "view_before_all_reduce"; }
  int benefit() const override { return 7; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "view") return false;
    ir::Node* all_reduce = ProducedBy(root->operand(0), "all_reduce");
    if (all_reduce == nullptr || !SoleUser(all_reduce->result(), root)) return false;

    ir::Value* partial = all_reduce->operand(0);
    const std::string name = all_reduce->result()->name();
    rw.SetInsertionPointBefore(all_reduce);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * view,
                            rw.Create("view", {partial}, root->attrs(),
                                      {partial->name() + ".view"}));
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * moved, rw.Create("all_reduce", {view->result()},
                                                        all_reduce->attrs(), {name}));
    rw.ReplaceAllUsesWith(root->result(), moved->result());
    TPFUSE_RETURN_IF_ERROR(rw.Erase(root));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(all_reduce));
    TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(moved, {name}).status());
    return true;
  }
};

// ---------------------------------------------------------------- add + norm

struct AddRmsNormMatch {
  ir::Node* norm = nullptr;
  ir::Node* add = nullptr;
  InsertionPoint point;
};

// rms_norm(add(%a, %r), %w) -> fused_add_rms_norm(%a, %r, %w): y replaces the norm's output,
// residual_out every other use of the sum
struct AddRmsNorm final : TypedPattern<AddRmsNormMatch> {
  std::string_view name() const override { return "add_rms_norm"; }
  int benefit() const override { return 4; }

  std::optional<AddRmsNormMatch> Match(ir::Node* root, MatchNotes& notes) const override {
    if (root->op() != "rms_norm") return std::nullopt;
    ir::Node* add = ProducedBy(root->operand(0), "add");
    if (add == nullptr || add->num_operands() != 2) return std::nullopt;
    const ir::TensorType& h = add->result()->type();
    if (add->operand(0)->type() != h || add->operand(1)->type() != h) return std::nullopt;
    // The sum's other uses move to residual_out: the fused node must come before the first.
    StatusOr<InsertionPoint> point = FindInsertionPoint(
        *root->graph(), {add->operand(0), add->operand(1), root->operand(1)},
        {root->result(), add->result()}, {root, add}, root);
    if (!point.ok()) {
      notes.Decline("no position for fused_add_rms_norm: " + point.status().message());
      return std::nullopt;
    }
    return AddRmsNormMatch{root, add, *point};
  }

  Status Rewrite(const AddRmsNormMatch& m, Rewriter& rw) const override {
    const std::string y_name = m.norm->result()->name();
    const std::string h_name = m.add->result()->name();
    rw.SetInsertionPoint(m.point);
    TPFUSE_ASSIGN_OR_RETURN(
        ir::Node * fused,
        rw.Create("fused_add_rms_norm",
                  {m.add->operand(0), m.add->operand(1), m.norm->operand(1)}, m.norm->attrs(),
                  {y_name, h_name}));
    rw.ReplaceAllUsesWith(m.norm->result(), fused->result(0));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(m.norm));
    rw.ReplaceAllUsesWith(m.add->result(), fused->result(1));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(m.add));
    return rw.RestoreNames(fused, {y_name, h_name}).status();
  }
};

// ---------------------------------------------------------------- the pass

class CanonicalizePass final : public Pass {
 public:
  CanonicalizePass() {
    patterns_.push_back(std::make_unique<DecomposedRmsNorm>());
    patterns_.push_back(std::make_unique<DecomposedStaticQuant>());
    patterns_.push_back(std::make_unique<NoOpView>());
    patterns_.push_back(std::make_unique<ViewOfView>());
    patterns_.push_back(std::make_unique<ViewBeforeAllReduce>());
    patterns_.push_back(std::make_unique<AddOperandOrder>());
    patterns_.push_back(std::make_unique<AddRmsNorm>());
  }

  std::string name() const override { return "canonicalize"; }

  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) override {
    return ApplyPatternsGreedily(graph, patterns_, ctx);
  }

 private:
  PatternList patterns_;
};

}  // namespace

std::unique_ptr<Pass> MakeCanonicalizePass() { return std::make_unique<CanonicalizePass>(); }

}  // namespace tpfuse::passes
