#include <ostream>

#include "ir/printer.h"
#include "ir/verifier.h"
#include "passes/pass.h"

namespace tpfuse::passes {

PassManager& PassManager::Add(std::unique_ptr<Pass> pass) {
  passes_.push_back(std::move(pass));
  return *this;
}

std::vector<std::string> PassManager::PassNames() const {
  std::vector<std::string> names;
  for (const auto& p : passes_) names.push_back(p->name());
  return names;
}

StatusOr<bool> PassManager::Run(ir::Graph& graph, PassContext& ctx) const {
  if (Status input = ir::Verify(graph); !input.ok())
    return InvalidArgument("invalid input graph @", graph.name(), ": ", input.message());

  bool changed = false;
  for (const auto& pass : passes_) {
    const std::string name = pass->name();
    StatusOr<bool> pass_changed = pass->Run(graph, ctx);
    if (!pass_changed.ok()) return pass_changed.status().WithContext("in pass " + name);
    // NOTE: a pass that leaves a broken graph is a bug in the pass, not in the input: report it
    // as internal and name the pass, before a later pass trips over it.
    if (Status verified = ir::Verify(graph); !verified.ok()) {
      return Internal("pass ", name, " left an invalid graph @", graph.name(), ": ",
                      verified.message());
    }
    changed = changed || *pass_changed;
    if (ctx.dump != nullptr) {
      *ctx.dump << "# after " << name << (*pass_changed ? "" : " (unchanged)") << "\n"
                << ir::PrintGraph(graph) << "\n";
    }
  }
  return changed;
}

PassManager MakeDefaultPipeline() {
  PassManager pm;
  pm.Add(MakeCanonicalizePass());
  pm.Add(MakeFuseAllreduceEpiloguePass());
  pm.Add(MakeDcePass());
  return pm;
}

}  // namespace tpfuse::passes
