#include "ir/graph.h"

#include <algorithm>
#include <unordered_map>

namespace tpfuse::ir {

// ---------------------------------------------------------------- Dim / TensorType

std::string Dim::ToString() const {
  if (is_const()) return std::to_string(value);
  if (align > 1) return StrCat("pad", align, "(", symbol, ")");
  return symbol;
}

std::vector<std::string> Dim::Factors() const {
  std::vector<std::string> factors;
  if (is_const()) return factors;
  size_t start = 0;
  for (;;) {
    const size_t star = symbol.find('*', start);
    factors.push_back(symbol.substr(start, star == std::string::npos ? star : star - start));
    if (star == std::string::npos) break;
    start = star + 1;
  }
  return factors;
}

std::optional<int64_t> Dim::ConstantFactor(const std::string& factor) {
  if (factor.empty() || factor.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : factor) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

StatusOr<int64_t> Dim::Resolve(const std::map<std::string, int64_t>& bindings) const {
  if (is_const()) return value;
  int64_t product = 1;
  for (const std::string& factor : Factors()) {
    std::optional<int64_t> constant = ConstantFactor(factor);
    auto it = bindings.find(factor);
    if (!constant && it == bindings.end()) return InvalidArgument("symbol ", factor, " is not bound");
    if (__builtin_mul_overflow(product, constant ? *constant : it->second, &product))
      return InvalidArgument(symbol, " overflows");
  }
  return (product + align - 1) / align * align;
}

std::string TensorType::ToString() const {
  std::string s = std::string(DTypeName(dtype)) + "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + shape[i].ToString();
  return s + "]";
}

StatusOr<std::vector<int64_t>> TensorType::Resolve(
    const std::map<std::string, int64_t>& bindings) const {
  std::vector<int64_t> dims;
  for (const Dim& d : shape) {
    TPFUSE_ASSIGN_OR_RETURN(int64_t v, d.Resolve(bindings));
    dims.push_back(v);
  }
  return dims;
}

// ---------------------------------------------------------------- Value

bool Value::is_returned() const {
  return std::any_of(uses_.begin(), uses_.end(), [](const Use& u) { return u.is_return(); });
}

void Value::ReplaceAllUsesWith(Value* other) {
  ReplaceUsesIf(other, [](const Use&) { return true; });
}

int Value::ReplaceUsesIf(Value* other, const std::function<bool(const Use&)>& pred) {
  if (other == this) return 0;
  // Collect first: rewiring edits uses_.
  std::vector<Use> moving;
  for (const Use& u : uses_) {
    if (pred(u)) moving.push_back(u);
  }
  for (const Use& u : moving) {
    if (u.is_return()) {
      graph_->outputs_[u.index] = other;
      std::erase(uses_, u);
      other->uses_.push_back(u);
    } else {
      u.user->SetOperand(u.index, other);
    }
  }
  return int(moving.size());
}

// ---------------------------------------------------------------- Node

void Node::SetOperand(int i, Value* value) {
  Value* old = operands_.at(i);
  if (old == value) return;
  std::erase(old->uses_, Use{this, i});
  operands_[i] = value;
  value->uses_.push_back(Use{this, i});
}

const Attr* Node::attr(const std::string& name) const {
  auto it = attrs_.find(name);
  return it == attrs_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------- Graph

Value* Graph::NewValue(const std::string& name, TensorType type) {
  auto v = std::make_unique<Value>();
  v->name_ = UniqueName(name);
  v->graph_ = this;
  v->type_ = std::move(type);
  Value* raw = v.get();
  values_.push_back(std::move(v));
  by_name_[raw->name_] = raw;
  return raw;
}

Value* Graph::AddParam(const std::string& name, TensorType type) {
  Value* v = NewValue(name, std::move(type));
  params_.push_back(v);
  return v;
}

void Graph::SetOutputs(const std::vector<Value*>& outputs) {
  for (Value* v : outputs_) {
    std::erase_if(v->uses_, [](const Use& u) { return u.is_return(); });
  }
  outputs_ = outputs;
  for (int i = 0; i < int(outputs_.size()); ++i) outputs_[i]->uses_.push_back(Use{nullptr, i});
}

Node* Graph::AddNode(const std::string& op, const std::vector<Value*>& operands, AttrMap attrs,
                     const std::vector<std::string>& result_names,
                     const std::vector<TensorType>& result_types, Node* insert_before) {
  auto node = std::make_unique<Node>();
  Node* raw = node.get();
  raw->op_ = op;
  raw->kind_ = OpKindFromName(op);
  raw->graph_ = this;
  raw->attrs_ = std::move(attrs);
  raw->operands_ = operands;
  for (int i = 0; i < int(operands.size()); ++i) operands[i]->uses_.push_back(Use{raw, i});
  for (size_t i = 0; i < result_types.size(); ++i) {
    const std::string name = i < result_names.size() && !result_names[i].empty()
                                 ? result_names[i]
                                 : StrCat(op, "_", i);
    Value* v = NewValue(name, result_types[i]);
    v->producer_ = raw;
    v->result_index_ = int(i);
    raw->results_.push_back(v);
  }
  auto pos = insert_before ? insert_before->self_ : nodes_.end();
  raw->self_ = nodes_.insert(pos, std::move(node));
  return raw;
}

Status Graph::EraseNode(Node* node) {
  if (node == nullptr || node->graph_ != this)
    return FailedPrecondition("cannot erase a node that is not in graph @", name_);
  for (Value* r : node->results_) {
    if (r->has_uses())
      return FailedPrecondition("cannot erase ", node->op(), ": result %", r->name(),
                                " still has uses");
  }
  for (int i = 0; i < int(node->operands_.size()); ++i) {
    std::erase(node->operands_[i]->uses_, Use{node, i});
  }
  for (Value* r : node->results_) {
    by_name_.erase(r->name_);
    values_.remove_if([r](const std::unique_ptr<Value>& v) { return v.get() == r; });
  }
  nodes_.erase(node->self_);
  return Status::Ok();
}

std::vector<Node*> Graph::NodesSnapshot() const {
  std::vector<Node*> out;
  out.reserve(nodes_.size());
  for (const auto& n : nodes_) out.push_back(n.get());
  return out;
}

int Graph::IndexOf(const Node* node) const {
  int i = 0;
  for (const auto& n : nodes_) {
    if (n.get() == node) return i;
    ++i;
  }
  return -1;
}

void Graph::MoveBefore(Node* node, Node* before) {
  nodes_.splice(before ? before->self_ : nodes_.end(), nodes_, node->self_);
}

Value* Graph::FindValue(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::string Graph::UniqueName(const std::string& base) const {
  if (!by_name_.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string candidate = StrCat(base, ".", i);
    if (!by_name_.count(candidate)) return candidate;
  }
}

std::map<std::string, int> Graph::OpCounts() const {
  std::map<std::string, int> counts;
  for (const auto& n : nodes_) counts[n->op()]++;
  return counts;
}

std::unique_ptr<Graph> Graph::Clone() const {
  auto g = std::make_unique<Graph>(name_);
  std::unordered_map<const Value*, Value*> map;
  for (Value* p : params_) map[p] = g->AddParam(p->name(), p->type());
  for (const auto& n : nodes_) {
    std::vector<Value*> operands;
    for (Value* v : n->operands_) operands.push_back(map.at(v));
    std::vector<std::string> names;
    std::vector<TensorType> types;
    for (Value* r : n->results_) {
      names.push_back(r->name());
      types.push_back(r->type());
    }
    Node* copy = g->AddNode(n->op_, operands, n->attrs_, names, types);
    copy->set_location(n->line_, n->column_);
    for (size_t i = 0; i < n->results_.size(); ++i) map[n->results_[i]] = copy->results_[i];
  }
  std::vector<Value*> outs;
  for (Value* v : outputs_) outs.push_back(map.at(v));
  g->SetOutputs(outs);
  return g;
}

std::string NodeLabel(const Node& node) {
  std::string label = node.op();
  if (node.num_results() > 0) label += " %" + node.result(0)->name();
  if (node.line() > 0) label += StrCat(" (line ", node.line(), ")");
  return label;
}

}  // namespace tpfuse::ir
