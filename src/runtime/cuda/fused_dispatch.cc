#include "runtime/cuda/fused_dispatch.h"

#include <cstdlib>

namespace tpfuse::runtime {

Strategy ChooseStrategy(const StrategyTable& table, const cuda::Communicator& comm,
                              const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const Strategy wanted =
      table.Choose(comm.world_size(), spec.hidden, spec.quant, tokens);
  if (wanted == Strategy::kNccl) return wanted;
  // A shape over the one-shot workspace may still fit two-shot's, which moves the same bytes
  // at N = 2 and fewer above.
  if (cuda::CanRun(comm, spec, tokens, wanted).ok()) return wanted;
  if (wanted == Strategy::kOneShot && cuda::CanRun(comm, spec, tokens, Strategy::kTwoShot).ok())
    return Strategy::kTwoShot;
  return Strategy::kNccl;
}

Status LaunchFusedAuto(const StrategyTable& table, cuda::Communicator& comm,
                       const AllreduceRmsnormSpec& spec, int64_t tokens,
                       const cuda::FusedBuffers& buffers, cudaStream_t stream,
                       const cuda::LaunchOptions& options, Strategy* chosen) {
  const Strategy strategy = ChooseStrategy(table, comm, spec, tokens);
  if (chosen) *chosen = strategy;
  return cuda::LaunchAllreduceRmsnorm(comm, spec, tokens, buffers, strategy, stream, options);
}

StatusOr<StrategyTable> DefaultStrategyTable() {
  if (const char* path = std::getenv("TPFUSE_STRATEGY_TABLE"); path && *path) {
    auto table = StrategyTable::Load(path);
    if (!table.ok()) return table.status().WithContext("TPFUSE_STRATEGY_TABLE");
    return table;
  }
  return StrategyTable::Defaults();
}

}  // namespace tpfuse::runtime
