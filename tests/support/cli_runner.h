// Runs the tpfuse CLI of this build (TPFUSE_CLI_PATH, set by the test targets; the environment
// variable TPFUSE_CLI names another copy, for test binaries run away from their build folder)
// with stdout and stderr together, for tests of what the command prints and how it exits.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace tpfuse::testing {

struct CliResult {
  int exit_code = -1;  // -1: did not start or did not exit normally
  std::string output;  // stdout and stderr
};

// The CLI the tests run.
inline std::string CliPath() {
  const char* relocated = std::getenv("TPFUSE_CLI");
  return relocated != nullptr && *relocated != '\0' ? relocated : TPFUSE_CLI_PATH;
}

// Runs a shell command line; `output` is what it writes to stdout.
inline CliResult RunCommand(const std::string& command) {
  CliResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buf;
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

inline CliResult RunCli(const std::string& args) { return RunCommand(CliPath() + " " + args + " 2>&1"); }

}  // namespace tpfuse::testing
