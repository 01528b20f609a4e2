// The parent side of `tpfuse bench` / `tune`: a group of rank processes, waited for with a
// bound; a failure or the timeout ends the others. Uses /bin/sh as the rank program.
#include "bench/process.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

namespace tpfuse::bench {
namespace {

std::vector<std::string> Sh(const std::string& script) { return {"/bin/sh", "-c", script}; }

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

ProcessGroupOptions Quick() {
  ProcessGroupOptions o;
  o.timeout_seconds = 20;
  o.grace_seconds = 0.3;
  o.kill_wait_seconds = 0.3;
  return o;
}

TEST(BenchProcess, AllSucceed) {
  EXPECT_TRUE(RunProcessGroup({Sh("exit 0"), Sh("exit 0")}, Quick()).ok());
}

TEST(BenchProcess, ExitStatusIsNamedByRank) {
  const Status s = RunProcessGroup({Sh("exit 0"), Sh("exit 3")}, Quick());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 1 exited with status 3"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("rank 0"), std::string::npos) << s.message();
}

TEST(BenchProcess, AFailureEndsTheOthersAfterTheGrace) {
  const auto start = std::chrono::steady_clock::now();
  const Status s = RunProcessGroup({Sh("exec sleep 30"), Sh("exit 1")}, Quick());
  EXPECT_LT(Seconds(start), 10);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 0 was still running 0.3 s after another rank failed"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("rank 1 exited with status 1"), std::string::npos) << s.message();
}

TEST(BenchProcess, TimeoutKillsEvenWhatIgnoresSigterm) {
  ProcessGroupOptions o = Quick();
  o.timeout_seconds = 0.3;
  const auto start = std::chrono::steady_clock::now();
  const Status s = RunProcessGroup({Sh("trap '' TERM; exec sleep 30"), Sh("exec sleep 30")}, o);
  EXPECT_LT(Seconds(start), 10);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 0 was still running at the timeout"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("rank 1 was still running at the timeout"), std::string::npos)
      << s.message();
}

TEST(BenchProcess, SignalsAreNamed) {
  const Status s = RunProcessGroup({Sh("kill -KILL $$")}, Quick());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 0 was killed by signal 9"), std::string::npos) << s.message();
}

TEST(BenchProcess, AMissingProgramFails) {
  const Status s = RunProcessGroup({{"/nonexistent/tpfuse"}}, Quick());
  EXPECT_FALSE(s.ok());
}

TEST(BenchProcess, SelfExecutableIsAbsolute) {
  StatusOr<std::string> exe = SelfExecutable();
  ASSERT_TRUE(exe.ok()) << exe.status().ToString();
  EXPECT_EQ(exe->front(), '/');
}

}  // namespace
}  // namespace tpfuse::bench
