// Graphs -> .tpg text. Printing a parsed graph and parsing the output gives the same graph.
#pragma once

#include <string>

#include "ir/graph.h"
#include "ir/parser.h"

namespace tpfuse::ir {

struct PrintOptions {
  bool result_types = true;  // "  # bf16[T, 4096]" after each statement
};

std::string PrintGraph(const Graph& graph, const PrintOptions& options = {});
// Every func of the module, separated by blank lines.
std::string PrintModule(const Module& module, const PrintOptions& options = {});

}  // namespace tpfuse::ir
