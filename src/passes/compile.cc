#include "passes/compile.h"

#include <charconv>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <ostream>

#include "ir/parser.h"
#include "ir/printer.h"

namespace tpfuse::passes {

std::string_view FuseLocalName(FuseLocal mode) {
  switch (mode) {
    case FuseLocal::kAuto: return "auto";
    case FuseLocal::kInductor: return "inductor";
    case FuseLocal::kOn: return "on";
    case FuseLocal::kOff: return "off";
  }
  return "?";
}

StatusOr<FuseLocal> ParseFuseLocal(std::string_view name) {
  for (FuseLocal mode : {FuseLocal::kAuto, FuseLocal::kInductor, FuseLocal::kOn, FuseLocal::kOff}) {
    if (name == FuseLocalName(mode)) return mode;
  }
  return InvalidArgument("unknown local-fusion mode '", name, "' (expected auto, inductor, on or off)");
}

bool CompileOptions::FusesLocal() const {
  switch (fuse_local) {
    case FuseLocal::kOn: return true;
    case FuseLocal::kOff: return false;
    case FuseLocal::kAuto:
    case FuseLocal::kInductor:
      // NOTE: the rule follows measurements (docs/pytorch.md, "Local chains"): on one H200 the
      // fused local op took 0.22-0.66 x the time of tpfuse's unfused kernels in every quantized
      // shape of `tpfuse bench --world-size 1`, and at most 0.99 x the time of Inductor's
      // kernel for the same chain. T is a symbol here, so kAuto fuses every local chain on CUDA;
      // kInductor leaves the chains where Inductor's kernel was faster (none now) to it
      // (ctx.local_vs_inductor). The CPU backend is the oracle, not a performance target; there
      // local chains are fused at world size 1 only, where every all_reduce is the identity and
      // its chain the layer's whole epilogue.
      return caps.backend == "cuda" || world_size == 1;
  }
  return false;
}

bool CompileOptions::ComparesWithInductor() const {
  // NOTE: measured on CUDA only; on the CPU (the oracle) kInductor is kAuto.
  return fuse_local == FuseLocal::kInductor && caps.backend == "cuda";
}

StatusOr<CompiledFunc> CompileGraph(const ir::Graph& graph, const CompileOptions& options) {
  if (options.world_size < 1)
    return InvalidArgument("world size must be >= 1, got ", options.world_size);
  CompiledFunc out;
  out.name = graph.name();
  out.graph = graph.Clone();
  out.ops_before = graph.OpCounts();
  out.ctx.world_size = options.world_size;
  out.ctx.max_tokens = options.max_tokens;
  out.ctx.caps = options.caps;
  out.ctx.fuse_local = options.FusesLocal();
  out.ctx.local_vs_inductor = options.ComparesWithInductor();
  out.ctx.inductor_losses = options.inductor_losses;
  out.ctx.inductor_pre_norm_losses = options.inductor_pre_norm_losses;
  out.ctx.dump = options.dump;
  const PassManager pipeline = MakeDefaultPipeline();
  StatusOr<bool> changed = pipeline.Run(*out.graph, out.ctx);
  if (!changed.ok()) return changed.status().WithContext("compiling @" + graph.name());
  out.ops_after = out.graph->OpCounts();
  return out;
}

namespace {

using Json = nlohmann::ordered_json;

// The double whose shortest decimal form is the float's (1e-06f -> 1e-06, not 9.99999997e-07).
double ShortestDouble(float value) {
  char buf[32];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), value);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

Json FusionJson(const FusionRecord& fusion) {
  const AllreduceRmsnormSpec& s = fusion.spec;
  Json j = {
      {"anchor", fusion.anchor},
      {"local", s.local},
      {"fused_value", fusion.fused_value},
      {"quant", std::string(QuantModeName(s.quant))},
      {"emit", s.emit.Names()},
      {"rounding", s.rounding.Names()},
      {"has_residual", s.has_residual},
      {"residual_dtype", std::string(DTypeName(s.has_residual ? s.residual_in_dtype() : s.act_dtype))},
      {"hidden", s.hidden},
      {"act_dtype", std::string(DTypeName(s.act_dtype))},
      {"weight_dtype", std::string(DTypeName(s.weight_dtype))},
      {"eps", ShortestDouble(s.eps)},
      {"weight_bias", ShortestDouble(s.weight_bias)},
      {"sum_scale", ShortestDouble(s.sum_scale)},
      {"second_sum", s.second_sum},
      {"bias", s.has_bias},
      {"bias_per_token", s.bias_per_token},
      {"pre_residual_norm", s.pre_residual_norm},
      {"spec", s.ToString()},
      {"notes", fusion.notes},
  };
  if (s.second_sum) {
    j["second_anchor"] = fusion.second_anchor;
    j["second_sum_into_residual"] = s.second_sum_into_residual;
    j["first_scale"] = ShortestDouble(s.first_scale);
    j["second_scale"] = ShortestDouble(s.second_scale);
  }
  if (s.pre_residual_norm) j["pre_eps"] = ShortestDouble(s.pre_eps);
  if (s.quant == QuantMode::kFp8Group) j["group_size"] = s.group_size;
  if (IsDynamicQuant(s.quant)) {
    j["scale_layout"] = std::string(ScaleLayoutName(s.scale_layout));
    j["scale_fmt"] = std::string(ScaleFormatName(s.scale_fmt));
  }
  return j;
}

Json RejectionJson(const Rejection& rejection) {
  return {{"anchor", rejection.anchor}, {"reason", rejection.reason}};
}

template <class Map>
void AddCounts(Map& into, const Map& from) {
  for (const auto& [key, n] : from) into[key] += n;
}

std::string ReportJson(const std::vector<CompiledFunc>& funcs, const CompileOptions& options,
                       std::string_view source) {
  Json report = {{"source", std::string(source)},
                 {"backend", options.caps.backend},
                 {"world_size", options.world_size},
                 {"max_tokens", options.max_tokens},
                 {"fuse_local", options.FusesLocal()},
                 {"fuse_local_mode", std::string(FuseLocalName(options.fuse_local))}};
  std::map<std::string, int> ops_before, ops_after;
  std::map<std::string, std::map<std::string, int>> counters;
  Json fusions = Json::array(), rejections = Json::array(), local_unfused = Json::array(),
       per_func = Json::array();
  for (const CompiledFunc& c : funcs) {
    AddCounts(ops_before, c.ops_before);
    AddCounts(ops_after, c.ops_after);
    for (const auto& [rule, rule_counters] : c.ctx.counters) AddCounts(counters[rule], rule_counters);
    Json func_fusions = Json::array(), func_rejections = Json::array(),
         func_local_unfused = Json::array();
    for (const FusionRecord& f : c.ctx.fusions) {
      func_fusions.push_back(FusionJson(f));
      Json merged = FusionJson(f);
      merged["func"] = c.name;
      fusions.push_back(std::move(merged));
    }
    for (const Rejection& r : c.ctx.rejections) {
      func_rejections.push_back(RejectionJson(r));
      Json merged = RejectionJson(r);
      merged["func"] = c.name;
      rejections.push_back(std::move(merged));
    }
    // Local chains left unfused: no rejection (those are about all_reduces), but said all the
    // same, by the norm input's name.
    for (const Rejection& r : c.ctx.local_unfused) {
      func_local_unfused.push_back(RejectionJson(r));
      Json merged = RejectionJson(r);
      merged["func"] = c.name;
      local_unfused.push_back(std::move(merged));
    }
    per_func.push_back({{"name", c.name},
                        {"ops_before", c.ops_before},
                        {"ops_after", c.ops_after},
                        {"fusions", func_fusions},
                        {"rejections", func_rejections},
                        {"local_unfused", func_local_unfused},
                        {"counters", c.ctx.counters}});
  }
  report["ops_before"] = ops_before;
  report["ops_after"] = ops_after;
  report["fusions"] = fusions;
  report["rejections"] = rejections;
  report["local_unfused"] = local_unfused;
  report["counters"] = counters;
  report["funcs"] = per_func;
  return report.dump(2);
}

}  // namespace

StatusOr<CompileResult> CompileModule(const std::vector<const ir::Graph*>& funcs,
                                      const CompileOptions& options, std::string_view source) {
  if (funcs.empty()) return InvalidArgument(source, ": no func to compile");
  CompileResult result;
  ir::Module fused;
  for (const ir::Graph* func : funcs) {
    if (options.dump) *options.dump << "# ---- @" << func->name() << "\n";
    TPFUSE_ASSIGN_OR_RETURN(CompiledFunc compiled, CompileGraph(*func, options));
    result.funcs.push_back(std::move(compiled));
  }
  // The module printer takes the graphs; lend them and take them back.
  for (CompiledFunc& c : result.funcs) fused.funcs.push_back(std::move(c.graph));
  result.text = ir::PrintModule(fused);
  for (size_t i = 0; i < result.funcs.size(); ++i) result.funcs[i].graph = std::move(fused.funcs[i]);
  result.json = ReportJson(result.funcs, options, source);
  return result;
}

StatusOr<CompileResult> CompileModuleText(std::string_view text, const CompileOptions& options,
                                          std::string_view source) {
  TPFUSE_ASSIGN_OR_RETURN(ir::Module module, ir::ParseModule(text, std::string(source)));
  std::vector<const ir::Graph*> funcs;
  for (const auto& f : module.funcs) funcs.push_back(f.get());
  return CompileModule(funcs, options, source);
}

std::string DescribeFusion(const FusionRecord& fusion) {
  const AllreduceRmsnormSpec& s = fusion.spec;
  std::string text = StrCat("%", fusion.anchor, s.second_sum ? StrCat(" + %", fusion.second_anchor) : "", ": ",
                            s.local ? "local, " : "",
                            !s.has_residual ? "" : s.residual_f32_in ? "+f32 residual, " : "+residual, ",
                            QuantModeName(s.quant));
  if (s.quant == QuantMode::kFp8Group) text += StrCat(" g", s.group_size);
  if (IsDynamicQuant(s.quant)) {
    if (s.scale_layout == ScaleLayout::kCol) text += " col";
    if (s.scale_fmt == ScaleFormat::kUe8m0) text += " ue8m0";
  }
  if (s.weight_dtype != s.act_dtype) text += StrCat(", norm weight ", DTypeName(s.weight_dtype));
  if (s.weight_bias != 0.0f) text += StrCat(", weight_bias ", s.weight_bias);
  if (s.has_bias) text += ", +bias";
  if (s.second_sum_into_residual) text += ", the second into the residual";
  if (s.pre_residual_norm) text += ", normed before the residual add";
  if (s.second_sum && (s.first_scale != 1.0f || s.second_scale != 1.0f))
    text += StrCat(", scales of the two sums ", s.first_scale, " and ", s.second_scale);
  if (s.sum_scale != 1.0f) text += StrCat(", sum_scale ", s.sum_scale);
  const auto list = [](const std::vector<std::string>& names) {
    std::string joined;
    for (const std::string& n : names) joined += (joined.empty() ? "" : ", ") + n;
    return "[" + joined + "]";
  };
  if (!s.rounding.is_default()) text += ", rounding " + list(s.rounding.Names());
  return text + ", emit " + list(s.emit.Names());
}

}  // namespace tpfuse::passes
