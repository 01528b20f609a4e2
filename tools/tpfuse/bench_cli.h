// The options shared by `tpfuse bench` and `tpfuse tune`. What they do: src/bench/command.h.
#pragma once

#include "bench/command.h"

namespace CLI {
class App;
}

namespace tpfuse::bench {

// Registers the options of `mode`'s command on `command` (bench also has --table).
void AddCommandOptions(CLI::App& command, CommandFlags& flags, Mode mode);

}  // namespace tpfuse::bench
