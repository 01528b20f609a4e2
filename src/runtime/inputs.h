// Random inputs for running a graph with N ranks: what `tpfuse run`, `demo` and the tests feed
// the executors.
//
// Sharding rule. A parameter is per-rank (distinct values on each rank) iff
//   - it is an all_reduce operand, directly or through views (the partial sums a row-parallel
//     GEMM leaves on each rank; allreduce_rmsnorm's x counts the same way), or
//   - it is the weight of a GEMM: the second operand of matmul, or w / ws (the weight and its
//     scale) of scaled_matmul (each rank holds its own shard).
// Every other parameter is replicated: bitwise the same on every rank (activations after the
// reduction, residuals, norm weights, static quant scales).
//
// Values, by the role the graph gives the parameter:
//   - activations (any other float parameter): normal(0, 1) rounded to the dtype: both signs,
//     never all zeros;
//   - RMSNorm weights (rms_norm's w, fused_add_rms_norm's w, allreduce_rmsnorm's w, and a
//     rank-1 parameter multiplied into a tensor of higher rank, the decomposed form's weight,
//     also through casts and `+ scalar` as in `w.float() + 1`):
//     uniform in [0.5, 1.5];
//   - static quant scales (f32[] divided into an activation, or the scale operand of quant_fp8
//     and allreduce_rmsnorm): uniform in [0.005, 0.02], about max|y| / 448 for unit-scale y;
//     an f32[] multiplied into an activation is the reciprocal form: 1 / uniform[0.005, 0.02];
//   - f8e4m3 parameters: uniformly random codes, NaN codes excluded;
//   - f32 scales of scaled_matmul (s and ws): uniform in [0.002, 0.008];
//   - i32: small integers in [-8, 8].
// Values depend only on (seed, parameter name, rank for per-rank parameters), so two graphs
// with the same parameters (a graph and its fused form) get the same inputs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "runtime/executor.h"

namespace tpfuse::runtime {

enum class ParamRole : uint8_t {
  kActivation,
  kNormWeight,
  kStaticScale,         // f32[] divisor
  kStaticInverseScale,  // f32[] multiplier (1 / scale)
  kFp8,
  kGemmScale,           // scaled_matmul's s or ws
  kInteger,
};
std::string_view ParamRoleName(ParamRole role);

struct ParamInfo {
  ParamRole role = ParamRole::kActivation;
  bool per_rank = false;
};

// The role and sharding of one parameter of `graph` (rule above).
ParamInfo ClassifyParam(const ir::Value& param);

// The symbols of the parameters' shapes ("T"; "B", "S"), sorted.
std::vector<std::string> ShapeSymbols(const ir::Graph& graph);

// A value for each shape symbol of a graph.
using ShapeBindings = std::map<std::string, int64_t>;

// Every one of `symbols` (a graph's ShapeSymbols, or a module's) bound to `tokens`, but those
// `given` names, which take their given values. A name in `given` not among `symbols`, or a value
// below 1, is an InvalidArgument that lists `symbols`.
StatusOr<ShapeBindings> BindShapeSymbols(const std::vector<std::string>& symbols, int64_t tokens,
                                         const ShapeBindings& given = {});

// The rows of the graph's activations under `bindings`: the largest product of the symbols in
// one parameter's shape (B * S for [B, S, H], T for [T, H]); 0 when no parameter has a symbol.
int64_t SymbolRows(const ir::Graph& graph, const ShapeBindings& bindings);

// "B = S = 3" when every symbol has one value, else "B = 2, S = 150"; "" without symbols.
std::string FormatBindings(const ShapeBindings& bindings);

// One TensorMap per rank holding every parameter of `graph`, its symbolic dims resolved by
// `bindings` (every symbol bound to `tokens` in the second form). Deterministic per seed.
// Inputs that would take more than this machine's memory are refused with the sizes, before
// anything is allocated.
StatusOr<std::vector<TensorMap>> MakeRandomInputs(const ir::Graph& graph, int world_size,
                                                  const ShapeBindings& bindings, uint64_t seed);
StatusOr<std::vector<TensorMap>> MakeRandomInputs(const ir::Graph& graph, int world_size,
                                                  int64_t tokens, uint64_t seed);

}  // namespace tpfuse::runtime
