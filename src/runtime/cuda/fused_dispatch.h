// The fused op with the dispatcher in front: the strategy table picks, the communicator's
// limits decide whether that strategy can run, and anything it cannot run goes to nccl.
#pragma once

#include "backends/cuda/allreduce_rmsnorm.h"
#include "runtime/dispatcher.h"

namespace tpfuse::runtime {

// The strategy the table picks for this call, demoted to nccl when the communicator cannot run
// it (no peer memory, T over the workspace, unsupported world size).
Strategy ChooseStrategy(const StrategyTable& table, const cuda::Communicator& comm,
                              const AllreduceRmsnormSpec& spec, int64_t tokens);

// ChooseStrategy, then LaunchAllreduceRmsnorm. `chosen` (optional) receives the strategy run.
Status LaunchFusedAuto(const StrategyTable& table, cuda::Communicator& comm,
                       const AllreduceRmsnormSpec& spec, int64_t tokens,
                       const cuda::FusedBuffers& buffers, cudaStream_t stream,
                       const cuda::LaunchOptions& options = {}, Strategy* chosen = nullptr);

// The table a process uses by default: $TPFUSE_STRATEGY_TABLE when set (an unreadable file is
// an error), else the built-in defaults.
StatusOr<StrategyTable> DefaultStrategyTable();

}  // namespace tpfuse::runtime
