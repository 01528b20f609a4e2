// The compiler as a library call: module text (or graphs) in, the fused module's text and the
// JSON report of DESIGN.md Contract 4 out. `tpfuse compile`, the C ABI and the tests call this;
// nothing here knows about files, processes or a CLI.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "passes/pass.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::passes {

// Whether `[add ->] rms_norm [-> quant]` chains that no all_reduce feeds become the fused op
// with spec.local = true (DESIGN.md "World size 1"). Otherwise they stay as they are, for the
// code generator around the compiler (Inductor) to fuse.
enum class FuseLocal : uint8_t {
  kAuto,      // where the fused local op was measured faster than tpfuse's unfused ops
              // (CompileOptions::FusesLocal): backend cuda at every world size; backend cpu
              // at world size 1 only
  kInductor,  // as kAuto, except chains Inductor's own kernel was measured faster on
              // (passes/local_fusion.h; backend cuda): what the PyTorch pass uses, where a
              // chain left alone becomes Inductor's kernel
  kOn,    // at every world size (the first layer's norm of the embedding, norms of replicated
          // values)
  kOff,
};
std::string_view FuseLocalName(FuseLocal mode);  // "auto", "on", "off"
StatusOr<FuseLocal> ParseFuseLocal(std::string_view name);

struct CompileOptions {
  int world_size = 2;      // TP degree the graph runs at (>= 1)
  int64_t max_tokens = 0;  // largest token count T (0: unknown)
  // What the target backend's fused op can do: CpuFusionCapabilities() or
  // CudaFusionCapabilities(). `backend` in the report is caps.backend.
  FusionCapabilities caps = CpuFusionCapabilities();
  FuseLocal fuse_local = FuseLocal::kAuto;
  // Where Inductor's kernel was measured faster, for kInductor (passes/local_fusion.h; tests
  // pass their own table). NOTE: a view, kept in the result's PassContext: the table must
  // outlive the CompileResult (MeasuredLosses() is static).
  std::span<const MeasuredLoss> inductor_losses = MeasuredLosses();
  // The same for chains with a norm before the residual add (MeasuredPreNormLosses()).
  std::span<const MeasuredLoss> inductor_pre_norm_losses = MeasuredPreNormLosses();
  // When set, the graph is printed here after every pass (a .tpg comment line names the pass).
  std::ostream* dump = nullptr;

  // Whether local chains are fused under these options: the one home of the auto rule.
  bool FusesLocal() const;
  // Whether fused local chains are limited to those the fused op was measured faster on than
  // Inductor's kernel (kInductor, backend cuda: passes/local_fusion.h).
  bool ComparesWithInductor() const;
};

// One func through the default pipeline.
struct CompiledFunc {
  std::string name;
  std::unique_ptr<ir::Graph> graph;  // the fused graph
  PassContext ctx;                   // fusions, rejections, counters
  std::map<std::string, int> ops_before;
  std::map<std::string, int> ops_after;
};

struct CompileResult {
  std::vector<CompiledFunc> funcs;
  std::string text;  // the fused module in .tpg (printed with result types)
  // Contract 4's report as a JSON object, every func merged plus a per-func list:
  //   {"source", "backend", "world_size", "max_tokens", "fuse_local",
  //    "ops_before", "ops_after", "fusions", "rejections", "counters",
  //    "funcs": [{"name", "ops_before", "ops_after", "fusions", "rejections", "counters"}]}
  // A fusion: {"func", "anchor", "local", "fused_value", "quant", "emit", "rounding", ...};
  // a rejection: {"func", "anchor", "reason"} (one per all_reduce left unfused).
  std::string json;
};

// Compiles a copy of `graph` (the input is left as it is).
StatusOr<CompiledFunc> CompileGraph(const ir::Graph& graph, const CompileOptions& options);

// Compiles every func of a module given as graphs. `source` names the input in the report.
StatusOr<CompileResult> CompileModule(const std::vector<const ir::Graph*>& funcs,
                                      const CompileOptions& options,
                                      std::string_view source = "<input>");

// Parses `text` (.tpg, Contract 1) and compiles every func. Parse errors read
// "<source>:<line>:<col>: <problem>"; invalid options (world size < 1) are errors too.
StatusOr<CompileResult> CompileModuleText(std::string_view text, const CompileOptions& options,
                                          std::string_view source = "<input>");

// "%l0.in.ar: +residual, fp8_group g128 col ue8m0, rounding [norm_input_f32], emit [norm, quant]"
std::string DescribeFusion(const FusionRecord& fusion);

}  // namespace tpfuse::passes
