#include "bench/report.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/svg_plot.h"
#include "bench/text.h"

namespace tpfuse::bench {
namespace {

using nlohmann::json;

// Microseconds for tables, "-" for a path not measured.
std::string Us(std::optional<double> v) { return v ? bench::Us(*v) : "-"; }

// Column label of a path in tables, progress lines and plots.
std::string_view PathLabel(Path p) {
  switch (p) {
    case Path::kOneShot: return "oneshot";
    case Path::kTwoShot: return "twoshot";
    case Path::kNccl: return "B (nccl)";
    case Path::kBaselineA: return "A";
    case Path::kNcclAllReduce: return "NCCL";
  }
  return "?";
}

// T values of a group as "16384, 32768".
std::string TokenList(const std::vector<int64_t>& tokens) {
  std::string text;
  for (int64_t t : tokens) text += (text.empty() ? "" : ", ") + std::to_string(t);
  return text;
}

// Skips of one path across a group: the token counts and the first reason.
std::vector<std::string> SkipNotes(const std::vector<const ShapeResult*>& group, Path p,
                                   std::string_view label) {
  std::vector<int64_t> tokens;
  std::string first_reason;
  for (const ShapeResult* s : group) {
    const PathResult& r = s->at(p);
    if (r.measured) continue;
    tokens.push_back(s->tokens);
    if (first_reason.empty()) first_reason = r.skipped;
  }
  if (tokens.empty()) return {};
  return {StrCat(label, " not measured at T = ", TokenList(tokens), ": ", first_reason)};
}

const char* Color(Path p) {
  switch (p) {
    case Path::kOneShot: return "#d62728";
    case Path::kTwoShot: return "#ff7f0e";
    case Path::kNccl: return "#1f77b4";
    case Path::kBaselineA: return "#7f7f7f";
    case Path::kNcclAllReduce: return "#2ca02c";
  }
  return "#000000";
}

json PathJson(const ShapeResult& s, Path p, int world_size) {
  const PathResult& r = s.at(p);
  if (!r.measured) return json{{"skipped", r.skipped}};
  json j = {{"us_median", r.stats.median_us},
            {"us_p10", r.stats.p10_us},
            {"us_p90", r.stats.p90_us},
            {"replays", r.stats.replays},
            {"busbw_gbps", BusBandwidthGBps(s.tokens, s.hidden, world_size, r.stats.median_us)},
            {"rank_medians_us", r.rank_medians_us}};
  if (std::optional<double> b = s.Median(Path::kNccl)) j["ratio_vs_B"] = r.stats.median_us / *b;
  return j;
}

}  // namespace

std::string_view PathName(Path path) {
  switch (path) {
    case Path::kOneShot: return "oneshot";
    case Path::kTwoShot: return "twoshot";
    case Path::kNccl: return "nccl";
    case Path::kBaselineA: return "baseline_a";
    case Path::kNcclAllReduce: return "nccl_allreduce";
  }
  return "?";
}

Path StrategyPath(Strategy strategy) {
  switch (strategy) {
    case Strategy::kOneShot: return Path::kOneShot;
    case Strategy::kTwoShot: return Path::kTwoShot;
    case Strategy::kNccl: return Path::kNccl;
  }
  return Path::kNccl;
}

std::optional<double> ShapeResult::Median(Path p) const {
  const PathResult& r = at(p);
  if (!r.measured) return std::nullopt;
  return r.stats.median_us;
}

std::optional<Strategy> ShapeResult::Fastest() const {
  std::vector<TuneCandidate> candidates;
  for (Strategy k : kAllStrategies)
    candidates.push_back({k, Median(StrategyPath(k))});
  return PickFastest(candidates);
}

std::string MachineInfo::Label() const { return StrCat(gpu_count, "x ", gpu_name); }

std::string MachineInfo::Describe() const {
  return StrCat(Label(), " (driver ", driver, ", CUDA ", cuda_driver, ", NCCL ", nccl, ")");
}

std::vector<const ShapeResult*> Report::Group(int64_t hidden, QuantMode quant) const {
  std::vector<const ShapeResult*> group;
  for (const ShapeResult& s : shapes) {
    if (s.hidden == hidden && s.quant == quant) group.push_back(&s);
  }
  std::sort(group.begin(), group.end(),
            [](const ShapeResult* a, const ShapeResult* b) { return a->tokens < b->tokens; });
  return group;
}

// ================================================================================ text

std::string FormatHeader(const Report& r) {
  const Plan& p = r.plan;
  const MachineInfo& m = r.machine;
  std::ostringstream os;
  os << "tpfuse " << ModeName(p.mode) << ": " << m.Label() << " on " << m.host << ", world size "
     << p.world_size << " (one process per GPU)\n";
  os << "  driver " << m.driver << " (CUDA " << m.cuda_driver << "), runtime CUDA "
     << m.cuda_runtime << ", NCCL " << m.nccl << "; L2 " << Mib(size_t(m.l2_bytes)) << ", "
     << m.sm_count << " SMs\n";
  if (p.mode == Mode::kBench) {
    const PeerBandwidth& b = r.peer;
    if (!b.measured) {
      os << "  peer copy bandwidth: not measured: " << b.why_not << "\n";
    } else {
      os << "  peer copy bandwidth, one way, rank 0 -> rank 1 (" << Mib(b.bytes) << " x "
         << b.copies << ", every rank copying to the next at once):\n";
      os << "    copy engine (cudaMemcpyAsync)   "
         << (b.copy_engine_gbps ? Format("%.1f GB/s", *b.copy_engine_gbps)
                                : "failed: " + b.copy_engine_error)
         << "\n";
      os << "    SM copy kernel (16-byte stores) "
         << (b.sm_copy_gbps ? Format("%.1f GB/s", *b.sm_copy_gbps) : "failed: " + b.sm_copy_error)
         << "\n";
    }
  }
  os << "  method: CUDA graphs of " << p.ops_per_graph << " ops back to back, inputs rotated over "
     << "sets that exceed 2x L2; " << p.warmup << " warm-up + " << p.replays
     << " timed replays per path; per-op time = replay / " << p.ops_per_graph
     << "; rank 0's median; PDL " << (p.pdl ? "on" : "off") << " for the fused op\n";
  os << "  workspace: two-shot " << r.workspace.max_tokens << " tokens, one-shot "
     << r.workspace.oneshot_max_tokens << " tokens at H=" << r.workspace.max_hidden
     << (r.workspace.oneshot_capped ? " (capped at 8 GiB of Lamport buffers)" : "") << "\n";
  if (p.mode == Mode::kBench) {
    os << "  dispatcher table: " << r.table_source << "\n";
    os << "  paths: oneshot, twoshot = the fused op with that strategy;\n"
       << "         B (nccl) = ncclAllReduce + one fused add-RMSNorm-quant kernel: the fused "
          "op's nccl strategy at N = 2 (one measurement; above N = 2 that strategy gathers the "
          "partials to keep Contract 3's sum, B keeps ncclAllReduce);\n"
       << "         A = ncclAllReduce + fused_add_rms_norm kernel + quant_fp8 kernel (unfused "
          "ops);\n"
       << "         NCCL = ncclAllReduce alone; dispatched = the dispatcher's strategy (its "
          "measurement repeated);\n"
       << "         busbw = T*H*2 bytes * 2(N-1)/N / time of the dispatched path;\n"
       << "         B epi = (B - NCCL) / B: B's share spent in its epilogue kernel, the same "
          "kernel as the fused op's epilogue (world size 1: tpfuse bench --world-size 1)\n";
  } else {
    os << "  strategies: oneshot, twoshot, nccl (the fused op); the lowest median wins\n";
  }
  for (const std::string& w : r.warnings) os << "  note: " << w << "\n";
  return os.str();
}

std::optional<double> BaselineBEpilogueShare(const ShapeResult& s) {
  const std::optional<double> b = s.Median(Path::kNccl);
  const std::optional<double> nccl = s.Median(Path::kNcclAllReduce);
  if (!b || !nccl || !(*b > 0)) return std::nullopt;
  return (*b - *nccl) / *b;
}

std::string FormatTable(const Report& r, int64_t hidden, QuantMode quant) {
  const std::vector<const ShapeResult*> group = r.Group(hidden, quant);
  std::ostringstream os;
  char line[256];
  os << "\n== H=" << hidden << "  quant=" << QuantModeName(quant);
  if (!group.empty()) os << "  emit=" << EmitText(group.front()->emit);
  os << "  world size " << r.plan.world_size << "\n";
  os << "   µs per op, rank 0: median of " << r.plan.replays << " replays x "
     << r.plan.ops_per_graph << " ops\n";
  std::vector<std::string> notes;
  if (r.plan.mode == Mode::kBench) {
    std::snprintf(line, sizeof(line), "%7s %10s %10s %10s %10s %10s   %-19s %7s %11s %7s\n",
                  "T", "oneshot", "twoshot", "B (nccl)", "A", "NCCL", "dispatched", "disp/B",
                  "busbw GB/s", "B epi");
    os << line;
    for (const ShapeResult* s : group) {
      const std::optional<double> d = s->Median(s->dispatched);
      const std::optional<double> b = s->Median(Path::kNccl);
      const std::string disp =
          d ? StrCat(Us(d), " ", PathName(s->dispatched), s->dispatch_note.empty() ? "" : "*")
            : "-";
      const std::string ratio = d && b ? Format("%.2f", *d / *b) : "-";
      const std::string busbw =
          d ? Format("%.1f", BusBandwidthGBps(s->tokens, s->hidden, r.plan.world_size, *d)) : "-";
      const std::optional<double> b_epilogue = BaselineBEpilogueShare(*s);
      const std::string epi = b_epilogue ? Format("%.1f%%", *b_epilogue * 100) : "-";
      std::snprintf(line, sizeof(line), "%7lld %10s %10s %10s %10s %10s   %-19s %7s %11s %7s\n",
                    static_cast<long long>(s->tokens), Us(s->Median(Path::kOneShot)).c_str(),
                    Us(s->Median(Path::kTwoShot)).c_str(), Us(b).c_str(),
                    Us(s->Median(Path::kBaselineA)).c_str(),
                    Us(s->Median(Path::kNcclAllReduce)).c_str(), disp.c_str(), ratio.c_str(),
                    busbw.c_str(), epi.c_str());
      os << line;
      if (!s->dispatch_note.empty())
        notes.push_back(StrCat("* T=", s->tokens, ": ", s->dispatch_note));
    }
    for (Path p : kAllPaths) {
      for (std::string& n : SkipNotes(group, p, PathLabel(p))) notes.push_back(std::move(n));
    }
  } else {
    std::snprintf(line, sizeof(line), "%7s %10s %10s %10s   %-9s %s\n", "T", "oneshot", "twoshot",
                  "nccl", "fastest", "margin over the next");
    os << line;
    for (const ShapeResult* s : group) {
      const std::optional<Strategy> best = s->Fastest();
      std::string margin = "-";
      if (best) {
        const double best_us = *s->Median(StrategyPath(*best));
        double next = std::numeric_limits<double>::infinity();
        for (Path p : {Path::kOneShot, Path::kTwoShot, Path::kNccl}) {
          if (p != StrategyPath(*best) && s->Median(p)) next = std::min(next, *s->Median(p));
        }
        if (next != std::numeric_limits<double>::infinity())
          margin = Format("%.1f%%", (next - best_us) / best_us * 100);
      }
      std::snprintf(line, sizeof(line), "%7lld %10s %10s %10s   %-9s %s\n",
                    static_cast<long long>(s->tokens), Us(s->Median(Path::kOneShot)).c_str(),
                    Us(s->Median(Path::kTwoShot)).c_str(), Us(s->Median(Path::kNccl)).c_str(),
                    best ? std::string(StrategyName(*best)).c_str() : "-", margin.c_str());
      os << line;
    }
    for (Path p : {Path::kOneShot, Path::kTwoShot, Path::kNccl}) {
      for (std::string& n : SkipNotes(group, p, PathName(p))) notes.push_back(std::move(n));
    }
  }
  for (const ShapeResult* s : group) {
    for (const std::string& w : s->warnings)
      notes.push_back(StrCat("warning: T=", s->tokens, ": ", w));
  }
  if (!group.empty()) {
    std::vector<int64_t> flushed;
    for (const ShapeResult* s : group) {
      if (s->rotation.flush_l2) flushed.push_back(s->tokens);
    }
    if (!flushed.empty())
      notes.push_back(
          StrCat("L2 flushed between replays (outside the timing) at T = ", TokenList(flushed),
                 ": their input sets are too small to rotate out of L2"));
  }
  for (const std::string& n : notes) os << "   " << n << "\n";
  return os.str();
}

std::string FormatSummary(const Report& r) {
  struct Ratio {
    double value;
    const ShapeResult* shape;
  };
  std::vector<Ratio> ratios;
  for (const ShapeResult& s : r.shapes) {
    const std::optional<double> d = s.Median(s.dispatched);
    const std::optional<double> b = s.Median(Path::kNccl);
    if (d && b) ratios.push_back({*d / *b, &s});
  }
  if (ratios.empty()) return "summary: no shape has both the dispatched path and B measured\n";
  auto name = [](const ShapeResult& s) {
    return StrCat("H=", s.hidden, " ", QuantModeName(s.quant), " T=", s.tokens);
  };
  std::vector<double> values;
  for (const Ratio& x : ratios) values.push_back(x.value);
  std::sort(values.begin(), values.end());
  const Ratio worst =
      *std::max_element(ratios.begin(), ratios.end(),
                        [](const Ratio& a, const Ratio& b) { return a.value < b.value; });
  std::ostringstream os;
  os << "summary: fused (dispatched) / B over " << ratios.size() << " shapes: median "
     << Format("%.2f", Percentile(values, 0.5)) << ", worst " << Format("%.2f", worst.value) << " ("
     << name(*worst.shape) << ")";
  std::vector<std::string> slower;
  for (const Ratio& x : ratios) {
    if (x.value > 1.0) slower.push_back(StrCat(name(*x.shape), " (", Format("%.3f", x.value), ")"));
  }
  if (slower.empty()) {
    os << "; never slower than B\n";
  } else {
    os << "; slower than B at " << slower.size() << " shape" << (slower.size() == 1 ? "" : "s")
       << ":\n";
    for (const std::string& line : slower) os << "  " << line << "\n";
  }
  return os.str();
}

std::string FormatProgress(const Report& r, const ShapeResult& s) {
  std::ostringstream os;
  os << "H=" << s.hidden << " " << QuantModeName(s.quant) << " T=" << s.tokens << ":";
  if (r.plan.mode == Mode::kBench) {
    for (Path p : kAllPaths) {
      os << " " << (p == Path::kNccl ? "B" : std::string(PathLabel(p))) << " " << Us(s.Median(p));
    }
    os << " us";
    const std::optional<double> d = s.Median(s.dispatched);
    const std::optional<double> b = s.Median(Path::kNccl);
    if (d && b) os << " -> " << PathName(s.dispatched) << " " << Format("%.2f", *d / *b) << "x B";
  } else {
    for (Path p : {Path::kOneShot, Path::kTwoShot, Path::kNccl})
      os << " " << PathName(p) << " " << Us(s.Median(p));
    os << " us";
    if (std::optional<Strategy> best = s.Fastest()) os << " -> " << StrategyName(*best);
  }
  return os.str();
}

// ================================================================================ files

std::string ToCsv(const Report& r) {
  std::ostringstream os;
  os << "machine,world_size,hidden,quant,tokens,path,us_median,us_p10,us_p90,busbw_gbps,"
        "ratio_vs_B,detail\n";
  const std::string machine = CsvField(r.machine.Label());
  for (const ShapeResult& s : r.shapes) {
    const std::optional<double> b = s.Median(Path::kNccl);
    auto row = [&](std::string_view name, Path p, const std::string& detail) {
      const PathResult& pr = s.at(p);
      if (!pr.measured) return;
      os << machine << "," << r.plan.world_size << "," << s.hidden << "," << QuantModeName(s.quant)
         << "," << s.tokens << "," << name << "," << Format("%.3f", pr.stats.median_us) << ","
         << Format("%.3f", pr.stats.p10_us) << "," << Format("%.3f", pr.stats.p90_us) << ","
         << Format("%.2f",
                   BusBandwidthGBps(s.tokens, s.hidden, r.plan.world_size, pr.stats.median_us))
         << "," << (b ? Format("%.4f", pr.stats.median_us / *b) : "") << "," << CsvField(detail)
         << "\n";
    };
    row("oneshot", Path::kOneShot, "");
    row("twoshot", Path::kTwoShot, "");
    row("nccl", Path::kNccl, "same measurement as baseline_b");
    if (r.plan.mode == Mode::kBench) {
      row("dispatched", s.dispatched,
          StrCat("strategy ", PathName(s.dispatched),
                 s.dispatch_note.empty() ? "" : StrCat("; ", s.dispatch_note)));
      row("baseline_a", Path::kBaselineA,
          s.quant == QuantMode::kNone ? "ncclAllReduce + fused_add_rms_norm kernel"
                                      : "ncclAllReduce + fused_add_rms_norm + quant_fp8 kernels");
      row("baseline_b", Path::kNccl,
          "ncclAllReduce + one fused add-RMSNorm-quant kernel = the nccl strategy");
      row("nccl_allreduce", Path::kNcclAllReduce, "ncclAllReduce alone");
    }
  }
  return os.str();
}

std::string ToJson(const Report& r) {
  const MachineInfo& m = r.machine;
  json machine = {{"label", m.Label()},
                  {"gpu", m.gpu_name},
                  {"gpu_count", m.gpu_count},
                  {"driver", m.driver},
                  {"cuda_driver", m.cuda_driver},
                  {"cuda_runtime", m.cuda_runtime},
                  {"nccl", m.nccl},
                  {"host", m.host},
                  {"l2_bytes", m.l2_bytes},
                  {"sm_count", m.sm_count}};
  json peer = {{"measured", r.peer.measured}};
  if (!r.peer.measured) {
    peer["why_not"] = r.peer.why_not;
  } else {
    peer["bytes"] = r.peer.bytes;
    peer["copies"] = r.peer.copies;
    peer["direction"] = "rank r -> rank (r+1) % N, all ranks at once; rank 0's numbers";
    if (r.peer.copy_engine_gbps)
      peer["copy_engine_gbps"] = *r.peer.copy_engine_gbps;
    else
      peer["copy_engine_error"] = r.peer.copy_engine_error;
    if (r.peer.sm_copy_gbps)
      peer["sm_copy_gbps"] = *r.peer.sm_copy_gbps;
    else
      peer["sm_copy_error"] = r.peer.sm_copy_error;
  }
  json shapes = json::array();
  for (const ShapeResult& s : r.shapes) {
    json paths = json::object();
    for (Path p : kAllPaths) {
      if (r.plan.mode == Mode::kTune && (p == Path::kBaselineA || p == Path::kNcclAllReduce))
        continue;
      paths[std::string(PathName(p))] = PathJson(s, p, r.plan.world_size);
    }
    json shape = {{"hidden", s.hidden},
                  {"quant", std::string(QuantModeName(s.quant))},
                  {"emit", s.emit.Names()},
                  {"tokens", s.tokens},
                  {"set_bytes", s.set_bytes},
                  {"sets", s.rotation.sets},
                  {"l2_flush_between_replays", s.rotation.flush_l2},
                  {"paths", std::move(paths)}};
    if (r.plan.mode == Mode::kBench) {
      shape["dispatched"] = {{"choice", std::string(StrategyName(s.dispatched_choice))},
                             {"ran", std::string(PathName(s.dispatched))},
                             {"note", s.dispatch_note}};
    } else if (std::optional<Strategy> best = s.Fastest()) {
      shape["fastest"] = std::string(StrategyName(*best));
    }
    shapes.push_back(std::move(shape));
  }
  json doc = {
      {"tool", StrCat("tpfuse ", ModeName(r.plan.mode))},
      {"machine", std::move(machine)},
      {"world_size", r.plan.world_size},
      {"peer_copy_bandwidth", std::move(peer)},
      {"method",
       {{"ops_per_graph", r.plan.ops_per_graph},
        {"warmup_replays", r.plan.warmup},
        {"timed_replays", r.plan.replays},
        {"pdl", r.plan.pdl},
        {"statistic", "rank 0's per-replay time / ops_per_graph: median, p10, p90"},
        {"baseline_a", "ncclAllReduce + fused_add_rms_norm kernel + quant_fp8 kernel"},
        {"baseline_b",
         "ncclAllReduce + one fused add-RMSNorm-quant kernel: the fused op's nccl strategy"},
        {"busbw", "T*H*2 bytes * 2(N-1)/N / time"}}},
      {"workspace",
       {{"max_tokens", r.workspace.max_tokens},
        {"max_hidden", r.workspace.max_hidden},
        {"oneshot_max_tokens", r.workspace.oneshot_max_tokens}}},
      {"dispatcher_table", r.table_source},
      {"warnings", r.warnings},
      {"shapes", std::move(shapes)}};
  return doc.dump(2) + "\n";
}

std::string PlotFileName(int64_t hidden, QuantMode quant) {
  return StrCat("bench_H", hidden, "_", QuantModeName(quant), ".svg");
}

StatusOr<std::string> PlotSvg(const Report& r, int64_t hidden, QuantMode quant) {
  const std::vector<const ShapeResult*> group = r.Group(hidden, quant);
  plot::LogLogChart chart;
  chart.title = StrCat(r.machine.Label(), ", TP=", r.plan.world_size, ": allreduce + RMSNorm",
                       quant == QuantMode::kNone ? "" : " + " + std::string(QuantModeName(quant)),
                       ", H=", hidden);
  chart.subtitle =
      StrCat("µs per op, median of ", r.plan.replays, " CUDA-graph replays x ",
             r.plan.ops_per_graph, " ops; driver ", r.machine.driver, ", NCCL ", r.machine.nccl);
  chart.x_label = "tokens T";
  chart.y_label = "latency per op (µs)";
  chart.x_ticks_base2 = true;

  plot::Series dispatched;
  dispatched.name = "dispatched";
  dispatched.color = "#9467bd";
  dispatched.highlight = true;
  for (const ShapeResult* s : group) {
    if (std::optional<double> d = s->Median(s->dispatched))
      dispatched.points.push_back({double(s->tokens), *d});
  }
  chart.series.push_back(dispatched);
  for (Path p : kAllPaths) {
    plot::Series series;
    series.name = p == Path::kNccl            ? "B = nccl strategy"
                  : p == Path::kBaselineA     ? "A (unfused)"
                  : p == Path::kNcclAllReduce ? "NCCL all-reduce alone"
                                              : std::string(PathName(p));
    series.color = Color(p);
    series.dashed = p == Path::kBaselineA || p == Path::kNcclAllReduce;
    for (const ShapeResult* s : group) {
      if (std::optional<double> v = s->Median(p)) series.points.push_back({double(s->tokens), *v});
    }
    chart.series.push_back(series);
  }
  return plot::RenderLogLogSvg(chart);
}

Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return InvalidArgument("cannot write '", tmp, "'");
    out << text;
    out.flush();
    if (!out) return InvalidArgument("writing '", tmp, "' failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return InvalidArgument("cannot rename '", tmp, "' to '", path, "'");
  }
  return Status::Ok();
}

Status WriteBenchOutputs(const Report& r, const std::string& dir) {
  const std::filesystem::path base(dir);
  TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / "bench.csv").string(), ToCsv(r)));
  TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / "bench.json").string(), ToJson(r)));
  for (int64_t h : r.plan.hidden) {
    for (QuantMode q : r.plan.quants) {
      if (r.Group(h, q).empty()) continue;
      StatusOr<std::string> svg = PlotSvg(r, h, q);
      if (!svg.ok()) continue;  // nothing measured in this group yet
      TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / PlotFileName(h, q)).string(), *svg));
    }
  }
  return Status::Ok();
}

// ================================================================================ tuning

runtime::StrategyTable TunedTable(const Report& r) {
  runtime::StrategyTable table;
  table.source = r.machine.Describe();
  for (int64_t h : r.plan.hidden) {
    for (QuantMode q : r.plan.quants) {
      std::vector<TunePoint> points;
      for (const ShapeResult* s : r.Group(h, q)) {
        if (std::optional<Strategy> best = s->Fastest()) points.push_back({s->tokens, *best});
      }
      for (const runtime::StrategyRule& rule : RulesFromWinners(r.plan.world_size, h, q, points))
        table.AddRule(rule);
    }
  }
  return table;
}

std::string FormatRules(const runtime::StrategyTable& table) {
  std::ostringstream os;
  char line[160];
  std::snprintf(line, sizeof(line), "%6s %7s  %-11s %-16s %s\n", "world", "hidden", "quant",
                "tokens", "strategy");
  os << line;
  for (const runtime::StrategyRule& rule : table.rules()) {
    const std::string tokens = rule.max_tokens == std::numeric_limits<int64_t>::max()
                                   ? StrCat(rule.min_tokens, "..")
                                   : StrCat(rule.min_tokens, "..", rule.max_tokens);
    std::snprintf(line, sizeof(line), "%6d %7s  %-11s %-16s %s\n", rule.world_size,
                  rule.hidden == 0 ? "any" : std::to_string(rule.hidden).c_str(),
                  rule.quant.c_str(), tokens.c_str(),
                  std::string(StrategyName(rule.strategy)).c_str());
    os << line;
  }
  return os.str();
}

}  // namespace tpfuse::bench
