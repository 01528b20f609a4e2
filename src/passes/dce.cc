// dce: removes nodes none of whose results is used. Parameters stay (they are the function's
// signature); opaque nodes stay (the IR cannot know that they have no side effects). One
// backward sweep suffices: a node's users all come after it.
#include <algorithm>

#include "passes/pass.h"
#include "passes/rewriter.h"

namespace tpfuse::passes {
namespace {

class DcePass final : public Pass {
 public:
  std::string name() const override { return "dce"; }

  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) override {
    Rewriter rw(graph);
    std::vector<ir::Node*> nodes = graph.NodesSnapshot();
    int removed = 0;
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
      ir::Node* node = *it;
      if (node->kind() == ir::OpKind::kOpaque) continue;
      const bool dead = std::none_of(node->results().begin(), node->results().end(),
                                     [](const ir::Value* r) { return r->has_uses(); });
      if (!dead) continue;
      TPFUSE_RETURN_IF_ERROR(rw.Erase(node));
      ++removed;
    }
    if (removed > 0) ctx.Count(name(), "removed", removed);
    return removed > 0;
  }
};

}  // namespace

std::unique_ptr<Pass> MakeDcePass() { return std::make_unique<DcePass>(); }

}  // namespace tpfuse::passes
