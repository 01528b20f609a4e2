// The kinds of op a node can be: DESIGN.md Contract 2's op set, the fused op of Contract 3, and
// `opaque` (an op the IR does not know, kept with its declared result types). Executors and
// passes dispatch on OpKind with a `switch` that has no `default:`, so the compiler
// (-Werror=switch) names every place a new op must be handled.
//
// NOTE: the textual names (OpKindName) are the .tpg spelling and must not change: model files
// and tests are written in them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tpfuse::ir {

enum class OpKind : uint8_t {
  // collectives
  kAllReduce,
  // elementwise, two operands or one and a scalar
  kAdd,
  kSub,
  kMul,
  kDiv,
  // elementwise, one operand
  kPow,
  kRsqrt,
  kSqrt,
  kAbs,
  kNeg,
  kReciprocal,
  kLog2,
  kExp2,
  kCeil,
  kClamp,
  kCast,
  // reductions over the last dim
  kMean,
  kAmax,
  // shape
  kView,
  // a constant tensor (the unit weight of a norm written without one)
  kFull,
  // norms and quantization
  kRmsNorm,
  kFusedAddRmsNorm,
  kQuantFp8,
  // GEMMs
  kMatmul,
  kScaledMatmul,
  // the fused op (Contract 3)
  kAllreduceRmsnorm,
  // an op the IR does not know: a name, operands and declared result types; no backend runs it
  kOpaque,
  // a name that is none of the above (a graph built by hand); the verifier rejects it
  kUnknown,
};

// The .tpg spelling: "all_reduce", "add", ..., "opaque"; "<unknown>" for kUnknown.
std::string_view OpKindName(OpKind kind);
// The kind spelled `name`, kUnknown when there is none.
OpKind OpKindFromName(std::string_view name);

}  // namespace tpfuse::ir
