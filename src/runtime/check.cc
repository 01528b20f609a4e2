#include "runtime/check.h"

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <optional>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "ir/ops.h"
#include "ir/static_quant.h"

namespace tpfuse::runtime {
namespace {

using ir::SkipViews;

bool IsGemmOutput(const ir::Value* v) {
  const ir::Node* p = SkipViews(v)->producer();
  return p && (p->kind() == ir::OpKind::kMatmul || p->kind() == ir::OpKind::kScaledMatmul);
}

// Whether a GEMM's output reaches `v` through the ops before it (a residual stream after a
// layer's GEMMs): the backends' accumulation orders differ, and a one-ulp change in a row's
// norm input moves the whole row of the next GEMM, so such a value holds only the GEMM's bound.
bool AfterGemm(const ir::Value* v) {
  std::vector<const ir::Value*> stack = {v};
  std::set<const ir::Value*> seen;
  while (!stack.empty()) {
    const ir::Value* u = stack.back();
    stack.pop_back();
    if (!seen.insert(u).second) continue;
    if (IsGemmOutput(u)) return true;
    if (const ir::Node* p = u->producer())
      for (const ir::Value* operand : p->operands()) stack.push_back(operand);
  }
  return false;
}

// The dynamic quant that produced `v` as its scale or its q: the node, and the result
// index of its s.
struct DynamicQuant {
  const ir::Node* node = nullptr;
  int q_result = -1;
  int s_result = -1;
  Fp8ScaleMap map;
};

std::optional<DynamicQuant> DynamicQuantOf(const ir::Value* v) {
  const ir::Value* src = SkipViews(v);
  const ir::Node* p = src->producer();
  if (p == nullptr) return std::nullopt;
  if (p->kind() == ir::OpKind::kQuantFp8) {
    StatusOr<ir::QuantParams> params = ir::QuantParamsFromNode(*p);
    if (!params.ok() || !IsDynamicQuant(params->mode)) return std::nullopt;
    const bool col = params->layout == ScaleLayout::kCol;
    return DynamicQuant{p, 0, 1,
                        params->mode == QuantMode::kFp8Token
                            ? Fp8ScaleMap::Token(col)
                            : Fp8ScaleMap::Group(params->group_size, col)};
  }
  if (p->kind() == ir::OpKind::kAllreduceRmsnorm) {
    StatusOr<AllreduceRmsnormSpec> spec = ir::FusedSpecFromNode(*p);
    if (!spec.ok() || !IsDynamicQuant(spec->quant)) return std::nullopt;
    const ir::FusedResultIndices at = ir::FusedResultLayout(*spec);
    if (src->result_index() != at.q && src->result_index() != at.s) return std::nullopt;
    const bool col = spec->scale_layout == ScaleLayout::kCol;
    return DynamicQuant{p, at.q, at.s,
                        spec->quant == QuantMode::kFp8Token
                            ? Fp8ScaleMap::Token(col)
                            : Fp8ScaleMap::Group(spec->group_size, col)};
  }
  return std::nullopt;
}

bool IsScaleOutput(const ir::Value* v) {
  std::optional<DynamicQuant> dq = DynamicQuantOf(v);
  return dq && SkipViews(v)->result_index() == dq->s_result;
}

// Position of `value` (or a view of it) in the graph's return list, or -1.
int ReturnedAt(const ir::Graph& graph, const ir::Value* value) {
  for (int i = 0; i < int(graph.outputs().size()); ++i) {
    if (SkipViews(graph.outputs()[size_t(i)]) == value) return i;
  }
  return -1;
}

// The static scale an f8e4m3 value was quantized with: the parameter and whether the graph
// multiplies by it (the stored value is 1 / scale) or a scalar attribute's reciprocal.
struct StaticScale {
  std::string param;  // empty when the scale is the scalar attribute
  bool reciprocal = false;
  double scalar = 0.0;
};

std::optional<StaticScale> StaticScaleOf(const ir::Value* v) {
  const ir::Node* p = SkipViews(v)->producer();
  if (p == nullptr) return std::nullopt;
  const auto param_scale = [](const ir::Value* s, bool reciprocal) -> std::optional<StaticScale> {
    s = SkipViews(s);
    if (!s->is_param() || s->dtype() != DType::kF32) return std::nullopt;
    return StaticScale{s->name(), reciprocal, 0.0};
  };
  if (p->kind() == ir::OpKind::kQuantFp8 && p->num_operands() == 2) return param_scale(p->operand(1), false);
  if (p->kind() == ir::OpKind::kAllreduceRmsnorm) {
    StatusOr<AllreduceRmsnormSpec> spec = ir::FusedSpecFromNode(*p);
    if (!spec.ok() || spec->quant != QuantMode::kFp8Tensor) return std::nullopt;
    return param_scale(p->operand(ir::FusedOperandLayout(*spec).scale), false);
  }
  std::optional<ir::StaticQuantForm> form = ir::MatchStaticQuant(*p);
  if (!form) return std::nullopt;
  if (form->scalar) return StaticScale{"", !form->divides, *form->scalar};
  if (form->divides || form->scale) return param_scale(form->scale, false);
  return param_scale(form->inv, true);
}

// The static scale as an f32[] tensor for one rank.
StatusOr<HostTensor> StaticScaleTensor(const StaticScale& scale, const TensorMap& inputs) {
  double value = scale.scalar;
  if (!scale.param.empty()) {
    auto it = inputs.find(scale.param);
    if (it == inputs.end() || it->second.numel() != 1)
      return NotFound("static scale %", scale.param, " is not among the inputs");
    value = it->second.GetF32(0);
  }
  HostTensor t(DType::kF32, {});
  t.SetF32(0, float(scale.reciprocal ? 1.0 / value : value));
  return t;
}

std::string FormatNumber(double v) {
  std::ostringstream os;
  os << std::setprecision(3) << v;
  return os.str();
}

}  // namespace

std::string OutputCheck::ToString() const {
  std::ostringstream os;
  std::string cls_text(ToleranceClassName(cls));
  if (!basis.empty()) cls_text += " (" + basis + ")";
  const char* unit = cls == ToleranceClass::kScale ? " rel" : cls == ToleranceClass::kExact ? "" : " ulp";
  os << std::left << std::setw(16) << ("%" + name) << " " << std::setw(36) << cls_text
     << " max_abs_err " << std::setw(10) << FormatNumber(max_abs_err) << " max_err "
     << std::setw(10) << (FormatNumber(max_ulp_err) + unit) << " ";
  if (ok) {
    os << "ok";
  } else {
    std::string why = detail.summary;
    if (why.rfind("FAIL: ", 0) == 0) why = why.substr(6);
    os << "FAIL on rank " << failed_rank << ": " << why;
  }
  return os.str();
}

std::string CheckReport::ToString() const {
  std::string s;
  int failed = 0;
  for (const OutputCheck& o : outputs) {
    s += o.ToString() + "\n";
    failed += o.ok ? 0 : 1;
  }
  const bool bitwise = std::all_of(outputs.begin(), outputs.end(), [](const OutputCheck& o) {
    return o.cls == ToleranceClass::kExact;
  });
  s += StrCat(outputs.size(), " outputs checked: ",
              failed == 0 ? (bitwise ? "all bitwise equal" : "all within tolerance")
                          : StrCat(failed, " failed"),
              "\n");
  return s;
}

namespace {

// CompareGraphOutputs; with `anchored`, the reference graph's GEMMs that the run's carried over
// (AnchorGemms) no longer reach what follows them, so only the reference graph says whether a
// GEMM's output reaches a value (the run graph still has every GEMM).
StatusOr<CheckReport> CompareOutputs(const ir::Graph& ref_graph, const RankOutputs& ref_outputs,
                                     const ir::Graph& got_graph, const RankOutputs& got_outputs,
                                     const std::vector<TensorMap>& inputs, CompareMode mode,
                                     bool anchored) {
  const size_t num_outputs = ref_graph.outputs().size();
  if (got_graph.outputs().size() != num_outputs)
    return InvalidArgument("the graphs return ", num_outputs, " and ", got_graph.outputs().size(),
                           " values");
  if (ref_outputs.size() != got_outputs.size() || ref_outputs.empty())
    return InvalidArgument("outputs for ", ref_outputs.size(), " and ", got_outputs.size(),
                           " ranks");
  if (inputs.size() != ref_outputs.size())
    return InvalidArgument("inputs for ", inputs.size(), " ranks, outputs for ",
                           ref_outputs.size());
  for (size_t r = 0; r < ref_outputs.size(); ++r) {
    if (ref_outputs[r].size() != num_outputs || got_outputs[r].size() != num_outputs)
      return InvalidArgument("rank ", r, " has ", ref_outputs[r].size(), " reference and ",
                             got_outputs[r].size(), " outputs, the graphs return ", num_outputs);
  }

  CheckReport report;
  for (size_t i = 0; i < num_outputs; ++i) {
    const ir::Value* ref_v = ref_graph.outputs()[i];
    const ir::Value* got_v = got_graph.outputs()[i];
    OutputCheck check;
    check.index = int(i);
    check.name = ref_v->name();

    // Decide the class and, for FP8, where the scales come from.
    std::optional<DynamicQuant> dq;
    int s_position = -1;
    std::optional<StaticScale> static_scale;
    const DType dtype = ref_v->dtype();
    const bool gemm_output = IsGemmOutput(ref_v) || IsGemmOutput(got_v);
    // On the GPU the GEMMs are cuBLAS's, which sums in its own order: bit for bit covers what
    // tpfuse computes, and a GEMM output keeps the GEMM's bound.
    if (mode == CompareMode::kBitwise ||
        (mode == CompareMode::kBitwiseAnyNaN && !(IsFloatType(dtype) && gemm_output))) {
      check.cls = ToleranceClass::kExact;
    } else if (dtype == DType::kF8E4M3) {
      check.cls = ToleranceClass::kFp8Dequantized;
      for (const auto& [graph, v] : {std::pair{&ref_graph, ref_v}, std::pair{&got_graph, got_v}}) {
        std::optional<DynamicQuant> candidate = DynamicQuantOf(v);
        if (candidate && SkipViews(v)->result_index() == candidate->q_result) {
          const int at = ReturnedAt(*graph, candidate->node->result(candidate->s_result));
          if (at >= 0) {
            dq = candidate;
            s_position = at;
            break;
          }
        }
        if (!static_scale) static_scale = StaticScaleOf(v);
      }
      if (dq) {
        check.basis = "returned %" + ref_graph.outputs()[size_t(s_position)]->name();
      } else if (static_scale) {
        const std::string what = static_scale->param.empty()
                                     ? StrCat(static_scale->scalar)
                                     : "%" + static_scale->param;
        check.basis = StrCat("static ", static_scale->reciprocal ? "1/" : "", what);
      } else {
        check.basis = "code step";
      }
    } else if (dtype == DType::kF32 && (IsScaleOutput(ref_v) || IsScaleOutput(got_v))) {
      check.cls = ToleranceClass::kScale;
    } else if (IsFloatType(dtype) && gemm_output) {
      check.cls = ToleranceClass::kGemm;
    } else if (IsHalfType(dtype) && (AfterGemm(ref_v) || (!anchored && AfterGemm(got_v)))) {
      check.cls = ToleranceClass::kAfterGemm;
    } else if (IsHalfType(dtype)) {
      check.cls = ToleranceClass::kHalf;
    } else {
      check.cls = ToleranceClass::kExact;
    }

    for (size_t r = 0; r < ref_outputs.size(); ++r) {
      const HostTensor& got = got_outputs[r][i];
      const HostTensor& ref = ref_outputs[r][i];
      CompareResult result;
      switch (check.cls) {
        case ToleranceClass::kHalf: result = CompareHalf(got, ref); break;
        case ToleranceClass::kGemm:
        case ToleranceClass::kAfterGemm: result = CompareGemm(got, ref); break;
        case ToleranceClass::kScale: result = CompareScales(got, ref); break;
        case ToleranceClass::kExact:
          result = CompareExact(got, ref, mode == CompareMode::kBitwiseAnyNaN);
          break;
        case ToleranceClass::kFp8Dequantized:
          if (dq) {
            result = CompareFp8Dequantized(got, got_outputs[r][size_t(s_position)], ref,
                                           ref_outputs[r][size_t(s_position)], dq->map);
          } else if (static_scale) {
            TPFUSE_ASSIGN_OR_RETURN(HostTensor s, StaticScaleTensor(*static_scale, inputs[r]));
            result = CompareFp8Dequantized(got, s, ref, s, Fp8ScaleMap::Tensor());
          } else {
            result = CompareFp8Codes(got, ref);
          }
          break;
      }
      check.max_abs_err = std::max(check.max_abs_err, result.max_abs_err);
      check.max_ulp_err = std::max(check.max_ulp_err, result.max_ulp_err);
      if (!result.ok && check.ok) {
        check.ok = false;
        check.failed_rank = int(r);
        check.detail = result;
      } else if (r == 0) {
        check.detail = result;
      }
    }
    report.ok = report.ok && check.ok;
    report.outputs.push_back(std::move(check));
  }
  return report;
}

}  // namespace

StatusOr<CheckReport> CompareGraphOutputs(const ir::Graph& ref_graph,
                                          const RankOutputs& ref_outputs,
                                          const ir::Graph& got_graph,
                                          const RankOutputs& got_outputs,
                                          const std::vector<TensorMap>& inputs,
                                          CompareMode mode) {
  return CompareOutputs(ref_graph, ref_outputs, got_graph, got_outputs, inputs, mode,
                        /*anchored=*/false);
}

StatusOr<AnchoredGraphs> AnchorGemms(const ir::Graph& unfused, const ir::Graph& run_graph) {
  if (run_graph.outputs().size() != unfused.outputs().size())
    return InvalidArgument("the graphs return ", unfused.outputs().size(), " and ",
                           run_graph.outputs().size(), " values");
  AnchoredGraphs a;
  a.run = run_graph.Clone();
  a.reference = unfused.Clone();
  a.num_outputs = unfused.outputs().size();
  std::vector<ir::Value*> run_outputs = a.run->outputs();
  std::vector<ir::Value*> ref_outputs = a.reference->outputs();
  for (ir::Node* node : a.reference->NodesSnapshot()) {
    if (node->kind() != ir::OpKind::kMatmul && node->kind() != ir::OpKind::kScaledMatmul)
      continue;
    ir::Value* gemm = node->result();
    ir::Value* ran = a.run->FindValue(gemm->name());
    if (ran == nullptr || ran->producer() == nullptr || ran->producer()->kind() != node->kind() ||
        !(ran->type() == gemm->type()))
      continue;  // not in the run graph as it is here: not carried over
    ir::Value* carried = a.reference->AddParam(a.reference->UniqueName(gemm->name() + ".run"),
                                               gemm->type());
    gemm->ReplaceAllUsesWith(carried);
    for (ir::Value*& v : ref_outputs)
      if (v == gemm) v = carried;
    a.gemms.push_back(gemm->name());
    a.params.push_back(carried->name());
    run_outputs.push_back(ran);
    ref_outputs.push_back(gemm);
  }
  a.run->SetOutputs(run_outputs);
  a.reference->SetOutputs(ref_outputs);
  return a;
}

StatusOr<CheckedRun> RunAndCheck(const ir::Graph& unfused, const ir::Graph& run_graph,
                                 Executor& backend, Executor& oracle,
                                 std::vector<TensorMap> inputs, CompareMode mode) {
  TPFUSE_ASSIGN_OR_RETURN(AnchoredGraphs a, AnchorGemms(unfused, run_graph));
  CheckedRun out;
  auto start = std::chrono::steady_clock::now();
  TPFUSE_ASSIGN_OR_RETURN(RankOutputs got, backend.Run(*a.run, inputs));
  out.run_seconds = SecondsSince(start);
  // The oracle's inputs: the same maps (no copy of the weights), with the carried GEMMs added.
  for (size_t r = 0; r < got.size() && r < inputs.size(); ++r)
    for (size_t j = 0; j < a.params.size(); ++j)
      inputs[r][a.params[j]] = got[r][a.num_outputs + j];
  start = std::chrono::steady_clock::now();
  TPFUSE_ASSIGN_OR_RETURN(RankOutputs ref, oracle.Run(*a.reference, inputs));
  out.oracle_seconds = SecondsSince(start);
  TPFUSE_ASSIGN_OR_RETURN(out.report, CompareOutputs(*a.reference, ref, *a.run, got, inputs,
                                                     mode, /*anchored=*/true));
  // The graph's outputs under their own names; one that is a carried GEMM's value (through
  // views) is the run's own, checked on that GEMM's line.
  for (size_t i = 0; i < a.num_outputs; ++i) {
    OutputCheck& o = out.report.outputs[i];
    o.name = unfused.outputs()[i]->name();
    const ir::Value* src = SkipViews(a.reference->outputs()[i]);
    if (src->is_param() &&
        std::find(a.params.begin(), a.params.end(), src->name()) != a.params.end())
      o.basis = "the run's GEMM, carried over";
  }
  for (size_t i = a.num_outputs; i < out.report.outputs.size(); ++i)
    out.report.outputs[i].basis = "from the run's earlier GEMMs";
  out.report.gemms = int(a.gemms.size());
  out.outputs = std::move(got);
  for (std::vector<HostTensor>& rank : out.outputs) rank.resize(a.num_outputs);
  return out;
}

Status CheckRanksIdentical(const ir::Graph& graph, const RankOutputs& outputs,
                           const std::vector<int>& indices) {
  std::vector<int> which = indices;
  if (which.empty()) {
    for (int i = 0; i < int(graph.outputs().size()); ++i) which.push_back(i);
  }
  for (int i : which) {
    if (i < 0 || i >= int(graph.outputs().size()))
      return InvalidArgument("output index ", i, " is out of range");
    for (size_t r = 0; r < outputs.size(); ++r) {
      if (size_t(i) >= outputs[r].size())
        return InvalidArgument("rank ", r, " has ", outputs[r].size(), " outputs");
    }
    for (size_t r = 1; r < outputs.size(); ++r) {
      const HostTensor& a = outputs[0][size_t(i)];
      const HostTensor& b = outputs[r][size_t(i)];
      if (!b.BitwiseEquals(a)) {
        const CompareResult diff = CompareExact(b, a);
        return FailedPrecondition("output %", graph.outputs()[size_t(i)]->name(), " differs between rank 0 and rank ", r,
                                  ": ", diff.summary);
      }
    }
  }
  return Status::Ok();
}

}  // namespace tpfuse::runtime
