// The graph IR: a function of typed values, nodes with several results, explicit use lists.
//
// Ownership: a Graph owns its Values and Nodes. Pointers stay valid until the node (or the
// graph) is erased. Node order is a topological order; passes insert new nodes before the node
// whose results they replace, so the order stays topological.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ir/attr.h"
#include "ir/op_kind.h"
#include "tpfuse/dtype.h"
#include "tpfuse/status.h"

namespace tpfuse::ir {

// One dimension: a constant, or a symbol bound at run time (the token count T), or a product
// of symbols (B*S: a flattened [B, S, H] activation has B*S rows). A symbolic dim may carry a
// round-up multiple (`align`): the column-major scale layout pads T to a multiple of 4, written
// pad4(T).
struct Dim {
  int64_t value = -1;   // >= 0 for a constant
  std::string symbol;   // non-empty for a symbolic dim: "T", or factors joined by '*' ("B*S")
  int64_t align = 1;    // symbolic only: round_up(symbol, align)

  static Dim Const(int64_t v) { return Dim{v, {}, 1}; }
  static Dim Sym(std::string s, int64_t align = 1) { return Dim{-1, std::move(s), align}; }
  bool is_const() const { return symbol.empty(); }
  // A product of two or more factors.
  bool is_product() const { return symbol.find('*') != std::string::npos; }
  // The factors multiplied: {"B", "S"} for B*S, {"T"} for T, {"2", "S"} for 2*S (a constant
  // batch times a symbolic length: a product's constant factor comes first); empty for a
  // constant.
  std::vector<std::string> Factors() const;
  // Whether a factor is a constant ("2" of 2*S), and its value.
  static std::optional<int64_t> ConstantFactor(const std::string& factor);
  bool operator==(const Dim&) const = default;
  // "4096", "T", "pad4(T)"
  std::string ToString() const;
  // Concrete value given symbol bindings (a product multiplies its factors); error if a symbol
  // is unbound or the product overflows.
  StatusOr<int64_t> Resolve(const std::map<std::string, int64_t>& bindings) const;
};

using Shape = std::vector<Dim>;

struct TensorType {
  DType dtype = DType::kF32;
  Shape shape;

  bool operator==(const TensorType&) const = default;
  int rank() const { return int(shape.size()); }
  // "bf16[T, 4096]"
  std::string ToString() const;
  StatusOr<std::vector<int64_t>> Resolve(const std::map<std::string, int64_t>& bindings) const;
};

class Node;
class Graph;

// A use of a value: operand `index` of `user`, or, when `user` is null, position `index` of the
// function's return list.
struct Use {
  Node* user = nullptr;
  int index = 0;
  bool is_return() const { return user == nullptr; }
  bool operator==(const Use&) const = default;
};

class Value {
 public:
  const std::string& name() const { return name_; }  // without the leading '%'
  const TensorType& type() const { return type_; }
  DType dtype() const { return type_.dtype; }
  const Shape& shape() const { return type_.shape; }
  void set_type(TensorType type) { type_ = std::move(type); }

  Node* producer() const { return producer_; }      // null for function parameters
  int result_index() const { return result_index_; }
  bool is_param() const { return producer_ == nullptr; }

  const std::vector<Use>& uses() const { return uses_; }
  bool has_uses() const { return !uses_.empty(); }
  bool is_returned() const;
  int num_uses() const { return int(uses_.size()); }

  // Points every use (returns included) at `other` instead.
  void ReplaceAllUsesWith(Value* other);
  // Points the uses for which pred(use) holds at `other`. Returns how many moved.
  int ReplaceUsesIf(Value* other, const std::function<bool(const Use&)>& pred);

 private:
  friend class Graph;
  friend class Node;
  std::string name_;
  TensorType type_;
  Graph* graph_ = nullptr;
  Node* producer_ = nullptr;
  int result_index_ = 0;
  std::vector<Use> uses_;
};

class Node {
 public:
  // The .tpg name ("add", "opaque", or an unknown name a caller gave AddNode).
  const std::string& op() const { return op_; }
  // What the op is; kUnknown when op() names no op (the verifier rejects such a node).
  OpKind kind() const { return kind_; }
  Graph* graph() const { return graph_; }

  int num_operands() const { return int(operands_.size()); }
  Value* operand(int i) const { return operands_.at(i); }
  const std::vector<Value*>& operands() const { return operands_; }
  // Rewires operand i (maintaining both use lists).
  void SetOperand(int i, Value* value);

  int num_results() const { return int(results_.size()); }
  Value* result(int i = 0) const { return results_.at(i); }
  const std::vector<Value*>& results() const { return results_; }

  const AttrMap& attrs() const { return attrs_; }
  AttrMap& mutable_attrs() { return attrs_; }
  const Attr* attr(const std::string& name) const;  // null if absent
  void set_attr(const std::string& name, Attr value) { attrs_[name] = std::move(value); }

  // Source position (1-based) of the statement this node came from; 0 when built by a pass.
  int line() const { return line_; }
  int column() const { return column_; }
  void set_location(int line, int column) { line_ = line; column_ = column; }

 private:
  friend class Graph;
  std::string op_;
  OpKind kind_ = OpKind::kUnknown;
  Graph* graph_ = nullptr;
  std::vector<Value*> operands_;
  std::vector<Value*> results_;
  AttrMap attrs_;
  int line_ = 0, column_ = 0;
  std::list<std::unique_ptr<Node>>::iterator self_;
};

class Graph {
 public:
  explicit Graph(std::string name = "main") : name_(std::move(name)) {}
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  // ---- parameters and returns
  Value* AddParam(const std::string& name, TensorType type);
  const std::vector<Value*>& params() const { return params_; }
  const std::vector<Value*>& outputs() const { return outputs_; }
  void SetOutputs(const std::vector<Value*>& outputs);

  // ---- nodes
  // Appends a node (insert_before == nullptr) or inserts it before `insert_before`.
  // Result names are made unique (a taken name gets a ".1", ".2" suffix). Result types are
  // given here; use ir::BuildNode (ops.h) to infer them from the op.
  Node* AddNode(const std::string& op, const std::vector<Value*>& operands, AttrMap attrs,
                const std::vector<std::string>& result_names,
                const std::vector<TensorType>& result_types, Node* insert_before = nullptr);
  // Erases a node whose results have no uses; its operands lose those uses.
  Status EraseNode(Node* node);
  // Nodes in topological (program) order. Safe to erase the current node while iterating over
  // a copy from NodesSnapshot().
  const std::list<std::unique_ptr<Node>>& nodes() const { return nodes_; }
  std::vector<Node*> NodesSnapshot() const;
  int num_nodes() const { return int(nodes_.size()); }
  // Position of a node in program order (O(n)); useful for diagnostics and ordering checks.
  int IndexOf(const Node* node) const;
  // Moves `node` to just before `before` (caller keeps the order topological).
  void MoveBefore(Node* node, Node* before);

  // ---- names
  Value* FindValue(const std::string& name) const;  // null if absent
  std::string UniqueName(const std::string& base) const;

  // Op name -> count, for reports.
  std::map<std::string, int> OpCounts() const;

  // Deep copy (same names, attributes, order).
  std::unique_ptr<Graph> Clone() const;

 private:
  friend class Value;  // return uses rewire outputs_
  Value* NewValue(const std::string& name, TensorType type);

  std::string name_;
  std::vector<Value*> params_;
  std::vector<Value*> outputs_;
  std::list<std::unique_ptr<Node>> nodes_;
  std::list<std::unique_ptr<Value>> values_;
  std::map<std::string, Value*> by_name_;
};

// "add %y (line 3)": how errors name a node.
std::string NodeLabel(const Node& node);

}  // namespace tpfuse::ir
