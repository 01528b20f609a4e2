#include "passes/local_fusion.h"

#include <cstdlib>

#include "tpfuse/status.h"

namespace tpfuse::passes {

namespace {

constexpr int64_t kMeasuredHidden[] = {2880, 4096, 5120, 7168, 8192};

int64_t NearestMeasuredHidden(int64_t hidden) {
  int64_t best = kMeasuredHidden[0];
  for (int64_t h : kMeasuredHidden) {
    if (std::llabs(h - hidden) <= std::llabs(best - hidden)) best = h;  // ties: the larger
  }
  return best;
}

}  // namespace

std::span<const int64_t> MeasuredHidden() { return kMeasuredHidden; }
// docs/perf/h200x1/inductor_epilogue.md: tpfuse / Inductor above 1.02 nowhere. Run 12's
// kernel lost at fp8_token H 8192 from T 4096 (1.04-1.05); with the fixed recipes (run 21) the
// shapes it had lost or nearly lost took 0.65-0.99 x Inductor's time.
std::span<const MeasuredLoss> MeasuredLosses() { return {}; }

std::string WhyInductorIsFaster(const AllreduceRmsnormSpec& spec, int64_t max_tokens,
                                std::span<const MeasuredLoss> losses) {
  const int64_t measured = NearestMeasuredHidden(spec.hidden);
  for (const MeasuredLoss& loss : losses) {
    if (loss.quant != spec.quant || loss.hidden != measured) continue;
    if (max_tokens > 0 && max_tokens < loss.from_tokens) continue;
    const std::string at_h = measured == spec.hidden ? StrCat("H ", measured)
                                                     : StrCat("H ", measured, ", the measured H nearest ", spec.hidden);
    const std::string tokens = max_tokens > 0 ? StrCat("up to ", max_tokens, " tokens")
                                              : std::string("an unbounded token count");
    return StrCat("Inductor's kernel for this chain was measured faster than the fused op for ",
                  QuantModeName(spec.quant), " at ", at_h, " from T ", loss.from_tokens,
                  " (docs/perf/h200x1/inductor_epilogue.md), and the graph runs ", tokens);
  }
  return "";
}

}  // namespace tpfuse::passes
