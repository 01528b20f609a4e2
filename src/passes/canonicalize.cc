// canonicalize: rewrites the forms a model graph arrives in (DESIGN.md Contract 2: decomposed
// RMSNorm, static and dynamic quant, either order of add, no-op views) into the canonical ops, so that
// fuse_allreduce_epilogue matches one form: all_reduce -> [fused_add_]rms_norm -> quant_fp8.
//
// Every rewrite here is value-preserving except where a comment says how the numerics move.
#include <algorithm>
#include <cmath>

#include "common/quotient.h"
#include "ir/ops.h"
#include "ir/static_quant.h"
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
  // vLLM's native fused-add form: v = add(cast(x, f32), cast(residual, f32)), normalized
  // unrounded; `residual_cast` = cast(v, x's dtype) is the new residual, when the graph has it.
  // With an f32 residual stream the residual is f32 itself (no cast), and what reads v besides
  // the norm reads the new residual unrounded (`residual_out_f32`; a cast back stays a cast).
  ir::Node* f32_sum = nullptr;
  ir::Value* residual = nullptr;
  ir::Node* residual_cast = nullptr;
  bool residual_out_f32 = false;
  // Absorbed nodes, producers first: square, mean, add, rsqrt, core mul.
  std::vector<ir::Node*> nodes;
};

// A reduction over the last dim (dim -1 or rank - 1) that keeps it.
bool IsLastDimKeepdim(const ir::Node* reduction, bool keepdim_default) {
  const int rank = reduction->operand(0)->type().rank();
  const std::optional<double> dim = NumberAttr(reduction, "dim", -1.0);
  const std::optional<bool> keepdim = BoolAttr(reduction, "keepdim", keepdim_default);
  return dim && keepdim && *keepdim && (*dim == -1.0 || *dim == double(rank - 1));
}

bool IsLastDimMean(const ir::Node* mean) { return IsLastDimKeepdim(mean, true); }

// A cast that widens bf16/f16 to f32: exact, so the fused op may read the narrow value instead.
bool IsWideningCast(const ir::Node* node) {
  return node != nullptr && node->op() == "cast" && TextAttr(node, "to") == "f32" &&
         IsHalfType(node->operand(0)->dtype());
}

// add(cast(x, f32), cast(residual, f32)) with x and residual of one half type and shape (either
// order: the all_reduce-derived operand becomes x), or add(cast(x, f32), residual) with an f32
// residual of x's shape (a residual stream kept in f32: SGLang's fp32_residual, vLLM's f16 Gemma).
struct F32Sum {
  ir::Node* add = nullptr;
  ir::Value* x = nullptr;
  ir::Value* residual = nullptr;
};
int ActivationRank(const ir::Value* v);
std::optional<F32Sum> MatchF32Sum(ir::Value* v) {
  ir::Node* add = ProducedBy(v, "add");
  if (add == nullptr || add->num_operands() != 2) return std::nullopt;
  ir::Node* ca = add->operand(0)->producer();
  ir::Node* cb = add->operand(1)->producer();
  const bool wa = IsWideningCast(ca), wb = IsWideningCast(cb);
  if (wa != wb) {
    ir::Value* x = (wa ? ca : cb)->operand(0);
    ir::Value* residual = add->operand(wa ? 1 : 0);
    if (residual->dtype() != DType::kF32 || !(residual->shape() == x->shape())) return std::nullopt;
    return F32Sum{add, x, residual};
  }
  if (!wa) return std::nullopt;
  ir::Value* a = ca->operand(0);
  ir::Value* b = cb->operand(0);
  if (a->type() != b->type()) return std::nullopt;
  if (ActivationRank(b) > ActivationRank(a)) std::swap(a, b);
  return F32Sum{add, a, b};
}

// `f32_residual`: whether the target's fused op takes an f32 residual (FusionCapabilities).
std::optional<RmsCore> MatchRmsCore(ir::Value* value, MatchNotes& notes, bool f32_residual) {
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
      // An eps the front end could not make a constant says why (an opaque's `why`).
      const ir::Node* from = add->num_operands() == 2 ? add->operand(1)->producer() : nullptr;
      const std::optional<std::string> why =
          from != nullptr && from->kind() == ir::OpKind::kOpaque ? TextAttr(from, "why") : std::nullopt;
      notes.Decline(why ? StrCat("eps is not a scalar attribute of the add: ", *why)
                        : "eps is not a scalar attribute of the add");
      return std::nullopt;
    }
    if (!IsLastDimMean(mean)) {
      notes.Decline("mean is not over the last dim with keepdim = true");
      return std::nullopt;
    }
    RmsCore core;
    core.eps = *eps;
    core.x = v;
    if (v->dtype() != DType::kF32) {
      // NOTE: the fused op and rms_norm compute in f32; a chain that rounds every step to
      // bf16 or f16 computes something else, and folding it would change its result.
      notes.Decline(StrCat("the norm is computed in ", DTypeName(v->dtype()),
                           ", not in f32: folding would change its result"));
      return std::nullopt;
    }
    if (ir::Node* cast = v->producer(); IsWideningCast(cast)) {
      // The norm reads x itself; a cast with other uses stays for them.
      core.x = cast->operand(0);
      core.input_cast = cast;
    } else if (std::optional<F32Sum> sum = MatchF32Sum(v)) {
      // The f32 sum feeds the square, the core mul and at most one cast back (the residual,
      // rounded); any other reader takes the residual unrounded, in f32.
      const ir::Use* f32_reader = nullptr;
      for (const ir::Use& u : v->uses()) {
        if (!u.is_return() && (u.user == square || u.user == mul)) continue;
        if (!u.is_return() && core.residual_cast == nullptr &&
            u.user->kind() == ir::OpKind::kCast && u.user->result()->dtype() == sum->x->dtype()) {
          core.residual_cast = u.user;
          continue;
        }
        if (f32_reader == nullptr) f32_reader = &u;
      }
      const bool f32_in = sum->residual->dtype() == DType::kF32;
      if ((f32_reader || f32_in) && !f32_residual) {
        notes.Decline(f32_in ? StrCat("the residual ", Ref(sum->residual),
                                      " is f32: the target's fused op and norm kernels take the "
                                      "residual in the activation dtype, ",
                                      DTypeName(sum->x->dtype()))
                             : StrCat("the f32 residual sum ", Ref(v), " is also read by ",
                                      DescribeUse(*f32_reader),
                                      ": the target's fused op gives the residual only rounded to ",
                                      DTypeName(sum->x->dtype())));
        return std::nullopt;
      }
      // Kept in f32, the new residual is the fused op's f32 output; a cast back reads that.
      core.residual_out_f32 = f32_reader != nullptr;
      if (core.residual_out_f32) core.residual_cast = nullptr;
      core.x = sum->x;
      core.residual = sum->residual;
      core.f32_sum = sum->add;
    } else if (ir::Node* sum_add = ProducedBy(v, "add");
               sum_add != nullptr && sum_add->num_operands() == 2 &&
               IsWideningCast(sum_add->operand(0)->producer()) &&
               IsWideningCast(sum_add->operand(1)->producer())) {
      // Widened halves of two types or shapes (a broadcast): no residual of the activation's.
      notes.Decline(StrCat("the f32 sum adds ",
                           sum_add->operand(0)->producer()->operand(0)->type().ToString(), " and ",
                           sum_add->operand(1)->producer()->operand(0)->type().ToString(),
                           ": not a residual of the activation's type"));
      return std::nullopt;
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
  bool bias_in_weight_dtype = false;  // the add rounds w + bias to w's (half) dtype
  std::vector<ir::Node*> nodes;  // the add / cast looked through: erased if they end up unused
};

NormWeight LookThroughWeight(ir::Value* value) {
  NormWeight weight;
  weight.w = value;
  if (ir::Node* add = ProducedBy(weight.w, "add")) {
    if (std::optional<double> bias = ScalarOperand(add)) {
      weight.weight_bias = *bias;
      weight.bias_in_weight_dtype = add->result()->dtype() != DType::kF32;
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
  RoundingRecipe rounding;
  // vLLM's native fused-add form (RmsCore): the f32 sum, the residual, its cast back.
  ir::Node* f32_sum = nullptr;
  ir::Value* residual = nullptr;
  ir::Node* residual_cast = nullptr;
  InsertionPoint point;  // fused-add form: where fused_add_rms_norm goes
  // No weight multiply (weight.w null): the norm takes a unit weight, full([H], 1) in x's dtype.
  bool unit_weight = false;

  // The values the fused-add form's two results take over: y (the root) and the residual (the
  // f32 sum kept in f32, or its cast back).
  ir::Value* residual_taken() const {
    if (rounding.residual_out_f32) return f32_sum->result();
    return residual_cast ? residual_cast->result() : nullptr;
  }
};

// [cast(x, f32)] -> pow(2) | mul(v, v) -> mean -> add(eps) -> rsqrt -> mul(v, r) -> [cast]
//   -> mul(., w) (the weight multiply before or after the cast)  ->  rms_norm(x, w) {eps}
// mul(., add(w, scalar = 1))  ->  rms_norm(x, w) {eps, weight_bias = 1}
// cast(mul(v, r), x's dtype), no weight multiply (nanochat's norm, F.rms_norm without a weight)
//   ->  rms_norm(x, full() {shape = [H], value = 1, dtype = x's})
//   (exact: round(n * 1) = round(n) for every n; H must be a constant)
//
// Numerics: rms_norm computes in f32 and rounds once (Contract 3 step 3). The usual exported
// form (f32 inside, one cast back) agrees with it to the rounding of the final multiply. A chain
// without casts rounds every intermediate to x's dtype, and a bf16 `add(w, 1)` rounds 1 + w:
// the folded op is the more accurate of the two, and results move by the chain's own rounding
// error (a few ulps for the cast-free bf16 chain), not by anything the rewrite adds.
struct DecomposedRmsNorm final : TypedPattern<RmsNormMatch> {
  std::string_view name() const override { return "decomposed_rms_norm"; }
  int benefit() const override { return 10; }

  // Whether the target takes an f32 residual (FusionCapabilities::residual_f32) and gives an f32
  // norm output (FusionCapabilities::norm_out_f32): set per run.
  bool f32_residual = true;
  bool norm_out_f32 = true;

  std::optional<RmsNormMatch> Match(ir::Node* root, MatchNotes& notes) const override {
    if (root->op() != "mul" && root->op() != "cast") return std::nullopt;
    // The multiply by the weight (`weighted`) and, between it and the core, at most one cast.
    ir::Node* weighted = root;
    if (root->op() == "cast") weighted = ProducedBy(root->operand(0), "mul");
    if (weighted == nullptr || weighted->num_operands() != 2) return std::nullopt;

    for (int i : {0, 1}) {
      ir::Value* side = weighted->operand(i);
      ir::Node* mid_cast = root == weighted ? ProducedBy(side, "cast") : nullptr;
      // That cast widened back to f32 (the IR's promotion of a multiply of the 16-bit n by an
      // f32 weight: LlamaRMSNorm's `weight * x.to(input_dtype)` with an f32 weight); the
      // multiply then reads round(n) exactly, in f32.
      ir::Node* widened = nullptr;
      if (ir::Node* inner = mid_cast && IsWideningCast(mid_cast) ? ProducedBy(mid_cast->operand(0), "cast") : nullptr) {
        widened = mid_cast;
        mid_cast = inner;
      }
      MatchNotes core_notes;
      std::optional<RmsCore> core =
          MatchRmsCore(mid_cast ? mid_cast->operand(0) : side, core_notes, f32_residual);
      if (!core) {
        for (const std::string& d : core_notes.declines()) notes.Decline(d);
        continue;
      }
      // A widened round(n) must be n rounded to x's dtype (the type check cannot see it: the
      // multiply is f32 either way).
      if (widened && mid_cast->result()->dtype() != core->x->dtype()) {
        notes.Decline(StrCat("the weight multiplies ", Ref(mid_cast->result()), ", the normalized value rounded to ",
                             DTypeName(mid_cast->result()->dtype()), ", not to x's ", DTypeName(core->x->dtype())));
        continue;
      }
      RmsNormMatch m;
      m.root = root;
      m.x = core->x;
      m.eps = core->eps;
      m.input_cast = core->input_cast;
      m.weight = LookThroughWeight(weighted->operand(1 - i));
      m.f32_sum = core->f32_sum;
      m.residual = core->residual;
      m.residual_cast = core->residual_cast;
      // The weight multiplies the normalized value already rounded to x's dtype when the
      // multiply comes after the cast (LlamaRMSNorm's `weight * x.to(input_dtype)`).
      m.rounding.norm_input_f32 = m.f32_sum != nullptr;
      m.rounding.residual_out_f32 = core->residual_out_f32;
      m.rounding.weight_after_round = mid_cast != nullptr;
      m.rounding.weight_bias_in_weight_dtype =
          m.weight.weight_bias != 0.0 && m.weight.bias_in_weight_dtype;
      m.chain = core->nodes;
      if (mid_cast) m.chain.push_back(mid_cast);
      if (widened) m.chain.push_back(widened);
      if (weighted != root) m.chain.push_back(weighted);
      m.chain.push_back(root);
      return Finish(std::move(m), notes);
    }
    if (root->op() == "cast") return MatchUnitWeight(root, notes);
    return std::nullopt;
  }

  // The checks both forms share, on a match whose chain is set: each link feeds only the next,
  // 16-bit activations, the result's type, and the fused-add form's place.
  std::optional<RmsNormMatch> Finish(RmsNormMatch m, MatchNotes& notes) const {
    // Each link of the chain must feed only the next one: the other uses would still need the
    // value the rewrite removes. (The input cast is no link: it stays where it has other uses.)
    for (size_t k = 0; k + 1 < m.chain.size(); ++k) {
      ir::Node* n = m.chain[k];
      if (!SoleUser(n->result(), m.chain[k + 1])) {
        notes.Decline("an intermediate value has other uses");
        return std::nullopt;
      }
    }
    if (!IsHalfType(m.x->dtype())) {
      // rms_norm's kernels and the fused op take 16-bit activations: a norm of an f32 value
      // (no cast in, no f32 sum of 16-bit values) stays as written, runnable. Said once, at
      // the cast that follows where there is one.
      if (!CastFollows(m.root))
        notes.Decline(StrCat("the norm's input ", Ref(m.x), " is ", DTypeName(m.x->dtype()),
                             ": rms_norm and the fused op take bf16 or f16 activations"));
      return std::nullopt;
    }
    if (!ResultTypeMatches(m, notes)) return std::nullopt;
    if (m.f32_sum) {
      // The residual cast may be used before the norm: fused_add_rms_norm must come first.
      std::vector<ir::Value*> replaced = {m.root->result()};
      if (ir::Value* h = m.residual_taken()) replaced.push_back(h);
      std::set<const ir::Node*> absorbed(m.chain.begin(), m.chain.end());
      absorbed.insert(m.f32_sum);
      if (m.residual_cast) absorbed.insert(m.residual_cast);
      std::vector<ir::Value*> reads = {m.x, m.residual};
      if (m.weight.w) reads.push_back(m.weight.w);
      StatusOr<InsertionPoint> point =
          FindInsertionPoint(*m.root->graph(), reads, replaced, absorbed, m.root);
      if (!point.ok()) {
        notes.Decline("no position for fused_add_rms_norm: " + point.status().message());
        return std::nullopt;
      }
      m.point = *point;
    }
    return m;
  }

  // A cast of the normalized value that nothing multiplies (F.rms_norm without a weight,
  // nanochat's norm): rms_norm with a unit weight, full([H], 1) in x's dtype, which rounds
  // n * 1 = n as the cast rounds n. Quiet where a multiply by a tensor reads the cast: that is
  // the weighted form, matched (or declined, with its own reason) at the multiply.
  std::optional<RmsNormMatch> MatchUnitWeight(ir::Node* cast, MatchNotes& notes) const {
    MatchNotes quiet;
    std::optional<RmsCore> core = MatchRmsCore(cast->operand(0), quiet, f32_residual);
    if (!core) return std::nullopt;
    const auto multiplied_by_tensor = [](const ir::Value* v) {
      return std::any_of(v->uses().begin(), v->uses().end(), [](const ir::Use& u) {
        return !u.is_return() && u.user->kind() == ir::OpKind::kMul && u.user->num_operands() == 2;
      });
    };
    // A multiply by a tensor is the weighted form (one by a scalar is no weight), also through
    // the cast widening the value back to f32 for an f32 weight.
    if (multiplied_by_tensor(cast->result())) return std::nullopt;
    for (const ir::Use& u : cast->result()->uses()) {
      if (!u.is_return() && IsWideningCast(u.user) && multiplied_by_tensor(u.user->result())) return std::nullopt;
    }
    RmsNormMatch m;
    m.root = cast;
    m.x = core->x;
    m.eps = core->eps;
    m.input_cast = core->input_cast;
    m.unit_weight = true;
    m.f32_sum = core->f32_sum;
    m.residual = core->residual;
    m.residual_cast = core->residual_cast;
    m.rounding.norm_input_f32 = m.f32_sum != nullptr;
    m.rounding.residual_out_f32 = core->residual_out_f32;
    m.chain = core->nodes;
    m.chain.push_back(cast);
    if (m.x->type().rank() < 1 || !m.x->type().shape.back().is_const()) {
      notes.Decline("the norm multiplies by no weight and its hidden size is not a constant: "
                    "no unit weight can be made for it");
      return std::nullopt;
    }
    return Finish(std::move(m), notes);
  }

  // The folded op must give the root's type, with a weight of shape [H]: x's dtype, or f32 where
  // the weight multiply's f32 product is the result itself, with no cast back (FlashInfer's
  // fusion tests' reference; a cast back is matched at the cast): y unrounded, rounding
  // norm_out_f32.
  bool ResultTypeMatches(RmsNormMatch& m, MatchNotes& notes) const {
    const ir::TensorType& x = m.x->type();
    const ir::TensorType w = WeightType(m);
    if (x.rank() < 1 || w.rank() != 1 || !(w.shape[0] == x.shape.back())) {
      notes.Decline(StrCat("the weight ", w.ToString(), " is not one value per column of ",
                           x.ToString()));
      return false;
    }
    const auto folded_type_matches = [&] {
      StatusOr<std::vector<ir::TensorType>> inferred =
          m.f32_sum ? ir::InferResultTypes("fused_add_rms_norm", {x, m.residual->type(), w}, Attrs(m))
                    : ir::InferResultTypes("rms_norm", {x, w}, Attrs(m));
      return inferred.ok() && !inferred->empty() && (*inferred)[0] == m.root->result()->type();
    };
    if (folded_type_matches()) return true;
    // A chain whose only user is a cast is visited again at that cast; stay quiet here.
    if (CastFollows(m.root)) return false;
    if (m.root->op() == "mul" && m.root->result()->dtype() == DType::kF32 && IsHalfType(x.dtype)) {
      if (!norm_out_f32) {
        notes.Decline(StrCat("the norm's result ", Ref(m.root->result()), " is f32: the target's fused op and "
                             "norm kernels give it in the activation dtype, ", DTypeName(x.dtype)));
        return false;
      }
      m.rounding.norm_out_f32 = true;
      if (folded_type_matches()) return true;
      m.rounding.norm_out_f32 = false;
    }
    notes.Decline("the result dtype differs from the input's");
    return false;
  }

  // Whether the root's only user is a cast: the chain is then visited again at that cast.
  static bool CastFollows(const ir::Node* root) {
    const ir::Value* out = root->result();
    return out->num_uses() == 1 && !out->uses()[0].is_return() && out->uses()[0].user->op() == "cast";
  }

  // The weight's type: w's, or the unit weight's [H] in x's dtype.
  static ir::TensorType WeightType(const RmsNormMatch& m) {
    if (!m.unit_weight) return m.weight.w->type();
    return ir::TensorType{m.x->dtype(), {m.x->type().shape.back()}};
  }

  // The weight the folded norm reads: w, or a unit weight made just before the norm.
  static StatusOr<ir::Value*> WeightOf(const RmsNormMatch& m, Rewriter& rw) {
    if (!m.unit_weight) return m.weight.w;
    const ir::TensorType w = WeightType(m);
    ir::AttrMap attrs{{"shape", ir::Attr::List({ir::Attr::Int(w.shape[0].value)})},
                      {"value", ir::Attr::Int(1)},
                      {"dtype", ir::Attr::Name(std::string(DTypeName(w.dtype)))}};
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * full, rw.Create("full", {}, std::move(attrs),
                                                       {m.root->result()->name() + ".unit_weight"}));
    return full->result();
  }

  static ir::AttrMap Attrs(const RmsNormMatch& m) {
    ir::AttrMap attrs{{"eps", ir::Attr::Float(m.eps)}};
    if (m.weight.weight_bias != 0.0) attrs["weight_bias"] = ir::Attr::Float(m.weight.weight_bias);
    return ir::WithRounding(std::move(attrs), m.rounding);
  }

  Status Rewrite(const RmsNormMatch& m, Rewriter& rw) const override {
    const std::string name = m.root->result()->name();
    if (m.f32_sum) return RewriteFusedAdd(m, rw);
    rw.SetInsertionPointBefore(m.root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * w, WeightOf(m, rw));
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * norm, rw.Create("rms_norm", {m.x, w}, Attrs(m), {name}));
    rw.ReplaceAllUsesWith(m.root->result(), norm->result());
    std::vector<ir::Node*> absorbed = m.chain;
    absorbed.push_back(m.input_cast);
    absorbed.insert(absorbed.end(), m.weight.nodes.begin(), m.weight.nodes.end());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(absorbed));
    return rw.RestoreNames(norm, {name}).status();
  }

  // The fused-add form: fused_add_rms_norm(x, residual, w) {rounding = [norm_input_f32, ..]};
  // y replaces the root, residual_out the cast of the f32 sum back to x's dtype, or the f32 sum
  // itself where the graph keeps it (rounding residual_out_f32).
  static Status RewriteFusedAdd(const RmsNormMatch& m, Rewriter& rw) {
    const std::string y_name = m.root->result()->name();
    ir::Value* taken = m.residual_taken();
    const std::string h_name = taken ? taken->name() : m.f32_sum->result()->name() + ".h";
    rw.SetInsertionPoint(m.point);
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * w, WeightOf(m, rw));
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * fused,
                            rw.Create("fused_add_rms_norm", {m.x, m.residual, w}, Attrs(m),
                                      {y_name, h_name}));
    rw.ReplaceAllUsesWith(m.root->result(), fused->result(0));
    if (taken) {
      // The chain's own reads of the f32 sum go with the chain.
      const std::set<const ir::Node*> chain(m.chain.begin(), m.chain.end());
      rw.ReplaceUsesIf(taken, fused->result(1),
                       [&](const ir::Use& u) { return u.is_return() || chain.count(u.user) == 0; });
    }
    std::vector<ir::Node*> absorbed = m.chain;
    absorbed.push_back(m.residual_cast);
    absorbed.push_back(m.f32_sum);
    for (ir::Value* operand : m.f32_sum->operands()) {
      if (IsWideningCast(operand->producer())) absorbed.push_back(operand->producer());
    }
    absorbed.insert(absorbed.end(), m.weight.nodes.begin(), m.weight.nodes.end());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(absorbed));
    return rw.RestoreNames(fused, {y_name, h_name}).status();
  }
};

// ---------------------------------------------------------------- clamp pairs

// clamp(clamp(%x) {min = a}) {max = b} -> clamp(%x) {min = a, max = b}   (either order)
//
// torch's clamp(x, a, b) reaches a post-grad graph as clamp_min then clamp_max; the quant forms
// read one clamp. Numerics: exact for a <= b: max(min(x, b), a) = min(max(x, a), b) = clamp,
// NaN stays NaN either way, and a clamp keeps its operand's type, so nothing rounds between.
struct ClampPair final : Pattern {
  std::string_view name() const override { return "clamp_pair"; }
  int benefit() const override { return 11; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->kind() != ir::OpKind::kClamp) return false;
    ir::Node* inner = ProducedBy(root->operand(0), "clamp");
    if (inner == nullptr || !SoleUser(inner->result(), root)) return false;
    const ir::Node* lower = inner->attr("min") ? inner : root;
    const ir::Node* upper = lower == inner ? root : inner;
    // One bound each: the lower from one clamp, the upper from the other.
    if (!lower->attr("min") || lower->attr("max") || !upper->attr("max") || upper->attr("min"))
      return false;
    const std::optional<double> a = NumberAttr(lower, "min");
    const std::optional<double> b = NumberAttr(upper, "max");
    if (!a || !b || *a > *b) return false;
    const ir::Attr min = *lower->attr("min");
    const ir::Attr max = *upper->attr("max");
    rw.SetAttr(root, "min", min);
    rw.SetAttr(root, "max", max);
    rw.SetOperand(root, 0, inner->operand(0));
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead({inner}));
    return true;
  }
};

// ---------------------------------------------------------------- rsqrt as a power

// pow(%v) {exponent = -0.5} -> rsqrt(%v)
//
// Gemma 3n's and Gemma 4's RMSNorm write `x * torch.pow(mean_squared, -0.5)`. Numerics: exact.
// The op set defines pow -0.5 as 1 / sqrt(v), IEEE-rounded, as rsqrt (PyTorch's own special
// case of the exponent), so the norm forms read one op.
struct PowAsRsqrt final : Pattern {
  std::string_view name() const override { return "pow_as_rsqrt"; }
  int benefit() const override { return 12; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    // The exponent as the executors read it (as an f32).
    const std::optional<double> exponent = NumberAttr(root, "exponent");
    if (root->kind() != ir::OpKind::kPow || !exponent || float(*exponent) != -0.5f) return false;
    const std::string name = root->result()->name();
    rw.SetInsertionPointBefore(root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * rsqrt, rw.Create("rsqrt", {root->operand(0)}, {}, {name}));
    rw.ReplaceAllUsesWith(root->result(), rsqrt->result());
    TPFUSE_RETURN_IF_ERROR(rw.Erase(root));
    TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(rsqrt, {name}).status());
    return true;
  }
};

// ---------------------------------------------------------------- static FP8 quant

// [cast(y, f32)] -> div(., scale) | mul(., reciprocal(scale) | pow(scale, -1)) -> [clamp(+-448)]
//   -> cast(f8e4m3)  ->  quant_fp8(y, scale) {mode = "tensor", rounding}
//
// Numerics: exact. quant_fp8 mode tensor computes fp8(y * (1/scale)) with the reciprocal taken
// once in f32, which is what `mul(y, reciprocal(scale))` computes; the div form divides
// (rounding = ["scale_op_swapped"]). The widening cast is exact, and without the clamp the cast
// saturates at +-448 itself. A multiplier that is not the reciprocal of a scale (an inverse
// scale given as a parameter) does not fold: quant_fp8 would compute 1 / (1 / inv), which is
// not always inv.
struct DecomposedStaticQuant final : TypedPattern<ir::StaticQuantForm> {
  std::string_view name() const override { return "decomposed_static_quant"; }
  int benefit() const override { return 10; }

  std::optional<ir::StaticQuantForm> Match(ir::Node* root, MatchNotes& notes) const override {
    std::optional<ir::StaticQuantForm> form = ir::MatchStaticQuant(*root);
    if (!form || form->scalar) return std::nullopt;
    if (!form->clamp_is_fp8_range) {
      notes.Decline("the clamp bounds are not the FP8 e4m3 range +-448");
      return std::nullopt;
    }
    if (form->scale == nullptr) {
      notes.Decline("the multiplier is not the reciprocal of a scale (reciprocal(s) or "
                    "pow(s, -1)): quant_fp8 would round differently");
      return std::nullopt;
    }
    std::vector<const ir::Node*> chain = {form->scale_op};
    if (form->clamp) chain.push_back(form->clamp);
    chain.push_back(form->cast);
    for (size_t k = 0; k + 1 < chain.size(); ++k) {
      if (!SoleUser(chain[k]->result(), chain[k + 1])) {
        notes.Decline("an intermediate value has other uses");
        return std::nullopt;
      }
    }
    StatusOr<std::vector<ir::TensorType>> inferred = ir::InferResultTypes(
        "quant_fp8", {form->y->type(), form->scale->type()}, Attrs(*form));
    if (!inferred.ok() || inferred->size() != 1 || (*inferred)[0] != root->result()->type()) {
      notes.Decline("quant_fp8 does not take this input");
      return std::nullopt;
    }
    return form;
  }

  static ir::AttrMap Attrs(const ir::StaticQuantForm& form) {
    RoundingRecipe rounding;
    rounding.scale_op_swapped = form.divides;
    return ir::WithRounding({{"mode", ir::Attr::Str("tensor")}}, rounding);
  }

  Status Rewrite(const ir::StaticQuantForm& m, Rewriter& rw) const override {
    ir::Node* root = const_cast<ir::Node*>(m.cast);
    const std::string name = root->result()->name();
    rw.SetInsertionPointBefore(root);
    TPFUSE_ASSIGN_OR_RETURN(
        ir::Node * quant,
        rw.Create("quant_fp8",
                  {const_cast<ir::Value*>(m.y), const_cast<ir::Value*>(m.scale)}, Attrs(m),
                  {name}));
    rw.ReplaceAllUsesWith(root->result(), quant->result());
    std::vector<ir::Node*> dead = {root, const_cast<ir::Node*>(m.scale_op),
                                   const_cast<ir::Node*>(m.clamp),
                                   const_cast<ir::Node*>(m.widening)};
    if (m.inv) dead.push_back(m.inv->producer());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(dead));
    return rw.RestoreNames(quant, {name}).status();
  }
};

// ---------------------------------------------------------------- dynamic FP8 quant

// The per-token or per-group FP8 quantization written in torch ops (vLLM's and DeepSeek's
// reference forms, vLLM's QuantFP8 torch forms), with d = cast(y, f32) ([T, H], token) or
// view(d, [T, H/g, g]) (group), the view and the cast in either order (a 16-bit y divided by
// the f32 scale reads the cast explicit_promotion writes):
//   A = amax(abs(d), dim = -1, keepdim), or amax(abs(y)) [-> view(., [..., 1])] -> cast(., f32)
//       (the maximum of magnitudes is exact in either dtype: x.abs().max(dim=-1) of vLLM)
//   s = div(clamp(A, min = 1e-10)) {scalar = 448}                       (floor before: default)
//     | clamp(div(A) {scalar = 448}, min = 1 / (448 * 512))             (scale_floor_after_div)
//       [-> [abs ->] clamp(min = 1e-10)] -> log2 -> ceil -> exp2       (UE8M0, floor before only;
//                  the clamp: rounding ue8m0_floor, vLLM's; with it the floor before may be absent)
//     | clamp(exp2(ceil(log2(div([clamp(]A[, min = 1e-10)]) {scalar = 448}))),
//             min = 1 / (448 * 512))
//                  (UE8M0 floored after the rounding, vLLM's QuantFP8 form: scale_floor_after_div;
//                  the floor of the amax changes nothing there)
//   (s computed on [..., 1], or on the reduced shape [...] and then viewed to [..., 1], after
//    an amax without keepdim: FlashInfer's group reference)
//   q = cast(clamp(div(d, s) | mul(d, reciprocal(s)), +-448), f8e4m3)
//   ->  q, s = quant_fp8(y) {mode = "token" | "group", group_size, [scale_fmt = "ue8m0"]}
//
// Numerics: exact. quant_fp8 computes s = max(amax, 1e-10f) / 448 or max(amax / 448, f32(1 /
// 229376)) (DynamicScaleOfAmax: the IEEE quotient) and y / s, or y * (1/s) with the reciprocal
// once in f32 (rounding scale_op_swapped). UE8M0's exp2(ceil(log2(s))) is its round-up to a
// power of two for every s a bf16 or f16 activation gives: such an s is a power of two exactly
// or lies >= 1/1792 (relative) from one, so no f32 log2 rounds it onto an integer (checked
// exhaustively on the oracle's ops by the canonicalize tests, on torch's CPU ops by
// python/tests/test_ue8m0_torch.py). amax * (1/448) does not fold: f32(1/448) is not 1/448.
// Inf and NaN too: quant_fp8's amax lets a NaN win as torch's does, an inf or NaN amax gives an
// inf or NaN scale (DynamicScaleOfAmax), and y is divided by such a scale as the form divides.
struct DynamicQuantMatch {
  ir::Node* cast = nullptr;       // the cast to f8e4m3
  ir::Node* clamp = nullptr;      // null when absent
  ir::Node* scale_op = nullptr;   // div(d, s) or mul(d, inv)
  ir::Node* inv = nullptr;        // reciprocal(s) / pow(s, -1) (mul form)
  ir::Node* group_view = nullptr; // view(., [..., H/g, g]) (group form)
  ir::Value* y = nullptr;         // [T, H] or [B, S, H], bf16 or f16
  ir::Value* s = nullptr;         // the scale the graph uses: [..., 1] or [..., H/g, 1]
  ir::Value* s_reduced = nullptr; // the scale before its view to s ([...]), when so computed
  std::vector<ir::Node*> scale_chain;  // abs .. s's producer, producers first
  std::vector<ir::Node*> absorbed;     // d's cast and view, erased if they end unused
  int64_t group = 0;              // 0: per token
  bool ue8m0 = false;
  bool multiplies = false;
  bool floor_after_div = false;   // clamp(amax / 448, min = 1 / (448 * 512))
  bool ue8m0_floor = false;       // exp2(ceil(log2(clamp([abs](s), min = 1e-10))))
  ir::TensorType rows;          // y as quant_fp8 reads it: [rows, H]
  ir::TensorType scale_type;    // quant_fp8's s for that input
};

// A view [..., H] -> [..., H/g, g] whose leading dims hold the same rows (the same dims, or
// flattened: x.view(-1, H/g, g) of a [B, S, H] x).
bool IsGroupView(const ir::Node* p) {
  if (p->op() != "view" || p->num_operands() != 1) return false;
  const ir::TensorType& in = p->operand(0)->type();
  const ir::TensorType& out = p->result()->type();
  if (in.rank() < 2 || out.rank() < 3) return false;
  const ir::Dim& hidden = in.shape.back();
  const ir::Dim& groups = out.shape[size_t(out.rank() - 2)];
  const ir::Dim& size = out.shape.back();
  if (!hidden.is_const() || !groups.is_const() || !size.is_const() ||
      groups.value * size.value != hidden.value)
    return false;
  return ir::SameElementCount({in.shape.begin(), in.shape.end() - 1},
                              {out.shape.begin(), out.shape.end() - 2});
}

// The cast / view between y and the dividend d: a widening cast, and for the group form one view
// [..., H] -> [..., H/g, g], in either order. y is [T, H] or, with more leading dims, [B, S, H]
// (quant_fp8 then reads it as a [rows, H] view).
bool PeelDividend(ir::Value* d, DynamicQuantMatch& m) {
  ir::Value* v = d;
  bool cast_seen = false;
  for (int hop = 0; hop < 2; ++hop) {
    ir::Node* p = v->producer();
    if (p == nullptr) break;
    if (!cast_seen && IsWideningCast(p)) {
      cast_seen = true;
    } else if (m.group_view == nullptr && IsGroupView(p)) {
      m.group_view = p;
    } else {
      break;
    }
    m.absorbed.push_back(p);
    v = p->operand(0);
  }
  const int rank = v->type().rank();
  if (!cast_seen || rank < 2) return false;
  if (m.group_view == nullptr) {
    if (d->type().rank() != rank) return false;
  } else {
    m.group = m.group_view->result()->shape().back().value;  // [..., H/g, g]
  }
  m.y = v;
  return true;
}

// A view [...] -> [..., 1] that keeps the leading dims: the reduced dim put back after an amax
// without keepdim (x.unsqueeze(-1)).
bool IsUnsqueezeOfLastDim(const ir::Node* p) {
  if (p == nullptr || p->op() != "view" || p->num_operands() != 1) return false;
  const ir::TensorType& in = p->operand(0)->type();
  const ir::TensorType& out = p->result()->type();
  if (out.rank() != in.rank() + 1 || !(out.shape.back() == ir::Dim::Const(1))) return false;
  for (int i = 0; i < in.rank(); ++i)
    if (!(out.shape[size_t(i)] == in.shape[size_t(i)])) return false;
  return true;
}

// At most one widening cast and one unsqueeze of the last dim (when `unsqueeze_allowed`) right
// above `v`, in either order: the nodes, consumers first, and the value they read.
struct CastAndUnsqueeze {
  ir::Node* cast = nullptr;
  ir::Node* unsqueeze = nullptr;
  std::vector<ir::Node*> nodes;
  const ir::Value* under = nullptr;
};
CastAndUnsqueeze PeelCastAndUnsqueeze(const ir::Value* v, bool unsqueeze_allowed) {
  CastAndUnsqueeze peeled;
  for (int hop = 0; hop < 2; ++hop) {
    ir::Node* p = v->producer();
    if (peeled.cast == nullptr && IsWideningCast(p)) {
      peeled.cast = p;
    } else if (peeled.unsqueeze == nullptr && unsqueeze_allowed && IsUnsqueezeOfLastDim(p)) {
      peeled.unsqueeze = p;
    } else {
      break;
    }
    peeled.nodes.push_back(p);
    v = p->operand(0);
  }
  peeled.under = v;
  return peeled;
}

// The amax links of a dynamic scale, producers first, ending at the value the scale's
// arithmetic reads: abs -> amax over the last dim of d, or of the 16-bit value d widens from
// (the same maximum), then at most one widening cast and one view putting the reduced dim back
// ([...] -> [..., 1], after an amax without keepdim), in either order. `unsqueezed_after`: the
// scale's arithmetic ran on the reduced shape and the view puts the dim back after it
// (FlashInfer's group reference), so no view may follow the amax and the amax keeps no dim.
// nullopt: no abs -> amax there at all; empty: an amax of the right operand over another dim,
// or the reduced dim not put back exactly once.
std::optional<std::vector<ir::Node*>> MatchScaleAmax(const ir::Value* v, const ir::Value* d,
                                                     bool unsqueezed_after) {
  const CastAndUnsqueeze tail = PeelCastAndUnsqueeze(v, !unsqueezed_after);
  ir::Node* amax = ProducedBy(tail.under, "amax");
  ir::Node* abs = amax ? ProducedBy(amax->operand(0), "abs") : nullptr;
  if (abs == nullptr) return std::nullopt;
  const ir::Value* a = abs->operand(0);
  const ir::Node* widen = d->producer();
  if (!(a == d || (IsWideningCast(widen) && widen->operand(0) == a))) return std::nullopt;
  const int rank = a->type().rank();
  const std::optional<double> dim = NumberAttr(amax, "dim", -1.0);
  const std::optional<bool> keepdim = BoolAttr(amax, "keepdim", false);
  if (!dim || !keepdim || (*dim != -1.0 && *dim != double(rank - 1)) ||
      *keepdim == (tail.unsqueeze != nullptr || unsqueezed_after))
    return std::vector<ir::Node*>{};
  std::vector<ir::Node*> links = {abs, amax};
  links.insert(links.end(), tail.nodes.rbegin(), tail.nodes.rend());
  return links;
}

struct DecomposedDynamicQuant final : TypedPattern<DynamicQuantMatch> {
  std::string_view name() const override { return "decomposed_dynamic_quant"; }
  // Before the static quant's pattern: at one row (a decode step of batch 1) a per-token scale
  // has one element, and the static form, whose scale may be any one-element value, matches
  // it too; that quant_fp8 would read a scale computed from its own input, which no fused op
  // takes.
  int benefit() const override { return 11; }

  std::optional<DynamicQuantMatch> Match(ir::Node* root, MatchNotes& notes) const override {
    if (root->op() != "cast" || TextAttr(root, "to") != "f8e4m3") return std::nullopt;
    DynamicQuantMatch m;
    m.cast = root;
    ir::Value* v = root->operand(0);
    if (ir::Node* clamp = ProducedBy(v, "clamp")) {
      m.clamp = clamp;
      v = clamp->operand(0);
    }
    ir::Node* op = v->producer();
    if (op == nullptr || op->num_operands() != 2 || (op->op() != "div" && op->op() != "mul"))
      return std::nullopt;
    m.scale_op = op;
    ir::Value* d = op->operand(0);
    if (op->op() == "div") {
      m.s = op->operand(1);
    } else {
      m.multiplies = true;
      for (int i : {0, 1}) {
        const ir::Value* s = ir::ReciprocalOf(op->operand(i));
        if (s != nullptr && op->operand(i)->producer() != nullptr &&
            op->operand(i)->type().rank() >= 2) {
          m.inv = op->operand(i)->producer();
          m.s = const_cast<ir::Value*>(s);
          d = op->operand(1 - i);
        }
      }
      if (m.s == nullptr) return std::nullopt;
    }
    // A rank-0 scale is the static form's; a scale of another shape than [..., 1] against d
    // would broadcast d up.
    if (m.s->type().rank() < 2 || !(op->result()->shape() == d->shape()) || !PeelDividend(d, m))
      return std::nullopt;
    // The scale: [exp2(ceil(log2(.)))] of div(clamp(A), 448) or clamp(div(A, 448)), or the
    // floor after the division taken after the rounding: clamp(exp2(ceil(log2(div(A, 448))))),
    // computed on [..., 1] or on the reduced shape and then viewed to it; a 16-bit scale is
    // widened for the division (its arithmetic ran in 16 bits: declined below, by its dtype).
    const CastAndUnsqueeze top = PeelCastAndUnsqueeze(m.s, /*unsqueeze_allowed=*/true);
    ir::Node* const unsqueeze = top.unsqueeze;
    const ir::Value* s = top.under;
    ir::Node* floor_after_round = ProducedBy(s, "clamp");
    if (floor_after_round != nullptr && floor_after_round->num_operands() == 1 &&
        ProducedBy(floor_after_round->operand(0), "exp2") != nullptr) {
      s = floor_after_round->operand(0);
    } else {
      floor_after_round = nullptr;
    }
    if (ir::Node* exp2 = ProducedBy(s, "exp2")) {
      ir::Node* ceil = ProducedBy(exp2->operand(0), "ceil");
      ir::Node* log2 = ceil ? ProducedBy(ceil->operand(0), "log2") : nullptr;
      if (log2 == nullptr) return std::nullopt;
      m.ue8m0 = true;
      m.scale_chain = {log2, ceil, exp2};
      s = log2->operand(0);
      // vLLM's per-group kernel rounds max(|s|, 1e-10) up (s is positive: the abs changes
      // nothing): clamp(min = 1e-10) [of abs] of the scale div([clamp(]A[)], 448). With this
      // floor the one before the division changes nothing (both give 1e-10 below amax 4.48e-8),
      // so it may be absent.
      ir::Node* floor = ProducedBy(s, "clamp");
      if (floor != nullptr && NumberAttr(floor, "min") == 1e-10 && floor->attr("max") == nullptr) {
        ir::Node* abs = ProducedBy(floor->operand(0), "abs");
        ir::Value* inner = abs ? abs->operand(0) : floor->operand(0);
        ir::Node* div = ProducedBy(inner, "div");
        if (div != nullptr && div->num_operands() == 1) {
          m.ue8m0_floor = true;
          m.scale_chain.insert(m.scale_chain.begin(), floor);
          if (abs) m.scale_chain.insert(m.scale_chain.begin(), abs);
          s = inner;
        }
      }
    }
    ir::Node* last = s->producer();
    if (last == nullptr || last->num_operands() != 1) return std::nullopt;
    ir::Node* step = last;
    ir::Node* floor = ProducedBy(step->operand(0), "clamp");
    bool floor_before_round = false;  // clamp(div(A, 448)) rounded: no fused quant's order
    ir::Node* amax_floor = nullptr;   // clamp(A, min = 1e-10) under a floor after the rounding
    if (floor_after_round != nullptr) {
      // The rounding reads the quotient itself; the floor is the one after it.
      m.floor_after_div = true;
      floor = floor_after_round;
      if (last->op() == "clamp") {
        if (ProducedBy(last->operand(0), "div") != nullptr)
          notes.Decline("the scale is floored both before and after its power-of-two rounding");
        return std::nullopt;
      }
      // A floor of the amax before the division changes nothing here: every amax below 1e-10
      // rounds far below the floor after (DynamicScaleOf takes the quotient so).
      ir::Node* pre = ProducedBy(step->operand(0), "clamp");
      if (pre != nullptr && NumberAttr(pre, "min") == 1e-10 && pre->attr("max") == nullptr)
        amax_floor = pre;
    } else if (last->op() == "clamp") {  // the floor after the division
      m.floor_after_div = true;
      floor_before_round = m.ue8m0;
      floor = last;
      step = floor->operand(0)->producer();
      if (step == nullptr || step->num_operands() != 1) return std::nullopt;
    }
    // Without a floor before the division only the ue8m0_floor form is the fused quant's.
    if (floor == nullptr && !m.ue8m0_floor) return std::nullopt;
    const ir::Value* amax_value =
        (amax_floor ? amax_floor : m.floor_after_div || floor == nullptr ? step : floor)->operand(0);
    std::optional<std::vector<ir::Node*>> amax_links =
        MatchScaleAmax(amax_value, d, unsqueeze != nullptr);
    if (!amax_links) return std::nullopt;
    // From here the shape is the dynamic quant's: say why it does not fold.
    if (amax_links->empty()) {
      notes.Decline("the amax is not over the last dim with keepdim (or viewed back to it)");
      return std::nullopt;
    }
    if (amax_value->dtype() != DType::kF32) {
      notes.Decline("the scale is computed in " + std::string(DTypeName(amax_value->dtype())) +
                    ", not f32");
      return std::nullopt;
    }
    // (No floor at all only in the ue8m0_floor form, checked above.)
    const std::optional<double> min = floor ? NumberAttr(floor, "min") : std::nullopt;
    const bool floor_ok =
        floor == nullptr ||
        (min && floor->attr("max") == nullptr &&
         (m.floor_after_div ? float(*min) == kScaleFloorAfterDiv : *min == 1e-10));
    if (!floor_ok) {
      notes.Decline(m.floor_after_div
                        ? "the scale's floor after the division is not clamp(min = 1 / (448 * "
                          "512)), the fused quant's"
                        : "the amax floor is not clamp(min = 1e-10), the fused quant's");
      return std::nullopt;
    }
    if (step->op() == "mul" && ScalarOperand(step)) {
      // NOTE: amax * f32(1/448) is not amax / 448 for every amax (f32(1/448) is not 1/448),
      // and the fused op divides (QuotientByReciprocal is the IEEE quotient).
      notes.Decline("the scale is amax * (1/448): the fused quant divides amax / 448, which "
                    "rounds differently for some amax");
      return std::nullopt;
    }
    if (step->op() != "div" || ScalarOperand(step) != 448.0) {
      notes.Decline("the scale is not amax / 448");
      return std::nullopt;
    }
    if (floor_before_round) {
      notes.Decline("the scale is floored after the division and then rounded to a power of "
                    "two: the fused quant floors such scales before the division or after the "
                    "rounding");
      return std::nullopt;
    }
    if (m.clamp && (NumberAttr(m.clamp, "min") != -448.0 || NumberAttr(m.clamp, "max") != 448.0)) {
      notes.Decline("the clamp bounds are not the FP8 e4m3 range +-448");
      return std::nullopt;
    }
    std::vector<ir::Node*> arithmetic = {floor, step};
    if (m.floor_after_div) std::swap(arithmetic[0], arithmetic[1]);
    if (floor == nullptr || floor_after_round != nullptr) arithmetic = {step};
    if (amax_floor != nullptr) arithmetic = {amax_floor, step};
    std::vector<ir::Node*> chain = *amax_links;
    chain.insert(chain.end(), arithmetic.begin(), arithmetic.end());
    m.scale_chain.insert(m.scale_chain.begin(), chain.begin(), chain.end());
    if (floor_after_round != nullptr) m.scale_chain.push_back(floor_after_round);
    m.scale_chain.insert(m.scale_chain.end(), top.nodes.rbegin(), top.nodes.rend());
    // Every link but the last feeds only the next; the scale itself may have any uses, also
    // where it is computed on the reduced shape (FlashInfer returns s.squeeze(-1)).
    if (unsqueeze != nullptr) m.s_reduced = unsqueeze->operand(0);
    for (size_t k = 0; k + 1 < m.scale_chain.size(); ++k) {
      if (m.scale_chain[k]->result() == m.s_reduced) continue;
      if (!SoleUser(m.scale_chain[k]->result(), m.scale_chain[k + 1])) {
        notes.Decline("an intermediate value of the scale has other uses");
        return std::nullopt;
      }
    }
    std::vector<ir::Node*> q_chain = {m.scale_op};
    if (m.clamp) q_chain.push_back(m.clamp);
    q_chain.push_back(root);
    for (size_t k = 0; k + 1 < q_chain.size(); ++k) {
      if (!SoleUser(q_chain[k]->result(), q_chain[k + 1])) {
        notes.Decline("an intermediate value has other uses");
        return std::nullopt;
      }
    }
    if (m.inv && !SoleUser(m.inv->result(), m.scale_op)) {
      notes.Decline("the reciprocal of the scale has other uses");
      return std::nullopt;
    }
    StatusOr<ir::TensorType> rows = RowsView(m.y->type());
    if (!rows.ok()) {
      notes.Decline("the quantized value " + Ref(m.y) + ": " + rows.status().message());
      return std::nullopt;
    }
    StatusOr<std::vector<ir::TensorType>> inferred =
        ir::InferResultTypes("quant_fp8", {*rows}, Attrs(m));
    if (!inferred.ok() || inferred->size() != 2) {
      notes.Decline("quant_fp8 does not take this input");
      return std::nullopt;
    }
    m.rows = *rows;
    m.scale_type = (*inferred)[1];
    return m;
  }

  static ir::AttrMap Attrs(const DynamicQuantMatch& m) {
    ir::AttrMap attrs = {{"mode", ir::Attr::Str(m.group ? "group" : "token")}};
    if (m.group) attrs["group_size"] = ir::Attr::Int(m.group);
    if (m.ue8m0) attrs["scale_fmt"] = ir::Attr::Str("ue8m0");
    RoundingRecipe rounding;
    rounding.scale_op_swapped = m.multiplies;
    rounding.scale_floor_after_div = m.floor_after_div;
    rounding.ue8m0_floor = m.ue8m0_floor;
    return ir::WithRounding(std::move(attrs), rounding);
  }

  Status Rewrite(const DynamicQuantMatch& m, Rewriter& rw) const override {
    const std::string q_name = m.cast->result()->name();
    const std::string s_name = m.s->name();
    // Before the first use of q or s: the graph may use s (a view for the GEMM) before q.
    const ir::Graph& graph = *m.cast->graph();
    ir::Node* first = m.cast;
    for (const ir::Value* scale : {m.s, m.s_reduced}) {
      if (scale == nullptr) continue;
      for (const ir::Use& u : scale->uses()) {
        if (!u.is_return() && graph.IndexOf(u.user) < graph.IndexOf(first)) first = u.user;
      }
    }
    rw.SetInsertionPointBefore(first);
    const ir::TensorType& rows = m.rows;
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * y, rw.CreateView(m.y, rows, m.y->name() + ".rows"));
    // q and s in the shapes the graph computed in: q as the cast gave it ([..., H/g, g] in the
    // group form, [B, S, H] for rank-3 y), s as the graph's scale ([..., 1]). A result that is
    // viewed back is named "<name>.rows" and its view takes the graph's name, so that the value
    // named after a graph value always has that value's shape.
    const bool view_q = !(m.cast->result()->shape() == rows.shape);
    ir::AttrMap attrs = Attrs(m);
    const bool view_s = !(m.s->shape() == m.scale_type.shape);
    // The scale on the reduced shape is quant_fp8's s itself when it has that shape.
    const bool reduced_is_s = m.s_reduced && m.s_reduced->shape() == m.scale_type.shape;
    const std::string reduced_name = m.s_reduced ? m.s_reduced->name() : "";
    const std::string q_flat = view_q ? q_name + ".rows" : q_name;
    const std::string s_flat = reduced_is_s ? reduced_name : view_s ? s_name + ".rows" : s_name;
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * quant,
                            rw.Create("quant_fp8", {y}, std::move(attrs), {q_flat, s_flat}));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * q,
                            rw.CreateView(quant->result(0), m.cast->result()->type(), q_name));
    TPFUSE_ASSIGN_OR_RETURN(ir::Value * s, rw.CreateView(quant->result(1), m.s->type(), s_name));
    rw.ReplaceAllUsesWith(m.cast->result(), q);
    rw.ReplaceAllUsesWith(m.s, s);
    ir::Value* s_reduced = nullptr;
    if (m.s_reduced != nullptr) {
      TPFUSE_ASSIGN_OR_RETURN(s_reduced,
                              rw.CreateView(quant->result(1), m.s_reduced->type(), reduced_name));
      rw.ReplaceAllUsesWith(m.s_reduced, s_reduced);
    }
    std::vector<ir::Node*> dead = {m.cast, m.clamp, m.scale_op, m.inv};
    dead.insert(dead.end(), m.scale_chain.rbegin(), m.scale_chain.rend());
    dead.insert(dead.end(), m.absorbed.begin(), m.absorbed.end());
    dead.erase(std::remove(dead.begin(), dead.end(), nullptr), dead.end());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(dead));
    if (view_q) TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(q->producer(), {q_name}).status());
    if (view_s) TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(s->producer(), {s_name}).status());
    if (m.s_reduced != nullptr && !reduced_is_s)
      TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(s_reduced->producer(), {reduced_name}).status());
    return rw.RestoreNames(quant, {q_flat, s_flat}).status();
  }
};

// ---------------------------------------------------------------- add operand order

std::pair<const ir::Value*, bool> ThroughViewsScalesAndBiases(const ir::Value* v);

// The sum an add of a tensor of the same type adds to (a per-token bias, which the fused op
// takes over as spec.bias_per_token: BiasOfSum): the operand that is an all_reduce's sum (through
// views, scales and biases) with the other its bias; null otherwise.
const ir::Value* PerTokenBiasedSum(const ir::Node* add) {
  if (add == nullptr || add->kind() != ir::OpKind::kAdd || add->num_operands() != 2) return nullptr;
  for (const ir::Value* o : add->operands()) {
    const RowBias biased = BiasOfSum(add, o);
    if (biased.bias != nullptr && biased.bias->type() == o->type() &&
        ProducedBy(ThroughViewsScalesAndBiases(o).first, "all_reduce") != nullptr)
      return o;
  }
  return nullptr;
}

// `v` through views, scales by a constant and row biases (RowBiasOf: a row-parallel layer's bias
// added to its sum), and whether a scale or a bias was passed (`stepped`).
std::pair<const ir::Value*, bool> ThroughViewsScalesAndBiases(const ir::Value* v) {
  bool stepped = false;
  while (true) {
    if (ir::Node* view = ProducedBy(v, "view")) {
      v = view->operand(0);
    } else if (const RowBias biased = RowBiasOf(v->producer()); biased.bias != nullptr) {
      v = biased.sum;
      stepped = true;
    } else if (SumScaleOf(v->producer())) {
      v = v->producer()->operand(0);
      stepped = true;
    } else {
      return {v, stepped};
    }
  }
}

// Whether `v` is an all_reduce result, or the sum of two (each through views, scales by a
// constant and row biases: Granite-MoE's `moe + shared_mlp`, Falcon-H1's scaled mixers), which
// the fused op takes over as its x (spec.second_sum; a biased one only ranks as such: the fused
// op adds a bias to one sum).
bool IsAllReduceSum(const ir::Value* v) {
  if (ProducedBy(v, "all_reduce")) return true;
  const ir::Node* add = ProducedBy(v, "add");
  if (add == nullptr || add->num_operands() != 2 || add->attr("scalar")) return false;
  return std::all_of(add->operands().begin(), add->operands().end(), [](const ir::Value* o) {
    return ProducedBy(ThroughViewsScalesAndBiases(o).first, "all_reduce") != nullptr;
  });
}

// How strongly a value is "the activation" of an add: the all_reduce result (through views), or
// the sum of two, first, then anything computed, then parameters. Views keep the rank of what
// they read; a scale by a constant (`mul(., scalar)`, Granite's `out * multiplier`) or a row bias
// (`out + bias`), which the fused op takes over only as its x, keeps it too and ranks just above
// it, so a scaled or biased sum or x comes first. A tensor added to an all_reduce's sum (a bias
// per token, PerTokenBiasedSum) ranks just above the other computed values and below every sum:
// `residual + (a + t)` puts the biased sum first, and `(a1 + residual) + a2` keeps a2 first
// (the second sum into the residual, which fuses both all_reduces).
int ActivationRank(const ir::Value* v) {
  const auto [source, stepped] = ThroughViewsScalesAndBiases(v);
  const int base = IsAllReduceSum(source) ? 2 : source->is_param() ? 0 : 1;
  const bool biased_per_token = base == 1 && PerTokenBiasedSum(source->producer()) != nullptr;
  return 2 * base + int(stepped || biased_per_token);
}

// add(%res, %ar) -> add(%ar, %res): the all_reduce-derived operand first
// fused_add_rms_norm(%res, %ar, %w) -> fused_add_rms_norm(%ar, %res, %w)
//
// The one home of add operand order: fuse_allreduce_epilogue finds the all_reduce as x only.
// Numerics: exact. The sum is commutative (x + residual is one f32 add, then rounded).
struct AddOperandOrder final : Pattern {
  std::string_view name() const override { return "add_operand_order"; }
  int benefit() const override { return 5; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    const bool add = root->op() == "add" && root->num_operands() == 2 && !root->attr("scalar");
    if (!add && root->kind() != ir::OpKind::kFusedAddRmsNorm) return false;
    ir::Value* a = root->operand(0);
    ir::Value* b = root->operand(1);
    // Only same-typed operands: broadcasting adds keep the order the op defines.
    if (a->type() != b->type() || ActivationRank(b) <= ActivationRank(a)) return false;
    rw.SetOperand(root, 0, b);
    rw.SetOperand(root, 1, a);
    return true;
  }
};

// ---------------------------------------------------------------- residual add in f32

// cast(add(cast(a, f32), cast(b, f32)), half) -> add(a, b)   (a, b of that half type)
//
// Numerics: exact. A half-precision add computes the f32 sum and rounds once, as the cast does.
struct F32AddOfHalves final : Pattern {
  std::string_view name() const override { return "f32_add_of_halves"; }
  int benefit() const override { return 6; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->kind() != ir::OpKind::kCast || !IsHalfType(root->result()->dtype())) return false;
    std::optional<F32Sum> sum = MatchF32Sum(root->operand(0));
    if (!sum || !SoleUser(sum->add->result(), root)) return false;
    if (sum->x->dtype() != root->result()->dtype() || sum->residual->dtype() != sum->x->dtype())
      return false;
    const std::string name = root->result()->name();
    rw.SetInsertionPointBefore(root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * add, rw.Create("add", {sum->x, sum->residual}, {}, {name}));
    rw.ReplaceAllUsesWith(root->result(), add->result());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead({root, sum->add, sum->add->operand(0)->producer(),
                                         sum->add->operand(1)->producer()}));
    TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(add, {name}).status());
    return true;
  }
};

// ---------------------------------------------------------------- Gemma's weight

// rms_norm(x, add(w | cast(w, f32)) {scalar = b}) -> rms_norm(x, w) {weight_bias = b}
// (fused_add_rms_norm alike; also a bare widening cast of the weight)
//
// Numerics: exact. The norm adds weight_bias in f32, or in the weight's dtype
// (rounding weight_bias_in_weight_dtype) when the graph's add rounds to it.
struct NormWeightBias final : Pattern {
  std::string_view name() const override { return "norm_weight_bias"; }
  int benefit() const override { return 5; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->kind() != ir::OpKind::kRmsNorm && root->kind() != ir::OpKind::kFusedAddRmsNorm)
      return false;
    const int wi = root->kind() == ir::OpKind::kRmsNorm ? 1 : 2;
    if (NumberAttr(root, "weight_bias", 0.0) != 0.0) return false;
    NormWeight weight = LookThroughWeight(root->operand(wi));
    if (weight.nodes.empty()) return false;
    StatusOr<RoundingRecipe> rounding = ir::NormRoundingFromNode(*root);
    if (!rounding.ok()) return false;
    rounding->weight_bias_in_weight_dtype =
        weight.weight_bias != 0.0 && weight.bias_in_weight_dtype;
    ir::AttrMap attrs = ir::WithRounding(root->attrs(), *rounding);
    if (weight.weight_bias != 0.0) attrs["weight_bias"] = ir::Attr::Float(weight.weight_bias);
    for (const auto& [key, value] : attrs) rw.SetAttr(root, key, value);
    rw.SetOperand(root, wi, weight.w);
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(weight.nodes));
    return true;
  }
};

// ---------------------------------------------------------------- casts

// add | sub | mul | div(%a: bf16, %b: f32) -> the op of cast(%a) {to = f32} and %b (either
// operand; both for bf16 with f16): the IR's promotion written out, so that every form reads its
// casts. vLLM's RMSNorm adds the 16-bit residual to `x.to(f32)` and multiplies by the weight
// without casting either; TensorRT-LLM's reference multiplies the f32 norm by the bf16 weight.
//
// Numerics: exact. The op computes in f32 either way (InferBinary); widening is exact.
struct ExplicitPromotion final : Pattern {
  std::string_view name() const override { return "explicit_promotion"; }
  int benefit() const override { return 13; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    const ir::OpKind kind = root->kind();
    if ((kind != ir::OpKind::kAdd && kind != ir::OpKind::kSub && kind != ir::OpKind::kMul &&
         kind != ir::OpKind::kDiv) ||
        root->num_operands() != 2 || root->operand(0)->dtype() == root->operand(1)->dtype())
      return false;
    rw.SetInsertionPointBefore(root);
    for (int i : {0, 1}) {
      ir::Value* v = root->operand(i);
      if (v->dtype() == DType::kF32) continue;
      ir::AttrMap to_f32 = {{"to", ir::Attr::Name("f32")}};
      TPFUSE_ASSIGN_OR_RETURN(ir::Node * cast,
                              rw.Create("cast", {v}, std::move(to_f32), {v->name() + ".f32"}));
      rw.SetOperand(root, i, cast->result());
    }
    return true;
  }
};

// cast(cast(%x) {to = f32}) {to = <%x's dtype>} -> %x   (%x bf16 or f16)
//
// TensorRT-LLM's reference returns the residual as `h.to(f32).to(bf16)`. Numerics: exact; the
// widening is exact and the value is one of the narrow type already.
struct WideningRoundTrip final : Pattern {
  std::string_view name() const override { return "widening_round_trip"; }
  int benefit() const override { return 12; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->kind() != ir::OpKind::kCast) return false;
    ir::Node* widen = root->operand(0)->producer();
    if (!IsWideningCast(widen) || widen->operand(0)->dtype() != root->result()->dtype())
      return false;
    rw.ReplaceAllUsesWith(root->result(), widen->operand(0));
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead({root, widen}));
    return true;
  }
};

// cast(view(%v)) {to = f8e4m3} -> view(cast(%v) {to = f8e4m3})   (the view used only there)
//
// FlashInfer's per-group reference reshapes [T, H/g, g] back to [T, H] before the cast; the
// quant forms read the cast of the scaled (and clamped) value. Numerics: exact; a cast is
// elementwise.
struct ViewAfterFp8Cast final : Pattern {
  std::string_view name() const override { return "view_after_fp8_cast"; }
  int benefit() const override { return 11; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->kind() != ir::OpKind::kCast || TextAttr(root, "to") != "f8e4m3") return false;
    ir::Node* view = ProducedBy(root->operand(0), "view");
    if (view == nullptr || !SoleUser(view->result(), root)) return false;
    const std::string name = root->result()->name();
    rw.SetInsertionPointBefore(root);
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * cast, rw.Create("cast", {view->operand(0)}, root->attrs(),
                                                       {name + ".unviewed"}));
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * moved,
                            rw.Create("view", {cast->result()}, view->attrs(), {name}));
    rw.ReplaceAllUsesWith(root->result(), moved->result());
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead({root, view}));
    TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(moved, {name}).status());
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

// %b = op(%x, ...) {attrs} after %a = op(%x, ...) {attrs} -> %a: one node per computation
// (FlashInfer's reference casts y to f32 once for the amax and again for the division; every
// norm written without a weight gets a unit weight of its own when it folds). Collectives and
// opaque ops are never merged: each call of them counts. Nor are views: they cost nothing, and
// a fusion takes over a view of its results only where the view has no other reader.
//
// Numerics: exact. The ops left are pure functions of their operands and attributes.
struct CommonSubexpression final : Pattern {
  std::string_view name() const override { return "common_subexpression"; }
  int benefit() const override { return 9; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    const ir::OpKind kind = root->kind();
    if (kind == ir::OpKind::kAllReduce || kind == ir::OpKind::kAllreduceRmsnorm ||
        kind == ir::OpKind::kOpaque || kind == ir::OpKind::kUnknown || kind == ir::OpKind::kView ||
        root->num_results() == 0)
      return false;
    const ir::Node* twin = EarlierTwin(root, rw);
    if (twin == nullptr) return false;
    for (int i = 0; i < root->num_results(); ++i)
      rw.ReplaceAllUsesWith(root->result(i), twin->result(i));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(root));
    return true;
  }

  // A node before `root` computing what it computes: among the users of its first operand, or,
  // for an op without operands, among the nodes before it.
  static const ir::Node* EarlierTwin(const ir::Node* root, const Rewriter& rw) {
    const ir::Graph& graph = *root->graph();
    auto same = [&](const ir::Node* n) {
      if (n == root || rw.IsErased(n) || n->op() != root->op() ||
          n->num_operands() != root->num_operands() || n->attrs() != root->attrs())
        return false;
      for (int i = 0; i < n->num_operands(); ++i)
        if (n->operand(i) != root->operand(i)) return false;
      return true;
    };
    if (root->num_operands() == 0) {
      for (const auto& owned : graph.nodes()) {
        if (owned.get() == root) return nullptr;
        if (same(owned.get())) return owned.get();
      }
      return nullptr;
    }
    const ir::Node* twin = nullptr;
    int twin_at = -1;  // positions are counted only where a twin exists (rare)
    for (const ir::Use& u : root->operand(0)->uses()) {
      if (u.is_return() || !same(u.user)) continue;
      if (twin_at < 0) twin_at = graph.IndexOf(root);
      const int i = graph.IndexOf(u.user);
      if (i < twin_at) twin = u.user, twin_at = i;
    }
    return twin;
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

// view(add(%a, %b)) -> add(view(%a), view(%b)), where the add sums a tensor of its own type into
// an all_reduce's sum (PerTokenBiasedSum), the view reads whole rows (the last dim kept) and is the
// sum's only reader: the biased sum then reaches the residual add and norm with no view between
// (Llama 4's routed sum added to its shared expert's all_reduce on [B*S, H] rows, then viewed
// back to [B, S, H]), and the all_reduce's own view moves before it (view_before_all_reduce).
// Numerics: exact (the add is elementwise).
struct ViewBeforeBiasedSum final : Pattern {
  std::string_view name() const override { return "view_before_biased_sum"; }
  int benefit() const override { return 7; }

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rw, MatchNotes&) const override {
    if (root->op() != "view") return false;
    ir::Node* add = ProducedBy(root->operand(0), "add");
    if (add == nullptr || !SoleUser(add->result(), root) || PerTokenBiasedSum(add) == nullptr) return false;
    const ir::TensorType& from = add->result()->type();
    const ir::TensorType& to = root->result()->type();
    if (from.rank() < 1 || to.rank() < 1 || !(from.shape.back() == to.shape.back())) return false;

    const std::string name = root->result()->name();
    rw.SetInsertionPointBefore(add);
    std::vector<ir::Value*> viewed;
    for (ir::Value* o : add->operands()) {
      TPFUSE_ASSIGN_OR_RETURN(ir::Node * view, rw.Create("view", {o}, root->attrs(), {o->name() + ".view"}));
      viewed.push_back(view->result());
    }
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * sum, rw.Create("add", viewed, add->attrs(), {name + ".sum"}));
    rw.ReplaceAllUsesWith(root->result(), sum->result());
    TPFUSE_RETURN_IF_ERROR(rw.Erase(root));
    TPFUSE_RETURN_IF_ERROR(rw.Erase(add));
    TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(sum, {name}).status());
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
    patterns_.push_back(std::make_unique<ExplicitPromotion>());
    patterns_.push_back(std::make_unique<WideningRoundTrip>());
    patterns_.push_back(std::make_unique<ViewAfterFp8Cast>());
    auto rms_norm = std::make_unique<DecomposedRmsNorm>();
    rms_norm_ = rms_norm.get();
    patterns_.push_back(std::move(rms_norm));
    patterns_.push_back(std::make_unique<ClampPair>());
    patterns_.push_back(std::make_unique<PowAsRsqrt>());
    patterns_.push_back(std::make_unique<DecomposedStaticQuant>());
    patterns_.push_back(std::make_unique<DecomposedDynamicQuant>());
    patterns_.push_back(std::make_unique<NoOpView>());
    patterns_.push_back(std::make_unique<ViewOfView>());
    patterns_.push_back(std::make_unique<CommonSubexpression>());
    patterns_.push_back(std::make_unique<ViewBeforeAllReduce>());
    patterns_.push_back(std::make_unique<ViewBeforeBiasedSum>());
    patterns_.push_back(std::make_unique<AddOperandOrder>());
    patterns_.push_back(std::make_unique<AddRmsNorm>());
    patterns_.push_back(std::make_unique<F32AddOfHalves>());
    patterns_.push_back(std::make_unique<NormWeightBias>());
  }

  std::string name() const override { return "canonicalize"; }

  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) override {
    rms_norm_->f32_residual = ctx.caps.residual_f32;
    rms_norm_->norm_out_f32 = ctx.caps.norm_out_f32;
    return ApplyPatternsGreedily(graph, patterns_, ctx);
  }

 private:
  PatternList patterns_;
  DecomposedRmsNorm* rms_norm_ = nullptr;  // owned by patterns_
};

}  // namespace

std::unique_ptr<Pass> MakeCanonicalizePass() { return std::make_unique<CanonicalizePass>(); }

}  // namespace tpfuse::passes
