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
//
// Local chains (ctx.fuse_local): `[add ->] rms_norm [-> quant]` that no all_reduce feeds (TP 1,
// the first layer's norm of the embedding) become the same fused op with spec.local = true, by
// the same rule. At world size 1 an all_reduce is the identity: its chain fuses as a local op
// on the all_reduce's operand, and the all_reduce's other uses read that operand. Under
// ctx.local_vs_inductor a local chain Inductor's own kernel was measured faster on stays as it
// is, for Inductor (passes/local_fusion.h).
//
// A scale by a constant between the all_reduce (or x) and the norm (`mul(a) {scalar = s}`:
// Granite's and Falcon-H1's `residual + out * multiplier`) is taken over as spec.sum_scale,
// a' = round(a * s), when the norm reads it as x and is its only use. Before it, a bias [H] added
// to the all_reduce's sum (`add(a, b)`: a row-parallel layer's bias added after its all_reduce, as
// transformers' row-wise plan adds it) is taken over as spec.has_bias with the operand b, when
// the norm (or that scale) is the biased sum's only use; so is b of the sum's own shape, one row
// per token (spec.bias_per_token: the output of a block beside the all_reduce, as transformers'
// MoE plans add a replicated shared expert's output, or a routed sum, to an all_reduce's sum),
// unless b is itself an all_reduce's sum (two summed all_reduces, below).
//
// Two all_reduces summed before the norm, `add(a [* s1], b [* s2]) [* s]` read by the norm as x
// (Granite-MoE's `moe_out + shared_mlp_out`, Falcon-H1's attention and SSM mixers, each behind its
// own all_reduce), become one fused op with spec.second_sum: x2 is b's partial, s1 and s2 are
// first_scale and second_scale, s is sum_scale. So does `residual + b [* s2]` read by a norm as
// its residual while the norm's input is a [* s] (`residual + attention + mlp`: Cohere2-MoE's
// and LongCat-Flash's parallel blocks), with spec.second_sum_into_residual, or the norm's chain
// alone where the backend refuses that. Where the backend cannot sum two (caps.second_sum) both
// all_reduces stay, with that reason (or the norm's input's fuses alone).
//
// A norm of the sum before the residual add, `fused_add_rms_norm(rms_norm(a, w0), residual, w)`
// with the first norm's output read by that add alone (Gemma 2/3/4's and GLM-4's sandwich norms:
// the block's output normed, added to the residual stream, and the stream normed for the next
// block; TensorRT-LLM's RESIDUAL_RMS_PREPOST_NORM), becomes one fused op with
// spec.pre_residual_norm where the two norms are of one form (the weight's dtype, bias and
// rounding) and the backend takes it at the world size; otherwise the first norm's chain fuses
// alone, and the add and the second norm after it, with a note that says why.
//
// Rank >= 3 activations ([B, S, H]): the fused op takes [rows, H]; the pass views x and the
// residual to [B*S, H] and views the results back (the norm is per row, so this is exact). A
// quant that reads the norm output through such a flattening view is absorbed with the view.
//
// The rounding recipe of the fused op is the canonical norm's and quant's (`rounding`
// attributes, set by canonicalize from the form it folded), so fusing changes no bit.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "ir/ops.h"
#include "passes/local_fusion.h"
#include "passes/match.h"
#include "passes/pass.h"
#include "passes/rewriter.h"

namespace tpfuse::passes {
namespace {

constexpr char kRule[] = "fuse_allreduce_epilogue";

// The nodes after one all_reduce that the fused op can take over.
struct Chain {
  ir::Node* anchor = nullptr;  // all_reduce; null for a local chain that none feeds
  ir::Node* norm = nullptr;    // rms_norm or fused_add_rms_norm reading the anchor
  ir::Node* scale = nullptr;   // mul(a) {scalar} the norm reads instead of a (SumScaleOf), or null
  // A bias added to the sum first (RowBiasOf; spec.has_bias): the add, which the norm (or
  // `scale`) reads alone, and the bias [H]. Null otherwise.
  ir::Node* bias_add = nullptr;
  ir::Value* bias = nullptr;
  // Two all_reduces summed (spec.second_sum): the other all_reduce, the scales of each sum before
  // the add (or null), and the add, which the norm reads (or `scale` reads). Null otherwise.
  ir::Node* anchor2 = nullptr;
  ir::Node* scale1 = nullptr;
  ir::Node* scale2 = nullptr;
  ir::Node* sum = nullptr;
  ir::Value* x2 = nullptr;     // anchor2's operand: this rank's partial of the second sum
  // The second sum goes into the residual (spec.second_sum_into_residual): `sum` is the add of
  // the residual stream (now `residual`) and the second sum, which the norm reads as residual.
  bool into_residual = false;
  // A norm of the sum before the residual add (spec.pre_residual_norm): the rms_norm of `a` whose
  // output `norm` adds to the residual, and its weight. Null otherwise.
  ir::Node* pre_norm = nullptr;
  ir::Value* pre_w = nullptr;
  bool local = false;          // a = x: no all_reduce, or one at world size 1
  ir::Value* a = nullptr;      // the all_reduce result, or x (the norm reads a, or scale's a * s)
  ir::Value* x = nullptr;      // this rank's partial sum (the all_reduce operand), or x
  ir::Value* residual = nullptr;
  ir::Value* w = nullptr;
  ir::Value* y = nullptr;             // the norm output
  ir::Value* residual_out = nullptr;  // fused_add_rms_norm only
  std::vector<ir::Node*> quants;      // quant_fp8 nodes reading y, in program order
  // For each quant, the flattening view of y it reads through (rank >= 3), or null.
  std::map<const ir::Node*, ir::Node*> quant_views;

  // How messages name where the chain starts: "all_reduce %ar" (and "and all_reduce %ar2") or
  // "rms_norm %y".
  std::string Start() const {
    if (anchor2) return StrCat("all_reduce ", Ref(a), " and all_reduce ", Ref(anchor2->result()));
    return anchor ? "all_reduce " + Ref(a) : NodeRef(norm);
  }
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
  // A norm that stays with the chain: the one after a norm before the residual add, where
  // Inductor's kernel takes both (PlanWithNormBeforeResidual). Null otherwise.
  const ir::Node* and_norm = nullptr;
};

constexpr char kInductorFaster[] = "Inductor's kernel measured faster";

// "its only use is matmul %o", "its uses are matmul %o and add %h", "it is only returned".
std::string DescribeUses(const ir::Value* value) {
  std::vector<std::string> uses;
  const auto add = [&](const ir::Use& u) {
    std::string d = DescribeUse(u);
    if (std::find(uses.begin(), uses.end(), d) == uses.end()) uses.push_back(d);
  };
  for (const ir::Use& u : value->uses()) {
    // Through a cast written for a promotion, to the op that reads it in the user's graph.
    if (!u.is_return() && PromotionOf(u.user) != nullptr) {
      for (const ir::Use& w : u.user->result()->uses()) add(w);
    } else {
      add(u);
    }
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

// The quant_fp8 nodes that read y (directly, or through a view that flattens y to [rows, H]
// and feeds only that quant), in program order.
void CollectQuants(Chain& c) {
  const ir::Graph& graph = *c.norm->graph();
  std::set<ir::Node*> seen;
  for (const ir::Use& u : c.y->uses()) {
    if (u.is_return()) continue;
    if (u.index == 0 && u.user->kind() == ir::OpKind::kQuantFp8 && seen.insert(u.user).second) {
      c.quants.push_back(u.user);
      continue;
    }
    ir::Node* view = u.user;
    if (view->kind() != ir::OpKind::kView || c.y->type().rank() < 3) continue;
    const ir::Value* flat = view->result();
    if (flat->type().rank() != 2 || !(flat->shape()[1] == c.y->shape().back())) continue;
    if (flat->num_uses() != 1 || flat->uses()[0].is_return()) continue;
    ir::Node* quant = flat->uses()[0].user;
    if (quant->kind() != ir::OpKind::kQuantFp8 || flat->uses()[0].index != 0) continue;
    if (!seen.insert(quant).second) continue;
    c.quants.push_back(quant);
    c.quant_views[quant] = view;
  }
  std::sort(c.quants.begin(), c.quants.end(), [&](const ir::Node* p, const ir::Node* q) {
    return graph.IndexOf(p) < graph.IndexOf(q);
  });
}

bool IsNorm(const ir::Node* node) {
  return node->kind() == ir::OpKind::kRmsNorm || node->kind() == ir::OpKind::kFusedAddRmsNorm;
}

// The norm that reads a scale of a sum (SumScaleOf) as x and is its only use, so the fused op
// takes the scale over (spec.sum_scale); null for any other node.
ir::Node* NormOfScale(const ir::Node* mul) {
  if (!SumScaleOf(mul)) return nullptr;
  const ir::Value* scaled = mul->result();
  if (scaled->num_uses() != 1 || scaled->uses()[0].is_return() || scaled->uses()[0].index != 0) return nullptr;
  ir::Node* norm = scaled->uses()[0].user;
  return IsNorm(norm) ? norm : nullptr;
}

// The scale `norm` reads as x and takes over, or null.
ir::Node* AbsorbableScale(const ir::Node* norm) {
  ir::Node* mul = norm->operand(0)->producer();
  return mul && NormOfScale(mul) == norm ? mul : nullptr;
}

// The node that reads `v` as its first operand and is its only use (not the return), or null.
ir::Node* OnlyReaderOf(const ir::Value* v) {
  if (v->num_uses() != 1 || v->uses()[0].is_return() || v->uses()[0].index != 0) return nullptr;
  return v->uses()[0].user;
}

// The bias added to `anchor`'s sum (BiasOfSum: a bias [H] or one of the sum's shape) that `read`
// is, read by one node alone, and the add; {null, null} otherwise.
std::pair<ir::Node*, ir::Value*> BiasOfTheSum(const ir::Node* anchor, const ir::Value* read) {
  if (anchor == nullptr || OnlyReaderOf(read) == nullptr) return {nullptr, nullptr};
  ir::Node* add = read->producer();
  const RowBias biased = BiasOfSum(add, anchor->result());
  if (biased.bias == nullptr) return {nullptr, nullptr};
  return {add, biased.bias};
}

// The chain of `norm` reading `a` as x, directly or through a bias and a scale the fused op takes
// over.
Chain MakeChain(ir::Node* anchor, ir::Node* norm, bool local) {
  Chain c;
  c.anchor = anchor;
  c.norm = norm;
  c.local = local;
  c.scale = AbsorbableScale(norm);
  std::tie(c.bias_add, c.bias) = BiasOfTheSum(anchor, c.scale ? c.scale->operand(0) : norm->operand(0));
  if (c.scale && anchor && c.scale->operand(0) != (c.bias_add ? c.bias_add : anchor)->result()) c.scale = nullptr;
  c.a = anchor ? anchor->result() : c.scale ? c.scale->operand(0) : norm->operand(0);
  c.x = anchor ? anchor->operand(0) : c.a;
  c.y = norm->result(0);
  if (norm->kind() == ir::OpKind::kRmsNorm) {
    c.w = norm->operand(1);
  } else {
    c.residual = norm->operand(1);
    c.w = norm->operand(2);
    c.residual_out = norm->result(1);
  }
  CollectQuants(c);
  return c;
}

// The all_reduce `v` is the sum of, directly or scaled by a constant (SumScaleOf), and that
// scale (or null); {null, null} for any other value.
std::pair<ir::Node*, ir::Node*> ScaledAllReduce(ir::Value* v) {
  ir::Node* p = v->producer();
  ir::Node* scale = p != nullptr && SumScaleOf(p) ? p : nullptr;
  ir::Node* ar = scale ? scale->operand(0)->producer() : p;
  if (ar == nullptr || ar->kind() != ir::OpKind::kAllReduce) return {nullptr, nullptr};
  return {ar, scale};
}

// The norm that reads `sum` as x, directly or through a scale it takes over (NormOfScale), and
// that scale; {null, null} when none does.
std::pair<ir::Node*, ir::Node*> NormReadingSum(ir::Node* sum) {
  for (const ir::Use& u : sum->result()->uses()) {
    if (u.is_return() || u.index != 0) continue;
    if (IsNorm(u.user)) return {u.user, nullptr};
    if (ir::Node* norm = SumScaleOf(u.user) ? NormOfScale(u.user) : nullptr) return {norm, u.user};
  }
  return {nullptr, nullptr};
}

// The adds that read `anchor`'s sum, directly or scaled by a constant (SumScaleOf).
std::vector<ir::Node*> AddsOfTheSum(const ir::Node* anchor) {
  std::vector<ir::Node*> adds;
  for (const ir::Use& u : anchor->result()->uses()) {
    if (u.is_return()) continue;
    if (u.user->kind() == ir::OpKind::kAdd) adds.push_back(u.user);
    if (!SumScaleOf(u.user)) continue;
    for (const ir::Use& w : u.user->result()->uses())
      if (!w.is_return() && w.user->kind() == ir::OpKind::kAdd) adds.push_back(w.user);
  }
  return adds;
}

// The chain of two all_reduces summed before a norm, `add(a [* s1], b [* s2]) [* s]` read by the
// norm as x, with `anchor` as one of the two: the first such norm in program order (`local`: at
// world size 1, where both all_reduces are the identity). Whether the sums and the values between
// are read elsewhere is PlanFusion's question (WhySumsReadElsewhere).
std::optional<Chain> FindSecondSumChain(ir::Node* anchor, bool local) {
  const ir::Graph& graph = *anchor->graph();
  std::optional<Chain> best;
  for (ir::Node* add : AddsOfTheSum(anchor)) {
    if (add->num_operands() != 2 || add->result()->type() != anchor->result()->type()) continue;
    const auto [ar0, scale0] = ScaledAllReduce(add->operand(0));
    const auto [ar1, scale1] = ScaledAllReduce(add->operand(1));
    if (ar0 == nullptr || ar1 == nullptr || ar0 == ar1 || (ar0 != anchor && ar1 != anchor)) continue;
    ir::Node* other = ar0 == anchor ? ar1 : ar0;
    if (TextAttr(other, "group", "tp") != "tp" || other->result()->type() != anchor->result()->type()) continue;
    const auto [norm, outer] = NormReadingSum(add);
    if (norm == nullptr) continue;
    if (best && graph.IndexOf(norm) >= graph.IndexOf(best->norm)) continue;
    Chain c = MakeChain(anchor, norm, local);
    c.scale = outer;
    c.a = anchor->result();
    c.anchor2 = other;
    c.x2 = other->operand(0);
    c.scale1 = ar0 == anchor ? scale0 : scale1;
    c.scale2 = ar0 == anchor ? scale1 : scale0;
    c.sum = add;
    best = std::move(c);
  }
  return best;
}

// The chain `c` (a norm reading its anchor's sum, with a residual) with the second sum in the
// residual taken over too: the residual is add(r, b [* s2]) of another all_reduce b, and r becomes
// the fused op's residual. std::nullopt when the residual is no such add.
std::optional<Chain> WithSecondSumInResidual(const Chain& c) {
  if (!c.anchor || c.anchor2 || c.bias_add || !c.residual || c.residual->producer() == nullptr) return std::nullopt;
  ir::Node* add = c.residual->producer();
  if (add->kind() != ir::OpKind::kAdd || add->num_operands() != 2) return std::nullopt;
  for (int i = 0; i < 2; ++i) {
    const auto [ar, scale] = ScaledAllReduce(add->operand(i));
    ir::Value* r = add->operand(1 - i);
    if (ar == nullptr || ar == c.anchor || TextAttr(ar, "group", "tp") != "tp") continue;
    if (ar->result()->type() != c.a->type() || r->type() != c.a->type()) continue;
    Chain two = c;
    two.anchor2 = ar;
    two.x2 = ar->operand(0);
    two.scale2 = scale;
    two.sum = add;
    two.residual = r;
    two.into_residual = true;
    return two;
  }
  return std::nullopt;
}

// From the other side: `anchor`'s sum (scaled or not) added to the residual stream, and that add
// read as the residual of a norm whose input is another all_reduce's sum (WithSecondSumInResidual
// of that norm's chain). std::nullopt otherwise.
std::optional<Chain> InResidualOfAnother(ir::Node* anchor, bool local) {
  for (ir::Node* add : AddsOfTheSum(anchor)) {
    for (const ir::Use& u : add->result()->uses()) {
      if (u.is_return() || u.index != 1 || u.user->kind() != ir::OpKind::kFusedAddRmsNorm) continue;
      ir::Node* norm = u.user;
      ir::Node* scale = AbsorbableScale(norm);
      ir::Node* other = (scale ? scale->operand(0) : norm->operand(0))->producer();
      if (other == nullptr || other == anchor || other->kind() != ir::OpKind::kAllReduce) continue;
      std::optional<Chain> two = WithSecondSumInResidual(MakeChain(other, norm, local));
      if (two && two->anchor2 == anchor) return two;
    }
  }
  return std::nullopt;
}

// The chain `c` (an rms_norm of its a, no residual) with the residual add and the norm after it
// taken over too: the norm's output is read only by a fused_add_rms_norm, as its x or its
// residual, whose other operand becomes the fused op's residual. std::nullopt otherwise.
std::optional<Chain> WithNormBeforeResidual(const Chain& c) {
  if (c.norm->kind() != ir::OpKind::kRmsNorm || c.scale || c.bias_add || c.anchor2 || c.y->uses().size() != 1)
    return std::nullopt;
  const ir::Use& use = c.y->uses()[0];
  if (use.is_return() || use.user->kind() != ir::OpKind::kFusedAddRmsNorm || use.index > 1) return std::nullopt;
  ir::Node* next = use.user;
  ir::Value* residual = next->operand(1 - use.index);
  // (The all_reduce's own sum as the residual exists only inside the fused op.)
  if (residual == c.y || (c.anchor && residual == c.a)) return std::nullopt;
  Chain two = MakeChain(c.anchor, next, c.local);
  two.scale = nullptr;
  two.a = c.a;
  two.x = c.x;
  two.residual = residual;
  two.pre_norm = c.norm;
  two.pre_w = c.w;
  return two;
}

// The add of the residual stream that the norm output of `c` (an rms_norm of its a) goes to
// alone, with no norm reading the sum (OLMo 2's and EXAONE 4's post-norm blocks: `residual +
// norm(a)`), or null.
const ir::Node* PostNormAdd(const Chain& c) {
  if (c.norm->kind() != ir::OpKind::kRmsNorm || c.y->uses().size() != 1 || c.y->uses()[0].is_return()) return nullptr;
  const ir::Node* add = c.y->uses()[0].user;
  if (add->kind() != ir::OpKind::kAdd || add->num_operands() != 2) return nullptr;
  for (const ir::Value* v : add->operands())
    if (v->type() != c.y->type()) return nullptr;
  return add;
}

// The norm that reads the anchor as x: the first in program order. (canonicalize puts the
// all_reduce-derived operand of an add or fused_add_rms_norm first.) Failing that, the norm that
// reads the anchor's sum added to another all_reduce's (FindSecondSumChain).
std::optional<Chain> FindChain(ir::Node* anchor, bool local) {
  const ir::Graph& graph = *anchor->graph();
  ir::Value* a = anchor->result();
  ir::Node* best = nullptr;
  int best_index = 0;
  for (const ir::Use& u : a->uses()) {
    if (u.is_return()) continue;
    // The norm reading a, or a biased (round(a + b)) and scaled (a' = round(a * s)) by a bias
    // and a scale the fused op takes over.
    ir::Node* reader = u.index == 0 ? u.user : nullptr;
    if (u.user->kind() == ir::OpKind::kAdd && BiasOfTheSum(anchor, u.user->result()).first != nullptr)
      reader = OnlyReaderOf(u.user->result());
    if (reader == nullptr) continue;
    ir::Node* norm = SumScaleOf(reader) ? NormOfScale(reader) : reader;
    if (norm == nullptr || !IsNorm(norm)) continue;
    const int index = graph.IndexOf(norm);
    if (best == nullptr || index < best_index) {
      best = norm;
      best_index = index;
    }
  }
  if (best == nullptr) return FindSecondSumChain(anchor, local);
  return MakeChain(anchor, best, local);
}

// When no norm reads `a` directly: the first RMSNorm (canonical, or the rsqrt of one written
// out) that `a` reaches through other ops, and the ops on the way ("cast %a32, add %h32").
struct Reach {
  const ir::Node* norm = nullptr;
  std::vector<const ir::Node*> path;
};
std::optional<Reach> FindNormBeyond(const ir::Value* a) {
  constexpr int kMaxDepth = 8;
  std::vector<std::pair<const ir::Value*, std::vector<const ir::Node*>>> frontier = {{a, {}}};
  std::set<const ir::Node*> visited;
  for (int depth = 0; depth < kMaxDepth && !frontier.empty(); ++depth) {
    std::vector<std::pair<const ir::Value*, std::vector<const ir::Node*>>> next;
    for (const auto& [value, path] : frontier) {
      for (const ir::Use& u : value->uses()) {
        if (u.is_return() || !visited.insert(u.user).second) continue;
        if (IsNorm(u.user) || u.user->kind() == ir::OpKind::kRsqrt)
          return Reach{u.user, path};
        std::vector<const ir::Node*> longer = path;
        longer.push_back(u.user);
        for (const ir::Value* r : u.user->results()) next.emplace_back(r, longer);
      }
    }
    frontier = std::move(next);
  }
  return std::nullopt;
}

// The ops of `path`, but for the casts the canonicalizer wrote for a promotion: the user's
// graph has no node for them.
std::string DescribePath(const std::vector<const ir::Node*>& path) {
  std::string text;
  for (const ir::Node* n : path)
    if (PromotionOf(n) == nullptr) text += (text.empty() ? "" : ", ") + NodeRef(n);
  return text;
}

// `v` and every value a chain of views makes of it.
std::vector<const ir::Value*> WithItsViews(const ir::Value* v) {
  std::vector<const ir::Value*> values = {v};
  for (size_t i = 0; i < values.size(); ++i)
    for (const ir::Use& u : values[i]->uses())
      if (!u.is_return() && u.user->kind() == ir::OpKind::kView) values.push_back(u.user->result());
  return values;
}

// Whether `v`, or a view of it, is returned.
bool ReturnedThroughViews(const ir::Value* v) {
  for (const ir::Value* w : WithItsViews(v))
    for (const ir::Use& u : w->uses())
      if (u.is_return()) return true;
  return false;
}

// The add of eps that `v` is: eps a scalar, or a value (one the graph takes as an input); null
// for any other value.
const ir::Node* AddOfEps(const ir::Value* v) {
  const ir::Node* add = ProducedBy(v, "add");
  return add && (ScalarOperand(add) || add->num_operands() == 2) ? add : nullptr;
}

// rsqrt(add(mean(pow(v, 2) | mul(v, v)), eps)), the rsqrt of an RMSNorm written out in ops: the
// v it squares; null for any other node.
const ir::Value* RmsCoreSquared(const ir::Node* node) {
  if (node->kind() != ir::OpKind::kRsqrt) return nullptr;
  const ir::Node* add = AddOfEps(node->operand(0));
  const ir::Node* mean = add ? ProducedBy(add->operand(0), "mean") : nullptr;
  const ir::Node* p = mean ? mean->operand(0)->producer() : nullptr;
  return p != nullptr && p->num_operands() > 0 && SquareOf(mean->operand(0), p->operand(0))
             ? p->operand(0)
             : nullptr;
}

bool IsRmsCoreRsqrt(const ir::Node* node) { return RmsCoreSquared(node) != nullptr; }

// The op the front end kept opaque whose result the RMSNorm core of `rsqrt` squares (a slice
// of the row, as vLLM's variance_size_override takes), or null.
const ir::Node* OpaqueSquaredBy(const ir::Node* rsqrt) {
  const ir::Value* squared = RmsCoreSquared(rsqrt);
  const ir::Node* source = squared ? squared->producer() : nullptr;
  return source && source->kind() == ir::OpKind::kOpaque ? source : nullptr;
}

// What the canonicalizer said of the decomposed RMSNorm whose rsqrt is `rsqrt`: the reasons
// it gave at the nodes the norm's form ends at (the multiplies and casts after the rsqrt).
std::string NormDeclines(const ir::Node* rsqrt, const PassContext& ctx) {
  constexpr std::string_view kPattern = "decomposed_rms_norm: ";
  std::vector<std::string> reasons;
  std::vector<const ir::Value*> frontier = {rsqrt->result()};
  for (int depth = 0; depth < 4 && !frontier.empty(); ++depth) {
    std::vector<const ir::Value*> next;
    for (const ir::Value* v : frontier) {
      for (const ir::Use& u : v->uses()) {
        if (u.is_return() || u.user->num_results() != 1) continue;
        const ir::Value* out = u.user->result();
        if (auto it = ctx.declines_at.find(out->name()); it != ctx.declines_at.end()) {
          for (const std::string& r : it->second) {
            if (r.rfind(kPattern, 0) != 0) continue;
            std::string why = r.substr(kPattern.size());
            if (std::find(reasons.begin(), reasons.end(), why) == reasons.end())
              reasons.push_back(std::move(why));
          }
        }
        next.push_back(out);
      }
    }
    frontier = std::move(next);
  }
  std::string text;
  for (const std::string& r : reasons) text += (text.empty() ? "" : "; ") + r;
  return text;
}

// An opaque op whose name holds `word` in any case ("quant": vLLM's scaled_fp4_quant).
bool OpaqueNamed(const ir::Node* node, std::string_view word) {
  if (node->kind() != ir::OpKind::kOpaque) return false;
  std::string name = TextAttr(node, ir::kOpaqueNameAttr).value_or("");
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return name.find(word) != std::string::npos;
}

// Whether `out` is `in` with a longer last dim, both known, the other dims the same (a pad of
// the row at its end).
bool WidensTheRow(const ir::TensorType& in, const ir::TensorType& out) {
  if (in.rank() == 0 || in.rank() != out.rank()) return false;
  for (int i = 0; i + 1 < in.rank(); ++i)
    if (!(in.shape[i] == out.shape[i])) return false;
  const ir::Dim& a = in.shape.back();
  const ir::Dim& b = out.shape.back();
  return a.value >= 0 && b.value > a.value;
}

// An opaque op as the reasons name it: "opaque %n (aten.slice.Tensor)", its name when it has one.
std::string OpaqueRef(const ir::Node* node) {
  const std::optional<std::string> name = TextAttr(node, ir::kOpaqueNameAttr);
  return name ? StrCat(NodeRef(node), " (", *name, ")") : NodeRef(node);
}

// A norm the front end kept opaque (its name holds "norm", e.g. aten._fused_rms_norm with its
// rstd read) that reads `a` or its residual add, through views: the node, or null.
const ir::Node* OpaqueNormAfter(const ir::Value* a) {
  std::vector<const ir::Value*> sums = WithItsViews(a);
  for (const ir::Value* v : WithItsViews(a))
    for (const ir::Use& u : v->uses())
      if (!u.is_return() && u.user->kind() == ir::OpKind::kAdd)
        for (const ir::Value* w : WithItsViews(u.user->result())) sums.push_back(w);
  for (const ir::Value* v : sums) {
    for (const ir::Use& u : v->uses()) {
      if (!u.is_return() && OpaqueNamed(u.user, "norm")) return u.user;
    }
  }
  return nullptr;
}

// The all_reduce whose sum `v` is, through views, casts and a scale the fused op takes over
// (SumScaleOf); null for any other value.
const ir::Node* AllReduceBehind(const ir::Value* v) {
  for (const ir::Node* p = v->producer(); p != nullptr; p = p->operand(0)->producer()) {
    if (p->kind() == ir::OpKind::kAllReduce) return p;
    if (p->kind() != ir::OpKind::kView && p->kind() != ir::OpKind::kCast && !SumScaleOf(p)) break;
  }
  return nullptr;
}

// Why the fused op cannot take over the ops from all_reduce `a` along `reach` when another
// all_reduce's sum meets `a`'s on the way in a form it does not match (FindSecondSumChain and
// InResidualOfAnother match the others): an add of the two before the norm, or `a`'s sum in the
// residual of a norm whose input is another all_reduce's. Empty when no other all_reduce is met.
std::string AnotherAllReduceMet(const ir::Value* a, const Reach& reach) {
  const ir::Value* on_path = a;
  for (const ir::Node* n : reach.path) {
    if (n->kind() == ir::OpKind::kAdd && n->num_operands() == 2) {
      const ir::Value* other = n->operand(0) == on_path ? n->operand(1) : n->operand(0);
      const ir::Node* b = AllReduceBehind(other);
      if (b != nullptr && b->result() != a) {
        return StrCat(", where ", NodeRef(n), " adds it to the sum of all_reduce ", Ref(b->result()),
                      ": the fused op sums two all_reduces only where the norm reads their sum as its "
                      "input, each sum and the sum of the two scaled by a constant or not, so it does "
                      "not take this one over (the other's fused op may take what this one's sum "
                      "became as a bias per token)");
      }
    }
    on_path = n->result(0);
  }
  if (reach.norm->kind() == ir::OpKind::kFusedAddRmsNorm && !reach.path.empty() &&
      reach.norm->operand(1) == on_path) {
    const ir::Node* b = AllReduceBehind(reach.norm->operand(0));
    if (b != nullptr && b->result() != a) {
      return StrCat(", into the residual of a norm whose input is the sum of all_reduce ",
                    Ref(b->result()), ": the fused op takes an all_reduce in the residual over with the norm's "
                    "own only where one add puts its sum (scaled by a constant or not) into the residual stream");
    }
  }
  return "";
}

// Why the fused op cannot take over the ops along `reach` when the all_reduce's sum, once added
// to a residual on the way, is itself the residual of a fused-add norm (Zamba2's hybrid layer
// adds the sum to the embeddings, and the shared block's norm adds a matmul's output to that):
// two residual adds, where the fused op takes one. Empty otherwise. (Another all_reduce's sum as
// the norm's input is AnotherAllReduceMet's case, asked first.)
std::string TwoResidualAdds(const Reach& reach) {
  if (reach.norm->kind() != ir::OpKind::kFusedAddRmsNorm || reach.path.empty()) return "";
  const bool added = std::any_of(reach.path.begin(), reach.path.end(), [](const ir::Node* n) {
    return n->kind() == ir::OpKind::kAdd && n->num_operands() == 2;
  });
  const ir::Value* last = reach.path.back()->result(0);
  const ir::Value* other = reach.norm->operand(0) == last   ? reach.norm->operand(1)
                           : reach.norm->operand(1) == last ? reach.norm->operand(0)
                                                            : nullptr;
  if (!added || other == nullptr) return "";
  return StrCat(", and ", NodeRef(reach.norm), " adds ",
                other->producer() != nullptr ? NodeRef(other->producer()) : Ref(other),
                " to that: two residual adds, where the fused op takes one");
}

// A value broadcast over the rows added on the way (a row-parallel layer's bias added after its
// all_reduce, as DTensor's row-wise plan adds it) that the fused op does not take over: the
// biased sum read elsewhere too, or a bias of another form than RowBiasOf's. Empty when there is
// none.
std::string ABiasOnTheWay(const Reach& reach) {
  for (const ir::Node* n : reach.path) {
    if (n->kind() != ir::OpKind::kAdd || n->num_operands() != 2) continue;
    if (const RowBias biased = RowBiasOf(n); biased.bias != nullptr) {
      if (OnlyReaderOf(n->result()) != nullptr) continue;  // a bias the fused op takes: not the cause
      return StrCat(", where ", NodeRef(n), " adds the bias ", Ref(biased.bias),
                    " to every row: the fused op takes a bias over only where the biased sum goes to the norm "
                    "alone (", DescribeUses(n->result()), ")");
    }
    for (const ir::Value* v : n->operands()) {
      if (!(v->type().shape == n->result(0)->type().shape)) {
        return StrCat(", where ", NodeRef(n), " adds ", Ref(v), " (", v->type().ToString(), ") to every row, a bias "
                      "the fused op cannot take over: it adds a bias [H] of the sum's dtype, into a result of that "
                      "dtype");
      }
    }
  }
  return "";
}

// A GEMM between the sum and the norm (Zamba2's shared block multiplies the concatenated
// stream before its norm): the fused op's norm reads the sum itself. Empty when there is none.
std::string AGemmOnTheWay(const Reach& reach) {
  for (const ir::Node* n : reach.path) {
    if (n->kind() == ir::OpKind::kMatmul || n->kind() == ir::OpKind::kScaledMatmul)
      return StrCat(", where ", NodeRef(n), " multiplies it by a matrix: the fused op's norm reads "
                    "the sum itself");
  }
  return "";
}

// Why no chain starts at `anchor`, in words that stay true: "not followed by an RMSNorm" only
// when none follows; otherwise what lies between.
std::string NoChainReason(const ir::Node* anchor, const PassContext& ctx) {
  const ir::Value* a = anchor->result();
  std::optional<Reach> reach = FindNormBeyond(a);
  if (const ir::Node* norm = reach ? nullptr : OpaqueNormAfter(a)) {
    const std::optional<std::string> why = TextAttr(norm, "why");
    return StrCat("all_reduce ", Ref(a), " is followed by a norm the compiler cannot read, ",
                  OpaqueRef(norm), why ? ": " + *why : "", "; it stays as written (",
                  DescribeUses(a), ")");
  }
  if (!reach) {
    // The sum (or its residual add) leaving the func, itself or through views: in a
    // torch.compile graph, the norm that reads it may sit in the next graph, across a graph
    // break, where no fusion reaches.
    bool leaves = ReturnedThroughViews(a);
    for (const ir::Value* v : WithItsViews(a))
      for (const ir::Use& u : v->uses())
        if (!u.is_return() && u.user->kind() == ir::OpKind::kAdd && ReturnedThroughViews(u.user->result()))
          leaves = true;
    return StrCat("all_reduce ", Ref(a), " is not followed by an RMSNorm (", DescribeUses(a), ")",
                  leaves ? "; its sum leaves the graph, so a norm in a later graph (after a "
                           "graph break) cannot be fused with it"
                         : "");
  }
  if (reach->path.size() == 1 && SumScaleOf(reach->path[0]) && IsNorm(reach->norm)) {
    const ir::Value* scaled = reach->path[0]->result();
    return StrCat("all_reduce ", Ref(a), " is scaled by ", NodeRef(reach->path[0]), " before ",
                  NodeRef(reach->norm), "; the fused op takes the scale over only when the norm reads it "
                  "as its input and is its only use (", DescribeUses(scaled), ")");
  }
  // A mean subtracted on the way to the rsqrt makes it a LayerNorm (Cohere's), not an RMSNorm;
  // so does a variance (torch's var_mean, which F.layer_norm decomposes into, kept opaque: the
  // mean is subtracted on the other branch, after the rsqrt).
  const bool centered =
      std::any_of(reach->path.begin(), reach->path.end(), [](const ir::Node* n) {
        if (n->kind() == ir::OpKind::kSub) return true;
        const std::optional<std::string> name =
            n->op() == "opaque" ? TextAttr(n, ir::kOpaqueNameAttr) : std::nullopt;
        return name && (name->rfind("aten.var_mean", 0) == 0 || name->rfind("aten.var.", 0) == 0);
      });
  std::string what;
  if (reach->norm->kind() != ir::OpKind::kRsqrt) {
    what = NodeRef(reach->norm);
  } else if (centered) {
    what = StrCat("the rsqrt ", Ref(reach->norm->result()),
                  " of a LayerNorm (it subtracts the mean; the fused op computes RMSNorm)");
  } else if (std::string why = NormDeclines(reach->norm, ctx); !why.empty()) {
    what = StrCat("the rsqrt ", Ref(reach->norm->result()),
                  " of an RMSNorm that stays as written (", why, ")");
  } else if (const ir::Node* opaque = OpaqueSquaredBy(reach->norm)) {
    return StrCat("all_reduce ", Ref(a), " reaches the rsqrt ", Ref(reach->norm->result()),
                  " of a norm only through ", DescribePath(reach->path),
                  "; the compiler cannot read ", OpaqueRef(opaque),
                  ", so the fused op cannot take them over (", DescribeUses(a), ")");
  } else {
    what = StrCat("the rsqrt ", Ref(reach->norm->result()),
                  " of an RMSNorm written out in a form the compiler does not recognize");
  }
  std::string why_not = AnotherAllReduceMet(a, *reach);
  if (why_not.empty()) why_not = AGemmOnTheWay(*reach);
  if (why_not.empty()) why_not = ABiasOnTheWay(*reach);
  if (why_not.empty()) why_not = TwoResidualAdds(*reach);
  if (why_not.empty()) why_not = ", which the fused op cannot take over";
  return StrCat("all_reduce ", Ref(a), " reaches ", what, " only through ",
                DescribePath(reach->path), why_not, " (", DescribeUses(a), ")");
}

// The norm before the residual add (Chain::pre_norm) in `spec` (whose weight fields are the second
// norm's): empty when the two norms are of one form, else why not.
std::string PreNormSpec(const Chain& c, AllreduceRmsnormSpec& spec) {
  const std::string both = StrCat(NodeRef(c.pre_norm), ", added to the residual by ", NodeRef(c.norm));
  if (c.pre_w->type() != c.w->type()) {
    return StrCat(both, ": its weight ", Ref(c.pre_w), " is ", TypeOf(c.pre_w), " and the next norm's ", Ref(c.w),
                  " ", TypeOf(c.w), "; the fused op's two norms take weights of one type");
  }
  if (c.pre_norm->result(0)->type() != c.a->type()) {
    return StrCat(both, ": its output ", Ref(c.pre_norm->result(0)), " is ", TypeOf(c.pre_norm->result(0)),
                  ", not the sum's type ", TypeOf(c.a), "; the fused op rounds the first norm as the sum");
  }
  StatusOr<RoundingRecipe> pre = ir::NormRoundingFromNode(*c.pre_norm);
  if (!pre.ok()) return pre.status().message();
  const std::optional<double> eps = NumberAttr(c.pre_norm, "eps", 1e-6);
  const std::optional<double> bias = NumberAttr(c.pre_norm, "weight_bias", 0.0);
  if (!eps || !bias) return StrCat(NodeRef(c.pre_norm), " has a non-numeric eps or weight_bias");
  if (float(*bias) != spec.weight_bias || pre->weight_after_round != spec.rounding.weight_after_round ||
      pre->weight_bias_in_weight_dtype != spec.rounding.weight_bias_in_weight_dtype) {
    const auto form = [](float b, const RoundingRecipe& r) {
      return StrCat("weight_bias ", b, r.weight_after_round ? ", weight_after_round" : "",
                    r.weight_bias_in_weight_dtype ? ", weight_bias_in_weight_dtype" : "");
    };
    return StrCat(both, ": the two norms apply their weights in different forms (", form(float(*bias), *pre),
                  "; ", form(spec.weight_bias, spec.rounding), "), and the fused op's two norms share one");
  }
  spec.pre_residual_norm = true;
  spec.pre_eps = float(*eps);
  return {};
}

// The part of the spec fixed by the all_reduce and the norm, after checking what the fused op's
// operands must look like (Contract 3: x [T, H] bf16/f16, w [H] bf16/f16/f32). Empty on
// success; otherwise why not, in words.
std::string BaseSpec(const Chain& c, AllreduceRmsnormSpec& spec) {
  const ir::Value* a = c.a;
  const ir::TensorType& t = a->type();
  const std::string what = c.anchor ? "all_reduce " + Ref(a) : "norm input " + Ref(a);
  if (!IsHalfType(t.dtype)) {
    return StrCat(what, " has dtype ", DTypeName(t.dtype),
                  "; the fused op takes bf16 or f16 activations");
  }
  if (t.rank() < 2 || !t.shape.back().is_const() || t.shape.back().value <= 0) {
    return StrCat(what, " has type ", TypeOf(a),
                  "; the fused op takes [T, H] (or [B, S, H]) with a constant H");
  }
  if (t.rank() > 2) {
    if (StatusOr<ir::Dim> rows = RowsOf(t); !rows.ok())
      return StrCat(what, " has type ", TypeOf(a), ": ", rows.status().message());
  }
  const int64_t hidden = t.shape.back().value;
  const DType wd = c.w->dtype();
  if (!(IsHalfType(wd) || wd == DType::kF32)) {
    return StrCat("norm weight ", Ref(c.w), " has dtype ", DTypeName(wd),
                  "; the fused op takes bf16, f16 or f32");
  }
  if (c.w->type().rank() != 1 || !(c.w->shape()[0] == ir::Dim::Const(hidden))) {
    return StrCat("norm weight ", Ref(c.w), " has type ", TypeOf(c.w), "; expected [", hidden,
                  "] to match the all_reduce's hidden size");
  }
  const bool f32_residual = c.residual && c.residual->dtype() == DType::kF32 &&
                            c.residual->shape() == t.shape && IsHalfType(t.dtype);
  if (c.residual && c.residual->type() != t && !f32_residual) {
    return StrCat("residual ", Ref(c.residual), " has type ", TypeOf(c.residual),
                  "; expected ", t.ToString(), " like all_reduce ", Ref(a), " (or f32 of its shape)");
  }
  StatusOr<RoundingRecipe> rounding = ir::NormRoundingFromNode(*c.norm);
  if (!rounding.ok()) return rounding.status().message();
  // y is x's type, or f32 of its shape under rounding norm_out_f32.
  const ir::TensorType y_type = rounding->norm_out_f32 ? ir::TensorType{DType::kF32, t.shape} : t;
  if (c.y->type() != y_type) {
    return StrCat("norm output ", Ref(c.y), " has type ", TypeOf(c.y), "; expected ",
                  y_type.ToString());
  }
  const std::optional<double> eps = NumberAttr(c.norm, "eps", 1e-6);
  const std::optional<double> bias = NumberAttr(c.norm, "weight_bias", 0.0);
  if (!eps || !bias) return StrCat(NodeRef(c.norm), " has a non-numeric eps or weight_bias");
  spec = AllreduceRmsnormSpec{};
  spec.local = c.local;
  spec.rounding = *rounding;
  spec.act_dtype = t.dtype;
  spec.weight_dtype = wd;
  // NOTE: hidden is the last dim; rank-3 chains run on [rows, H] views (RowsOf).
  spec.hidden = hidden;
  spec.has_residual = c.residual != nullptr;
  spec.residual_f32_in = f32_residual;
  spec.eps = float(*eps);
  spec.weight_bias = float(*bias);
  if (c.scale) spec.sum_scale = float(*SumScaleOf(c.scale));
  spec.has_bias = c.bias != nullptr;
  spec.bias_per_token = c.bias != nullptr && c.bias->type().rank() > 1;
  if (c.pre_norm) {
    if (std::string why = PreNormSpec(c, spec); !why.empty()) return why;
  }
  if (c.anchor2) {
    spec.second_sum = true;
    spec.second_sum_into_residual = c.into_residual;
    if (c.scale1) spec.first_scale = float(*SumScaleOf(c.scale1));
    if (c.scale2) spec.second_scale = float(*SumScaleOf(c.scale2));
  }
  return {};
}

// Adds `quant`'s parameters to `spec`, or says why that quant cannot be absorbed.
std::string AddQuant(const ir::Node* quant, AllreduceRmsnormSpec& spec) {
  StatusOr<ir::QuantParams> params = ir::QuantParamsFromNode(*quant);
  if (!params.ok()) return params.status().message();
  if (spec.rounding.norm_out_f32) {
    return StrCat("it quantizes the norm output unrounded, in f32; the fused op quantizes the norm output "
                  "rounded to ", DTypeName(spec.act_dtype));
  }
  if (params->mode == QuantMode::kFp8Tensor &&
      (quant->num_operands() != 2 || !ir::IsOneElementF32(quant->operand(1)->type()))) {
    return StrCat(NodeRef(quant), " has no one-element f32 scale operand");
  }
  spec.quant = params->mode;
  spec.group_size = params->group_size;
  spec.scale_layout = params->layout;
  spec.scale_fmt = params->format;
  spec.rounding.scale_op_swapped = params->scale_op_swapped;
  spec.rounding.scale_floor_after_div = params->scale_floor_after_div;
  spec.rounding.ue8m0_floor = params->ue8m0_floor;
  return {};
}

bool UsedOutside(const ir::Value* v, const std::set<const ir::Node*>& absorbed) {
  return std::any_of(v->uses().begin(), v->uses().end(), [&](const ir::Use& u) {
    return u.is_return() || absorbed.count(u.user) == 0;
  });
}

// The fused node's operands (before any flattening view), for a chain with `quant` absorbed.
std::vector<ir::Value*> FusedOperands(const Chain& c, const ir::Node* quant) {
  std::vector<ir::Value*> operands = {c.x};
  if (c.x2) operands.push_back(c.x2);
  if (c.bias) operands.push_back(c.bias);
  if (c.residual) operands.push_back(c.residual);
  operands.push_back(c.w);
  if (c.pre_w) operands.push_back(c.pre_w);
  if (quant && quant->num_operands() == 2) operands.push_back(quant->operand(1));
  return operands;
}

std::set<const ir::Node*> Absorbed(const Chain& c, const ir::Node* quant) {
  std::set<const ir::Node*> absorbed = {c.norm};
  if (c.anchor) absorbed.insert(c.anchor);
  if (c.scale) absorbed.insert(c.scale);
  for (ir::Node* n : {c.bias_add, c.anchor2, c.scale1, c.scale2, c.sum, c.pre_norm})
    if (n) absorbed.insert(n);
  if (quant) {
    absorbed.insert(quant);
    if (auto it = c.quant_views.find(quant); it != c.quant_views.end()) absorbed.insert(it->second);
  }
  return absorbed;
}

// The value of `values` that `v` is computed from (itself included), or null.
const ir::Value* ComputedFrom(const ir::Value* v, const std::vector<const ir::Value*>& values) {
  std::set<const ir::Value*> seen;
  std::vector<const ir::Value*> stack = {v};
  while (!stack.empty()) {
    const ir::Value* at = stack.back();
    stack.pop_back();
    if (!seen.insert(at).second) continue;
    if (std::find(values.begin(), values.end(), at) != values.end()) return at;
    if (const ir::Node* p = at->producer())
      for (const ir::Value* o : p->operands()) stack.push_back(o);
  }
  return nullptr;
}

// Two all_reduces summed (Chain::anchor2): why the fused op cannot take them over because a
// sum, or a value between the sums and the norm, is read outside the chain; empty when none is.
// (The fused op returns neither sum, nor their sum.)
std::string WhySumsReadElsewhere(const Chain& c, const std::set<const ir::Node*>& absorbed) {
  if (!c.anchor2) return "";
  // "all_reduce %a and all_reduce %b are summed by add %s before rms_norm %y", or where the second
  // is in the residual "... meet in fused_add_rms_norm %y (all_reduce %b through add %h1, its
  // residual)".
  const std::string meeting =
      c.into_residual ? StrCat(c.Start(), " meet in ", NodeRef(c.norm), " (all_reduce ", Ref(c.anchor2->result()),
                               " through ", NodeRef(c.sum), ", its residual)")
                      : StrCat(c.Start(), " are summed by ", NodeRef(c.sum), " before ", NodeRef(c.norm));
  for (const ir::Node* n : {c.anchor, c.scale1, c.anchor2, c.scale2, c.sum, c.scale}) {
    if (n != nullptr && c.residual == n->result()) {
      return StrCat(meeting, ", and ", Ref(n->result()), " is the residual too: the fused op's residual must be "
                    "another value");
    }
    if (n == nullptr || !UsedOutside(n->result(), absorbed)) continue;
    return StrCat(meeting, ", but ", Ref(n->result()), " is also read outside that chain (",
                  DescribeUses(n->result()), "): the fused op of two summed all_reduces returns neither sum nor ",
                  c.into_residual ? "the residual it adds the second to" : "their sum");
  }
  return "";
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
  if (std::string why = WhySumsReadElsewhere(c, absorbed); !why.empty()) return Refusal{"sum read elsewhere", why};
  EmitSet& emit = plan.spec.emit;
  // A local chain's all_reduce (world size 1) is the identity: its other uses read x instead.
  emit.allreduce = c.anchor && !c.local && UsedOutside(c.anchor->result(), absorbed);
  emit.norm = UsedOutside(c.y, absorbed);
  emit.residual = c.residual_out && c.residual_out->has_uses();
  emit.quant = quant != nullptr;
  // An unread output has no dtype to keep (a quant absorbed reads y: an f32 y stays f32, and
  // Validate refuses the quant of it).
  if (!emit.residual) plan.spec.rounding.residual_out_f32 = false;
  if (!emit.norm && !quant) plan.spec.rounding.norm_out_f32 = false;
  if (emit.empty()) {
    return Refusal{"unused results", StrCat("nothing after ", c.Start(),
                                            " is used: the norm and its inputs are dead code")};
  }
  const int world_size = c.local ? 1 : ctx.world_size;
  if (std::string why = ctx.caps.WhyUnsupported(plan.spec, world_size); !why.empty())
    return Refusal{"backend", why};
  if (Status valid = plan.spec.Validate(); !valid.ok()) return Refusal{"invalid", valid.message()};

  std::vector<ir::Value*> replaced;
  if (emit.allreduce) replaced.push_back(c.anchor->result());
  if (emit.norm) replaced.push_back(c.y);
  if (emit.residual) replaced.push_back(c.residual_out);
  if (quant) replaced.insert(replaced.end(), quant->results().begin(), quant->results().end());
  if (quant && quant->num_operands() == 2) {
    // A scale computed from the chain's own results (vLLM's dynamic per-tensor QuantFP8: the
    // amax of the whole norm output, then a static-form quant) exists only after the norm.
    const ir::Value* scale = quant->operand(1);
    std::vector<const ir::Value*> results = {c.y};
    if (c.residual_out) results.push_back(c.residual_out);
    if (c.anchor) results.push_back(c.anchor->result());
    if (c.anchor2) results.push_back(c.anchor2->result());
    if (c.pre_norm) results.push_back(c.pre_norm->result(0));
    if (const ir::Value* from = ComputedFrom(scale, results)) {
      return Refusal{"scale from the chain",
                     StrCat("the per-tensor scale ", Ref(scale), " of quant_fp8 ",
                            Ref(quant->result()), " is computed from ", Ref(from),
                            ", a result of the chain (a dynamic per-tensor scale): the fused op "
                            "reads a scale that exists before it")};
    }
  }
  const ir::Graph& graph = *c.norm->graph();
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

// The FP8 quantizations of the norm output y still written out in ops (a cast to f8e4m3 that
// y reaches through the ops a quantization is written with, no canonical quant_fp8), each with
// the reasons the canonicalizer gave for leaving it (PassContext::declines_at), in words. The
// walk passes through an opaque pad that widens the row (vLLM's group quant of a row its groups
// do not divide, F.pad to whole groups), and such a quantization names the pad.
std::vector<std::string> UnfoldedQuantNotes(const Chain& chain, const PassContext& ctx) {
  static const std::set<std::string> kQuantOps = {
      "cast", "view", "abs", "amax", "div", "mul", "clamp", "reciprocal", "log2", "ceil",
      "exp2", "pow", "maximum", "minimum", "neg"};
  std::vector<std::string> notes;
  std::set<const ir::Value*> seen = {chain.y};
  std::map<const ir::Value*, std::string> padded;  // value -> the pad it was reached through
  const auto padded_note = [](const ir::Value* q, const std::string& pad) {
    return StrCat("the FP8 quantization ", Ref(q), " of the norm stays as written: the row is padded with ",
                  pad, " before it is quantized: the fused quant takes groups that divide the row");
  };
  std::vector<const ir::Value*> frontier = {chain.y};
  for (int depth = 0; depth < 12 && !frontier.empty(); ++depth) {
    std::vector<const ir::Value*> next;
    for (const ir::Value* v : frontier) {
      const auto pad_of_v = padded.find(v);
      for (const ir::Use& u : v->uses()) {
        if (!u.is_return() && OpaqueNamed(u.user, "pad") && u.user->num_results() == 1 &&
            WidensTheRow(v->type(), u.user->result()->type())) {
          const ir::Value* out = u.user->result();
          if (!seen.insert(out).second) continue;
          padded[out] = StrCat(OpaqueRef(u.user), " from ", v->type().shape.back().ToString(), " to ",
                               out->type().shape.back().ToString(), " elements");
          next.push_back(out);
          continue;
        }
        if (!u.is_return() && u.user->kind() == ir::OpKind::kOpaque) {
          // A quantization the graph calls as an op of its own (vLLM's scaled_fp4_quant): the
          // compiler cannot see into it. The front end may say why it kept the op opaque.
          const std::string name = TextAttr(u.user, ir::kOpaqueNameAttr).value_or("");
          const std::optional<std::string> why = TextAttr(u.user, "why");
          if (OpaqueNamed(u.user, "quant") && seen.insert(u.user->result(0)).second)
            notes.push_back(StrCat("the norm output is quantized by ", name, " (",
                                   NodeRef(u.user), "), an op the compiler cannot see into",
                                   why ? " (" + *why + ")" : std::string(), ": it stays outside "
                                   "the fused op, which quantizes to FP8 per tensor, token or "
                                   "group only"));
          continue;
        }
        // Past a pad, a quantization the canonicalizer folded (quant_fp8 of the padded groups).
        if (!u.is_return() && pad_of_v != padded.end() && u.user->kind() == ir::OpKind::kQuantFp8 &&
            u.index == 0) {
          // Named as the graph names it: a folded quant's rows are viewed back to its value.
          const ir::Value* q = u.user->result(0);
          if (q->uses().size() == 1 && !q->uses()[0].is_return() && q->uses()[0].user->kind() == ir::OpKind::kView)
            q = q->uses()[0].user->result();
          if (seen.insert(u.user->result(0)).second) notes.push_back(padded_note(q, pad_of_v->second));
          continue;
        }
        if (u.is_return() || !kQuantOps.count(u.user->op()) || u.user->num_results() != 1)
          continue;
        // Beside the value, a quantization's binary steps read a scale ([..., 1] or one
        // element), not another activation (y * gate is no quantization of y).
        if (u.user->num_operands() == 2) {
          const ir::TensorType& other = u.user->operand(1 - u.index)->type();
          if (!(ir::IsOneElementF32(other) || (other.rank() > 0 && other.shape.back() == ir::Dim::Const(1))))
            continue;
        }
        const ir::Value* out = u.user->result();
        if (!seen.insert(out).second) continue;
        if (u.user->op() == "cast" && out->dtype() == DType::kF8E4M3) {
          if (pad_of_v != padded.end()) {
            notes.push_back(padded_note(out, pad_of_v->second));
            continue;
          }
          std::string why;
          if (auto it = ctx.declines_at.find(out->name()); it != ctx.declines_at.end()) {
            for (const std::string& reason : it->second) why += (why.empty() ? "" : "; ") + reason;
          } else {
            why = "it matches no quantization form the compiler folds";
          }
          notes.push_back(
              StrCat("the FP8 quantization ", Ref(out), " of the norm stays as written: ", why));
          continue;
        }
        if (pad_of_v != padded.end()) padded[out] = pad_of_v->second;
        next.push_back(out);
      }
    }
    frontier = std::move(next);
  }
  return notes;
}

// The whole chain with the first quant that works, else the norm alone.
std::variant<Plan, Refusal> PlanBestFusion(const Chain& chain, const PassContext& ctx) {
  AllreduceRmsnormSpec base;
  if (std::string why = BaseSpec(chain, base); !why.empty()) return Refusal{"dtype or shape", why};
  std::vector<std::string> notes;
  // The FP8 quantizations of y left in ops, named after the chain's own notes.
  const std::vector<std::string> unfolded = UnfoldedQuantNotes(chain, ctx);
  std::set<const ir::Node*> dropped;
  for (ir::Node* quant : chain.quants) {
    std::variant<Plan, Refusal> with_quant = PlanFusion(chain, quant, base, ctx);
    if (auto* refusal = std::get_if<Refusal>(&with_quant)) {
      dropped.insert(quant);
      notes.push_back(
          StrCat("quant_fp8 ", Ref(quant->result()), " stays unfused: ", refusal->reason));
      continue;
    }
    Plan& plan = std::get<Plan>(with_quant);
    for (ir::Node* other : chain.quants) {
      if (other == quant || dropped.count(other)) continue;
      notes.push_back(StrCat("quant_fp8 ", Ref(other->result()),
                             " reads the emitted norm: one quant is fused per chain"));
    }
    notes.insert(notes.end(), unfolded.begin(), unfolded.end());
    plan.notes = std::move(notes);
    plan.quants_dropped = int(dropped.size());
    return plan;
  }
  std::variant<Plan, Refusal> norm_only = PlanFusion(chain, nullptr, base, ctx);
  if (auto* plan = std::get_if<Plan>(&norm_only)) {
    notes.insert(notes.end(), unfolded.begin(), unfolded.end());
    plan->notes = std::move(notes);
    plan->quants_dropped = int(dropped.size());
  }
  return norm_only;
}

// The plan of a chain (PlanBestFusion), except that a chain with no communication (world size
// 1, or a norm no all_reduce feeds) stays as it is where it would otherwise be Inductor's kernel
// and that was measured faster (ctx.local_vs_inductor, passes/local_fusion.h) at the chain's
// token count: its rows when they are a constant (a graph compiled for one batch size), else
// ctx.max_tokens.
std::variant<Plan, Refusal> PlanChain(const Chain& chain, const PassContext& ctx) {
  std::variant<Plan, Refusal> decision = PlanBestFusion(chain, ctx);
  const Plan* plan = std::get_if<Plan>(&decision);
  if (plan != nullptr && chain.local && ctx.local_vs_inductor) {
    int64_t tokens = ctx.max_tokens;
    if (StatusOr<ir::Dim> rows = RowsOf(chain.x->type()); rows.ok() && rows->is_const())
      tokens = rows->value;
    std::string why = WhyInductorIsFaster(plan->spec, tokens, ctx.inductor_losses, ctx.inductor_pre_norm_losses);
    if (!why.empty()) return Refusal{kInductorFaster, why};
  }
  return decision;
}

// The plan of `chain` with the residual add and the norm after it taken over where its norm's
// output goes there (WithNormBeforeResidual) and that fuses; else PlanChain's, with a note on
// why the add and the next norm stay apart. Where Inductor's kernel was measured faster for the
// whole (ctx.local_vs_inductor), both norms stay for it: the refusal names the second
// (Refusal::and_norm), which the caller leaves too.
std::variant<Plan, Refusal> PlanWithNormBeforeResidual(const Chain& chain, const PassContext& ctx) {
  std::string refused;
  if (std::optional<Chain> both = WithNormBeforeResidual(chain)) {
    std::variant<Plan, Refusal> decision = PlanChain(*both, ctx);
    if (std::holds_alternative<Plan>(decision)) return decision;
    Refusal& refusal = std::get<Refusal>(decision);
    if (refusal.kind == kInductorFaster) {
      refusal.and_norm = both->norm;
      return decision;
    }
    refused = refusal.reason;
  }
  std::variant<Plan, Refusal> alone = PlanChain(chain, ctx);
  if (auto* plan = std::get_if<Plan>(&alone); plan != nullptr && !refused.empty()) {
    plan->notes.push_back(StrCat("the residual add and the norm that read ", Ref(chain.y), " are not taken over: ",
                                 refused));
  } else if (plan != nullptr) {
    if (const ir::Node* add = PostNormAdd(chain)) {
      plan->notes.push_back(StrCat(NodeRef(add), ", the residual add that reads the norm output ", Ref(chain.y),
                                   ", is not taken over: no norm follows it, and the fused op ends in a norm "
                                   "(a post-norm block, `residual + norm(a)`); it stays an op, and so does any "
                                   "quantization of its sum"));
    }
  }
  return alone;
}

class FuseAllreduceEpiloguePass final : public Pass {
 public:
  std::string name() const override { return kRule; }

  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) override {
    if (ctx.world_size < 1) return InvalidArgument("world size must be >= 1, got ", ctx.world_size);
    Rewriter rw(graph);
    // Why no chain starts at an all_reduce, read in the graph as it came: a fusion made before
    // its turn takes over the norm its reason names.
    std::map<const ir::Node*, std::string> no_chain;
    for (ir::Node* node : graph.NodesSnapshot()) {
      if (node->kind() == ir::OpKind::kAllReduce && !FindChain(node, ctx.world_size == 1))
        no_chain[node] = NoChainReason(node, ctx);
    }
    // Why an all_reduce in a norm's residual was not taken over with the norm's own, decided at
    // the norm's all_reduce (Decide), for its own turn.
    std::map<const ir::Node*, Refusal> second_refused;
    // Norms left for Inductor with the norm before the residual add that they follow
    // (Refusal::and_norm), and why.
    std::map<const ir::Node*, std::string> left_for_inductor;
    const auto leave_next_norm = [&](const Refusal& refusal) {
      if (refusal.and_norm != nullptr) left_for_inductor[refusal.and_norm] = refusal.reason;
    };
    for (ir::Node* node : graph.NodesSnapshot()) {
      if (rw.IsErased(node) || node->kind() != ir::OpKind::kAllReduce) continue;
      ctx.Count(kRule, "anchors_seen");
      const auto reason = no_chain.find(node);
      std::variant<Plan, Refusal> decision =
          Decide(node, ctx, reason != no_chain.end() ? reason->second : std::string(), second_refused);
      if (auto* refusal = std::get_if<Refusal>(&decision)) {
        ctx.Count(kRule, "rejected: " + refusal->kind);
        ctx.rejections.push_back(Rejection{node->result()->name(), refusal->reason});
        leave_next_norm(*refusal);
        continue;
      }
      TPFUSE_RETURN_IF_ERROR(Apply(std::get<Plan>(decision), node->result()->name(), rw, ctx));
    }
    if (ctx.fuse_local) {
      // Norms no all_reduce feeds. A refusal here is no rejection (rejections are about
      // all_reduces): the counters and ctx.local_unfused keep it.
      for (ir::Node* node : graph.NodesSnapshot()) {
        if (rw.IsErased(node) || !IsNorm(node)) continue;
        ctx.Count(kRule, "local chains seen");
        const Chain chain = MakeChain(nullptr, node, /*local=*/true);
        if (auto left = left_for_inductor.find(node); left != left_for_inductor.end()) {
          ctx.Count(kRule, StrCat("local not fused: ", kInductorFaster));
          ctx.local_unfused.push_back(
              Rejection{chain.x->name(),
                        StrCat("it stays with the norm before the residual add that it follows: ", left->second)});
          continue;
        }
        std::variant<Plan, Refusal> decision = PlanWithNormBeforeResidual(chain, ctx);
        if (auto* refusal = std::get_if<Refusal>(&decision)) {
          ctx.Count(kRule, "local not fused: " + refusal->kind);
          ctx.local_unfused.push_back(Rejection{chain.x->name(), refusal->reason});
          leave_next_norm(*refusal);
          continue;
        }
        TPFUSE_RETURN_IF_ERROR(Apply(std::get<Plan>(decision), chain.x->name(), rw, ctx));
      }
      // RMSNorms the canonicalizer left in ops, that no all_reduce's rejection names already.
      for (ir::Node* node : graph.NodesSnapshot()) {
        if (rw.IsErased(node) || !IsRmsCoreRsqrt(node)) continue;
        const std::string ref = Ref(node->result());
        const bool named = std::any_of(ctx.rejections.begin(), ctx.rejections.end(),
                                       [&](const Rejection& r) {
                                         return r.reason.find(ref + " ") != std::string::npos;
                                       });
        if (named) continue;
        ctx.Count(kRule, "local not fused: norm left in ops");
        const std::string why = NormDeclines(node, ctx);
        const ir::Node* opaque = OpaqueSquaredBy(node);
        ctx.local_unfused.push_back(Rejection{
            node->result()->name(),
            !why.empty() ? StrCat("the RMSNorm whose rsqrt is ", ref, " stays as written: ", why)
            : opaque != nullptr
                ? StrCat("the norm whose rsqrt is ", ref, " squares the result of ",
                         OpaqueRef(opaque), ", which the compiler cannot read")
                : StrCat("the RMSNorm whose rsqrt is ", ref,
                         " is written out in a form the compiler does not recognize")});
      }
    }
    return rw.changed();
  }

 private:
  static Status Apply(const Plan& plan, std::string anchor_name, Rewriter& rw,
                      PassContext& ctx) {
    TPFUSE_ASSIGN_OR_RETURN(FusionRecord record, Fuse(plan, rw));
    // A local chain's is its x; a chain taken over from its second all_reduce's side keeps the
    // first's (Fuse).
    if (record.anchor.empty()) record.anchor = anchor_name;
    ctx.Count(kRule, plan.spec.local ? "fused local" : "fused");
    if (plan.quants_dropped > 0) ctx.Count(kRule, "quant left unfused", plan.quants_dropped);
    ctx.fusions.push_back(std::move(record));
    return Status::Ok();
  }

  // `no_chain_reason`: why no chain starts at `anchor` in the graph as it came, if none did.
  // `second_refused`: why an all_reduce in a norm's residual stays, set where the norm's own
  // all_reduce fuses alone, read at the other's turn.
  static std::variant<Plan, Refusal> Decide(ir::Node* anchor, const PassContext& ctx,
                                            const std::string& no_chain_reason,
                                            std::map<const ir::Node*, Refusal>& second_refused) {
    const ir::Value* a = anchor->result();
    const std::optional<std::string> group = TextAttr(anchor, "group", "tp");
    if (group != "tp") {
      return Refusal{"not the tp group",
                     StrCat("all_reduce group \"", group.value_or("?"),
                            "\" is not the tensor-parallel group (\"tp\")")};
    }
    const bool local = ctx.world_size == 1;
    if (local && !ctx.fuse_local) {
      return Refusal{"world size 1",
                     "world size 1: all_reduce is the identity, and local fusion is off "
                     "(compile with --fuse-local auto or on to fuse its chain on one GPU)"};
    }
    std::optional<Chain> chain = FindChain(anchor, local);
    // Another all_reduce's sum in the norm's residual: both in one op where the backend takes
    // it, else the norm's own chain alone (from the other all_reduce's side: its reason).
    if (std::optional<Chain> two = chain ? WithSecondSumInResidual(*chain) : InResidualOfAnother(anchor, local)) {
      std::variant<Plan, Refusal> both = PlanChain(*two, ctx);
      if (std::holds_alternative<Plan>(both) || !chain) return both;
      second_refused[two->anchor2] = std::get<Refusal>(both);
    }
    if (!chain) {
      if (auto it = second_refused.find(anchor); it != second_refused.end()) return it->second;
      return Refusal{"no rms_norm",
                     no_chain_reason.empty() ? NoChainReason(anchor, ctx) : no_chain_reason};
    }
    if (chain->residual == a) {
      // NOTE: the fused op adds a residual that exists before the all_reduce; a + a has none.
      return Refusal{"residual is the all_reduce",
                     StrCat(NodeRef(chain->norm), " adds all_reduce ", Ref(a),
                            " to itself: the fused op's residual must be another value")};
    }
    if (!local) {
      if (std::string why = ctx.caps.WhyWorldSizeUnsupported(ctx.world_size); !why.empty())
        return Refusal{"backend", why};
    }
    return PlanWithNormBeforeResidual(*chain, ctx);
  }

  static StatusOr<FusionRecord> Fuse(const Plan& plan, Rewriter& rw) {
    const Chain& c = plan.chain;
    const EmitSet& emit = plan.spec.emit;
    const std::set<const ir::Node*> absorbed = Absorbed(c, plan.quant);
    // Named before the nodes go.
    const std::string anchor = c.anchor ? c.anchor->result()->name() : "";
    const std::string second_anchor = c.anchor2 ? c.anchor2->result()->name() : "";

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

    // Rank >= 3: the fused op runs on [rows, H] views; each result is viewed back to the shape
    // of the value it takes over (the activations, and a mode-tensor quant's q when the quant
    // read y itself; a quant that read y through a flattening view already has the flat shape).
    const ir::TensorType& act = c.a->type();
    const bool flatten = act.rank() > 2;
    TPFUSE_ASSIGN_OR_RETURN(const ir::TensorType flat, RowsView(act));

    rw.SetInsertionPoint(plan.point);
    std::vector<ir::Value*> operands = FusedOperands(c, plan.quant);
    // The fused op reads a static scale as f32[]: a [1]-shaped one through a view.
    if (plan.quant && plan.quant->num_operands() == 2) {
      ir::Value* scale = operands.back();
      TPFUSE_ASSIGN_OR_RETURN(operands.back(), rw.CreateView(scale, ir::TensorType{DType::kF32, {}},
                                                             scale->name() + ".scalar"));
    }
    if (flatten) {
      const ir::FusedOperandIndices at = ir::FusedOperandLayout(plan.spec);
      TPFUSE_ASSIGN_OR_RETURN(operands[size_t(at.x)],
                              rw.CreateView(operands[size_t(at.x)], flat, c.x->name() + ".rows"));
      if (c.x2) {
        TPFUSE_ASSIGN_OR_RETURN(operands[size_t(at.x2)],
                                rw.CreateView(operands[size_t(at.x2)], flat, c.x2->name() + ".rows"));
      }
      if (plan.spec.bias_per_token) {
        TPFUSE_ASSIGN_OR_RETURN(operands[size_t(at.bias)],
                                rw.CreateView(operands[size_t(at.bias)], flat, c.bias->name() + ".rows"));
      }
      if (c.residual) {
        TPFUSE_ASSIGN_OR_RETURN(
            operands[size_t(at.residual)],
            rw.CreateView(operands[size_t(at.residual)], ir::TensorType{c.residual->dtype(), flat.shape},
                          c.residual->name() + ".rows"));
      }
    }
    std::vector<std::string> fused_names = names;
    std::vector<bool> view_back(names.size(), false);
    for (size_t i = 0; flatten && i < taken_over.size(); ++i) {
      view_back[i] = taken_over[i]->type().rank() > 2;
      if (view_back[i]) fused_names[i] += ".rows";
    }
    TPFUSE_ASSIGN_OR_RETURN(ir::Node * fused,
                            rw.Create("allreduce_rmsnorm", operands,
                                      ir::FusedAttrsFromSpec(plan.spec), fused_names));
    if (fused->num_results() != int(taken_over.size())) {
      return Internal("allreduce_rmsnorm has ", fused->num_results(), " results; ",
                      plan.spec.ToString(), " needs ", taken_over.size());
    }
    std::vector<ir::Value*> results(fused->results().begin(), fused->results().end());
    for (size_t i = 0; i < results.size(); ++i) {
      if (view_back[i]) {
        TPFUSE_ASSIGN_OR_RETURN(results[i], rw.CreateView(results[i], taken_over[i]->type(), names[i]));
      }
    }
    for (size_t i = 0; i < taken_over.size(); ++i) {
      rw.ReplaceUsesIf(taken_over[i], results[i], [&](const ir::Use& u) {
        return u.is_return() || absorbed.count(u.user) == 0;
      });
    }
    if (c.local && c.anchor) {
      // World size 1: the all_reduce is the identity; its other uses read its operand.
      rw.ReplaceUsesIf(c.anchor->result(), c.x, [&](const ir::Use& u) {
        return u.is_return() || absorbed.count(u.user) == 0;
      });
    }
    std::vector<ir::Node*> erase = {c.norm};
    if (c.scale) erase.push_back(c.scale);
    if (c.bias_add) erase.push_back(c.bias_add);
    if (c.anchor) erase.push_back(c.anchor);
    for (ir::Node* n : {c.sum, c.scale1, c.scale2, c.anchor2, c.pre_norm})
      if (n) erase.push_back(n);
    if (plan.quant) {
      erase.push_back(plan.quant);
      if (auto it = c.quant_views.find(plan.quant); it != c.quant_views.end())
        erase.push_back(it->second);
    }
    TPFUSE_RETURN_IF_ERROR(rw.EraseDead(erase));
    for (ir::Node* n : erase) {
      if (!rw.IsErased(n))
        return Internal(NodeRef(n), " is still used after fusing ", c.Start());
    }
    // Give every value its old name back (the fused op's results, or the views of them).
    for (size_t i = 0; i < results.size(); ++i) {
      if (view_back[i]) {
        TPFUSE_RETURN_IF_ERROR(rw.RestoreNames(results[i]->producer(), {names[i]}).status());
      }
    }
    TPFUSE_ASSIGN_OR_RETURN(fused, rw.RestoreNames(fused, fused_names));

    FusionRecord record;
    record.anchor = anchor;
    record.second_anchor = second_anchor;
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
