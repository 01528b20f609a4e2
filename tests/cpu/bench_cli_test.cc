// `tpfuse bench` and `tpfuse tune` on the command line, for what is decided before any GPU is
// touched: help, usage errors (exit 2: values outside an option's range too) and inputs the fused
// op cannot take (exit 1), the option named. None of these cases starts a measurement, so the
// test runs alike with and without GPUs.
#include <gtest/gtest.h>

#include <string>

#include "support/cli_runner.h"

namespace {

using tpfuse::testing::CliResult;
using tpfuse::testing::RunCli;

TEST(BenchCli, HelpTellsTheDefaults) {
  for (const char* command : {"bench", "tune"}) {
    const CliResult r = RunCli(std::string(command) + " --help");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (const char* needle : {"--world-size", "--tokens", "default 1,2,4,...,8192", "--hidden",
                               "default 4096,7168,8192", "--quant", "--emit-norm",
                               "--ops-per-graph", "default 20", "--replays", "default 50",
                               "--warmup", "--no-pdl", "--out", "--timeout", "default 1800"}) {
      EXPECT_NE(r.output.find(needle), std::string::npos) << command << ": " << needle << "\n"
                                                          << r.output;
    }
    // The rank processes' options stay hidden.
    EXPECT_EQ(r.output.find("--child-plan"), std::string::npos) << r.output;
  }
  const CliResult bench = RunCli("bench --help");
  EXPECT_NE(bench.output.find("--table"), std::string::npos);
  // World size 1 is valid for bench, with its own hidden sizes and outputs.
  EXPECT_NE(bench.output.find("1 measures the fused op"), std::string::npos) << bench.output;
  EXPECT_NE(bench.output.find("at world size 1: 2880,4096,5120,7168,8192"), std::string::npos);
  EXPECT_NE(bench.output.find("bench_roofline.svg"), std::string::npos);
  EXPECT_NE(bench.output.find("default ./tpfuse-bench"), std::string::npos);
  EXPECT_NE(bench.output.find("exactly"), std::string::npos);  // B is the nccl strategy
  const CliResult tune = RunCli("tune --help");
  EXPECT_NE(tune.output.find("default ./tpfuse-strategy.json"), std::string::npos);
  EXPECT_NE(tune.output.find("lowest median wins"), std::string::npos);
}

TEST(BenchCli, UnknownOptionsAreUsageErrors) {
  EXPECT_EQ(RunCli("bench --bogus").exit_code, 2);
  EXPECT_EQ(RunCli("tune --table x.json").exit_code, 2);  // tune has no --table
  EXPECT_EQ(RunCli("bench --tokens").exit_code, 2);       // missing value
}

// A value outside its option's range or choices is a usage error (exit 2), as it is for the
// other commands (`run --tokens 0`); an input the fused op cannot take is invalid input (exit
// 1). Both name the option.
TEST(BenchCli, BadValuesAreUsageErrorsNamingTheOption) {
  struct Case {
    const char* args;
    const char* needle;
  };
  for (const Case& c :
       {Case{"bench --tokens 0", "--tokens"}, Case{"bench --tokens 1,abc", "--tokens"},
        Case{"bench --tokens 100000", "--tokens"}, Case{"bench --quant fp8_grp", "--quant"},
        Case{"bench --emit-norm maybe", "--emit-norm"},
        Case{"bench --world-size 3", "--world-size"},
        Case{"bench --world-size 1 --table t.json", "--table"},
        Case{"tune --world-size 1", "--world-size 1"},
        Case{"bench --ops-per-graph 0", "--ops-per-graph"}, Case{"tune --replays -1", "--replays"},
        Case{"bench --timeout never", "--timeout"}}) {
    const CliResult r = RunCli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find("--help' for usage"), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(BenchCli, InputsTheFusedOpCannotTakeAreInvalidInputNamingTheOption) {
  struct Case {
    const char* args;
    const char* needle;
  };
  for (const Case& c : {Case{"tune --hidden 4100", "hidden 4100"},
                        Case{"bench --hidden 4160 --quant fp8_group", "group_size"},
                        Case{"bench --world-size 1 --hidden 4100", "hidden 4100"},
                        Case{"bench --table /nonexistent/table.json", "--table"}}) {
    const CliResult r = RunCli(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
}

}  // namespace
