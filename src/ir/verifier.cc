#include "ir/verifier.h"

#include <algorithm>
#include <map>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "ir/ops.h"

namespace tpfuse::ir {
namespace {


class Verifier {
 public:
  explicit Verifier(const Graph& graph) : graph_(graph) {}

  Status Run() {
    TPFUSE_RETURN_IF_ERROR(CollectValues());
    CountUses();
    TPFUSE_RETURN_IF_ERROR(CheckNodes());
    TPFUSE_RETURN_IF_ERROR(CheckOutputs());
    return CheckUseLists();
  }

 private:
  template <class... Args>
  Status NodeError(const Node& node, const Args&... args) const {
    return InvalidArgument(NodeLabel(node), ": ", args...);
  }

  Status AddValue(const Value* v, const std::string& what) {
    if (v == nullptr) return InvalidArgument(what, " is null");
    auto [it, inserted] = names_.emplace(v->name(), v);
    if (!inserted) return InvalidArgument(what, ": value name %", v->name(), " is not unique");
    if (graph_.FindValue(v->name()) != v)
      return InvalidArgument(what, ": %", v->name(), " is not registered under its name");
    values_.insert(v);
    return Status::Ok();
  }

  // Every value of the graph (parameters and results) and every node, with ownership checks.
  Status CollectValues() {
    for (size_t i = 0; i < graph_.params().size(); ++i) {
      const Value* p = graph_.params()[i];
      TPFUSE_RETURN_IF_ERROR(AddValue(p, StrCat("parameter ", i)));
      if (!p->is_param()) return InvalidArgument("parameter %", p->name(), " has a producer");
    }
    for (const auto& owned : graph_.nodes()) {
      const Node& node = *owned;
      nodes_.insert(&node);
      if (node.graph() != &graph_) return NodeError(node, "belongs to another graph");
      if (node.num_results() == 0) return NodeError(node, "has no results");
      for (int i = 0; i < node.num_results(); ++i) {
        const Value* r = node.result(i);
        TPFUSE_RETURN_IF_ERROR(AddValue(r, StrCat(NodeLabel(node), ": result ", i)));
        if (r->producer() != &node || r->result_index() != i)
          return NodeError(node, "result ", i, " %", r->name(), " does not point back at it");
      }
    }
    return Status::Ok();
  }

  // How often each (value, user, slot) is recorded, from every use list at once (a value with
  // many uses would otherwise be scanned once per use).
  void CountUses() {
    for (const auto& [name, v] : names_)
      for (const Use& use : v->uses()) ++use_counts_[{v, use.user, use.index}];
  }

  int CountUse(const Value& value, const Use& use) const {
    auto it = use_counts_.find({&value, use.user, use.index});
    return it == use_counts_.end() ? 0 : it->second;
  }

  // In program order: operands defined earlier, operand uses recorded, result types as inferred.
  Status CheckNodes() {
    std::unordered_set<const Value*> defined(graph_.params().begin(), graph_.params().end());
    for (const auto& owned : graph_.nodes()) {
      const Node& node = *owned;
      std::vector<TensorType> operand_types;
      for (int i = 0; i < node.num_operands(); ++i) {
        const Value* v = node.operand(i);
        // NOTE: a value outside the graph may be dangling; it is not dereferenced.
        if (v == nullptr || !values_.count(v))
          return NodeError(node, "operand ", i, " is not a value of this graph");
        if (!defined.count(v))
          return NodeError(node, "operand ", i, " %", v->name(), " is used before it is defined");
        if (CountUse(*v, Use{const_cast<Node*>(&node), i}) != 1)
          return NodeError(node, "operand ", i, " %", v->name(),
                           " does not record this use exactly once");
        operand_types.push_back(v->type());
      }
      if (node.kind() == OpKind::kOpaque) {
        // Declared result types: nothing to infer them from.
        std::vector<TensorType> declared;
        for (const Value* r : node.results()) declared.push_back(r->type());
        if (Status ok = CheckOpaque(node.attrs(), declared); !ok.ok())
          return NodeError(node, ok.message());
        for (const Value* r : node.results()) defined.insert(r);
        continue;
      }
      StatusOr<std::vector<TensorType>> inferred =
          InferResultTypes(node.op(), operand_types, node.attrs());
      if (!inferred.ok()) return NodeError(node, inferred.status().message());
      if (int(inferred->size()) != node.num_results())
        return NodeError(node, "has ", node.num_results(), " results, but ", node.op(),
                         " produces ", inferred->size());
      for (int i = 0; i < node.num_results(); ++i) {
        const Value* r = node.result(i);
        if (r->type() != (*inferred)[i])
          return NodeError(node, "result ", i, " %", r->name(), " has type ", r->type().ToString(),
                           ", but ", node.op(), " gives ", (*inferred)[i].ToString());
        defined.insert(r);
      }
    }
    return Status::Ok();
  }

  Status CheckOutputs() {
    const std::vector<Value*>& outputs = graph_.outputs();
    if (outputs.empty()) return InvalidArgument("func @", graph_.name(), " returns nothing");
    for (int i = 0; i < int(outputs.size()); ++i) {
      const Value* v = outputs[i];
      if (v == nullptr || !values_.count(v))
        return InvalidArgument("return value ", i, " is not a value of this graph");
      if (CountUse(*v, Use{nullptr, i}) != 1)
        return InvalidArgument("return value ", i, " %", v->name(),
                               " does not record its return use exactly once");
    }
    return Status::Ok();
  }

  // The other direction: every recorded use is a real operand or return slot.
  Status CheckUseLists() {
    for (const auto& [name, v] : names_) {
      for (const Use& use : v->uses()) {
        if (use.is_return()) {
          const auto& outputs = graph_.outputs();
          if (use.index < 0 || use.index >= int(outputs.size()) || outputs[use.index] != v)
            return InvalidArgument("%", name, " records return use ", use.index,
                                   " but is not returned there");
          continue;
        }
        if (!nodes_.count(use.user))
          return InvalidArgument("%", name, " records a use by a node outside the graph");
        if (use.index < 0 || use.index >= use.user->num_operands() ||
            use.user->operand(use.index) != v)
          return InvalidArgument("%", name, " records a use as operand ", use.index, " of ",
                                 NodeLabel(*use.user), ", which does not use it there");
      }
    }
    return Status::Ok();
  }

  const Graph& graph_;
  std::unordered_set<const Value*> values_;
  std::unordered_set<const Node*> nodes_;
  std::unordered_map<std::string, const Value*> names_;
  std::map<std::tuple<const Value*, const Node*, int>, int> use_counts_;
};

}  // namespace

Status Verify(const Graph& graph) { return Verifier(graph).Run(); }

}  // namespace tpfuse::ir
