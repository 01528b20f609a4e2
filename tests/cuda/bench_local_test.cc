// `tpfuse bench --world-size 1` end to end on one GPU, kept short (two H, every quant mode,
// three T, few replays): it checks the small cells against the CPU oracle, measures every path
// of every cell, and writes the table, the CSV and the plot. Timings are not judged here (that
// is the benchmark's job); that they exist, are positive and add up is.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/cli_runner.h"
#include "support/cuda_harness.h"

namespace tpfuse::testing {
namespace {

std::vector<std::string> Split(const std::string& line, char sep) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
    } else if (c == sep && !quoted) {
      fields.push_back(field);
      field.clear();
    } else {
      field += c;
    }
  }
  fields.push_back(field);
  return fields;
}

TEST(BenchLocal, ChecksMeasuresAndWritesEveryCell) {
  TPFUSE_REQUIRE_GPUS(1);
  // A fresh directory of its own, so concurrent runs of this test never share one.
  std::string tmpl = (std::filesystem::temp_directory_path() / "tpfuse-bench-ws1-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << tmpl;
  const std::filesystem::path dir = tmpl;
  const CliResult r = RunCli("bench --world-size 1 --tokens 1,3,300 --hidden 2880,7168 "
                             "--quant all --ops-per-graph 4 --replays 3 --warmup 1 --out " +
                             dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("checked 16 cells with T <= 64"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("summary against the world-size-1 targets"), std::string::npos) << r.output;

  std::ifstream csv(dir / "bench.csv");
  ASSERT_TRUE(csv) << r.output;
  std::string line;
  std::getline(csv, line);
  const std::vector<std::string> header = Split(line, ',');
  auto column = [&](const std::string& name) {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == name) return i;
    ADD_FAILURE() << "no column " << name;
    return size_t(0);
  };
  int rows = 0;
  while (std::getline(csv, line)) {
    const std::vector<std::string> f = Split(line, ',');
    ASSERT_EQ(f.size(), header.size()) << line;
    ++rows;
    const int64_t tokens = std::stoll(f[column("tokens")]);
    for (const char* path : {"fused_us", "unfused_us", "copy_us"})
      EXPECT_GT(std::stod(f[column(path)]), 0.0) << path << ": " << line;
    EXPECT_EQ(f[column("checked")], tokens <= 64 ? "bitwise" : "") << line;
    // The ratios are the medians' ratios.
    const double fused = std::stod(f[column("fused_us")]), copy = std::stod(f[column("copy_us")]);
    EXPECT_NEAR(std::stod(f[column("fused_over_copy")]), fused / copy, 1e-3 * fused / copy + 1e-3)
        << line;
  }
  EXPECT_EQ(rows, 2 * 4 * 3);
  EXPECT_TRUE(std::filesystem::exists(dir / "bench.txt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "bench_roofline.svg"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tpfuse::testing
