// The parent side of `tpfuse bench` / `tune`: a group of rank processes, waited for with a
// bound; a failure or the timeout ends the others. Uses /bin/sh as the rank program.
#include "bench/process.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tpfuse::bench {
namespace {

std::vector<std::string> Sh(const std::string& script) { return {"/bin/sh", "-c", script}; }

// NOTE: no test here bounds how fast something happens. A rank that must be ended by the group
// never ends by itself (it sleeps far beyond any bound here), so the message names the way it
// was ended whatever the machine's load; the group timeout of Quick() is a safety net.
std::vector<std::string> Forever(const std::string& prefix = "") { return Sh(prefix + "exec sleep 100000"); }

ProcessGroupOptions Quick() {
  ProcessGroupOptions o;
  o.timeout_seconds = 120;
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
  const Status s = RunProcessGroup({Forever(), Sh("exit 1")}, Quick());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 0 was still running 0.3 s after another rank failed"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("rank 1 exited with status 1"), std::string::npos) << s.message();
}

TEST(BenchProcess, TimeoutKillsEvenWhatIgnoresSigterm) {
  ProcessGroupOptions o = Quick();
  o.timeout_seconds = 0.3;
  const Status s = RunProcessGroup({Forever("trap '' TERM; "), Forever()}, o);
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
