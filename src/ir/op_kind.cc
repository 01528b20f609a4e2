#include "ir/op_kind.h"

namespace tpfuse::ir {
namespace {

constexpr OpKind kAllKinds[] = {
    OpKind::kAllReduce,  OpKind::kAdd,        OpKind::kSub,
    OpKind::kMul,        OpKind::kDiv,        OpKind::kPow,
    OpKind::kRsqrt,      OpKind::kSqrt,       OpKind::kAbs,
    OpKind::kNeg,        OpKind::kReciprocal, OpKind::kLog2,
    OpKind::kExp2,       OpKind::kCeil,       OpKind::kClamp,
    OpKind::kCast,       OpKind::kMean,       OpKind::kAmax,
    OpKind::kView,       OpKind::kRmsNorm,    OpKind::kFusedAddRmsNorm,
    OpKind::kQuantFp8,   OpKind::kMatmul,     OpKind::kScaledMatmul,
    OpKind::kAllreduceRmsnorm, OpKind::kOpaque, OpKind::kFull,
};

}  // namespace

std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAllReduce: return "all_reduce";
    case OpKind::kAdd: return "add";
    case OpKind::kSub: return "sub";
    case OpKind::kMul: return "mul";
    case OpKind::kDiv: return "div";
    case OpKind::kPow: return "pow";
    case OpKind::kRsqrt: return "rsqrt";
    case OpKind::kSqrt: return "sqrt";
    case OpKind::kAbs: return "abs";
    case OpKind::kNeg: return "neg";
    case OpKind::kReciprocal: return "reciprocal";
    case OpKind::kLog2: return "log2";
    case OpKind::kExp2: return "exp2";
    case OpKind::kCeil: return "ceil";
    case OpKind::kClamp: return "clamp";
    case OpKind::kCast: return "cast";
    case OpKind::kMean: return "mean";
    case OpKind::kAmax: return "amax";
    case OpKind::kView: return "view";
    case OpKind::kFull: return "full";
    case OpKind::kRmsNorm: return "rms_norm";
    case OpKind::kFusedAddRmsNorm: return "fused_add_rms_norm";
    case OpKind::kQuantFp8: return "quant_fp8";
    case OpKind::kMatmul: return "matmul";
    case OpKind::kScaledMatmul: return "scaled_matmul";
    case OpKind::kAllreduceRmsnorm: return "allreduce_rmsnorm";
    case OpKind::kOpaque: return "opaque";
    case OpKind::kUnknown: return "<unknown>";
  }
  return "<unknown>";
}

OpKind OpKindFromName(std::string_view name) {
  for (OpKind kind : kAllKinds) {
    if (OpKindName(kind) == name) return kind;
  }
  return OpKind::kUnknown;
}

}  // namespace tpfuse::ir
