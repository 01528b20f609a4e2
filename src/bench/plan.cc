#include "bench/plan.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <nlohmann/json.hpp>

#include "backends/cuda/comm/workspace.h"

namespace tpfuse::bench {
namespace {

using nlohmann::json;

constexpr size_t kRegionAlign = 256;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> SplitCommas(std::string_view text) {
  std::vector<std::string_view> items;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    items.push_back(
        Trim(text.substr(start, comma == std::string_view::npos ? text.npos : comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return items;
}

}  // namespace

std::string_view ModeName(Mode mode) { return mode == Mode::kBench ? "bench" : "tune"; }

std::string_view EmitNormName(EmitNorm mode) {
  switch (mode) {
    case EmitNorm::kAuto: return "auto";
    case EmitNorm::kYes: return "yes";
    case EmitNorm::kNo: return "no";
  }
  return "?";
}

StatusOr<EmitNorm> ParseEmitNorm(std::string_view text) {
  for (EmitNorm m : {EmitNorm::kAuto, EmitNorm::kYes, EmitNorm::kNo}) {
    if (EmitNormName(m) == text) return m;
  }
  return InvalidArgument("--emit-norm: expected yes, no or auto, got '", text, "'");
}

std::vector<int64_t> DefaultTokens() {
  std::vector<int64_t> t;
  for (int64_t v = 1; v <= 8192; v *= 2) t.push_back(v);
  return t;
}

std::vector<int64_t> DefaultHidden() { return {4096, 7168, 8192}; }

std::vector<QuantMode> DefaultQuants() {
  return {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group};
}

StatusOr<int64_t> ParseInt(std::string_view text, std::string_view option, int64_t min,
                           int64_t max) {
  const std::string_view item = Trim(text);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
  const std::string prefix = option.empty() ? "" : StrCat(option, ": ");
  if (item.empty() || ec != std::errc() || end != item.data() + item.size())
    return InvalidArgument(prefix, "'", item, "' is not an integer");
  if (value < min || value > max)
    return InvalidArgument(prefix, value, " is outside ", min, "..", max);
  return value;
}

StatusOr<std::vector<int64_t>> ParseIntList(std::string_view text, std::string_view option,
                                            int64_t min, int64_t max) {
  if (Trim(text).empty()) return InvalidArgument(option, ": the list is empty");
  std::vector<int64_t> values;
  for (std::string_view item : SplitCommas(text)) {
    TPFUSE_ASSIGN_OR_RETURN(int64_t v, ParseInt(item, option, min, max));
    values.push_back(v);
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

StatusOr<std::vector<QuantMode>> ParseQuantList(std::string_view text) {
  if (Trim(text) == "all") return DefaultQuants();
  if (Trim(text).empty()) return InvalidArgument("--quant: the list is empty");
  std::vector<QuantMode> modes;
  for (std::string_view item : SplitCommas(text)) {
    StatusOr<QuantMode> mode = ParseQuantMode(item);
    if (!mode.ok())
      return InvalidArgument("--quant: unknown mode '", item,
                             "' (expected none, fp8_tensor, fp8_token, fp8_group or all)");
    if (std::find(modes.begin(), modes.end(), *mode) == modes.end()) modes.push_back(*mode);
  }
  return modes;
}

StatusOr<double> ParseSeconds(std::string_view text, std::string_view option) {
  const std::string item(Trim(text));
  char* end = nullptr;
  const double v = std::strtod(item.c_str(), &end);
  if (item.empty() || end != item.c_str() + item.size())
    return InvalidArgument(option, ": '", item, "' is not a number of seconds");
  if (!std::isfinite(v) || v <= 0)
    return InvalidArgument(option, ": must be a finite number > 0, got ", item);
  return v;
}

// ================================================================================ plan

int64_t Plan::max_tokens() const {
  return tokens.empty() ? 0 : *std::max_element(tokens.begin(), tokens.end());
}

int64_t Plan::max_hidden() const {
  return hidden.empty() ? 0 : *std::max_element(hidden.begin(), hidden.end());
}

int Plan::num_shapes() const { return int(tokens.size() * hidden.size() * quants.size()); }

std::string Plan::ToJson() const {
  json quant_names = json::array();
  for (QuantMode q : quants) quant_names.push_back(std::string(QuantModeName(q)));
  json doc = {{"mode", std::string(ModeName(mode))},
              {"world_size", world_size},
              {"tokens", tokens},
              {"hidden", hidden},
              {"quant", quant_names},
              {"emit_norm", std::string(EmitNormName(emit_norm))},
              {"ops_per_graph", ops_per_graph},
              {"replays", replays},
              {"warmup", warmup},
              {"pdl", pdl},
              {"table", table},
              {"out", out},
              {"seed", seed},
              {"timeout_seconds", timeout_seconds},
              {"id_file", id_file}};
  return doc.dump(2) + "\n";
}

StatusOr<Plan> Plan::FromJson(const std::string& text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return InvalidArgument("benchmark plan: not a JSON object");
  Plan plan;
  try {
    const std::string mode = doc.at("mode").get<std::string>();
    if (mode != "bench" && mode != "tune")
      return InvalidArgument("benchmark plan: unknown mode '", mode, "'");
    plan.mode = mode == "bench" ? Mode::kBench : Mode::kTune;
    plan.world_size = doc.at("world_size").get<int>();
    plan.tokens = doc.at("tokens").get<std::vector<int64_t>>();
    plan.hidden = doc.at("hidden").get<std::vector<int64_t>>();
    for (const json& q : doc.at("quant")) {
      TPFUSE_ASSIGN_OR_RETURN(QuantMode mode_q, ParseQuantMode(q.get<std::string>()));
      plan.quants.push_back(mode_q);
    }
    TPFUSE_ASSIGN_OR_RETURN(plan.emit_norm, ParseEmitNorm(doc.at("emit_norm").get<std::string>()));
    plan.ops_per_graph = doc.at("ops_per_graph").get<int>();
    plan.replays = doc.at("replays").get<int>();
    plan.warmup = doc.at("warmup").get<int>();
    plan.pdl = doc.at("pdl").get<bool>();
    plan.table = doc.at("table").get<std::string>();
    plan.out = doc.at("out").get<std::string>();
    plan.seed = doc.at("seed").get<uint64_t>();
    plan.timeout_seconds = doc.at("timeout_seconds").get<double>();
    plan.id_file = doc.at("id_file").get<std::string>();
  } catch (const json::exception& e) {
    return InvalidArgument("benchmark plan: ", e.what());
  }
  if (plan.tokens.empty() || plan.hidden.empty() || plan.quants.empty() || plan.world_size < 1 ||
      plan.ops_per_graph < 1 || plan.replays < 1 || plan.warmup < 0)
    return InvalidArgument("benchmark plan: empty sweep or invalid counts");
  return plan;
}

AllreduceRmsnormSpec MakeSpec(int64_t hidden, QuantMode quant, EmitNorm emit_norm) {
  AllreduceRmsnormSpec spec;
  spec.act_dtype = DType::kBF16;
  spec.weight_dtype = DType::kBF16;
  spec.hidden = hidden;
  spec.has_residual = true;
  spec.eps = 1e-6f;
  spec.quant = quant;
  spec.group_size = kGroupSize;
  spec.scale_layout = ScaleLayout::kRow;
  spec.scale_fmt = ScaleFormat::kF32;
  spec.emit.residual = true;
  spec.emit.quant = quant != QuantMode::kNone;
  switch (emit_norm) {
    case EmitNorm::kYes: spec.emit.norm = true; break;
    case EmitNorm::kNo: spec.emit.norm = false; break;
    case EmitNorm::kAuto:
      spec.emit.norm = quant == QuantMode::kNone || quant == QuantMode::kFp8Group;
      break;
  }
  return spec;
}

SetLayout SetLayout::Make(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const size_t act = size_t(tokens) * size_t(spec.hidden) * 2;
  SetLayout l;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += AlignUp(bytes, kRegionAlign);
    return at;
  };
  l.x = take(act);
  l.residual = take(act);
  l.residual_out = take(act);
  l.norm_out = take(act);
  l.quant = take(spec.quant != QuantMode::kNone ? act / 2 : 0);
  l.scale =
      take(IsDynamicQuant(spec.quant) ? size_t(spec.ScaleElements(tokens)) * sizeof(float) : 0);
  l.bytes = AlignUp(std::max<size_t>(off, kRegionAlign), kRegionAlign);
  return l;
}

Rotation ChooseRotation(size_t set_bytes, size_t l2_bytes, int ops_per_graph) {
  // (sets - 1) * set_bytes >= 2 * l2_bytes.
  const size_t per_set = std::max<size_t>(set_bytes, 1);
  const size_t needed = 1 + (2 * l2_bytes + per_set - 1) / per_set;
  Rotation r;
  r.sets = int(std::min<size_t>(needed, size_t(std::max(ops_per_graph, 1))));
  r.flush_l2 = needed > size_t(r.sets);
  return r;
}

WorkspacePlan PlanWorkspace(const Plan& plan) {
  WorkspacePlan w;
  w.max_hidden = plan.max_hidden();
  const int64_t peer_copy_rows =
      int64_t((kMinPeerCopyBytes + size_t(w.max_hidden) * 2 - 1) / (size_t(w.max_hidden) * 2));
  w.max_tokens = std::max(plan.max_tokens(), peer_copy_rows);
  // One-shot's Lamport area: kLamportBuffers buffers of world_size 4096-aligned slots of
  // [rows, H_max] 16-bit (comm/workspace.h).
  const size_t slot_bytes =
      kMaxLamportBytes / (size_t(cuda::kLamportBuffers) * size_t(plan.world_size)) / 4096 * 4096;
  const int64_t lamport_rows = int64_t(slot_bytes / (size_t(w.max_hidden) * 2));
  w.oneshot_max_tokens = std::min(plan.max_tokens(), lamport_rows);
  w.oneshot_capped = w.oneshot_max_tokens < plan.max_tokens();
  return w;
}

// ================================================================================ statistics

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = std::clamp(q, 0.0, 1.0) * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]);
}

ReplayStats Summarize(std::vector<double> per_op_us) {
  ReplayStats s;
  if (per_op_us.empty()) return s;
  std::sort(per_op_us.begin(), per_op_us.end());
  s.median_us = Percentile(per_op_us, 0.5);
  s.p10_us = Percentile(per_op_us, 0.1);
  s.p90_us = Percentile(per_op_us, 0.9);
  s.replays = int(per_op_us.size());
  return s;
}

double BusBandwidthGBps(int64_t tokens, int64_t hidden, int world_size, double us) {
  if (!(us > 0) || world_size < 1) return 0;
  const double payload = double(tokens) * double(hidden) * 2.0;
  return payload * 2.0 * double(world_size - 1) / double(world_size) / (us * 1e-6) / 1e9;
}

// ================================================================================ tuning

std::optional<Strategy> PickFastest(const std::vector<TuneCandidate>& candidates) {
  // Simplicity order for exact ties: nccl, twoshot, oneshot.
  auto simplicity = [](Strategy s) {
    return s == Strategy::kNccl ? 0 : s == Strategy::kTwoShot ? 1 : 2;
  };
  const TuneCandidate* best = nullptr;
  for (const TuneCandidate& c : candidates) {
    if (!c.median_us) continue;
    if (best == nullptr || *c.median_us < *best->median_us ||
        (*c.median_us == *best->median_us && simplicity(c.strategy) < simplicity(best->strategy)))
      best = &c;
  }
  if (best == nullptr) return std::nullopt;
  return best->strategy;
}

std::vector<runtime::StrategyRule> RulesFromWinners(int world_size, int64_t hidden, QuantMode quant,
                                                    std::vector<TunePoint> points) {
  std::sort(points.begin(), points.end(),
            [](const TunePoint& a, const TunePoint& b) { return a.tokens < b.tokens; });
  std::vector<runtime::StrategyRule> rules;
  for (size_t i = 0; i < points.size(); ++i) {
    const int64_t lo = i == 0 ? 1 : points[i].tokens;
    const int64_t hi =
        i + 1 < points.size() ? points[i + 1].tokens - 1 : std::numeric_limits<int64_t>::max();
    if (!rules.empty() && rules.back().strategy == points[i].winner) {
      rules.back().max_tokens = hi;
      continue;
    }
    runtime::StrategyRule rule;
    rule.world_size = world_size;
    rule.hidden = hidden;
    rule.quant = std::string(QuantModeName(quant));
    rule.min_tokens = lo;
    rule.max_tokens = hi;
    rule.strategy = points[i].winner;
    rules.push_back(rule);
  }
  return rules;
}

}  // namespace tpfuse::bench
