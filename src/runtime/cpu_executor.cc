// The CPU reference executor: runs a graph with N simulated ranks on the reference ops.
//
// Ranks run in lockstep, node by node: a local op runs on every rank (one thread per rank)
// before the next node; a collective (all_reduce, allreduce_rmsnorm) reads the operand of every
// rank at once. Result
// dtypes and shapes come from the IR types resolved with the bound symbols, so the reference
// ops never guess what the IR decided.
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "backends/cpu/reference_ops.h"
#include "ir/ops.h"
#include "runtime/executor.h"

namespace tpfuse::runtime {
namespace {

using Bindings = std::map<std::string, int64_t>;


std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}


// Runs fn(r) for every rank, ranks 1.. on their own threads. Each rank writes only its own
// slots, so the result does not depend on scheduling.
void ForEachRank(int world_size, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 1; r < world_size; ++r) threads.emplace_back(fn, r);
  fn(0);
  for (std::thread& t : threads) t.join();
}

struct ResolvedType {
  DType dtype;
  std::vector<int64_t> shape;
};

// A canonical norm as the local fused op (`spec`, ir::NormAsLocalFusedSpec): the fused op's own
// row code at world size 1, so that the canonical op and the fused op agree bit for bit.
// Leading dims are flattened into rows.
StatusOr<std::vector<HostTensor>> NormAsLocalFusedOp(const AllreduceRmsnormSpec& spec,
                                                     const std::vector<const HostTensor*>& in) {
  const HostTensor& x = *in[0];
  const HostTensor& w = *in[spec.has_residual ? 2 : 1];
  const std::vector<int64_t> shape = x.shape();
  const int64_t hidden = spec.hidden;
  const std::vector<int64_t> rows_shape = {hidden == 0 ? 0 : x.numel() / hidden, hidden};
  const HostTensor x_rows = x.Reshaped(rows_shape);
  std::optional<HostTensor> residual_rows;
  if (spec.has_residual) residual_rows = in[1]->Reshaped(rows_shape);
  TPFUSE_ASSIGN_OR_RETURN(std::vector<HostTensor> out,
                          cpu::AllreduceRmsnorm(spec, {&x_rows},
                                                residual_rows ? &*residual_rows : nullptr, w,
                                                nullptr));
  for (HostTensor& t : out) t = t.Reshaped(shape);
  return out;
}

// Runs one local (non-collective) op on one rank.
StatusOr<std::vector<HostTensor>> RunLocalOp(const ir::Node& node,
                                             const std::vector<const HostTensor*>& in,
                                             const std::vector<ResolvedType>& out) {
  const DType out_dtype = out.at(0).dtype;
  using Results = std::vector<HostTensor>;
  const auto binary = [&](cpu::BinaryOp bop) -> StatusOr<Results> {
    if (in.size() == 1) {
      if (node.attr("scalar") == nullptr)
        return InvalidArgument("one operand needs a 'scalar' attribute");
      TPFUSE_ASSIGN_OR_RETURN(double scalar, ir::GetNumberAttr(node, "scalar", 0.0));
      return Results{cpu::BinaryScalar(bop, *in[0], float(scalar), out_dtype)};
    }
    TPFUSE_ASSIGN_OR_RETURN(HostTensor y, cpu::Binary(bop, *in[0], *in[1], out_dtype));
    return Results{std::move(y)};
  };
  const auto unary = [&](cpu::UnaryOp uop) -> StatusOr<Results> {
    return Results{cpu::Unary(uop, *in[0], out_dtype)};
  };
  const ir::Attr* dim = node.attr("dim");
  const ir::Attr* keepdim = node.attr("keepdim");
  const int64_t reduce_dim = dim ? dim->i : -1;
  const bool keep = keepdim ? keepdim->b : true;

  switch (node.kind()) {
    case ir::OpKind::kAdd: return binary(cpu::BinaryOp::kAdd);
    case ir::OpKind::kSub: return binary(cpu::BinaryOp::kSub);
    case ir::OpKind::kMul: return binary(cpu::BinaryOp::kMul);
    case ir::OpKind::kDiv: return binary(cpu::BinaryOp::kDiv);
    case ir::OpKind::kPow: {
      TPFUSE_ASSIGN_OR_RETURN(double exponent, ir::GetNumberAttr(node, "exponent", 1.0));
      return Results{cpu::Pow(*in[0], float(exponent), out_dtype)};
    }
    case ir::OpKind::kRsqrt: return Results{cpu::Rsqrt(*in[0], out_dtype)};
    case ir::OpKind::kSqrt: return unary(cpu::UnaryOp::kSqrt);
    case ir::OpKind::kAbs: return unary(cpu::UnaryOp::kAbs);
    case ir::OpKind::kNeg: return unary(cpu::UnaryOp::kNeg);
    case ir::OpKind::kReciprocal: return unary(cpu::UnaryOp::kReciprocal);
    case ir::OpKind::kLog2: return unary(cpu::UnaryOp::kLog2);
    case ir::OpKind::kExp2: return unary(cpu::UnaryOp::kExp2);
    case ir::OpKind::kCeil: return unary(cpu::UnaryOp::kCeil);
    case ir::OpKind::kClamp: {
      constexpr double kInf = std::numeric_limits<double>::infinity();
      TPFUSE_ASSIGN_OR_RETURN(double lo, ir::GetNumberAttr(node, "min", -kInf));
      TPFUSE_ASSIGN_OR_RETURN(double hi, ir::GetNumberAttr(node, "max", kInf));
      return Results{cpu::Clamp(*in[0], float(lo), float(hi), out_dtype)};
    }
    case ir::OpKind::kCast: return Results{cpu::Cast(*in[0], out_dtype)};
    case ir::OpKind::kView: {
      TPFUSE_ASSIGN_OR_RETURN(HostTensor y, cpu::View(*in[0], out[0].shape));
      return Results{std::move(y)};
    }
    case ir::OpKind::kFull: {
      TPFUSE_ASSIGN_OR_RETURN(double value, ir::GetNumberAttr(node, "value", 0.0));
      HostTensor y(out_dtype, out[0].shape);
      for (int64_t i = 0; i < y.numel(); ++i) y.SetF32(i, float(value));
      return Results{std::move(y)};
    }
    case ir::OpKind::kMean: {
      TPFUSE_ASSIGN_OR_RETURN(HostTensor y, cpu::Mean(*in[0], reduce_dim, keep, out_dtype));
      return Results{std::move(y)};
    }
    case ir::OpKind::kAmax: {
      TPFUSE_ASSIGN_OR_RETURN(HostTensor y, cpu::Amax(*in[0], reduce_dim, keep, out_dtype));
      return Results{std::move(y)};
    }
    case ir::OpKind::kRmsNorm:
    case ir::OpKind::kFusedAddRmsNorm: {
      TPFUSE_ASSIGN_OR_RETURN(double eps, ir::GetNumberAttr(node, "eps", 1e-6));
      TPFUSE_ASSIGN_OR_RETURN(double weight_bias, ir::GetNumberAttr(node, "weight_bias", 0.0));
      if (in[0]->rank() < 1) return InvalidArgument("x must have rank >= 1");
      TPFUSE_ASSIGN_OR_RETURN(const std::optional<AllreduceRmsnormSpec> fused,
                              ir::NormAsLocalFusedSpec(node, in[0]->shape().back()));
      if (fused) return NormAsLocalFusedOp(*fused, in);
      if (node.kind() == ir::OpKind::kRmsNorm) {
        TPFUSE_ASSIGN_OR_RETURN(
            HostTensor y, cpu::RmsNorm(*in[0], *in[1], float(eps), float(weight_bias), out_dtype));
        return Results{std::move(y)};
      }
      TPFUSE_ASSIGN_OR_RETURN(cpu::AddRmsNormResult r,
                              cpu::FusedAddRmsNorm(*in[0], *in[1], *in[2], float(eps),
                                                   float(weight_bias), out_dtype, out.at(1).dtype));
      return Results{std::move(r.y), std::move(r.residual_out)};
    }
    case ir::OpKind::kQuantFp8: {
      TPFUSE_ASSIGN_OR_RETURN(ir::QuantParams params, ir::QuantParamsFromNode(node));
      if (params.mode == QuantMode::kFp8Tensor) {
        if (in.size() != 2) return InvalidArgument("mode tensor needs a scale operand");
        TPFUSE_ASSIGN_OR_RETURN(HostTensor q, cpu::QuantFp8Tensor(*in[0], *in[1], params.Divides()));
        return Results{std::move(q)};
      }
      TPFUSE_ASSIGN_OR_RETURN(cpu::DynamicQuantResult r, cpu::QuantFp8Dynamic(*in[0], params));
      return Results{std::move(r.q), std::move(r.s)};
    }
    case ir::OpKind::kMatmul: {
      TPFUSE_ASSIGN_OR_RETURN(HostTensor y, cpu::Matmul(*in[0], *in[1], out_dtype));
      return Results{std::move(y)};
    }
    case ir::OpKind::kScaledMatmul: {
      TPFUSE_ASSIGN_OR_RETURN(cpu::ActScaleLayout layout, ir::ScaledMatmulScaleLayout(node));
      TPFUSE_ASSIGN_OR_RETURN(HostTensor y,
                              cpu::ScaledMatmul(*in[0], *in[1], layout, *in[2], *in[3], out_dtype));
      return Results{std::move(y)};
    }
    case ir::OpKind::kAllReduce:
    case ir::OpKind::kAllreduceRmsnorm:
      return Internal("collective '", node.op(), "' reached the local op path");
    case ir::OpKind::kOpaque:
      return Unimplemented("opaque op '", ir::OpaqueName(node), "' cannot be executed");
    case ir::OpKind::kUnknown: break;
  }
  return Unimplemented("op '", node.op(), "' has no CPU reference implementation");
}

class CpuExecutor : public Executor {
 public:
  explicit CpuExecutor(int world_size) : world_size_(world_size) {}
  std::string name() const override { return "cpu"; }
  int world_size() const override { return world_size_; }

  StatusOr<RankOutputs> Run(const ir::Graph& graph,
                            const std::vector<TensorMap>& inputs) override;

 private:
  int world_size_;
};

// Per-rank values: parameters point into the caller's inputs; results are owned.
class RankValues {
 public:
  void SetParam(const ir::Value* v, const HostTensor* t) { params_[v] = t; }
  void Set(const ir::Value* v, HostTensor t) { owned_[v] = std::move(t); }
  void Erase(const ir::Value* v) { owned_.erase(v); }
  const HostTensor* Find(const ir::Value* v) const {
    if (auto it = owned_.find(v); it != owned_.end()) return &it->second;
    if (auto it = params_.find(v); it != params_.end()) return it->second;
    return nullptr;
  }

 private:
  std::unordered_map<const ir::Value*, const HostTensor*> params_;
  std::unordered_map<const ir::Value*, HostTensor> owned_;
};

StatusOr<RankOutputs> CpuExecutor::Run(const ir::Graph& graph,
                                       const std::vector<TensorMap>& inputs) {
  if (world_size_ < 1) return InvalidArgument("cpu executor: world size must be >= 1, got ", world_size_);
  if (int(inputs.size()) != world_size_)
    return InvalidArgument("cpu executor: got inputs for ", inputs.size(), " ranks, world size is ",
                           world_size_);
  TPFUSE_RETURN_IF_ERROR(ir::RefuseOpaque(graph, name()));
  const size_t ranks = static_cast<size_t>(world_size_);
  Bindings bindings;
  for (int r = 0; r < world_size_; ++r) {
    StatusOr<Bindings> rank_bindings = BindSymbols(graph, inputs[size_t(r)]);
    if (!rank_bindings.ok()) {
      return world_size_ > 1 ? rank_bindings.status().WithContext(StrCat("rank ", r))
                             : rank_bindings.status();
    }
    if (r == 0) bindings = *rank_bindings;
    else if (*rank_bindings != bindings)
      return InvalidArgument("rank ", r, "'s inputs bind the symbols differently from rank 0's");
  }

  std::vector<RankValues> values(ranks);
  for (int r = 0; r < world_size_; ++r) {
    for (const ir::Value* p : graph.params()) values[size_t(r)].SetParam(p, &inputs[size_t(r)].at(p->name()));
  }

  // Free intermediates after their last use (weights of model graphs make memory matter).
  const std::vector<ir::Node*> nodes = graph.NodesSnapshot();
  std::unordered_map<const ir::Value*, size_t> last_use;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const ir::Value* v : nodes[i]->operands()) last_use[v] = i;
  }
  std::unordered_set<const ir::Value*> returned(graph.outputs().begin(), graph.outputs().end());

  for (size_t ni = 0; ni < nodes.size(); ++ni) {
    const ir::Node& node = *nodes[ni];
    const auto node_error = [&](const Status& s) { return s.WithContext(ir::NodeLabel(node)); };

    std::vector<ResolvedType> out_types;
    for (const ir::Value* v : node.results()) {
      StatusOr<std::vector<int64_t>> shape = v->type().Resolve(bindings);
      if (!shape.ok()) return node_error(shape.status());
      out_types.push_back({v->dtype(), *shape});
    }
    // Operands of every rank, checked against their IR types.
    std::vector<std::vector<const HostTensor*>> operands(ranks);
    for (int r = 0; r < world_size_; ++r) {
      for (int i = 0; i < node.num_operands(); ++i) {
        const ir::Value* v = node.operand(i);
        const HostTensor* t = values[size_t(r)].Find(v);
        if (t == nullptr)
          return node_error(Internal("operand ", i, " (%", v->name(), ") has no value on rank ", r));
        operands[size_t(r)].push_back(t);
      }
    }

    // Results of every rank.
    std::vector<std::vector<HostTensor>> results(ranks);
    std::vector<Status> statuses(ranks);
    if (node.kind() == ir::OpKind::kAllReduce) {
      std::vector<const HostTensor*> partials;
      for (int r = 0; r < world_size_; ++r) partials.push_back(operands[size_t(r)][0]);
      StatusOr<HostTensor> sum = cpu::AllreduceSum(partials);
      if (!sum.ok()) return node_error(sum.status());
      for (int r = 0; r < world_size_; ++r) results[size_t(r)].push_back(*sum);
    } else if (node.kind() == ir::OpKind::kAllreduceRmsnorm) {
      StatusOr<AllreduceRmsnormSpec> spec = ir::FusedSpecFromNode(node);
      if (!spec.ok()) return node_error(spec.status());
      const ir::FusedOperandIndices at = ir::FusedOperandLayout(*spec);
      // The sum a = round(sum of partials in rank order) once for every rank: each rank's op
      // reads it as its only partial (the sum of one 16-bit value is itself), so simulating N
      // ranks costs N epilogues, not N sums of N partials. Likewise a2 of x2 (second_sum).
      const auto sum_of = [&](int operand) {
        std::vector<const HostTensor*> partials;
        for (int r = 0; r < world_size_; ++r) partials.push_back(operands[size_t(r)][size_t(operand)]);
        return cpu::AllreduceSum(partials);
      };
      std::optional<HostTensor> sum, sum2;
      for (auto [operand, into] : {std::pair{at.x, &sum}, std::pair{at.x2, &sum2}}) {
        if (spec->local || operand < 0) continue;
        StatusOr<HostTensor> summed = sum_of(operand);
        if (!summed.ok()) return node_error(summed.status());
        *into = std::move(*summed);
      }
      // Every rank runs the epilogue on its own residual, weight and scale.
      ForEachRank(world_size_, [&](int r) {
        const auto& in = operands[size_t(r)];
        // A local op (no all_reduce feeds it) reads this rank's x alone: a = x.
        const std::vector<const HostTensor*> own{spec->local ? in[size_t(at.x)] : &*sum};
        std::vector<const HostTensor*> own2;
        if (spec->second_sum) own2.push_back(spec->local ? in[size_t(at.x2)] : &*sum2);
        StatusOr<std::vector<HostTensor>> out = cpu::AllreduceRmsnorm(
            *spec, own,
            at.residual >= 0 ? in[size_t(at.residual)] : nullptr,
            *in[size_t(at.w)], at.scale >= 0 ? in[size_t(at.scale)] : nullptr, own2,
            at.pre_weight >= 0 ? in[size_t(at.pre_weight)] : nullptr,
            at.bias >= 0 ? in[size_t(at.bias)] : nullptr);
        if (out.ok()) results[size_t(r)] = std::move(*out);
        else statuses[size_t(r)] = out.status();
      });
    } else {
      ForEachRank(world_size_, [&](int r) {
        StatusOr<std::vector<HostTensor>> out = RunLocalOp(node, operands[size_t(r)], out_types);
        if (out.ok()) results[size_t(r)] = std::move(*out);
        else statuses[size_t(r)] = out.status();
      });
    }
    for (int r = 0; r < world_size_; ++r) {
      const Status& s = statuses[size_t(r)];
      if (!s.ok()) return node_error(world_size_ > 1 ? s.WithContext(StrCat("rank ", r)) : s);
    }

    // Results must have the IR's dtype and element count; the IR's shape wins (a scale in
    // [G, pad4(T)] is the same bytes however the op shaped it).
    for (int r = 0; r < world_size_; ++r) {
      std::vector<HostTensor>& res = results[size_t(r)];
      if (int(res.size()) != node.num_results())
        return node_error(Internal("the reference op produced ", res.size(), " results, the IR has ",
                                   node.num_results()));
      for (int i = 0; i < node.num_results(); ++i) {
        const ResolvedType& want = out_types[size_t(i)];
        HostTensor& t = res[size_t(i)];
        int64_t want_numel = 1;
        for (int64_t d : want.shape) want_numel *= d;
        if (t.dtype() != want.dtype || t.numel() != want_numel)
          return node_error(Internal("result ", i, " (%", node.result(i)->name(), ") is ",
                                     t.TypeString(), ", the IR says ", DTypeName(want.dtype),
                                     ShapeString(want.shape)));
        if (t.shape() != want.shape) t = t.Reshaped(want.shape);
        values[size_t(r)].Set(node.result(i), std::move(t));
      }
    }
    // Drop operands whose last use was this node.
    for (const ir::Value* v : node.operands()) {
      if (last_use[v] == ni && !returned.count(v) && !v->is_param()) {
        for (RankValues& rv : values) rv.Erase(v);
      }
    }
  }

  RankOutputs outputs(ranks);
  for (int r = 0; r < world_size_; ++r) {
    for (const ir::Value* v : graph.outputs()) {
      const HostTensor* t = values[size_t(r)].Find(v);
      if (t == nullptr) return Internal("returned value %", v->name(), " has no value on rank ", r);
      outputs[size_t(r)].push_back(*t);
    }
  }
  return outputs;
}

// A product dim (2*S, B*S) split into what the bindings know (the product of its constants and
// bound symbols; nullopt if it overflows) and its factors not yet bound (S*S: S twice).
struct ProductSplit {
  std::optional<int64_t> known = 1;
  std::vector<std::string> unbound;
};

ProductSplit SplitProduct(const ir::Dim& dim, const Bindings& bindings) {
  ProductSplit split;
  for (const std::string& f : dim.Factors()) {
    std::optional<int64_t> value = ir::Dim::ConstantFactor(f);
    if (auto b = bindings.find(f); !value && b != bindings.end()) value = b->second;
    if (!value) {
      split.unbound.push_back(f);
    } else if (int64_t product = 0;
               !split.known || __builtin_mul_overflow(*split.known, *value, &product)) {
      split.known = std::nullopt;
    } else {
      split.known = product;
    }
  }
  return split;
}

}  // namespace

std::unique_ptr<Executor> MakeCpuExecutor(int world_size) {
  return std::make_unique<CpuExecutor>(world_size);
}

StatusOr<Bindings> BindSymbols(const ir::Graph& graph, const TensorMap& inputs) {
  Bindings bindings;
  // Plain symbolic dims bind; padded ones (pad4(T)) and products (B*S) are checked once
  // everything is bound.
  for (const ir::Value* p : graph.params()) {
    const std::string want = p->type().ToString();
    auto it = inputs.find(p->name());
    if (it == inputs.end()) return NotFound("missing input %", p->name(), " (", want, ")");
    const HostTensor& t = it->second;
    if (t.dtype() != p->dtype())
      return InvalidArgument("input %", p->name(), " is ", t.TypeString(), ", expected ", want,
                             " (wrong dtype)");
    if (t.rank() != p->type().rank())
      return InvalidArgument("input %", p->name(), " is ", t.TypeString(), ", expected ", want,
                             " (wrong rank)");
    for (int d = 0; d < t.rank(); ++d) {
      const ir::Dim& dim = p->shape()[size_t(d)];
      const int64_t got = t.dim(d);
      if (dim.is_const()) {
        if (got != dim.value)
          return InvalidArgument("input %", p->name(), " is ", t.TypeString(), ", expected ", want,
                                 " (dim ", d, " must be ", dim.value, ")");
      } else if (dim.align == 1 && !dim.is_product()) {
        auto [bound, inserted] = bindings.emplace(dim.symbol, got);
        if (!inserted && bound->second != got)
          return InvalidArgument("input %", p->name(), " is ", t.TypeString(), ", expected ", want,
                                 ": dim ", d, " binds ", dim.symbol, " = ", got,
                                 " but an earlier input bound ", dim.symbol, " = ", bound->second);
      }
    }
  }
  // A product with one factor left unbound (2*S, B*S with B bound) binds it, when the size
  // divides evenly (else the check below names the dim); repeated while that binds more.
  for (bool progress = true; progress;) {
    progress = false;
    for (const ir::Value* p : graph.params()) {
      const HostTensor& t = inputs.at(p->name());
      for (int d = 0; d < t.rank(); ++d) {
        const ir::Dim& dim = p->shape()[size_t(d)];
        if (dim.align != 1 || !dim.is_product()) continue;
        const ProductSplit split = SplitProduct(dim, bindings);
        if (split.unbound.size() != 1 || !split.known || *split.known <= 0 ||
            t.dim(d) % *split.known != 0)
          continue;
        bindings.emplace(split.unbound[0], t.dim(d) / *split.known);
        progress = true;
      }
    }
  }
  for (const ir::Value* p : graph.params()) {
    const HostTensor& t = inputs.at(p->name());
    for (int d = 0; d < t.rank(); ++d) {
      const ir::Dim& dim = p->shape()[size_t(d)];
      if (dim.is_const() || (dim.align == 1 && !dim.is_product())) continue;
      StatusOr<int64_t> want = dim.Resolve(bindings);
      if (!want.ok()) {
        const ProductSplit split = SplitProduct(dim, bindings);
        const std::string where = StrCat("input %", p->name(), " is ", t.TypeString(), ": dim ", d,
                                         " is ", dim.ToString());
        if (split.unbound.size() == 1 && split.known && *split.known == 0)
          return InvalidArgument(where, ", whose other factors are 0: ", split.unbound[0],
                                 " is undetermined (give a parameter with a plain ",
                                 split.unbound[0], " dim)");
        if (split.unbound.size() == 1 && split.known)
          return InvalidArgument(where, ", and ", t.dim(d), " is not a multiple of ",
                                 *split.known, " (cannot bind ", split.unbound[0], ")");
        std::string unbound;
        const std::set<std::string> names(split.unbound.begin(), split.unbound.end());
        for (const std::string& f : names) unbound += (unbound.empty() ? "" : ", ") + f;
        return InvalidArgument(where, ": cannot bind ", unbound,
                               " from it alone; give a parameter with a plain ",
                               split.unbound.front(), " dim");
      }
      if (*want != t.dim(d))
        return InvalidArgument("input %", p->name(), " is ", t.TypeString(), ", expected ",
                               p->type().ToString(), " (dim ", d, " must be ", dim.ToString(),
                               " = ", *want, ")");
    }
  }
  return bindings;
}

}  // namespace tpfuse::runtime
