#include "ir/printer.h"

namespace tpfuse::ir {
namespace {

std::string JoinValueNames(const std::vector<Value*>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", %" : "%") + values[i]->name();
  return out;
}

}  // namespace

std::string PrintGraph(const Graph& graph, const PrintOptions& options) {
  std::string out = "func @" + graph.name() + "(";
  for (size_t i = 0; i < graph.params().size(); ++i) {
    const Value* p = graph.params()[i];
    out += (i ? ", %" : "%") + p->name() + ": " + p->type().ToString();
  }
  out += ") {\n";
  for (const auto& node : graph.nodes()) {
    out += "  " + JoinValueNames(node->results()) + " = " + node->op() + "(" +
           JoinValueNames(node->operands()) + ")";
    if (!node->attrs().empty()) {
      out += " {";
      bool first = true;
      for (const auto& [name, attr] : node->attrs()) {  // sorted: printing is deterministic
        out += (first ? "" : ", ") + name + " = " + attr.ToString();
        first = false;
      }
      out += "}";
    }
    if (node->kind() == OpKind::kOpaque) {
      // Declared, not inferred: part of the statement.
      out += " : ";
      for (int i = 0; i < node->num_results(); ++i)
        out += (i ? ", " : "") + node->result(i)->type().ToString();
    } else if (options.result_types) {
      out += "  # ";
      for (int i = 0; i < node->num_results(); ++i)
        out += (i ? ", " : "") + node->result(i)->type().ToString();
    }
    out += "\n";
  }
  out += "  return " + JoinValueNames(graph.outputs()) + "\n}\n";
  return out;
}

std::string PrintModule(const Module& module, const PrintOptions& options) {
  std::string out;
  for (size_t i = 0; i < module.funcs.size(); ++i) {
    if (i) out += "\n";
    out += PrintGraph(*module.funcs[i], options);
  }
  return out;
}

}  // namespace tpfuse::ir
