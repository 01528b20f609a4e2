// The parent side of `tpfuse bench` / `tpfuse tune`: start one process per rank and wait for
// all of them, bounded. Plain POSIX (no CUDA): the CPU suite tests it with /bin/sh.
#pragma once

#include <string>
#include <vector>

#include "tpfuse/status.h"

namespace tpfuse::bench {

// The running executable (/proc/self/exe resolved), to start copies of it.
StatusOr<std::string> SelfExecutable();

struct ProcessGroupOptions {
  double timeout_seconds = 1800;  // for the whole group, from the first start
  // Once one process has failed, the others get this long to finish (a rank whose peer died
  // may wait in NCCL forever) before they are killed.
  double grace_seconds = 20;
  double kill_wait_seconds = 5;  // between SIGTERM and SIGKILL
};

// Starts one process per argument vector (argv[0] is the executable's path) with this
// process's environment, working directory, stdout and stderr; process i is called "rank i".
// Returns once every process has ended: Ok when all exited with status 0; otherwise an error
// that names, for each rank that did not, how it ended (exit status, signal, or killed here at
// the timeout or after another rank failed).
Status RunProcessGroup(const std::vector<std::vector<std::string>>& argvs,
                       const ProcessGroupOptions& options);

}  // namespace tpfuse::bench
