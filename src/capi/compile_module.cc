#include "capi/compile_module.h"

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "ir/parser.h"
#include "ir/printer.h"
#include "passes/pass.h"

namespace tpfuse::capi {
namespace {

nlohmann::ordered_json FusionJson(const passes::FusionRecord& f) {
  const AllreduceRmsnormSpec& s = f.spec;
  nlohmann::ordered_json j = {{"anchor", f.anchor},
                              {"fused_value", f.fused_value},
                              {"quant", std::string(QuantModeName(s.quant))},
                              {"emit", s.emit.Names()},
                              {"has_residual", s.has_residual},
                              {"hidden", s.hidden},
                              {"rounding", s.rounding.Names()},
                              {"spec", s.ToString()},
                              {"notes", f.notes}};
  return j;
}

}  // namespace

StatusOr<CompiledModule> CompileModuleText(std::string_view text,
                                           const CompileModuleOptions& options) {
  if (options.world_size < 1)
    return InvalidArgument("world size must be >= 1, got ", options.world_size);
  if (options.max_tokens < 0)
    return InvalidArgument("max_tokens must be >= 0, got ", options.max_tokens);
  if (options.fuse_local != 0)
    return Unimplemented("fuse_local other than auto is not available in this build");
  TPFUSE_ASSIGN_OR_RETURN(ir::Module module, ir::ParseModule(text, options.source_name));

  std::map<std::string, int> ops_before, ops_after;
  std::map<std::string, std::map<std::string, int>> counters;
  nlohmann::ordered_json fusions = nlohmann::ordered_json::array();
  nlohmann::ordered_json rejections = nlohmann::ordered_json::array();
  nlohmann::ordered_json funcs = nlohmann::ordered_json::array();
  const passes::PassManager pipeline = passes::MakeDefaultPipeline();
  for (std::unique_ptr<ir::Graph>& graph : module.funcs) {
    passes::PassContext ctx;
    ctx.world_size = options.world_size;
    ctx.max_tokens = options.max_tokens;
    ctx.caps = options.cuda_backend ? CudaFusionCapabilities() : CpuFusionCapabilities();
    const std::map<std::string, int> before = graph->OpCounts();
    StatusOr<bool> changed = pipeline.Run(*graph, ctx);
    if (!changed.ok()) return changed.status().WithContext("compiling @" + graph->name());
    const std::map<std::string, int> after = graph->OpCounts();

    nlohmann::ordered_json func_fusions = nlohmann::ordered_json::array();
    nlohmann::ordered_json func_rejections = nlohmann::ordered_json::array();
    for (const passes::FusionRecord& f : ctx.fusions) {
      func_fusions.push_back(FusionJson(f));
      nlohmann::ordered_json j = FusionJson(f);
      j["func"] = graph->name();
      fusions.push_back(std::move(j));
    }
    for (const passes::Rejection& r : ctx.rejections) {
      func_rejections.push_back({{"anchor", r.anchor}, {"reason", r.reason}});
      rejections.push_back({{"anchor", r.anchor}, {"reason", r.reason}, {"func", graph->name()}});
    }
    for (const auto& [op, n] : before) ops_before[op] += n;
    for (const auto& [op, n] : after) ops_after[op] += n;
    for (const auto& [rule, rule_counters] : ctx.counters)
      for (const auto& [name, n] : rule_counters) counters[rule][name] += n;
    funcs.push_back({{"name", graph->name()},
                     {"ops_before", before},
                     {"ops_after", after},
                     {"fusions", func_fusions},
                     {"rejections", func_rejections},
                     {"counters", ctx.counters}});
  }

  nlohmann::ordered_json report = {{"backend", options.cuda_backend ? "cuda" : "cpu"},
                                   {"world_size", options.world_size},
                                   {"max_tokens", options.max_tokens},
                                   {"ops_before", ops_before},
                                   {"ops_after", ops_after},
                                   {"fusions", fusions},
                                   {"rejections", rejections},
                                   {"counters", counters},
                                   {"funcs", funcs}};
  return CompiledModule{ir::PrintModule(module), report.dump()};
}

}  // namespace tpfuse::capi
