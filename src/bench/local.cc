#include "bench/local.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>

#include "bench/svg_plot.h"
#include "bench/text.h"

namespace tpfuse::bench {
namespace {

constexpr size_t kRegionAlign = 256;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// "fp8_group+norm": the quant mode, and "+norm" when a quantized cell also emits y.
std::string CaseName(QuantMode quant, const EmitSet& emit) {
  std::string name(QuantModeName(quant));
  if (quant != QuantMode::kNone && emit.norm) name += "+norm";
  return name;
}

std::string CellName(const LocalCell& c) {
  return LocalCellName(c.hidden, c.quant, c.emit, c.tokens);
}

double SafeRatio(double a, double b) { return b > 0 ? a / b : 0; }

// One of the world-size-1 targets (docs/perf/h200x1/NOTES.md) over the cells it applies to.
struct Target {
  std::string what;   // "fused / copy at T >= 1024"
  std::string limit;  // "<= 1.18"
  double bound;       // a value above it misses the target
  std::string scope_note;  // cells left out, and why
};

struct Judged {
  double value = 0;
  std::string where;
};

std::string JudgeLine(const Target& t, const std::vector<Judged>& values) {
  std::ostringstream os;
  os << "  " << t.what << " (target " << t.limit << "): ";
  if (values.empty()) {
    os << "no cell of this run to judge";
  } else {
    const Judged worst = *std::max_element(
        values.begin(), values.end(), [](const Judged& a, const Judged& b) { return a.value < b.value; });
    const size_t over = size_t(std::count_if(values.begin(), values.end(),
                                             [&](const Judged& j) { return j.value > t.bound; }));
    os << "worst " << Format("%.2f", worst.value) << " (" << worst.where << "); ";
    if (over == 0) {
      os << "met in all " << values.size() << " cells";
    } else {
      os << "MISSED in " << over << " of " << values.size() << " cells";
    }
  }
  if (!t.scope_note.empty()) os << " [" << t.scope_note << "]";
  return os.str() + "\n";
}

}  // namespace

std::vector<int64_t> DefaultLocalHidden() { return {2880, 4096, 5120, 7168, 8192}; }

AllreduceRmsnormSpec MakeLocalSpec(int64_t hidden, QuantMode quant, EmitNorm emit_norm) {
  AllreduceRmsnormSpec spec = MakeSpec(hidden, quant, emit_norm);
  spec.local = true;
  spec.group_size = hidden % kGroupSize == 0 ? kGroupSize : kGroupSize / 2;
  return spec;
}

Traffic FusedTraffic(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const int64_t act = tokens * spec.hidden * DTypeSize(spec.act_dtype);
  Traffic t;
  t.read = act * (spec.has_residual ? 2 : 1);
  if (spec.emit.residual) t.write += act;
  if (spec.emit.norm) t.write += act;
  if (spec.emit.quant) t.write += tokens * spec.hidden;  // one byte per FP8 element
  if (spec.emit.quant && IsDynamicQuant(spec.quant))
    t.write += spec.ScaleElements(tokens) * int64_t(sizeof(float));
  return t;
}

Traffic UnfusedTraffic(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const int64_t act = tokens * spec.hidden * DTypeSize(spec.act_dtype);
  Traffic t;
  // fused_add_rms_norm: x, residual -> y, residual_out.
  t.read = 2 * act;
  t.write = 2 * act;
  if (spec.quant == QuantMode::kNone) return t;
  // quant_fp8: y -> q [, s].
  t.read += act;
  t.write += tokens * spec.hidden;
  if (IsDynamicQuant(spec.quant)) t.write += spec.ScaleElements(tokens) * int64_t(sizeof(float));
  return t;
}

double UnfusedByteRatio(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  return SafeRatio(double(FusedTraffic(spec, tokens).total()),
                   double(UnfusedTraffic(spec, tokens).total()));
}

size_t CopyBytes(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  const size_t half = (size_t(FusedTraffic(spec, tokens).total()) + 1) / 2;
  return AlignUp(std::max<size_t>(half, 16), kCopyGranule);
}

LocalSetLayout LocalSetLayout::Make(const AllreduceRmsnormSpec& spec, int64_t tokens) {
  LocalSetLayout l;
  l.op = SetLayout::Make(spec, tokens);
  l.copy_bytes = CopyBytes(spec, tokens);
  // NOTE: the copy's source is [0, copy_bytes) of the set: the op's regions, and past them, for a
  // shape whose traffic is under the copy granule, memory nobody else uses. The destination
  // starts after both, so the two never overlap.
  l.copy_dst = AlignUp(std::max(l.op.bytes, l.copy_bytes), kRegionAlign);
  l.bytes = AlignUp(l.copy_dst + l.copy_bytes, kRegionAlign);
  return l;
}

Rotation ChooseLocalRotation(const AllreduceRmsnormSpec& spec, int64_t tokens, size_t l2_bytes,
                             int ops_per_graph) {
  return ChooseRotation(size_t(FusedTraffic(spec, tokens).total()), l2_bytes, ops_per_graph);
}

// ================================================================================ cells

double LocalCell::FusedOverCopy() const { return SafeRatio(fused.median_us, copy.median_us); }
double LocalCell::FusedOverUnfused() const {
  return SafeRatio(fused.median_us, unfused.median_us);
}
double LocalCell::ByteRatio() const {
  return SafeRatio(double(fused_bytes.total()), double(unfused_bytes.total()));
}
double LocalCell::FusedOverScaledUnfused() const {
  return SafeRatio(fused.median_us, unfused.median_us * ByteRatio());
}
double LocalCell::FusedGBps() const {
  return SafeRatio(double(fused_bytes.total()), fused.median_us * 1e3);
}
double LocalCell::CopyGBps() const {
  return SafeRatio(2.0 * double(copy_bytes), copy.median_us * 1e3);
}

std::vector<const LocalCell*> LocalReport::Group(int64_t hidden, QuantMode quant) const {
  std::vector<const LocalCell*> group;
  for (const LocalCell& c : cells) {
    if (c.hidden == hidden && c.quant == quant) group.push_back(&c);
  }
  std::sort(group.begin(), group.end(),
            [](const LocalCell* a, const LocalCell* b) { return a->tokens < b->tokens; });
  return group;
}

// ================================================================================ text

std::string LocalCellName(int64_t hidden, QuantMode quant, const EmitSet& emit, int64_t tokens) {
  return StrCat("H=", hidden, " ", CaseName(quant, emit), " T=", tokens);
}

std::string FormatLocalHeader(const LocalReport& r) {
  const Plan& p = r.plan;
  const MachineInfo& m = r.machine;
  std::ostringstream os;
  os << "tpfuse bench: world size 1, one " << m.gpu_name << " on " << m.host
     << " (the fused op without communication)\n";
  os << "  driver " << m.driver << " (CUDA " << m.cuda_driver << "), runtime CUDA "
     << m.cuda_runtime << "; L2 " << Mib(size_t(m.l2_bytes)) << ", " << m.sm_count << " SMs\n";
  os << "  method: per path a CUDA graph of " << p.ops_per_graph
     << " ops back to back over rotating sets (each set read again only after 2x L2 of other "
        "sets; the L2 overwritten between replays where the sets are too small); "
     << p.warmup << " warm-up + " << p.replays << " timed replays; per-op time = replay / "
     << p.ops_per_graph << "; the median; PDL " << (p.pdl ? "on" : "off") << " for the fused op\n";
  os << "  paths: fused = the local fused op (LaunchLocalAllreduceRmsnorm);\n"
     << "         unfused = the unfused kernels: fused_add_rms_norm, then quant_fp8 (none: the "
        "first alone);\n"
     << "         copy = cudaMemcpyAsync of (read + write) / 2 of the fused op's minimum bytes "
        "(rounded up to 4 KiB), over the same sets: the roofline\n";
  os << "  bytes: read x, residual; write residual_out, q, and the norm y where emitted, the f32 "
        "scales for dynamic quant (the weight is left out);\n"
     << "         the unfused kernels also write y and read it back: 11 bytes per element when "
        "quantized; ratio = fused bytes / unfused bytes\n";
  os << "  checked: every cell with T <= " << kLocalCheckMaxTokens
     << ", the fused op and the unfused kernels bit for bit against the CPU oracle, before any "
        "timing\n";
  return os.str();
}

std::string FormatLocalTable(const LocalReport& r, int64_t hidden, QuantMode quant) {
  const std::vector<const LocalCell*> group = r.Group(hidden, quant);
  std::ostringstream os;
  char line[320];
  os << "\n== H=" << hidden << "  quant=" << QuantModeName(quant);
  if (!group.empty()) {
    os << "  emit=" << EmitText(group.front()->emit);
    if (quant == QuantMode::kFp8Group) os << "  group=" << group.front()->group_size;
  }
  os << "  world size 1\n";
  os << "   µs per op: median of " << r.plan.replays << " replays x " << r.plan.ops_per_graph
     << " ops\n";
  std::snprintf(line, sizeof(line), "%7s %9s %9s %9s %10s %10s %7s %13s %9s %9s %8s\n", "T",
                "fused", "unfused", "copy", "fused/copy", "fused/unf", "ratio", "fused/(unf*r)",
                "GB/s", "copy GB/s", "checked");
  os << line;
  std::vector<int64_t> flushed;
  for (const LocalCell* c : group) {
    std::snprintf(line, sizeof(line), "%7lld %9s %9s %9s %10.2f %10.2f %7.3f %13.2f %9.0f %9.0f %8s\n",
                  static_cast<long long>(c->tokens), Us(c->fused.median_us).c_str(),
                  Us(c->unfused.median_us).c_str(), Us(c->copy.median_us).c_str(),
                  c->FusedOverCopy(), c->FusedOverUnfused(), c->ByteRatio(),
                  c->FusedOverScaledUnfused(), c->FusedGBps(), c->CopyGBps(),
                  c->checked ? "bitwise" : "-");
    os << line;
    if (c->rotation.flush_l2) flushed.push_back(c->tokens);
  }
  if (!flushed.empty()) {
    std::string list;
    for (int64_t t : flushed) list += (list.empty() ? "" : ", ") + std::to_string(t);
    os << "   L2 overwritten between replays (outside the timing) at T = " << list << "\n";
  }
  return os.str();
}

std::string FormatLocalProgress(const LocalCell& c) {
  std::ostringstream os;
  os << CellName(c) << ": fused " << Us(c.fused.median_us) << " unfused "
     << Us(c.unfused.median_us) << " copy " << Us(c.copy.median_us) << " us -> "
     << Format("%.2f", c.FusedOverCopy()) << "x copy " << Format("%.2f", c.FusedOverUnfused())
     << "x unfused";
  return os.str();
}

std::string FormatLocalSummary(const LocalReport& r) {
  std::ostringstream os;
  os << "summary against the world-size-1 targets (one run, one GPU):\n";
  auto collect = [&](const std::function<std::optional<double>(const LocalCell&)>& value) {
    std::vector<Judged> out;
    for (const LocalCell& c : r.cells) {
      if (std::optional<double> v = value(c)) out.push_back({*v, CellName(c)});
    }
    return out;
  };

  const Target roofline{"fused / copy at T >= 1024", "<= 1.18", 1.18, ""};
  os << JudgeLine(roofline, collect([](const LocalCell& c) -> std::optional<double> {
                    if (c.tokens < 1024) return std::nullopt;
                    return c.FusedOverCopy();
                  }));

  const Target latency{"fused µs at T = 1", "<= 2.0 µs", 2.0, ""};
  os << JudgeLine(latency, collect([](const LocalCell& c) -> std::optional<double> {
                    if (c.tokens != 1) return std::nullopt;
                    return c.fused.median_us;
                  }));

  // fp8_group + norm against fp8_tensor at the same H and T.
  const Target group{"fp8_group+norm / fp8_tensor at T <= 128", "<= 1.15", 1.15, ""};
  std::vector<Judged> group_values;
  for (const LocalCell& g : r.cells) {
    if (g.quant != QuantMode::kFp8Group || !g.emit.norm || g.tokens > 128) continue;
    for (const LocalCell& t : r.cells) {
      if (t.quant == QuantMode::kFp8Tensor && t.hidden == g.hidden && t.tokens == g.tokens)
        group_values.push_back({SafeRatio(g.fused.median_us, t.fused.median_us), CellName(g)});
    }
  }
  os << JudgeLine(group, group_values);

  const Target launches{"fused / unfused at T <= 128", "<= 0.6", 0.6,
                        "quantized modes: quant none's unfused path is one kernel"};
  os << JudgeLine(launches, collect([](const LocalCell& c) -> std::optional<double> {
                    if (c.tokens > 128 || c.quant == QuantMode::kNone) return std::nullopt;
                    return c.FusedOverUnfused();
                  }));

  const Target scaled{"fused / (unfused x byte ratio) at T >= 1024", "<= 1.05", 1.05, ""};
  os << JudgeLine(scaled, collect([](const LocalCell& c) -> std::optional<double> {
                    if (c.tokens < 1024) return std::nullopt;
                    return c.FusedOverScaledUnfused();
                  }));
  return os.str();
}

// ================================================================================ files

std::string LocalToCsv(const LocalReport& r) {
  std::ostringstream os;
  os << "machine,hidden,quant,emit,group_size,tokens,fused_us,fused_p10_us,fused_p90_us,"
        "unfused_us,copy_us,read_bytes,write_bytes,copy_bytes,unfused_bytes,fused_gbps,"
        "copy_gbps,fused_over_copy,fused_over_unfused,byte_ratio,fused_over_scaled_unfused,"
        "sets,l2_flush,checked\n";
  const std::string machine = CsvField(StrCat("1x ", r.machine.gpu_name));
  for (const LocalCell& c : r.cells) {
    os << machine << "," << c.hidden << "," << QuantModeName(c.quant) << ","
       << CsvField(EmitText(c.emit)) << ","
       << (c.quant == QuantMode::kFp8Group ? std::to_string(c.group_size) : "") << ","
       << c.tokens << "," << Format("%.3f", c.fused.median_us) << ","
       << Format("%.3f", c.fused.p10_us) << "," << Format("%.3f", c.fused.p90_us) << ","
       << Format("%.3f", c.unfused.median_us) << "," << Format("%.3f", c.copy.median_us) << ","
       << c.fused_bytes.read << "," << c.fused_bytes.write << "," << c.copy_bytes << ","
       << c.unfused_bytes.total() << "," << Format("%.1f", c.FusedGBps()) << ","
       << Format("%.1f", c.CopyGBps()) << "," << Format("%.4f", c.FusedOverCopy()) << ","
       << Format("%.4f", c.FusedOverUnfused()) << "," << Format("%.4f", c.ByteRatio()) << ","
       << Format("%.4f", c.FusedOverScaledUnfused()) << "," << c.rotation.sets << ","
       << (c.rotation.flush_l2 ? 1 : 0) << "," << (c.checked ? "bitwise" : "") << "\n";
  }
  return os.str();
}

StatusOr<std::string> LocalPlotSvg(const LocalReport& r) {
  static constexpr const char* kDashes[] = {"", "7 4", "2 3", "10 3 2 3", "1 2"};
  auto quant_color = [](QuantMode q) {
    switch (q) {
      case QuantMode::kNone: return "#7f7f7f";
      case QuantMode::kFp8Tensor: return "#1f77b4";
      case QuantMode::kFp8Token: return "#2ca02c";
      case QuantMode::kFp8Group: return "#d62728";
    }
    return "#000000";
  };
  plot::LogLogChart chart;
  chart.title = StrCat("1x ", r.machine.gpu_name,
                       ": residual + RMSNorm [+ FP8 quant], the fused op against the copy roofline");
  chart.subtitle = StrCat("fused µs / copy µs of the same bytes, medians of ", r.plan.replays,
                          " CUDA-graph replays x ", r.plan.ops_per_graph, " ops; driver ",
                          r.machine.driver);
  chart.x_label = "tokens T";
  chart.y_label = "fused / copy (1 = the roofline)";
  chart.x_ticks_base2 = true;
  chart.width = 1000;
  chart.height = std::max(560, 140 + 18 * int(r.plan.hidden.size() * r.plan.quants.size() + 1));

  int64_t t_min = std::numeric_limits<int64_t>::max(), t_max = 0;
  for (const LocalCell& c : r.cells) {
    t_min = std::min(t_min, c.tokens);
    t_max = std::max(t_max, c.tokens);
  }
  plot::Series roofline;
  roofline.name = "copy roofline";
  roofline.color = "#000000";
  roofline.highlight = true;
  if (t_max > 0) roofline.points = {{double(t_min), 1.0}, {double(t_max), 1.0}};
  chart.series.push_back(roofline);
  for (size_t qi = 0; qi < r.plan.quants.size(); ++qi) {
    for (size_t hi = 0; hi < r.plan.hidden.size(); ++hi) {
      const std::vector<const LocalCell*> group = r.Group(r.plan.hidden[hi], r.plan.quants[qi]);
      plot::Series s;
      s.name = StrCat("H=", r.plan.hidden[hi], " ",
                      group.empty() ? std::string(QuantModeName(r.plan.quants[qi]))
                                    : CaseName(r.plan.quants[qi], group.front()->emit));
      s.color = quant_color(r.plan.quants[qi]);
      s.dash_array = kDashes[hi % std::size(kDashes)];
      s.stroke_width = 1.5;
      for (const LocalCell* c : group) s.points.push_back({double(c->tokens), c->FusedOverCopy()});
      chart.series.push_back(std::move(s));
    }
  }
  return plot::RenderLogLogSvg(chart);
}

Status WriteLocalOutputs(const LocalReport& r, const std::string& dir) {
  const std::filesystem::path base(dir);
  std::string text = FormatLocalHeader(r);
  for (int64_t h : r.plan.hidden) {
    for (QuantMode q : r.plan.quants) {
      if (!r.Group(h, q).empty()) text += FormatLocalTable(r, h, q);
    }
  }
  text += "\n" + FormatLocalSummary(r);
  TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / "bench.txt").string(), text));
  TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / "bench.csv").string(), LocalToCsv(r)));
  if (!r.cells.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const std::string svg, LocalPlotSvg(r));
    TPFUSE_RETURN_IF_ERROR(WriteFileAtomically((base / "bench_roofline.svg").string(), svg));
  }
  return Status::Ok();
}

}  // namespace tpfuse::bench
