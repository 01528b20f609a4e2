// The one recognizer of a static (per-tensor) FP8 quantization written out in elementwise ops
// (DESIGN.md Contract 2). canonicalize folds it into quant_fp8, `run --check` dequantizes its
// output with its scale, and the random inputs give its scale a scale's range: all through
// this.
//
//   [cast(y, f32)] -> div(., scale) | mul(., inv) | mul(inv, .) | div(.) {scalar} | mul(.) {scalar}
//     -> [clamp] -> cast(f8e4m3)
#pragma once

#include <optional>

#include "ir/graph.h"

namespace tpfuse::ir {

struct StaticQuantForm {
  const Node* cast = nullptr;      // the cast to f8e4m3
  const Node* clamp = nullptr;     // null when absent
  const Node* scale_op = nullptr;  // the div or mul
  const Node* widening = nullptr;  // cast(y, f32) read by the scale op, when present
  const Value* y = nullptr;        // the value quantized (before the widening cast)
  bool divides = false;            // y / scale; else y * inv
  const Value* scale = nullptr;    // the divisor (div), or the scale that `inv` is the
                                   // reciprocal of (reciprocal(scale), pow(scale, -1)); else null
  const Value* inv = nullptr;      // the multiplier (mul form)
  std::optional<double> scalar;    // the scale op's scalar attribute, when the scale is one
  // Whether clamp's bounds are exactly +-448 (or there is no clamp: the cast saturates).
  bool clamp_is_fp8_range = true;
};

// The form ending at `cast` (a cast to f8e4m3), or nullopt.
std::optional<StaticQuantForm> MatchStaticQuant(const Node& cast);

// The form whose scale op is `scale_op` (div or mul), following its result through an optional
// clamp (its only use) to the cast; nullopt when `scale_op` is not one.
std::optional<StaticQuantForm> StaticQuantAt(const Node& scale_op);

// The reciprocal that `inv` is, when it is one: reciprocal(s) or pow(s, -1) -> s. Else null.
const Value* ReciprocalOf(const Value* inv);

}  // namespace tpfuse::ir
