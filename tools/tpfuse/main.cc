// tpfuse: the command-line front end (DESIGN.md Contract 4).
//
//   tpfuse compile FILE.tpg ...   fuse the all_reduce epilogues of a graph, print the result
//   tpfuse run FILE ...           execute a graph or a model, optionally against the oracle
//   tpfuse bench ... | tune ...   measure the fused op on the GPUs
//   tpfuse demo                   the main job on whatever machine it finds
//
// Exit status: 0 success, 1 invalid input (a message on stderr names the problem), 2 usage.
#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "tpfuse/commands.h"

int main(int argc, char** argv) {
  using namespace tpfuse::cli;
  // NVLink multicast stays off unless the user set it: tpfuse never uses multimem, and NCCL's
  // NVLS setup is not needed for symmetric windows. The library leaves the environment alone;
  // the process sets it before any NCCL call (the rank processes of bench and tune inherit it).
  ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);

  CLI::App app{
      "tpfuse: fuses the all_reduce -> [+residual] -> RMSNorm -> [FP8 quant] tail of "
      "tensor-parallel transformer layers into one op, and runs it.",
      "tpfuse"};
  app.set_version_flag("--version", std::string("tpfuse ") + TPFUSE_VERSION);
  app.require_subcommand(1, 1);
  app.footer("Run 'tpfuse SUBCOMMAND --help' for a subcommand's options.");

  CommandFn run;
  AddCompileCommand(app, run);
  AddRunCommand(app, run);
  AddBenchCommand(app, run);
  AddTuneCommand(app, run);
  AddDemoCommand(app, run);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0: print them as CLI11 does.
    if (e.get_exit_code() == 0) return app.exit(e);
    // "tpfuse frob" reads as a missing subcommand to CLI11; name the word instead.
    const std::vector<std::string> extras = app.remaining();
    if (app.get_subcommands().empty() && !extras.empty()) {
      const std::string& word = extras.front();
      if (word.rfind('-', 0) == 0) {
        std::cerr << "tpfuse: unknown option '" << word << "'\n";
      } else {
        std::cerr << "tpfuse: unknown subcommand '" << word
                  << "' (expected compile, run, bench, tune or demo)\n";
      }
      std::cerr << "Run 'tpfuse --help' for usage.\n";
      return kExitUsage;
    }
    // An error in a subcommand's options points to that subcommand's help.
    const std::string who = app.get_subcommands().empty()
                                ? std::string("tpfuse")
                                : "tpfuse " + app.get_subcommands().front()->get_name();
    std::cerr << who << ": " << e.what() << "\n"
              << "Run '" << who << " --help' for usage.\n";
    return kExitUsage;
  }
  if (!run) {
    std::cerr << "tpfuse: internal error: the subcommand registered nothing to run\n";
    return kExitInvalidInput;
  }
  try {
    return run();
  } catch (const std::bad_alloc&) {
    // Sizes the inputs' check lets through can still need more memory than the process gets
    // (intermediates, a memory limit below the machine's): an error, not an abort.
    std::cerr << "tpfuse: error: out of memory: the shapes this command computes need more host "
                 "memory than the process could allocate (try fewer tokens or ranks)\n";
    return kExitInvalidInput;
  } catch (const std::length_error&) {
    std::cerr << "tpfuse: error: a tensor of these shapes is too large to allocate on the host\n";
    return kExitInvalidInput;
  }
}
