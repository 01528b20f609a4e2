// The .tpg text format (DESIGN.md Contract 1): text -> graphs.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"

namespace tpfuse::ir {

struct Module {
  std::vector<std::unique_ptr<Graph>> funcs;
};

// Parses a whole module (one or more funcs), infers every result type and verifies each
// function. Errors read "<source>:<line>:<col>: <problem>", e.g.
// "layer.tpg:3:9: unknown op 'all_reduse'".
StatusOr<Module> ParseModule(std::string_view text, const std::string& source_name = "<input>");
// Parses a module that must hold exactly one func.
StatusOr<std::unique_ptr<Graph>> ParseGraph(std::string_view text,
                                            const std::string& source_name = "<input>");
// Reads and parses a file.
StatusOr<Module> ParseModuleFile(const std::string& path);

}  // namespace tpfuse::ir
