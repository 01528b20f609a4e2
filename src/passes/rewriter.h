// The rewrite framework shared by the passes: a Rewriter through which every graph mutation
// goes, small Pattern structs (`// before -> after`, a benefit, an early-failing Match), and a
// greedy driver that applies the highest-benefit matching pattern at each node until nothing
// matches any more.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "passes/pass.h"

namespace tpfuse::passes {

// Where a new node goes: before `before`, or at the end of the graph when `before` is null.
struct InsertionPoint {
  ir::Node* before = nullptr;
};

// Finds a position for a node that reads `operands` and takes over the uses of `replaced`:
// after the definition of every operand and no later than the first use of a replaced value
// (uses by nodes in `absorbed`, which the caller erases, do not count). Among legal positions it
// picks the one closest to `preferred` (usually the last absorbed node) without passing a use.
// The error says, in words, which definition comes after which use.
StatusOr<InsertionPoint> FindInsertionPoint(const ir::Graph& graph,
                                            const std::vector<ir::Value*>& operands,
                                            const std::vector<ir::Value*>& replaced,
                                            const std::set<const ir::Node*>& absorbed,
                                            const ir::Node* preferred);

// "matmul %o", "fused_add_rms_norm %y", "the return": how diagnostics name a use.
std::string DescribeUse(const ir::Use& use);

// The row count of an activation [d0, ..., H]: the product of the leading dims, as one dim
// (a constant, or a product of symbols "B*S"). A constant other than 1 beside a symbol has no
// Dim spelling: an error. Rank >= 3 activations reach the row-wise ops as [rows, H] views.
StatusOr<ir::Dim> RowsOf(const ir::TensorType& t);
// [rows, H] for an activation [..., H] (itself when of rank 2).
StatusOr<ir::TensorType> RowsView(const ir::TensorType& t);

// Every mutation of a pass goes through this object: it keeps the insertion point, knows which
// nodes were erased (the driver skips them) and whether anything changed.
class Rewriter {
 public:
  explicit Rewriter(ir::Graph& graph) : graph_(graph) {}

  ir::Graph& graph() { return graph_; }
  const ir::Graph& graph() const { return graph_; }

  void SetInsertionPoint(InsertionPoint point) { point_ = point; }
  void SetInsertionPointBefore(ir::Node* node) { point_ = InsertionPoint{node}; }
  // Right after the definition of `value` (the first node for a parameter): the earliest place
  // a node reading only `value` can go.
  void SetInsertionPointAfterDef(const ir::Value* value);

  // Builds a node at the insertion point with inferred result types (ir::BuildNode). A result
  // name that is still taken gets a suffix; RestoreNames fixes that once the old node is gone.
  StatusOr<ir::Node*> Create(const std::string& op, const std::vector<ir::Value*>& operands,
                             ir::AttrMap attrs, const std::vector<std::string>& result_names);

  // `value` viewed as `type` (same elements) at the insertion point, or `value` itself when it
  // has that shape already.
  StatusOr<ir::Value*> CreateView(ir::Value* value, const ir::TensorType& type,
                                  const std::string& name);

  void ReplaceAllUsesWith(ir::Value* from, ir::Value* to);
  int ReplaceUsesIf(ir::Value* from, ir::Value* to,
                    const std::function<bool(const ir::Use&)>& pred);
  void SetOperand(ir::Node* node, int index, ir::Value* value);
  // Changes an attribute in place.
  void SetAttr(ir::Node* node, const std::string& name, ir::Attr value);

  // Erases a node whose results have no uses (an error otherwise).
  Status Erase(ir::Node* node);
  // Erases the nodes of `nodes` whose results are all unused, users before producers, so a
  // dead chain goes in one call. Nodes still in use stay.
  Status EraseDead(const std::vector<ir::Node*>& nodes);

  // Gives `node`'s results the names `names` where those names are free (after the nodes that
  // held them were erased). Rebuilds the node when a name changes and returns the node that now
  // holds the results; the pointer passed in may be gone.
  StatusOr<ir::Node*> RestoreNames(ir::Node* node, const std::vector<std::string>& names);

  bool IsErased(const ir::Node* node) const { return erased_.count(node) > 0; }
  bool changed() const { return changed_; }

 private:
  ir::Graph& graph_;
  InsertionPoint point_;
  std::set<const ir::Node*> erased_;
  bool changed_ = false;
};

// Why a pattern did not fire on a node whose shape it recognized ("an intermediate value has
// other uses"). The driver counts these once the graph stops changing.
class MatchNotes {
 public:
  void Decline(std::string reason) { declines_.push_back(std::move(reason)); }
  const std::vector<std::string>& declines() const { return declines_; }
  void Clear() { declines_.clear(); }

 private:
  std::vector<std::string> declines_;
};

// A rewrite rooted at one node. Implementations are small structs: a `// before -> after`
// comment, a benefit, and MatchAndRewrite that returns false as soon as the root cannot match
// and mutates only through the Rewriter (after the match has fully succeeded).
class Pattern {
 public:
  virtual ~Pattern() = default;
  virtual std::string_view name() const = 0;
  // Higher applies first when several patterns match the same node.
  virtual int benefit() const = 0;
  // Returns whether the pattern matched and rewrote. Errors are internal: a match must check
  // everything the rewrite needs.
  virtual StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rewriter,
                                         MatchNotes& notes) const = 0;
};

// The usual way to write one: Match (no mutation) builds a small description of what it found,
// Rewrite applies it.
template <class MatchT>
class TypedPattern : public Pattern {
 public:
  virtual std::optional<MatchT> Match(ir::Node* root, MatchNotes& notes) const = 0;
  virtual Status Rewrite(const MatchT& match, Rewriter& rewriter) const = 0;

  StatusOr<bool> MatchAndRewrite(ir::Node* root, Rewriter& rewriter,
                                 MatchNotes& notes) const final {
    std::optional<MatchT> match = Match(root, notes);
    if (!match) return false;
    TPFUSE_RETURN_IF_ERROR(Rewrite(*match, rewriter));
    return true;
  }
};

using PatternList = std::vector<std::unique_ptr<Pattern>>;

struct GreedyOptions {
  // Sweeps over the graph before giving up. Every pattern makes the graph strictly "more
  // canonical", so hitting the cap means two patterns undo each other: an internal error.
  int max_sweeps = 64;
};

// Sweeps the graph in program order; at each live node tries the patterns by decreasing benefit
// and applies the first that matches. Repeats until a sweep changes nothing. Counts
// ctx.counters[pattern]["applied"] per rewrite and, from the final sweep (the graph as it is
// left), ctx.counters[pattern]["declined: <reason>"] per declined node. Returns whether the
// graph changed.
StatusOr<bool> ApplyPatternsGreedily(ir::Graph& graph, const PatternList& patterns,
                                     PassContext& ctx, const GreedyOptions& options = {});

}  // namespace tpfuse::passes
