// The plan of `tpfuse bench` and `tpfuse tune`, and the arithmetic around it: option lists, the
// spec of each measured shape, the rotation of input sets, the workspace size, replay
// statistics, bus bandwidth, and the strategy rules a tuning run produces.
// Plain C++ (no CUDA): the parent process, the rank processes and the CPU suite share it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/dispatcher.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {

enum class Mode : uint8_t { kBench, kTune };
std::string_view ModeName(Mode mode);  // "bench", "tune"

// Whether the fused op also emits the bf16 norm output y.
//   auto: for quant none (y is the only activation output) and fp8_group (the fan-out case where
//         a bf16 GEMM reads y next to the FP8 GEMM that reads q).
enum class EmitNorm : uint8_t { kAuto, kYes, kNo };
std::string_view EmitNormName(EmitNorm mode);  // "auto", "yes", "no"
StatusOr<EmitNorm> ParseEmitNorm(std::string_view text);

inline constexpr int64_t kMaxSweepTokens = 65536;
inline constexpr int kDefaultOpsPerGraph = 20;
inline constexpr int kDefaultReplays = 50;
inline constexpr int kDefaultWarmup = 5;
inline constexpr double kDefaultTimeoutSeconds = 1800;
inline constexpr int kGroupSize = 128;
// The one-shot (Lamport) workspace holds cuda::kLamportBuffers buffers of [world_size, T, H_max]
// bf16; the rank processes cap it here and skip one-shot above the rows that fit (saying so).
inline constexpr size_t kMaxLamportBytes = size_t(8) << 30;
// The peer copy bandwidth is measured into a peer's two-shot landing region; the workspace is
// made at least this large so the copy is long enough to time.
inline constexpr size_t kMinPeerCopyBytes = size_t(64) << 20;

std::vector<int64_t> DefaultTokens();    // 1, 2, 4, ..., 8192
std::vector<int64_t> DefaultHidden();    // 4096, 7168, 8192
std::vector<QuantMode> DefaultQuants();  // none, fp8_tensor, fp8_token, fp8_group

// "1,16,128" -> {1, 16, 128}: sorted, repeats dropped, every value in [min, max]. Errors name
// `option` and the offending item.
StatusOr<std::vector<int64_t>> ParseIntList(std::string_view text, std::string_view option,
                                            int64_t min, int64_t max);
// "fp8_group,fp8_tensor" (or "all"): the given order, repeats dropped.
StatusOr<std::vector<QuantMode>> ParseQuantList(std::string_view text);
// One integer in [min, max]. Errors name `option` first, unless it is empty.
StatusOr<int64_t> ParseInt(std::string_view text, std::string_view option, int64_t min,
                           int64_t max);
// Seconds: a positive finite number.
StatusOr<double> ParseSeconds(std::string_view text, std::string_view option);

struct Plan {
  Mode mode = Mode::kBench;
  int world_size = 0;
  std::vector<int64_t> tokens;
  std::vector<int64_t> hidden;
  std::vector<QuantMode> quants;
  EmitNorm emit_norm = EmitNorm::kAuto;
  int ops_per_graph = kDefaultOpsPerGraph;
  int replays = kDefaultReplays;
  int warmup = kDefaultWarmup;
  bool pdl = true;
  std::string table;  // bench: the dispatcher's strategy table file ("": the runtime's default)
  std::string out;    // bench: output directory; tune: output file
  uint64_t seed = 1;
  double timeout_seconds = kDefaultTimeoutSeconds;
  std::string id_file;  // where rank 0 publishes the NCCL unique id (set by the parent)

  int64_t max_tokens() const;
  int64_t max_hidden() const;
  // Shapes of the sweep: |hidden| x |quants| x |tokens|.
  int num_shapes() const;
  std::string ToJson() const;
  static StatusOr<Plan> FromJson(const std::string& text);
};

// The fused op measured for (H, quant): bf16 activations and weight, residual on, eps 1e-6,
// group size 128, row-major f32 scales; emits residual_out always, q (and s) when quantized,
// and y per `emit_norm`.
AllreduceRmsnormSpec MakeSpec(int64_t hidden, QuantMode quant, EmitNorm emit_norm);

// One input/output set of a shape, in one allocation: byte offsets of x, residual,
// residual_out, norm_out ([T, H] bf16 each), q ([T, H] fp8, quantized modes) and s ([T, G]
// f32, dynamic modes), each 256-byte aligned. norm_out is always there: baseline A writes y
// whatever the fused op emits.
struct SetLayout {
  size_t x = 0, residual = 0, residual_out = 0, norm_out = 0, quant = 0, scale = 0;
  size_t bytes = 0;  // the set's size, a multiple of 256
  static SetLayout Make(const AllreduceRmsnormSpec& spec, int64_t tokens);
};

// How the ops of one graph rotate through input sets.
//   sets: op j of a graph uses set j % sets. Between two uses of one set the other sets move
//         at least 2x the L2 size through the cache, so a set is never read back from L2.
//   flush_l2: the sets of one graph are too small for that (small T), so the L2 is flushed
//         between replays, outside the timed interval.
struct Rotation {
  int sets = 1;
  bool flush_l2 = false;
};
Rotation ChooseRotation(size_t set_bytes, size_t l2_bytes, int ops_per_graph);

// The communicator's workspace for a plan (the same on every rank).
struct WorkspacePlan {
  int64_t max_tokens = 0;  // two-shot rows (at least the largest T)
  int64_t max_hidden = 0;
  int64_t oneshot_max_tokens = 0;  // one-shot rows at max_hidden
  bool oneshot_capped = false;     // below the largest T: kMaxLamportBytes
};
WorkspacePlan PlanWorkspace(const Plan& plan);

struct ReplayStats {
  double median_us = 0;
  double p10_us = 0;
  double p90_us = 0;
  int replays = 0;
};
// Per-op times of the replays -> median, p10, p90 (linear interpolation between order
// statistics). Empty input: all zero.
ReplayStats Summarize(std::vector<double> per_op_us);
// q in [0, 1] of sorted values, interpolated.
double Percentile(const std::vector<double>& sorted, double q);

// Achieved bus bandwidth of an all-reduce of T x H bf16 elements in `us` microseconds:
// T * H * 2 bytes * 2 (N - 1) / N / time, in GB/s (1e9 bytes per second).
double BusBandwidthGBps(int64_t tokens, int64_t hidden, int world_size, double us);

// ---------------------------------------------------------------- tuning

struct TuneCandidate {
  Strategy strategy = Strategy::kNccl;
  std::optional<double> median_us;  // nullopt: could not run this shape
};
// The candidate with the lowest median, however small the margin. Only an exact tie goes to
// the simpler strategy (nccl, then twoshot, then oneshot). nullopt when none ran.
std::optional<Strategy> PickFastest(const std::vector<TuneCandidate>& candidates);

struct TunePoint {
  int64_t tokens = 0;
  Strategy winner = Strategy::kNccl;
};
// Rules for one (world size, H, quant) from the winners at the measured token counts. A
// measured T decides every token count from itself up to the next measured T - 1; the smallest
// also covers everything below it (from 1), the largest everything above it. Consecutive
// token counts with the same winner merge into one [min_tokens, max_tokens] rule.
std::vector<runtime::StrategyRule> RulesFromWinners(int world_size, int64_t hidden, QuantMode quant,
                                                    std::vector<TunePoint> points);

}  // namespace tpfuse::bench
