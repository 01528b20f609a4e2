// Uses the installed public headers and libraries: a fused-op spec, its validation, and the
// backends' capabilities. Exit status 0 when every answer is the expected one.
#include <cstdio>
#include <string>

#include "tpfuse/fused_op.h"
#if CONSUMER_HAVE_CUDA
#include "tpfuse/tpfuse.h"
#endif

int main() {
  tpfuse::AllreduceRmsnormSpec spec;
  spec.hidden = 4096;
  spec.has_residual = true;
  spec.quant = tpfuse::QuantMode::kFp8Group;
  spec.emit.residual = true;
  spec.emit.quant = true;
  const tpfuse::Status valid = spec.Validate();
  const std::string cpu = tpfuse::CpuFusionCapabilities().WhyUnsupported(spec, 2);
  spec.hidden = 4100;  // not a multiple of the group size
  const bool odd_refused = !spec.Validate().ok();
  const tpfuse::StatusOr<tpfuse::Strategy> strategy = tpfuse::ParseStrategy("twoshot");
  std::printf("spec %s, cpu backend: %s, hidden 4100 %s, strategy %s\n",
              valid.ok() ? "valid" : valid.ToString().c_str(), cpu.empty() ? "supported" : cpu.c_str(),
              odd_refused ? "refused" : "accepted",
              strategy.ok() ? std::string(tpfuse::StrategyName(*strategy)).c_str() : "?");
#if CONSUMER_HAVE_CUDA
  // The runtime links (the CUDA backend, cuBLASLt, NCCL): a unique id needs no GPU.
  const tpfuse::StatusOr<std::string> id = tpfuse::Comm::MakeUniqueId();
  std::printf("runtime linked: unique id %s\n", id.ok() ? "made" : id.status().ToString().c_str());
#endif
  return valid.ok() && cpu.empty() && odd_refused && strategy.ok() ? 0 : 1;
}
