// Comparing a graph's outputs against the oracle's, output by output, with Contract 3's
// tolerance table (common/tolerance.h). Used by `tpfuse run --check`, `demo` and the tests.
//
// Outputs are matched by position: the i-th returned value of `got_graph` is compared with the
// i-th of `ref_graph` on every rank. The class of an output comes from the graphs (the reference
// graph first, then the other one):
//   - bf16 / f16 / f32 produced, possibly through views, by matmul or scaled_matmul: GEMM class;
//   - other bf16 / f16: within 1 ulp;
//   - f8e4m3: dequantized with the scale its producer used:
//       the returned scale of a dynamic quant (quant_fp8 token/group or allreduce_rmsnorm's s)
//       when that scale is also returned, mapped per mode, group size and layout;
//       the static-scale parameter for mode tensor (quant_fp8's scale operand,
//       allreduce_rmsnorm's scale, the divisor of a decomposed `div -> clamp -> cast`, or the
//       reciprocal of a `mul` factor);
//       otherwise the codes themselves (+-1 FP8 code step);
//   - f32 scales (the s result of quant_fp8 or allreduce_rmsnorm): within 2^-7 relative;
//   - anything else: bitwise.
// With CompareMode::kBitwise every output is compared bit for bit (class exact): what a graph
// fused with the rounding recipe of the form it replaced computes on the CPU backend. With
// kBitwiseAnyNaN (a GPU run) too, but a GEMM output keeps the GEMM class (cuBLAS's order).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/tolerance.h"
#include "ir/graph.h"
#include "runtime/executor.h"

namespace tpfuse::runtime {

struct OutputCheck {
  int index = 0;               // position in the return list
  std::string name;            // the reference graph's value name
  ToleranceClass cls = ToleranceClass::kExact;
  // What the comparison rests on: for fp8, where the scale comes from ("returned %s", "static
  // %scale", "code step"); for a GEMM carried over (RunAndCheck), "from the run's earlier
  // GEMMs".
  std::string basis;
  bool ok = true;
  double max_abs_err = 0.0;    // over every rank
  double max_ulp_err = 0.0;    // in the class's unit (ulps; relative error for scales)
  int failed_rank = -1;        // the first rank that failed
  CompareResult detail;        // that rank's comparison (rank 0's when every rank passed)

  // "%q   fp8-dequant (returned %s)   max_abs_err 0.0039   max_err 0.5 ulp   ok", or
  // "... FAIL on rank 1: 1 of 768 mismatch (...): first at [5] (row 0, col 5) got .. ref .."
  std::string ToString() const;
};

struct CheckReport {
  bool ok = true;
  std::vector<OutputCheck> outputs;
  int gemms = 0;  // the last `gemms` of `outputs` are GEMMs carried over (RunAndCheck)
  // One line per output, then "N outputs checked on R ranks: all within tolerance" or
  // "... K failed".
  std::string ToString() const;
};

enum class CompareMode : uint8_t {
  kTolerance,      // Contract 3's tolerance table, per output class
  kBitwise,        // every output bit for bit
  kBitwiseAnyNaN,  // bit for bit, but a NaN matches any NaN (a GPU run: its NaN is canonical)
};

// Compares every returned value of every rank. Structural problems (a different number of
// outputs or ranks) are errors; a value of the wrong dtype or shape is a failed output.
StatusOr<CheckReport> CompareGraphOutputs(const ir::Graph& ref_graph,
                                          const RankOutputs& ref_outputs,
                                          const ir::Graph& got_graph,
                                          const RankOutputs& got_outputs,
                                          const std::vector<TensorMap>& inputs,
                                          CompareMode mode = CompareMode::kTolerance);

// ---------------------------------------------------------------- the GEMMs carried over
// The backends' GEMMs sum in different orders (cuBLAS's on the GPU, the oracle's in double), so a
// GEMM output differs from the oracle's in its last bits. A later layer's norm can turn such a
// difference into an FP8 code rounded the other way, and one FP8 step (up to 2^-3) of one
// operand of the next GEMM moves that GEMM's whole row past any GEMM bound. So a check of a
// whole graph gives the oracle the run's own GEMM outputs: what follows a GEMM reads the run's
// value, so every other output is compared in its own class on the values the run had, and the
// oracle still computes every GEMM, from the run's earlier GEMMs, to compare with the run's
// (class gemm).

// The run graph and the unfused graph, set up for that: GEMMs (matmul, scaled_matmul) are matched
// by result name and type (fusion leaves them as they were); one the run graph lacks is not
// carried over, and what follows it keeps the after-gemm class.
struct AnchoredGraphs {
  // The run graph, the carried GEMMs returned after its outputs.
  std::unique_ptr<ir::Graph> run;
  // The unfused graph: each carried GEMM's uses read the parameter "<gemm>.run", and the GEMM is
  // returned after the outputs.
  std::unique_ptr<ir::Graph> reference;
  std::vector<std::string> gemms;        // the carried GEMMs, in the order returned
  std::vector<std::string> params;       // their parameters in `reference`
  size_t num_outputs = 0;                // the graphs' own outputs
};
StatusOr<AnchoredGraphs> AnchorGemms(const ir::Graph& unfused, const ir::Graph& run_graph);

struct CheckedRun {
  RankOutputs outputs;  // the run graph's own outputs, per rank
  CheckReport report;   // its outputs, then one line per carried GEMM
  double run_seconds = 0.0;
  double oracle_seconds = 0.0;
};
// Runs `run_graph` on `backend` and `unfused` on `oracle`, the GEMMs carried over, and compares.
// `inputs` is taken by value: the oracle's inputs are these maps with the carried GEMMs added.
StatusOr<CheckedRun> RunAndCheck(const ir::Graph& unfused, const ir::Graph& run_graph,
                                 Executor& backend, Executor& oracle,
                                 std::vector<TensorMap> inputs,
                                 CompareMode mode = CompareMode::kTolerance);

// Ok when the listed outputs (all when `indices` is empty) are bitwise identical on every
// rank; otherwise an error naming the first output and rank that differ.
Status CheckRanksIdentical(const ir::Graph& graph, const RankOutputs& outputs,
                           const std::vector<int>& indices = {});

}  // namespace tpfuse::runtime
