// `tpfuse bench --world-size 1` without a GPU: the plan its flags make, the bytes each quant
// mode must move (against values worked out by hand), the set layout and rotation, and the
// table, CSV, summary and plot of a made-up report.
#include "bench/local.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/command.h"

namespace tpfuse::bench {
namespace {

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// ---------------------------------------------------------------- flags

TEST(BenchLocalFlags, WorldSizeOneIsValidWithItsOwnDefaults) {
  CommandFlags flags;
  flags.world_size = "1";
  StatusOr<Plan> plan = PlanFromFlags(flags, Mode::kBench);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->world_size, 1);
  EXPECT_EQ(plan->hidden, (std::vector<int64_t>{2880, 4096, 5120, 7168, 8192}));
  EXPECT_EQ(plan->tokens, DefaultTokens());
  EXPECT_EQ(plan->quants, DefaultQuants());
  EXPECT_EQ(plan->emit_norm, EmitNorm::kAuto);
  EXPECT_EQ(plan->ops_per_graph, kDefaultOpsPerGraph);
  EXPECT_EQ(plan->replays, kDefaultReplays);
  EXPECT_EQ(plan->num_shapes(), 14 * 5 * 4);
  // Other world sizes keep theirs.
  flags.world_size = "2";
  StatusOr<Plan> two = PlanFromFlags(flags, Mode::kBench);
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  EXPECT_EQ(two->hidden, DefaultHidden());
}

TEST(BenchLocalFlags, ListsAndOptionsApplyAtWorldSizeOne) {
  CommandFlags flags;
  flags.world_size = "1";
  flags.tokens = "8192,1,64";
  flags.hidden = "7168";
  flags.quant = "fp8_group,fp8_tensor";
  flags.replays = "7";
  flags.no_pdl = true;
  StatusOr<Plan> plan = PlanFromFlags(flags, Mode::kBench);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->tokens, (std::vector<int64_t>{1, 64, 8192}));
  EXPECT_EQ(plan->hidden, (std::vector<int64_t>{7168}));
  EXPECT_EQ(plan->quants, (std::vector<QuantMode>{QuantMode::kFp8Group, QuantMode::kFp8Tensor}));
  EXPECT_EQ(plan->replays, 7);
  EXPECT_FALSE(plan->pdl);
}

TEST(BenchLocalFlags, RefusesWhatWorldSizeOneCannotDoNamingTheOption) {
  struct Case {
    Mode mode;
    const char* world_size;
    const char* table;
    const char* hidden;
    const char* needle;
  };
  for (const Case& c : {Case{Mode::kBench, "1", "t.json", "", "--table"},
                        Case{Mode::kTune, "1", "", "", "--world-size 1"},
                        Case{Mode::kBench, "3", "", "", "1, 2, 4 or 8"},
                        Case{Mode::kBench, "0", "", "", "--world-size"},
                        Case{Mode::kBench, "1", "", "4100", "hidden 4100"}}) {
    CommandFlags flags;
    flags.world_size = c.world_size;
    flags.table = c.table;
    flags.hidden = c.hidden;
    // A value outside its option's domain fails the parse; a hidden size the kernels do not
    // take, the inputs' check after it.
    StatusOr<Plan> plan = PlanFromFlags(flags, c.mode);
    const Status status = plan.ok() ? CheckPlanInputs(*plan) : plan.status();
    EXPECT_EQ(plan.ok(), std::string(c.hidden) == "4100") << c.world_size << " " << c.table;
    ASSERT_FALSE(status.ok()) << c.world_size << " " << c.table << " " << c.hidden;
    EXPECT_NE(status.message().find(c.needle), std::string::npos) << status.message();
  }
}

TEST(BenchLocalFlags, GroupSizeFallsBackWhere128DoesNotDivideH) {
  // H 2880 = 45 groups of 64: valid at world size 1 (MakeLocalSpec), refused at 2 (MakeSpec
  // keeps 128).
  CommandFlags flags;
  flags.hidden = "2880";
  flags.quant = "fp8_group";
  flags.world_size = "1";
  StatusOr<Plan> one = PlanFromFlags(flags, Mode::kBench);
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_TRUE(CheckPlanInputs(*one).ok());
  flags.world_size = "2";
  StatusOr<Plan> two = PlanFromFlags(flags, Mode::kBench);
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  const Status refused = CheckPlanInputs(*two);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("group"), std::string::npos) << refused.message();
}

// ---------------------------------------------------------------- the spec

TEST(BenchLocalSpec, LocalResidualBf16AndTheGroupSize) {
  for (int64_t h : DefaultLocalHidden()) {
    for (QuantMode q : DefaultQuants()) {
      const AllreduceRmsnormSpec s = MakeLocalSpec(h, q, EmitNorm::kAuto);
      EXPECT_TRUE(s.Validate().ok()) << s.ToString() << ": " << s.Validate().ToString();
      EXPECT_TRUE(s.local);
      EXPECT_TRUE(s.has_residual && s.emit.residual);
      EXPECT_FALSE(s.emit.allreduce);
      EXPECT_EQ(s.act_dtype, DType::kBF16);
      EXPECT_EQ(s.emit.norm, q == QuantMode::kNone || q == QuantMode::kFp8Group);
      EXPECT_EQ(s.emit.quant, q != QuantMode::kNone);
    }
  }
  EXPECT_EQ(MakeLocalSpec(4096, QuantMode::kFp8Group, EmitNorm::kAuto).group_size, 128);
  EXPECT_EQ(MakeLocalSpec(7168, QuantMode::kFp8Group, EmitNorm::kAuto).group_size, 128);
  EXPECT_EQ(MakeLocalSpec(2880, QuantMode::kFp8Group, EmitNorm::kAuto).group_size, 64);
  EXPECT_EQ(MakeLocalSpec(2880, QuantMode::kFp8Group, EmitNorm::kAuto).ScaleGroupsPerRow(), 45);
  EXPECT_FALSE(MakeLocalSpec(4096, QuantMode::kFp8Group, EmitNorm::kNo).emit.norm);
}

// ---------------------------------------------------------------- bytes

// Hand-computed for T = 3, H = 4096 (12288 elements; bf16 = 2 bytes, e4m3 = 1, scale = 4):
//   reads of the fused op: x + residual = 2 x 24576 = 49152 in every mode.
TEST(BenchLocalBytes, FusedAndUnfusedTrafficPerQuantMode) {
  struct Case {
    QuantMode quant;
    EmitNorm emit_norm;
    int64_t fused_write, unfused_read, unfused_write, copy;
  };
  const Case cases[] = {
      // none: residual_out + norm = 49152; the unfused path is fused_add_rms_norm alone. Copy:
      // (49152 + 49152) / 2, a multiple of 4096.
      {QuantMode::kNone, EmitNorm::kAuto, 49152, 49152, 49152, 49152},
      // fp8_tensor: residual_out 24576 + q 12288; unfused adds y (write 24576, read it back)
      // and q. Copy: (49152 + 36864) / 2 = 43008, up to 4096: 45056.
      {QuantMode::kFp8Tensor, EmitNorm::kAuto, 36864, 73728, 61440, 45056},
      // fp8_token: + 3 scales (12 bytes); copy (49152 + 36876) / 2 = 43014, up to 4096: 45056.
      {QuantMode::kFp8Token, EmitNorm::kAuto, 36876, 73728, 61452, 45056},
      // fp8_group + norm: residual_out + norm 49152, q 12288, 3 x 32 scales 384. Copy 55488,
      // up to 4096: 57344.
      {QuantMode::kFp8Group, EmitNorm::kAuto, 61824, 73728, 61824, 57344},
      // fp8_group without the norm output: copy 43200, up to 4096: 45056.
      {QuantMode::kFp8Group, EmitNorm::kNo, 37248, 73728, 61824, 45056},
  };
  for (const Case& c : cases) {
    const AllreduceRmsnormSpec spec = MakeLocalSpec(4096, c.quant, c.emit_norm);
    const Traffic fused = FusedTraffic(spec, 3);
    const Traffic unfused = UnfusedTraffic(spec, 3);
    SCOPED_TRACE(spec.ToString());
    EXPECT_EQ(fused.read, 49152);
    EXPECT_EQ(fused.write, c.fused_write);
    EXPECT_EQ(unfused.read, c.unfused_read);
    EXPECT_EQ(unfused.write, c.unfused_write);
    EXPECT_EQ(CopyBytes(spec, 3), size_t(c.copy));
  }
}

TEST(BenchLocalBytes, ByteRatiosAreElevenths) {
  // The unfused pair moves 11 bytes per element, the fused op 7 (fp8_tensor) or 9 plus the
  // scales (fp8_group + norm: (9 + 4/128) / (11 + 4/128) = 289/353).
  for (int64_t t : {1, 128, 8192}) {
    EXPECT_DOUBLE_EQ(
        UnfusedByteRatio(MakeLocalSpec(4096, QuantMode::kFp8Tensor, EmitNorm::kAuto), t),
        7.0 / 11.0);
    EXPECT_DOUBLE_EQ(
        UnfusedByteRatio(MakeLocalSpec(7168, QuantMode::kFp8Group, EmitNorm::kAuto), t),
        289.0 / 353.0);
    EXPECT_DOUBLE_EQ(UnfusedByteRatio(MakeLocalSpec(8192, QuantMode::kNone, EmitNorm::kAuto), t),
                     1.0);
  }
  // H 2880 (groups of 64): 2880 x (4 + 5) + 45 x 4 = 26100 against 2880 x 11 + 180 = 31860.
  const AllreduceRmsnormSpec g2880 = MakeLocalSpec(2880, QuantMode::kFp8Group, EmitNorm::kAuto);
  EXPECT_EQ(FusedTraffic(g2880, 1).total(), 26100);
  EXPECT_EQ(UnfusedTraffic(g2880, 1).total(), 31860);
}

TEST(BenchLocalLayout, CopyRegionFollowsTheOpsRegionsWithoutOverlap) {
  std::vector<int64_t> hidden = DefaultLocalHidden();
  hidden.push_back(128);  // one row of it is far under the copy granule: the source outgrows the op
  for (int64_t h : hidden) {
    for (QuantMode q : DefaultQuants()) {
      for (int64_t t : DefaultTokens()) {
        const AllreduceRmsnormSpec spec = MakeLocalSpec(h, q, EmitNorm::kAuto);
        const LocalSetLayout l = LocalSetLayout::Make(spec, t);
        SCOPED_TRACE(spec.ToString() + " T=" + std::to_string(t));
        EXPECT_EQ(l.copy_bytes, CopyBytes(spec, t));
        EXPECT_EQ(l.copy_bytes % kCopyGranule, 0u);
        // The source [0, copy_bytes) and the destination [copy_dst, +copy_bytes) do not overlap,
        // and the destination is past the op's regions.
        EXPECT_GE(l.copy_dst, l.copy_bytes);
        EXPECT_GE(l.copy_dst, l.op.bytes);
        EXPECT_EQ(l.copy_dst % 256, 0u);
        EXPECT_GE(l.bytes, l.copy_dst + l.copy_bytes);
        EXPECT_EQ(l.bytes % 256, 0u);
      }
    }
  }
}

TEST(BenchLocalLayout, RotationIsOnTheFusedOpsTraffic) {
  const size_t l2 = 50u << 20;
  // H 8192, T 8192, fp8_group + norm: 9 B x 64 Mi + scales = 578 MiB: two sets suffice.
  const AllreduceRmsnormSpec big = MakeLocalSpec(8192, QuantMode::kFp8Group, EmitNorm::kAuto);
  const Rotation r_big = ChooseLocalRotation(big, 8192, l2, 20);
  EXPECT_EQ(r_big.sets, 2);
  EXPECT_FALSE(r_big.flush_l2);
  // H 4096, T 1024, fp8_tensor: 7 B x 4 Mi = 28 MiB: (K - 1) x 28 >= 100 -> K = 5.
  const AllreduceRmsnormSpec mid = MakeLocalSpec(4096, QuantMode::kFp8Tensor, EmitNorm::kAuto);
  const Rotation r_mid = ChooseLocalRotation(mid, 1024, l2, 20);
  EXPECT_EQ(r_mid.sets, 5);
  EXPECT_FALSE(r_mid.flush_l2);
  // T 1: one set per op and the L2 flushed between replays.
  const Rotation r_one = ChooseLocalRotation(mid, 1, l2, 20);
  EXPECT_EQ(r_one.sets, 20);
  EXPECT_TRUE(r_one.flush_l2);
}

// ---------------------------------------------------------------- the report

LocalCell MakeCell(int64_t h, QuantMode q, int64_t t, double fused, double unfused, double copy) {
  const AllreduceRmsnormSpec spec = MakeLocalSpec(h, q, EmitNorm::kAuto);
  LocalCell c;
  c.hidden = h;
  c.quant = q;
  c.emit = spec.emit;
  c.group_size = spec.group_size;
  c.tokens = t;
  c.fused_bytes = FusedTraffic(spec, t);
  c.unfused_bytes = UnfusedTraffic(spec, t);
  c.copy_bytes = CopyBytes(spec, t);
  c.rotation = ChooseLocalRotation(spec, t, 50u << 20, 20);
  c.checked = t <= kLocalCheckMaxTokens;
  c.fused = {fused, fused * 0.98, fused * 1.03, 50};
  c.unfused = {unfused, unfused, unfused, 50};
  c.copy = {copy, copy, copy, 50};
  return c;
}

LocalReport MadeUpReport() {
  LocalReport r;
  r.plan.world_size = 1;
  r.plan.tokens = {1, 128, 1024};
  r.plan.hidden = {4096, 7168};
  r.plan.quants = {QuantMode::kFp8Tensor, QuantMode::kFp8Group};
  r.machine.gpu_name = "NVIDIA H200";
  r.machine.gpu_count = 1;
  r.machine.host = "node0";
  r.machine.driver = "570.124.06";
  r.machine.l2_bytes = 50 << 20;
  r.machine.sm_count = 132;
  for (int64_t h : r.plan.hidden) {
    // fp8_tensor: T 1 at 1.9 us (met), T 1024 at 1.10x the copy.
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Tensor, 1, 1.9, 4.0, 1.2));
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Tensor, 128, 2.0, 4.0, 1.5));
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Tensor, 1024, 11.0, 16.5, 10.0));
    // fp8_group + norm: T 1 at 2.5 us at H 7168 (missed), T 128 1.25x fp8_tensor (missed).
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Group, 1, h == 7168 ? 2.5 : 2.0, 4.4, 1.2));
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Group, 128, 2.5, 4.4, 1.5));
    r.cells.push_back(MakeCell(h, QuantMode::kFp8Group, 1024, 15.0, 18.0, 12.5));
  }
  return r;
}

TEST(BenchLocalReport, TableRowsCarryTheRatios) {
  const LocalReport r = MadeUpReport();
  const std::string table = FormatLocalTable(r, 4096, QuantMode::kFp8Tensor);
  EXPECT_NE(table.find("H=4096  quant=fp8_tensor  emit=residual,quant"), std::string::npos)
      << table;
  EXPECT_NE(table.find("fused/(unf*r)"), std::string::npos);
  // T = 1024: 11 / 10 = 1.10 of the copy, 11 / 16.5 = 0.67 of unfused, ratio 7/11 = 0.636,
  // 11 / (16.5 x 7/11) = 1.05.
  // Each row's last field says how the cell was checked: bitwise up to kLocalCheckMaxTokens.
  std::istringstream rows(table);
  std::string line, row1024;
  std::map<std::string, std::string> checked;  // T -> last field
  while (std::getline(rows, line)) {
    std::istringstream fields(line);
    std::string first, field, last;
    fields >> first;
    while (fields >> field) last = field;
    for (const char* t : {"1", "128", "1024"})
      if (first == t) checked[t] = last;
    if (first == "1024") row1024 = line;
  }
  ASSERT_FALSE(row1024.empty()) << table;
  for (const char* v : {"11.00", "16.50", "10.00", "1.10", "0.67", "0.636", "1.05"})
    EXPECT_NE(row1024.find(v), std::string::npos) << v << " in: " << row1024;
  EXPECT_EQ(checked["1"], "bitwise") << table;
  EXPECT_EQ(checked["128"], "-") << table;  // past kLocalCheckMaxTokens: not checked
  EXPECT_EQ(checked["1024"], "-") << table;
  EXPECT_NE(table.find("L2 overwritten between replays"), std::string::npos);
  const std::string group = FormatLocalTable(r, 7168, QuantMode::kFp8Group);
  EXPECT_NE(group.find("group=128"), std::string::npos) << group;
}

TEST(BenchLocalReport, SummaryJudgesEachTargetWithItsWorstCell) {
  const std::string s = FormatLocalSummary(MadeUpReport());
  auto line_of = [&](const std::string& start) {
    const size_t at = s.find(start);
    return at == std::string::npos ? std::string() : s.substr(at, s.find('\n', at) - at);
  };
  // fused / copy at T >= 1024: 1.10 (fp8_tensor) and 1.20 (fp8_group + norm, missed).
  const std::string roofline = line_of("  fused / copy at T >= 1024");
  EXPECT_NE(roofline.find("worst 1.20 (H=4096 fp8_group+norm T=1024)"), std::string::npos) << s;
  EXPECT_NE(roofline.find("MISSED in 2 of 4 cells"), std::string::npos) << s;
  const std::string latency = line_of("  fused µs at T = 1");
  EXPECT_NE(latency.find("worst 2.50 (H=7168 fp8_group+norm T=1)"), std::string::npos) << s;
  EXPECT_NE(latency.find("MISSED in 1 of 4 cells"), std::string::npos) << s;
  // fp8_group + norm / fp8_tensor at T <= 128: T 1 2.0/1.9 = 1.05 and 2.5/1.9 = 1.32; T 128
  // 2.5/2.0 = 1.25.
  const std::string group = line_of("  fp8_group+norm / fp8_tensor");
  EXPECT_NE(group.find("worst 1.32 (H=7168 fp8_group+norm T=1)"), std::string::npos) << s;
  EXPECT_NE(group.find("MISSED in 3 of 4 cells"), std::string::npos) << s;
  // fused / unfused at T <= 128: 2.5 / 4.4 = 0.57 is the worst; all met.
  const std::string launches = line_of("  fused / unfused at T <= 128");
  EXPECT_NE(launches.find("worst 0.57"), std::string::npos) << s;
  EXPECT_NE(launches.find("met in all 8 cells"), std::string::npos) << s;
  // Scaled by the byte ratio at T >= 1024: 11 / (16.5 x 7/11) = 1.048 (met) and
  // 15 / (18 x 289/353) = 1.018.
  const std::string scaled = line_of("  fused / (unfused x byte ratio)");
  EXPECT_NE(scaled.find("worst 1.05 (H=4096 fp8_tensor T=1024)"), std::string::npos) << s;
  EXPECT_NE(scaled.find("met in all 4 cells"), std::string::npos) << s;
  // A target without cells says so.
  LocalReport small = MadeUpReport();
  small.cells.erase(std::remove_if(small.cells.begin(), small.cells.end(),
                                   [](const LocalCell& c) { return c.tokens >= 1024; }),
                    small.cells.end());
  EXPECT_NE(FormatLocalSummary(small).find("no cell of this run to judge"), std::string::npos);
}

TEST(BenchLocalReport, CsvHasOneRowPerCell) {
  const LocalReport r = MadeUpReport();
  const std::string csv = LocalToCsv(r);
  std::istringstream lines(csv);
  std::string header;
  std::getline(lines, header);
  EXPECT_EQ(header,
            "machine,hidden,quant,emit,group_size,tokens,fused_us,fused_p10_us,fused_p90_us,"
            "unfused_us,copy_us,read_bytes,write_bytes,copy_bytes,unfused_bytes,fused_gbps,"
            "copy_gbps,fused_over_copy,fused_over_unfused,byte_ratio,fused_over_scaled_unfused,"
            "sets,l2_flush,checked");
  EXPECT_EQ(Count(csv, "\n"), r.cells.size() + 1);
  // H 4096 fp8_tensor T 1024: 4 Mi elements; read 16 MiB, write 12 MiB, copy 14 MiB.
  EXPECT_NE(csv.find("1x NVIDIA H200,4096,fp8_tensor,\"residual,quant\",,1024,11.000,"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find(",16777216,12582912,14680064,46137344,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",0.6364,1.0476,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("fp8_group,\"norm,residual,quant\",128,1,"), std::string::npos) << csv;
}

TEST(BenchLocalReport, PlotHasOneLinePerHiddenAndQuantAndTheRoofline) {
  StatusOr<std::string> svg = LocalPlotSvg(MadeUpReport());
  ASSERT_TRUE(svg.ok()) << svg.status().ToString();
  EXPECT_EQ(Count(*svg, "<polyline class=\"series\""), 2u * 2u + 1u);
  EXPECT_EQ(Count(*svg, "class=\"legend-entry\""), 2u * 2u + 1u);
  for (const char* name :
       {"copy roofline", "H=4096 fp8_tensor", "H=7168 fp8_tensor", "H=4096 fp8_group+norm",
        "H=7168 fp8_group+norm"})
    EXPECT_NE(svg->find(StrCat("data-name=\"", name, "\"")), std::string::npos) << name;
  // The second H is dashed, the first solid.
  EXPECT_NE(svg->find("stroke-dasharray=\"7 4\""), std::string::npos);
}

TEST(BenchLocalReport, WritesTheTextCsvAndPlot) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("tpfuse-bench-local-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::create_directories(dir);
  const LocalReport r = MadeUpReport();
  ASSERT_TRUE(WriteLocalOutputs(r, dir.string()).ok());
  for (const char* name : {"bench.txt", "bench.csv", "bench_roofline.svg"})
    EXPECT_TRUE(std::filesystem::exists(dir / name)) << name;
  std::ifstream in(dir / "bench.txt");
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("world size 1"), std::string::npos);
  EXPECT_EQ(Count(text.str(), "\n== H="), 4u);
  EXPECT_NE(text.str().find("summary against the world-size-1 targets"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tpfuse::bench
