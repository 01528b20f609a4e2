// Structural and type checks of a graph: every operand defined before use, use lists
// consistent, result types equal to what the op infers, unique names, outputs set.
#pragma once

#include "ir/graph.h"

namespace tpfuse::ir {

// The error names the node (op, first result, source line when known) and the problem.
Status Verify(const Graph& graph);

}  // namespace tpfuse::ir
