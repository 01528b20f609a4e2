#include "passes/rewriter.h"

#include <algorithm>
#include <limits>
#include <map>
#include <unordered_map>
#include <utility>

#include "ir/ops.h"

namespace tpfuse::passes {

// ---------------------------------------------------------------- positions

std::string DescribeUse(const ir::Use& use) {
  if (use.is_return()) return "the return";
  if (use.user->num_results() == 0) return use.user->op();
  return StrCat(use.user->op(), " %", use.user->result(0)->name());
}

StatusOr<ir::Dim> RowsOf(const ir::TensorType& t) {
  int64_t constant = 1;
  std::vector<std::string> symbols;
  const auto times = [&](int64_t v) -> Status {
    if (__builtin_mul_overflow(constant, v, &constant))
      return InvalidArgument("the rows of ", t.ToString(), " overflow");
    return Status::Ok();
  };
  for (int i = 0; i + 1 < t.rank(); ++i) {
    const ir::Dim& d = t.shape[size_t(i)];
    if (d.is_const()) {
      TPFUSE_RETURN_IF_ERROR(times(d.value));
    } else if (d.align != 1) {
      return InvalidArgument("leading dim ", d.ToString(), " is padded");
    } else {
      for (std::string& f : d.Factors()) {
        if (std::optional<int64_t> c = ir::Dim::ConstantFactor(f)) {
          TPFUSE_RETURN_IF_ERROR(times(*c));
        } else {
          symbols.push_back(std::move(f));
        }
      }
    }
  }
  if (symbols.empty()) return ir::Dim::Const(constant);
  // The canonical product, as the PyTorch translator writes one: the constant first (a fixed
  // batch times a length: 2*S), then the symbols sorted (B*S).
  std::sort(symbols.begin(), symbols.end());
  std::string product = constant == 1 ? "" : StrCat(constant);
  for (const std::string& s : symbols) product += (product.empty() ? "" : "*") + s;
  return ir::Dim::Sym(std::move(product));
}

StatusOr<ir::TensorType> RowsView(const ir::TensorType& t) {
  if (t.rank() == 2) return t;
  TPFUSE_ASSIGN_OR_RETURN(ir::Dim rows, RowsOf(t));
  return ir::TensorType{t.dtype, {rows, t.shape.back()}};
}

StatusOr<InsertionPoint> FindInsertionPoint(const ir::Graph& graph,
                                            const std::vector<ir::Value*>& operands,
                                            const std::vector<ir::Value*>& replaced,
                                            const std::set<const ir::Node*>& absorbed,
                                            const ir::Node* preferred) {
  std::vector<ir::Node*> order = graph.NodesSnapshot();
  std::unordered_map<const ir::Node*, int> index;
  for (int i = 0; i < int(order.size()); ++i) index[order[i]] = i;
  const int end = int(order.size());

  int latest_def = -1;
  const ir::Value* latest_value = nullptr;
  for (const ir::Value* v : operands) {
    if (v->is_param()) continue;
    const int i = index.at(v->producer());
    if (i > latest_def) {
      latest_def = i;
      latest_value = v;
    }
  }

  int earliest_use = end;
  const ir::Value* used_value = nullptr;
  ir::Use first_use;
  for (const ir::Value* v : replaced) {
    for (const ir::Use& u : v->uses()) {
      if (!u.is_return() && absorbed.count(u.user)) continue;
      const int i = u.is_return() ? end : index.at(u.user);
      if (used_value == nullptr || i < earliest_use) {
        earliest_use = i;
        used_value = v;
        first_use = u;
      }
    }
  }

  int position = preferred ? std::min(index.at(preferred), earliest_use) : earliest_use;
  if (position <= latest_def) position = latest_def + 1;
  if (position > earliest_use) {
    return FailedPrecondition("%", latest_value->name(), " is defined by ",
                              latest_value->producer()->op(), " after ", DescribeUse(first_use),
                              " uses %", used_value->name());
  }
  return InsertionPoint{position == end ? nullptr : order[position]};
}

// ---------------------------------------------------------------- Rewriter

void Rewriter::SetInsertionPointAfterDef(const ir::Value* value) {
  const auto& nodes = graph_.nodes();
  if (value->is_param()) {
    point_ = InsertionPoint{nodes.empty() ? nullptr : nodes.front().get()};
    return;
  }
  for (auto it = nodes.begin(); it != nodes.end(); ++it) {
    if (it->get() == value->producer()) {
      auto next = std::next(it);
      point_ = InsertionPoint{next == nodes.end() ? nullptr : next->get()};
      return;
    }
  }
}

StatusOr<ir::Value*> Rewriter::CreateView(ir::Value* value, const ir::TensorType& type,
                                          const std::string& name) {
  if (value->type().shape == type.shape) return value;
  std::vector<ir::Attr> items;
  for (const ir::Dim& d : type.shape)
    items.push_back(d.is_const() ? ir::Attr::Int(d.value) : ir::Attr::Name(d.ToString()));
  TPFUSE_ASSIGN_OR_RETURN(ir::Node * view,
                          Create("view", {value}, {{"shape", ir::Attr::List(items)}}, {name}));
  return view->result();
}

StatusOr<ir::Node*> Rewriter::Create(const std::string& op,
                                     const std::vector<ir::Value*>& operands, ir::AttrMap attrs,
                                     const std::vector<std::string>& result_names) {
  TPFUSE_ASSIGN_OR_RETURN(ir::Node * node, ir::BuildNode(graph_, op, operands, std::move(attrs),
                                                         result_names, point_.before));
  erased_.erase(node);  // the allocator may hand back the address of an erased node
  changed_ = true;
  return node;
}

void Rewriter::ReplaceAllUsesWith(ir::Value* from, ir::Value* to) {
  if (from == to || !from->has_uses()) return;
  from->ReplaceAllUsesWith(to);
  changed_ = true;
}

int Rewriter::ReplaceUsesIf(ir::Value* from, ir::Value* to,
                            const std::function<bool(const ir::Use&)>& pred) {
  const int moved = from->ReplaceUsesIf(to, pred);
  if (moved > 0) changed_ = true;
  return moved;
}

void Rewriter::SetOperand(ir::Node* node, int index, ir::Value* value) {
  if (node->operand(index) == value) return;
  node->SetOperand(index, value);
  changed_ = true;
}

void Rewriter::SetAttr(ir::Node* node, const std::string& name, ir::Attr value) {
  const ir::Attr* old = node->attr(name);
  if (old && *old == value) return;
  node->set_attr(name, std::move(value));
  changed_ = true;
}

Status Rewriter::Erase(ir::Node* node) {
  TPFUSE_RETURN_IF_ERROR(graph_.EraseNode(node));
  erased_.insert(node);
  changed_ = true;
  return Status::Ok();
}

Status Rewriter::EraseDead(const std::vector<ir::Node*>& nodes) {
  std::vector<std::pair<int, ir::Node*>> by_position;
  for (ir::Node* n : nodes) {
    if (n == nullptr || IsErased(n)) continue;
    by_position.emplace_back(graph_.IndexOf(n), n);
  }
  // Users come after their producers: erasing from the back frees the producers' uses first.
  std::sort(by_position.begin(), by_position.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  by_position.erase(std::unique(by_position.begin(), by_position.end()), by_position.end());
  for (auto& [position, n] : by_position) {
    const bool dead = std::none_of(n->results().begin(), n->results().end(),
                                   [](const ir::Value* r) { return r->has_uses(); });
    if (dead) TPFUSE_RETURN_IF_ERROR(Erase(n));
  }
  return Status::Ok();
}

StatusOr<ir::Node*> Rewriter::RestoreNames(ir::Node* node, const std::vector<std::string>& names) {
  bool any_free = false;
  for (int i = 0; i < node->num_results() && i < int(names.size()); ++i) {
    if (node->result(i)->name() != names[i] && graph_.FindValue(names[i]) == nullptr)
      any_free = true;
  }
  if (!any_free) return node;

  // A value's name is fixed at creation, so the node is rebuilt twice: once under scratch names
  // (which frees the current ones), once under the final names.
  std::vector<std::string> final_names;
  for (int i = 0; i < node->num_results(); ++i) {
    const bool want = i < int(names.size()) && graph_.FindValue(names[i]) == nullptr;
    final_names.push_back(want ? names[i] : node->result(i)->name());
  }
  auto rebuild = [&](ir::Node* old, const std::vector<std::string>& result_names)
      -> StatusOr<ir::Node*> {
    std::vector<ir::TensorType> types;
    for (const ir::Value* r : old->results()) types.push_back(r->type());
    ir::Node* fresh = graph_.AddNode(old->op(), old->operands(), old->attrs(), result_names,
                                     types, old);
    fresh->set_location(old->line(), old->column());
    erased_.erase(fresh);
    for (int i = 0; i < old->num_results(); ++i)
      old->result(i)->ReplaceAllUsesWith(fresh->result(i));
    TPFUSE_RETURN_IF_ERROR(Erase(old));
    return fresh;
  };
  std::vector<std::string> scratch;
  for (int i = 0; i < node->num_results(); ++i)
    scratch.push_back(graph_.UniqueName(StrCat(node->result(i)->name(), ".tmp")));
  TPFUSE_ASSIGN_OR_RETURN(ir::Node * moved, rebuild(node, scratch));
  return rebuild(moved, final_names);
}

// ---------------------------------------------------------------- the greedy driver

StatusOr<bool> ApplyPatternsGreedily(ir::Graph& graph, const PatternList& patterns,
                                     PassContext& ctx, const GreedyOptions& options) {
  std::vector<const Pattern*> by_benefit;
  for (const auto& p : patterns) by_benefit.push_back(p.get());
  std::stable_sort(by_benefit.begin(), by_benefit.end(),
                   [](const Pattern* a, const Pattern* b) { return a->benefit() > b->benefit(); });

  bool changed = false;
  for (int sweep = 0; sweep < options.max_sweeps; ++sweep) {
    Rewriter rewriter(graph);
    std::map<std::pair<std::string, std::string>, int> declines;
    std::map<std::string, std::vector<std::string>> declines_at;  // by the root's result name
    bool sweep_changed = false;
    for (ir::Node* node : graph.NodesSnapshot()) {
      if (rewriter.IsErased(node)) continue;
      for (const Pattern* pattern : by_benefit) {
        MatchNotes notes;
        const std::string op = node->op();
        const std::string root =
            node->num_results() > 0 ? StrCat(op, " %", node->result(0)->name()) : op;
        StatusOr<bool> applied = pattern->MatchAndRewrite(node, rewriter, notes);
        if (!applied.ok()) {
          return Internal("pattern ", pattern->name(), " failed at ", root, ": ",
                          applied.status().message());
        }
        if (*applied) {
          ctx.Count(std::string(pattern->name()), "applied");
          sweep_changed = true;
          break;
        }
        for (const std::string& reason : notes.declines()) {
          declines[{std::string(pattern->name()), reason}]++;
          if (node->num_results() > 0)
            declines_at[node->result(0)->name()].push_back(StrCat(pattern->name(), ": ", reason));
        }
      }
    }
    if (!sweep_changed) {
      // NOTE: declines are counted from the final sweep only; earlier sweeps see nodes that a
      // later rewrite changes, and would count one candidate several times.
      for (const auto& [key, n] : declines) ctx.Count(key.first, "declined: " + key.second, n);
      for (auto& [name, reasons] : declines_at) ctx.declines_at[name] = std::move(reasons);
      return changed;
    }
    changed = true;
  }
  return Internal("rewrite patterns did not reach a fixpoint after ", options.max_sweeps,
                  " sweeps over graph @", graph.name(), " (two patterns undo each other)");
}

}  // namespace tpfuse::passes
