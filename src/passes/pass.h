// Passes over the graph IR and the driver that runs them.
#pragma once

#include <iosfwd>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "passes/local_fusion.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::passes {

// One fused chain: the all_reduce it started from and what the fused op does.
struct FusionRecord {
  std::string anchor;  // name of the all_reduce result the chain started at
  // spec.second_sum: the other all_reduce's result, summed with the anchor's; else empty.
  std::string second_anchor;
  AllreduceRmsnormSpec spec;
  std::string fused_value;  // name of the fused op's first result
  // What was left out of the chain and why ("quant_fp8 %q stays unfused: quant fp8_token is
  // not supported by backend cuda"), in words the CLI prints.
  std::vector<std::string> notes;
};

// One all_reduce left unfused, and why, in words a user can act on.
struct Rejection {
  std::string anchor;
  std::string reason;
};

// Shared state of one pipeline run: the target, and what the passes found.
struct PassContext {
  int world_size = 2;
  int64_t max_tokens = 0;  // 0: unknown
  FusionCapabilities caps = CpuFusionCapabilities();
  // Also fuse `[add ->] rms_norm [-> quant]` chains that no all_reduce feeds, into the fused op
  // with spec.local = true (compile option; see passes/compile.h).
  bool fuse_local = false;
  // Local chains (these and world size 1's) are fused only where the fused op was measured at
  // least as fast as Inductor's kernel for them (passes/local_fusion.h; FuseLocal::kInductor).
  bool local_vs_inductor = false;
  // Where Inductor's kernel was measured faster (passes/local_fusion.h; tests pass their own).
  // NOTE: a view; the table must outlive the context (MeasuredLosses() is static).
  std::span<const MeasuredLoss> inductor_losses = MeasuredLosses();
  // The same for chains with a norm before the residual add (MeasuredPreNormLosses()).
  std::span<const MeasuredLoss> inductor_pre_norm_losses = MeasuredPreNormLosses();

  std::vector<FusionRecord> fusions;
  std::vector<Rejection> rejections;
  // Local chains (fuse_local) left as they are, and why; `anchor` names the chain's x.
  std::vector<Rejection> local_unfused;
  // rule name -> counter name -> count ("anchors_seen", "fused", "rejected: <reason kind>").
  std::map<std::string, std::map<std::string, int>> counters;
  // Why the rewrite patterns left a node as it was, by the name of its first result, from the
  // last sweep that found nothing to rewrite ("decomposed_dynamic_quant: the scale is not amax /
  // 448"): the fusion pass says so where an FP8 quantization of a fused norm stayed out.
  std::map<std::string, std::vector<std::string>> declines_at;

  // When set, the graph is printed here after every pass, under a "# after <pass>" comment
  // line (a .tpg comment, so the dump stays parseable).
  std::ostream* dump = nullptr;

  void Count(const std::string& rule, const std::string& counter, int n = 1) {
    counters[rule][counter] += n;
  }
};

class Pass {
 public:
  virtual ~Pass() = default;
  virtual std::string name() const = 0;
  // Returns whether the graph changed.
  virtual StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) = 0;
};

class PassManager {
 public:
  PassManager& Add(std::unique_ptr<Pass> pass);
  // Runs every pass once, in order, verifying the graph after each (a pass that breaks the IR
  // is an internal error naming the pass). Returns whether anything changed.
  StatusOr<bool> Run(ir::Graph& graph, PassContext& ctx) const;
  std::vector<std::string> PassNames() const;

 private:
  std::vector<std::unique_ptr<Pass>> passes_;
};

// Rewrites the decomposed and variant forms of Contract 2 into canonical ops: decomposed
// RMSNorm -> rms_norm, static quant -> quant_fp8 mode tensor, dynamic per-token / per-group
// quant (f32 or UE8M0 scales) -> quant_fp8 mode token / group, add operand order (add and
// fused_add_rms_norm: the all_reduce-derived operand first), no-op views,
// add + rms_norm -> fused_add_rms_norm.
std::unique_ptr<Pass> MakeCanonicalizePass();
// Starts at every all_reduce and absorbs the add / norm / quant chain after it into one
// allreduce_rmsnorm, emitting what the rest of the graph uses (legality from ctx.caps).
std::unique_ptr<Pass> MakeFuseAllreduceEpiloguePass();
// Removes nodes whose results are unused.
std::unique_ptr<Pass> MakeDcePass();

// canonicalize, fuse_allreduce_epilogue, dce.
PassManager MakeDefaultPipeline();

}  // namespace tpfuse::passes
