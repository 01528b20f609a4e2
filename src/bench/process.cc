#include "bench/process.h"

#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <optional>
#include <thread>

extern char** environ;

namespace tpfuse::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string SignalName(int sig) {
  const char* name = ::strsignal(sig);
  return StrCat("signal ", sig, name ? StrCat(" (", name, ")") : "");
}

struct Child {
  pid_t pid = -1;
  bool running = false;
  bool failed = false;
  std::string outcome;  // how it ended, when it did not exit 0
};

// Records how a reaped child ended.
void Reaped(Child& c, int status) {
  c.running = false;
  if (WIFEXITED(status)) {
    if (WEXITSTATUS(status) != 0) {
      c.failed = true;
      if (c.outcome.empty()) c.outcome = StrCat("exited with status ", WEXITSTATUS(status));
    }
  } else if (WIFSIGNALED(status)) {
    c.failed = true;
    if (c.outcome.empty()) c.outcome = StrCat("was killed by ", SignalName(WTERMSIG(status)));
  }
}

// Polls every running child once without blocking.
void Poll(std::vector<Child>& children) {
  for (Child& c : children) {
    if (!c.running) continue;
    int status = 0;
    const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
    if (r == c.pid) {
      Reaped(c, status);
    } else if (r < 0 && errno != EINTR) {
      c.running = false;
      c.failed = true;
      c.outcome = StrCat("could not be waited for: ", std::strerror(errno));
    }
  }
}

bool AnyRunning(const std::vector<Child>& children) {
  for (const Child& c : children) {
    if (c.running) return true;
  }
  return false;
}

// SIGTERM to every running child, SIGKILL to those still running `kill_wait` seconds later,
// then reaps them all. `why` becomes their outcome.
void Terminate(std::vector<Child>& children, const std::string& why, double kill_wait) {
  for (Child& c : children) {
    if (!c.running) continue;
    c.failed = true;
    c.outcome = why;
    ::kill(c.pid, SIGTERM);
  }
  const Clock::time_point start = Clock::now();
  while (AnyRunning(children) && SecondsSince(start) < kill_wait) {
    Poll(children);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (Child& c : children) {
    if (!c.running) continue;
    ::kill(c.pid, SIGKILL);
    int status = 0;
    while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    c.running = false;
  }
}

}  // namespace

StatusOr<std::string> SelfExecutable() {
  char buf[PATH_MAX + 1];
  const ssize_t n = ::readlink("/proc/self/exe", buf, PATH_MAX);
  if (n <= 0) return Internal("cannot resolve /proc/self/exe: ", std::strerror(errno));
  buf[n] = '\0';
  return std::string(buf);
}

Status RunProcessGroup(const std::vector<std::vector<std::string>>& argvs,
                       const ProcessGroupOptions& options) {
  std::vector<Child> children(argvs.size());
  const Clock::time_point start = Clock::now();
  for (size_t i = 0; i < argvs.size(); ++i) {
    if (argvs[i].empty()) return InvalidArgument("rank ", i, ": empty command line");
    std::vector<char*> argv;
    for (const std::string& a : argvs[i]) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int err = ::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
    if (err != 0) {
      Terminate(children, "was stopped because another rank could not start",
                options.kill_wait_seconds);
      return Internal("cannot start rank ", i, " (", argvs[i][0], "): ", std::strerror(err));
    }
    children[i].pid = pid;
    children[i].running = true;
  }

  std::optional<Clock::time_point> first_failure;
  while (AnyRunning(children)) {
    Poll(children);
    if (!first_failure) {
      for (const Child& c : children) {
        if (c.failed) first_failure = Clock::now();
      }
    }
    if (!AnyRunning(children)) break;
    if (SecondsSince(start) > options.timeout_seconds) {
      Terminate(children,
                StrCat("was still running at the timeout of ", options.timeout_seconds,
                       " s and was killed"),
                options.kill_wait_seconds);
      break;
    }
    if (first_failure && SecondsSince(*first_failure) > options.grace_seconds) {
      Terminate(children,
                StrCat("was still running ", options.grace_seconds,
                       " s after another rank failed and was killed"),
                options.kill_wait_seconds);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  std::string failures;
  for (size_t i = 0; i < children.size(); ++i) {
    if (children[i].failed)
      failures += StrCat(failures.empty() ? "" : "; ", "rank ", i, " ", children[i].outcome);
  }
  if (failures.empty()) return Status::Ok();
  return Internal(failures);
}

}  // namespace tpfuse::bench
