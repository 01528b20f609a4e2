// The benchmark's plan arithmetic and reporting, without GPUs: option lists, the measured
// spec, set layout and rotation, workspace size, statistics, bus bandwidth, the tune rules, and
// the tables, CSV, JSON and plots of a made-up report.
#include "bench/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cuda/comm/workspace.h"
#include "bench/report.h"

namespace tpfuse::bench {
namespace {

using runtime::StrategyRule;

constexpr int64_t kInf = std::numeric_limits<int64_t>::max();

// ---------------------------------------------------------------- options

TEST(BenchOptions, IntListsAreSortedAndDeduplicated) {
  StatusOr<std::vector<int64_t>> list = ParseIntList("128, 1,16,16", "--tokens", 1, 65536);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(*list, (std::vector<int64_t>{1, 16, 128}));
}

TEST(BenchOptions, BadIntListsNameTheOptionAndItem) {
  for (const char* bad : {"", "1,,2", "1,x", "0", "70000", "1.5", "-3", "2 4"}) {
    StatusOr<std::vector<int64_t>> list = ParseIntList(bad, "--tokens", 1, 65536);
    ASSERT_FALSE(list.ok()) << bad;
    EXPECT_NE(list.status().message().find("--tokens"), std::string::npos)
        << list.status().message();
  }
}

TEST(BenchOptions, QuantLists) {
  StatusOr<std::vector<QuantMode>> q = ParseQuantList("fp8_group,fp8_tensor,fp8_group");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, (std::vector<QuantMode>{QuantMode::kFp8Group, QuantMode::kFp8Tensor}));
  StatusOr<std::vector<QuantMode>> all = ParseQuantList("all");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 4u);
  StatusOr<std::vector<QuantMode>> bad = ParseQuantList("fp8_grp");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("fp8_grp"), std::string::npos);
}

TEST(BenchOptions, ScalarsAndEmitNorm) {
  EXPECT_TRUE(ParseInt("20", "--ops-per-graph", 1, 1000).ok());
  EXPECT_FALSE(ParseInt("0", "--ops-per-graph", 1, 1000).ok());
  EXPECT_FALSE(ParseInt("twenty", "--ops-per-graph", 1, 1000).ok());
  EXPECT_TRUE(ParseSeconds("1.5", "--timeout").ok());
  EXPECT_FALSE(ParseSeconds("0", "--timeout").ok());
  EXPECT_FALSE(ParseSeconds("inf", "--timeout").ok());
  EXPECT_FALSE(ParseSeconds("5s", "--timeout").ok());
  EXPECT_EQ(*ParseEmitNorm("auto"), EmitNorm::kAuto);
  EXPECT_FALSE(ParseEmitNorm("maybe").ok());
}

TEST(BenchOptions, Defaults) {
  EXPECT_EQ(DefaultTokens().size(), 14u);
  EXPECT_EQ(DefaultTokens().front(), 1);
  EXPECT_EQ(DefaultTokens().back(), 8192);
  EXPECT_EQ(DefaultHidden(), (std::vector<int64_t>{4096, 7168, 8192}));
  EXPECT_EQ(DefaultQuants().size(), 4u);
}

TEST(BenchPlan, JsonRoundTrip) {
  Plan plan;
  plan.mode = Mode::kTune;
  plan.world_size = 2;
  plan.tokens = {1, 128};
  plan.hidden = {7168};
  plan.quants = {QuantMode::kFp8Group, QuantMode::kNone};
  plan.emit_norm = EmitNorm::kNo;
  plan.ops_per_graph = 7;
  plan.replays = 9;
  plan.warmup = 0;
  plan.pdl = false;
  plan.out = "/tmp/x.json";
  plan.seed = 42;
  plan.timeout_seconds = 12.5;
  plan.id_file = "/tmp/id";
  StatusOr<Plan> back = Plan::FromJson(plan.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), plan.ToJson());
  EXPECT_EQ(back->num_shapes(), 4);
  EXPECT_FALSE(Plan::FromJson("{}").ok());
  EXPECT_FALSE(Plan::FromJson("not json").ok());
}

// ---------------------------------------------------------------- shapes

TEST(BenchSpec, EmitsPerQuantAndEmitNorm) {
  const AllreduceRmsnormSpec none = MakeSpec(4096, QuantMode::kNone, EmitNorm::kAuto);
  EXPECT_TRUE(none.Validate().ok()) << none.Validate().ToString();
  EXPECT_TRUE(none.emit.norm && none.emit.residual && !none.emit.quant && !none.emit.allreduce);
  const AllreduceRmsnormSpec tensor = MakeSpec(4096, QuantMode::kFp8Tensor, EmitNorm::kAuto);
  EXPECT_TRUE(!tensor.emit.norm && tensor.emit.residual && tensor.emit.quant);
  const AllreduceRmsnormSpec group = MakeSpec(7168, QuantMode::kFp8Group, EmitNorm::kAuto);
  EXPECT_TRUE(group.emit.norm && group.emit.quant);
  EXPECT_EQ(group.group_size, 128);
  EXPECT_EQ(group.scale_layout, ScaleLayout::kRow);
  EXPECT_EQ(group.scale_fmt, ScaleFormat::kF32);
  EXPECT_TRUE(group.has_residual);
  EXPECT_EQ(group.act_dtype, DType::kBF16);
  EXPECT_EQ(group.weight_dtype, DType::kBF16);
  EXPECT_FALSE(MakeSpec(4096, QuantMode::kFp8Group, EmitNorm::kNo).emit.norm);
  EXPECT_TRUE(MakeSpec(4096, QuantMode::kFp8Token, EmitNorm::kYes).emit.norm);
  for (QuantMode q : DefaultQuants()) {
    for (EmitNorm e : {EmitNorm::kAuto, EmitNorm::kYes, EmitNorm::kNo}) {
      EXPECT_TRUE(MakeSpec(8192, q, e).Validate().ok())
          << QuantModeName(q) << " " << EmitNormName(e);
    }
  }
}

TEST(BenchSpec, SetLayoutHoldsEveryRegionAligned) {
  const AllreduceRmsnormSpec spec = MakeSpec(4096, QuantMode::kFp8Group, EmitNorm::kAuto);
  const SetLayout l = SetLayout::Make(spec, 3);
  const size_t act = 3 * 4096 * 2;
  EXPECT_EQ(l.x, 0u);
  EXPECT_GE(l.residual, l.x + act);
  EXPECT_GE(l.residual_out, l.residual + act);
  EXPECT_GE(l.norm_out, l.residual_out + act);
  EXPECT_GE(l.quant, l.norm_out + act);
  EXPECT_GE(l.scale, l.quant + act / 2);
  EXPECT_GE(l.bytes, l.scale + 3 * 32 * sizeof(float));
  for (size_t off : {l.residual, l.residual_out, l.norm_out, l.quant, l.scale, l.bytes})
    EXPECT_EQ(off % 256, 0u);
  const SetLayout plain = SetLayout::Make(MakeSpec(4096, QuantMode::kNone, EmitNorm::kAuto), 3);
  EXPECT_EQ(plain.bytes, 4 * act);  // no q, no s
}

TEST(BenchSpec, RotationCoversTwiceTheL2) {
  const size_t l2 = 50u << 20;
  // Large sets: between two uses of a set, the others move >= 2x L2; no flush.
  Rotation big = ChooseRotation(40u << 20, l2, 20);
  EXPECT_EQ(big.sets, 4);  // 3 others x 40 MiB >= 100 MiB
  EXPECT_FALSE(big.flush_l2);
  EXPECT_GE(size_t(big.sets - 1) * (40u << 20), 2 * l2);
  Rotation huge = ChooseRotation(600u << 20, l2, 20);
  EXPECT_EQ(huge.sets, 2);
  EXPECT_FALSE(huge.flush_l2);
  // Small sets: one set per op and an L2 flush between replays.
  Rotation small = ChooseRotation(64u << 10, l2, 20);
  EXPECT_EQ(small.sets, 20);
  EXPECT_TRUE(small.flush_l2);
  // No L2 reported: nothing to rotate out of.
  EXPECT_EQ(ChooseRotation(1 << 20, 0, 20).sets, 1);
  EXPECT_FALSE(ChooseRotation(1 << 20, 0, 20).flush_l2);
}

TEST(BenchSpec, WorkspaceFitsTheSweepAndThePeerCopy) {
  Plan plan;
  plan.world_size = 2;
  plan.tokens = DefaultTokens();
  plan.hidden = DefaultHidden();
  WorkspacePlan w = PlanWorkspace(plan);
  EXPECT_EQ(w.max_hidden, 8192);
  EXPECT_EQ(w.max_tokens, 8192);
  EXPECT_EQ(w.oneshot_max_tokens, 8192);
  EXPECT_FALSE(w.oneshot_capped);
  // A short sweep still gets a workspace large enough to time the peer copy.
  plan.tokens = {1, 16};
  w = PlanWorkspace(plan);
  EXPECT_GE(size_t(w.max_tokens) * 8192 * 2, kMinPeerCopyBytes);
  EXPECT_EQ(w.oneshot_max_tokens, 16);
  // A huge sweep caps the Lamport buffers.
  plan.world_size = 8;
  plan.tokens = {65536};
  plan.hidden = {16384};
  w = PlanWorkspace(plan);
  EXPECT_TRUE(w.oneshot_capped);
  // The runtime's one-shot area for that workspace fits the cap, and one more row would not.
  cuda::WorkspaceConfig config;
  config.world_size = 8;
  config.max_hidden = 16384;
  config.oneshot_max_tokens = w.oneshot_max_tokens;
  auto lamport_bytes = [&] {
    return size_t(cuda::kLamportBuffers) * cuda::WorkspaceLayout::Make(config).lamport_buffer_bytes;
  };
  EXPECT_LE(lamport_bytes(), kMaxLamportBytes);
  config.oneshot_max_tokens += 1;
  EXPECT_GT(lamport_bytes(), kMaxLamportBytes);
}

// ---------------------------------------------------------------- statistics

TEST(BenchStats, MedianAndPercentiles) {
  ReplayStats s = Summarize({5, 1, 4, 2, 3});
  EXPECT_DOUBLE_EQ(s.median_us, 3);
  EXPECT_DOUBLE_EQ(s.p10_us, 1.4);
  EXPECT_DOUBLE_EQ(s.p90_us, 4.6);
  EXPECT_EQ(s.replays, 5);
  EXPECT_DOUBLE_EQ(Summarize({7, 9}).median_us, 8);
  EXPECT_EQ(Summarize({}).replays, 0);
}

TEST(BenchStats, BusBandwidth) {
  // T = 8192, H = 4096 bf16 is 64 MiB; at N = 2 the bus carries it once: 67.1 MB in 172 us.
  EXPECT_NEAR(BusBandwidthGBps(8192, 4096, 2, 172.0), 390.1, 0.1);
  // N = 8: 2 * 7 / 8 of the payload.
  EXPECT_NEAR(BusBandwidthGBps(1, 4096, 8, 1.0), 8192 * 1.75 / 1e3, 1e-9);
  EXPECT_EQ(BusBandwidthGBps(1, 4096, 2, 0), 0);
}

// ---------------------------------------------------------------- tuning

TEST(BenchTune, FastestWinsAndExactTiesGoToTheSimpler) {
  EXPECT_EQ(*PickFastest({{Strategy::kOneShot, 4.0},
                          {Strategy::kTwoShot, 3.99},
                          {Strategy::kNccl, 9.0}}),
            Strategy::kTwoShot);
  EXPECT_EQ(*PickFastest({{Strategy::kOneShot, 5.0},
                          {Strategy::kTwoShot, 5.0},
                          {Strategy::kNccl, 5.0}}),
            Strategy::kNccl);
  EXPECT_EQ(*PickFastest({{Strategy::kOneShot, std::nullopt}, {Strategy::kTwoShot, 7.0}}),
            Strategy::kTwoShot);
  EXPECT_FALSE(PickFastest({{Strategy::kOneShot, std::nullopt}}).has_value());
}

TEST(BenchTune, WinnersCompressIntoRanges) {
  std::vector<TunePoint> points = {{256, Strategy::kTwoShot}, {1, Strategy::kOneShot},
                                   {16, Strategy::kOneShot},  {128, Strategy::kOneShot},
                                   {8192, Strategy::kNccl},   {2048, Strategy::kTwoShot}};
  std::vector<StrategyRule> rules = RulesFromWinners(2, 4096, QuantMode::kFp8Group, points);
  ASSERT_EQ(rules.size(), 3u);
  EXPECT_EQ(rules[0].min_tokens, 1);
  EXPECT_EQ(rules[0].max_tokens, 255);
  EXPECT_EQ(rules[0].strategy, Strategy::kOneShot);
  EXPECT_EQ(rules[1].min_tokens, 256);
  EXPECT_EQ(rules[1].max_tokens, 8191);
  EXPECT_EQ(rules[1].strategy, Strategy::kTwoShot);
  EXPECT_EQ(rules[2].min_tokens, 8192);
  EXPECT_EQ(rules[2].max_tokens, kInf);
  EXPECT_EQ(rules[2].strategy, Strategy::kNccl);
  for (const StrategyRule& r : rules) {
    EXPECT_EQ(r.world_size, 2);
    EXPECT_EQ(r.hidden, 4096);
    EXPECT_EQ(r.quant, "fp8_group");
  }
  // A measured T that is not the smallest still starts at 1 when it is the first.
  rules = RulesFromWinners(4, 8192, QuantMode::kNone, {{64, Strategy::kOneShot}});
  ASSERT_EQ(rules.size(), 1u);
  EXPECT_EQ(rules[0].min_tokens, 1);
  EXPECT_EQ(rules[0].max_tokens, kInf);
  EXPECT_TRUE(RulesFromWinners(2, 4096, QuantMode::kNone, {}).empty());
}

// ---------------------------------------------------------------- reporting

PathResult Measured(double median) {
  PathResult r;
  r.measured = true;
  r.stats = {median, median * 0.95, median * 1.1, 50};
  r.rank_medians_us = {median, median * 1.01};
  return r;
}

PathResult Skipped(const std::string& why) {
  PathResult r;
  r.skipped = why;
  return r;
}

// Two shapes of H=4096 fp8_group and one of H=7168 none; one-shot skipped at T=8192.
Report MadeUpReport(Mode mode) {
  Report r;
  r.plan.mode = mode;
  r.plan.world_size = 2;
  r.plan.tokens = {1, 8192};
  r.plan.hidden = {4096, 7168};
  r.plan.quants = {QuantMode::kFp8Group, QuantMode::kNone};
  r.machine.gpu_name = "NVIDIA H200";
  r.machine.gpu_count = 2;
  r.machine.driver = "570.124.06";
  r.machine.cuda_driver = "13.0";
  r.machine.cuda_runtime = "13.0";
  r.machine.nccl = "2.28.9";
  r.machine.host = "node1";
  r.machine.l2_bytes = 50 << 20;
  r.machine.sm_count = 132;
  r.peer.measured = true;
  r.peer.bytes = 128 << 20;
  r.peer.copies = 10;
  r.peer.copy_engine_gbps = 391.2;
  r.peer.sm_copy_error = "loading the copy kernel: unsupported PTX";
  r.table_source = "built-in";
  r.workspace = {8192, 8192, 8192, false};
  auto shape = [&](int64_t h, QuantMode q, int64_t t) {
    ShapeResult s;
    s.hidden = h;
    s.quant = q;
    s.emit = MakeSpec(h, q, EmitNorm::kAuto).emit;
    s.tokens = t;
    s.rotation = {20, t == 1};
    return s;
  };
  ShapeResult a = shape(4096, QuantMode::kFp8Group, 1);
  a.at(Path::kOneShot) = Measured(4.0);
  a.at(Path::kTwoShot) = Measured(6.0);
  a.at(Path::kNccl) = Measured(8.8);
  a.at(Path::kBaselineA) = Measured(11.2);
  a.at(Path::kNcclAllReduce) = Measured(6.7);
  a.dispatched_choice = Strategy::kOneShot;
  a.dispatched = Path::kOneShot;
  ShapeResult b = shape(4096, QuantMode::kFp8Group, 8192);
  b.at(Path::kOneShot) =
      Skipped("8192 tokens of hidden 4096 are over the one-shot workspace (4096 rows)");
  b.at(Path::kTwoShot) = Measured(240.0);
  b.at(Path::kNccl) = Measured(301.0);
  b.at(Path::kBaselineA) = Measured(330.0);
  b.at(Path::kNcclAllReduce) = Measured(244.0);
  b.dispatched_choice = Strategy::kOneShot;
  b.dispatched = Path::kNccl;
  b.dispatch_note =
      "the table picks oneshot, which cannot run here; the runtime falls back to nccl";
  b.warnings.push_back("twoshot: rank 1's median is +12% off rank 0's");
  ShapeResult c = shape(7168, QuantMode::kNone, 1);
  c.at(Path::kOneShot) = Measured(4.5);
  c.at(Path::kTwoShot) = Measured(4.5);
  c.at(Path::kNccl) = Measured(10.0);
  c.at(Path::kBaselineA) = Measured(12.0);
  c.at(Path::kNcclAllReduce) = Measured(7.6);
  c.dispatched_choice = Strategy::kTwoShot;
  c.dispatched = Path::kTwoShot;
  if (mode == Mode::kTune) {
    for (ShapeResult* s : {&a, &b, &c}) {
      s->at(Path::kBaselineA) = Skipped("tune measures the fused op's strategies only");
      s->at(Path::kNcclAllReduce) = Skipped("tune measures the fused op's strategies only");
    }
  }
  r.shapes = {a, b, c};
  return r;
}

size_t CountLines(const std::string& text) {
  return size_t(std::count(text.begin(), text.end(), '\n'));
}

TEST(BenchReport, HeaderNamesMachineBandwidthAndBaselines) {
  const std::string header = FormatHeader(MadeUpReport(Mode::kBench));
  for (const char* needle :
       {"2x NVIDIA H200", "570.124.06", "NCCL 2.28.9", "391.2 GB/s", "unsupported PTX", "B (nccl)",
        "the fused op's nccl strategy at N = 2", "B keeps ncclAllReduce",
        "A = ncclAllReduce + fused_add_rms_norm kernel + quant_fp8 kernel", "2(N-1)/N"}) {
    EXPECT_NE(header.find(needle), std::string::npos) << needle << "\n" << header;
  }
}

TEST(BenchReport, BenchTableRowsRatiosAndNotes) {
  const Report r = MadeUpReport(Mode::kBench);
  const std::string table = FormatTable(r, 4096, QuantMode::kFp8Group);
  EXPECT_NE(table.find("H=4096  quant=fp8_group  emit=norm,residual,quant"), std::string::npos)
      << table;
  EXPECT_NE(table.find("4.00 oneshot"), std::string::npos) << table;
  EXPECT_NE(table.find("0.45"), std::string::npos) << table;  // 4.0 / 8.8
  EXPECT_NE(table.find("301.00 nccl*"), std::string::npos) << table;
  EXPECT_NE(table.find("oneshot not measured at T = 8192"), std::string::npos) << table;
  EXPECT_NE(table.find("falls back to nccl"), std::string::npos) << table;
  EXPECT_NE(table.find("+12%"), std::string::npos) << table;
  EXPECT_NE(table.find("L2 flushed between replays (outside the timing) at T = 1"),
            std::string::npos);
  // busbw of the dispatched path at T=8192: 64 MiB in 301 us.
  EXPECT_NE(table.find("223.0"), std::string::npos) << table;
  // B's epilogue share at T=8192: (301 - 244) / 301.
  EXPECT_NE(table.find("223.0   18.9%"), std::string::npos) << table;
}

TEST(BenchReport, BaselineBEpilogueShareNeedsBAndNccl) {
  Report r = MadeUpReport(Mode::kBench);
  ShapeResult& s = r.shapes[2];  // B 10.0, NCCL 7.6
  ASSERT_TRUE(BaselineBEpilogueShare(s).has_value());
  EXPECT_NEAR(*BaselineBEpilogueShare(s), 0.24, 1e-12);
  s.at(Path::kNcclAllReduce) = Skipped("not measured");
  EXPECT_FALSE(BaselineBEpilogueShare(s).has_value());
  EXPECT_NE(FormatHeader(r).find("B epi = (B - NCCL) / B"), std::string::npos);
}

TEST(BenchReport, SummaryNamesEveryShapeSlowerThanB) {
  Report r = MadeUpReport(Mode::kBench);
  std::string summary = FormatSummary(r);
  // 4.0/8.8, 301/301, 4.5/10.0: none above 1.
  EXPECT_NE(
      summary.find(
          "over 3 shapes: median 0.45, worst 1.00 (H=4096 fp8_group T=8192); never slower than B"),
      std::string::npos)
      << summary;
  r.shapes[2].at(Path::kTwoShot).stats.median_us = 10.4;
  summary = FormatSummary(r);
  EXPECT_NE(summary.find("slower than B at 1 shape:\n  H=7168 none T=1 (1.040)"), std::string::npos)
      << summary;
}

TEST(BenchReport, TuneTablePicksAndMargins) {
  const Report r = MadeUpReport(Mode::kTune);
  const std::string table = FormatTable(r, 4096, QuantMode::kFp8Group);
  EXPECT_NE(table.find("oneshot   50.0%"), std::string::npos) << table;  // 6.0 vs 4.0
  EXPECT_NE(table.find("twoshot   25.4%"), std::string::npos) << table;  // 301 vs 240
  const std::string progress = FormatProgress(r, r.shapes[0]);
  EXPECT_NE(progress.find("-> oneshot"), std::string::npos) << progress;
}

TEST(BenchReport, CsvHasOneRowPerMeasuredPath) {
  const Report r = MadeUpReport(Mode::kBench);
  const std::string csv = ToCsv(r);
  std::istringstream in(csv);
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header,
            "machine,world_size,hidden,quant,tokens,path,us_median,us_p10,us_p90,busbw_gbps,"
            "ratio_vs_B,detail");
  // Shape a: 7 rows; b: oneshot skipped -> 6; c: 7.
  EXPECT_EQ(CountLines(csv), 1u + 7 + 6 + 7);
  EXPECT_NE(csv.find("2x NVIDIA H200,2,4096,fp8_group,1,dispatched,4.000,3.800,4.400,"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find(",baseline_b,8.800,"), std::string::npos);
  EXPECT_NE(csv.find("2x NVIDIA H200,2,4096,fp8_group,8192,twoshot,240.000,"), std::string::npos);
  std::string line;
  while (std::getline(in, line)) {
    // Commas inside a detail are quoted; every row has the header's 12 columns.
    int fields = 1;
    bool quoted = false;
    for (char ch : line) {
      if (ch == '"') quoted = !quoted;
      if (ch == ',' && !quoted) ++fields;
    }
    EXPECT_EQ(fields, 12) << line;
  }
}

TEST(BenchReport, JsonCarriesEveryPathAndSkip) {
  const Report r = MadeUpReport(Mode::kBench);
  const nlohmann::json doc = nlohmann::json::parse(ToJson(r));
  EXPECT_EQ(doc["machine"]["label"], "2x NVIDIA H200");
  EXPECT_EQ(doc["world_size"], 2);
  EXPECT_DOUBLE_EQ(doc["peer_copy_bandwidth"]["copy_engine_gbps"].get<double>(), 391.2);
  ASSERT_EQ(doc["shapes"].size(), 3u);
  const nlohmann::json& b = doc["shapes"][1];
  EXPECT_EQ(b["tokens"], 8192);
  EXPECT_TRUE(b["paths"]["oneshot"].contains("skipped"));
  EXPECT_DOUBLE_EQ(b["paths"]["twoshot"]["us_median"].get<double>(), 240.0);
  EXPECT_NEAR(b["paths"]["twoshot"]["ratio_vs_B"].get<double>(), 240.0 / 301.0, 1e-12);
  EXPECT_EQ(b["dispatched"]["ran"], "nccl");
  EXPECT_EQ(b["paths"]["baseline_a"]["rank_medians_us"].size(), 2u);
}

TEST(BenchReport, PlotsOnePolylinePerPathWithData) {
  const Report r = MadeUpReport(Mode::kBench);
  StatusOr<std::string> svg = PlotSvg(r, 4096, QuantMode::kFp8Group);
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  size_t polylines = 0;
  for (size_t p = svg->find("<polyline"); p != std::string::npos; p = svg->find("<polyline", p + 1))
    ++polylines;
  EXPECT_EQ(polylines, 6u);  // dispatched + oneshot + twoshot + B + A + NCCL
  EXPECT_NE(svg->find("2x NVIDIA H200, TP=2"), std::string::npos);
  EXPECT_NE(svg->find("B = nccl strategy"), std::string::npos);
  EXPECT_EQ(PlotFileName(4096, QuantMode::kFp8Group), "bench_H4096_fp8_group.svg");
}

TEST(BenchReport, WritesTheFiles) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / StrCat("tpfuse-bench-test-", ::getpid());
  std::filesystem::create_directories(dir);
  const Report r = MadeUpReport(Mode::kBench);
  ASSERT_TRUE(WriteBenchOutputs(r, dir.string()).ok());
  for (const char* name :
       {"bench.csv", "bench.json", "bench_H4096_fp8_group.svg", "bench_H7168_none.svg"})
    EXPECT_TRUE(std::filesystem::exists(dir / name)) << name;
  // Groups without a measured shape get no plot.
  EXPECT_FALSE(std::filesystem::exists(dir / "bench_H4096_none.svg"));
  std::filesystem::remove_all(dir);
}

TEST(BenchReport, TunedTableLoadsBackAndChooses) {
  const Report r = MadeUpReport(Mode::kTune);
  const runtime::StrategyTable table = TunedTable(r);
  EXPECT_EQ(table.source, "2x NVIDIA H200 (driver 570.124.06, CUDA 13.0, NCCL 2.28.9)");
  StatusOr<runtime::StrategyTable> back = runtime::StrategyTable::FromJson(table.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->source, table.source);
  EXPECT_EQ(back->Choose(2, 4096, QuantMode::kFp8Group, 1), Strategy::kOneShot);
  EXPECT_EQ(back->Choose(2, 4096, QuantMode::kFp8Group, 8191), Strategy::kOneShot);
  EXPECT_EQ(back->Choose(2, 4096, QuantMode::kFp8Group, 8192), Strategy::kTwoShot);
  EXPECT_EQ(back->Choose(2, 4096, QuantMode::kFp8Group, 100000), Strategy::kTwoShot);
  // 4.5 vs 4.5: an exact tie goes to the simpler, twoshot.
  EXPECT_EQ(back->Choose(2, 7168, QuantMode::kNone, 1), Strategy::kTwoShot);
  const std::string rules = FormatRules(table);
  EXPECT_NE(rules.find("8192.."), std::string::npos) << rules;
  EXPECT_NE(rules.find("1..8191"), std::string::npos) << rules;
}

}  // namespace
}  // namespace tpfuse::bench
