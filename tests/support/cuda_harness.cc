#include "support/cuda_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>

#if TPFUSE_HAVE_CUDA
#include <nccl.h>

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#endif

extern char** environ;

namespace tpfuse::testing {
namespace {

constexpr const char kChildFlag[] = "--tpfuse-child=";

// GTEST_SKIP returns from the function it is in, so it lives in a void helper.
void SkipWith(const std::string& why) { GTEST_SKIP() << why; }

std::map<std::string, ChildMain>& ChildRegistry() {
  static auto* registry = new std::map<std::string, ChildMain>();
  return *registry;
}

StatusOr<ChildSpec> ParseChildSpec(const std::string& text) {
  // NAME,RANK,WORLD,METHOD,ADDRESS (the address keeps any further commas).
  std::vector<std::string> parts;
  size_t start = 0;
  while (parts.size() < 4) {
    const size_t comma = text.find(',', start);
    if (comma == std::string::npos) break;
    parts.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  parts.push_back(text.substr(start));
  if (parts.size() != 5) {
    return InvalidArgument(kChildFlag, "'", text, "' is not NAME,RANK,WORLD,METHOD,ADDRESS");
  }
  ChildSpec spec;
  spec.name = parts[0];
  try {
    spec.rank = std::stoi(parts[1]);
    spec.world_size = std::stoi(parts[2]);
  } catch (const std::exception&) {
    return InvalidArgument(kChildFlag, "'", text, "': RANK and WORLD must be integers");
  }
  spec.method = parts[3];
  spec.address = parts[4];
  return spec;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

// ------------------------------------------------------------------------------------ GPUs

int CudaDeviceCount() {
#if TPFUSE_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: later calls must not see it
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

std::string WhyFewerGpusThan(int n) {
#if TPFUSE_HAVE_CUDA
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    count = 0;
  }
  if (count >= n) return "";
  std::string why = StrCat("needs ", n, " GPU", n == 1 ? "" : "s", ", found ", count);
  if (e != cudaSuccess) why += StrCat(" (cudaGetDeviceCount: ", cudaGetErrorString(e), ")");
  return why;
#else
  return StrCat("needs ", n, " GPU", n == 1 ? "" : "s", ", found 0 (built without CUDA)");
#endif
}

bool RequireGpus(int n) {
  const std::string why = WhyFewerGpusThan(n);
  if (why.empty()) return false;
  SkipWith(why);
  return true;
}

Status CombineRankStatuses(const std::vector<Status>& statuses) {
  std::string message;
  StatusCode code = StatusCode::kOk;
  for (size_t r = 0; r < statuses.size(); ++r) {
    if (statuses[r].ok()) continue;
    if (code == StatusCode::kOk) code = statuses[r].code();
    message += StrCat(message.empty() ? "" : "\n", "rank ", r, ": ", statuses[r].ToString());
  }
  if (code == StatusCode::kOk) return Status::Ok();
  return Status(code, message);
}

// ------------------------------------------------------------------------ child processes

bool RegisterChildMain(const std::string& name, ChildMain main) {
  ChildRegistry()[name] = std::move(main);
  return true;
}

int RunChildIfRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(kChildFlag, 0) != 0) continue;
    // Line-buffered, so the parent sees everything printed before a crash.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    StatusOr<ChildSpec> spec = ParseChildSpec(arg.substr(std::strlen(kChildFlag)));
    if (!spec.ok()) {
      std::fprintf(stderr, "%s\n", spec.status().ToString().c_str());
      return 2;
    }
    auto it = ChildRegistry().find(spec->name);
    if (it == ChildRegistry().end()) {
      std::fprintf(stderr, "no child entry point named '%s' is registered\n", spec->name.c_str());
      return 2;
    }
    return it->second(*spec);
  }
  return -1;
}

StatusOr<std::vector<ChildResult>> RunChildren(const std::string& name, int world_size,
                                               const std::string& method,
                                               const std::string& address,
                                               double timeout_seconds) {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return Internal("RunChildren: readlink(/proc/self/exe) failed: ", std::strerror(errno));
  exe[n] = '\0';
  char dir_template[] = "/tmp/tpfuse_children_XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) {
    return Internal("RunChildren: mkdtemp failed: ", std::strerror(errno));
  }
  const std::string dir = dir_template;

  std::vector<ChildResult> results(static_cast<size_t>(world_size));
  std::vector<pid_t> pids(static_cast<size_t>(world_size), -1);
  std::vector<std::string> outputs(static_cast<size_t>(world_size));
  Status spawn_error;
  for (int r = 0; r < world_size; ++r) {
    results[size_t(r)].rank = r;
    outputs[size_t(r)] = StrCat(dir, "/rank", r, ".log");
    const std::string flag =
        StrCat(kChildFlag, name, ",", r, ",", world_size, ",", method, ",", address);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, outputs[size_t(r)].c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> child_argv = {exe, const_cast<char*>(flag.c_str()), nullptr};
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, exe, &actions, nullptr, child_argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      spawn_error = Internal("RunChildren: posix_spawn of rank ", r, " failed: ", std::strerror(rc));
      break;
    }
    pids[size_t(r)] = pid;
  }

  // Wait for every child, bounded; kill the ones left at the deadline.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(spawn_error.ok() ? timeout_seconds : 0));
  auto record = [&](int r, int status) {
    ChildResult& res = results[size_t(r)];
    res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    res.term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    pids[size_t(r)] = -1;
  };
  while (true) {
    bool running = false;
    for (int r = 0; r < world_size; ++r) {
      if (pids[size_t(r)] < 0) continue;
      int status = 0;
      const pid_t done = ::waitpid(pids[size_t(r)], &status, WNOHANG);
      if (done == pids[size_t(r)]) {
        record(r, status);
      } else {
        running = true;
      }
    }
    if (!running) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      for (int r = 0; r < world_size; ++r) {
        if (pids[size_t(r)] < 0) continue;
        ::kill(pids[size_t(r)], SIGKILL);
        int status = 0;
        ::waitpid(pids[size_t(r)], &status, 0);
        record(r, status);
        results[size_t(r)].timed_out = true;
        results[size_t(r)].exit_code = -1;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world_size; ++r) {
    results[size_t(r)].output = ReadWholeFile(outputs[size_t(r)]);
    ::unlink(outputs[size_t(r)].c_str());
  }
  ::rmdir(dir.c_str());
  if (!spawn_error.ok()) return spawn_error;
  return results;
}

#if TPFUSE_HAVE_CUDA
// ------------------------------------------------------------------------ in-process ranks

std::vector<Status> RunOnRankThreads(int world_size, const std::function<Status(int rank)>& fn) {
  std::vector<Status> statuses(static_cast<size_t>(world_size));
  std::vector<std::thread> threads;
  threads.reserve(size_t(world_size));
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&statuses, &fn, r] {
      Status status;
      try {
        const cudaError_t e = cudaSetDevice(r);
        status = e == cudaSuccess
                     ? fn(r)
                     : Status(StatusCode::kCudaError,
                              StrCat("cudaSetDevice(", r, ") failed: ", cudaGetErrorString(e)));
      } catch (const std::exception& ex) {
        status = Internal("rank ", r, " threw: ", ex.what());
      } catch (...) {
        status = Internal("rank ", r, " threw an unknown exception");
      }
      statuses[size_t(r)] = std::move(status);
    });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

StatusOr<std::unique_ptr<MultiGpu>> MultiGpu::Create(int world_size,
                                                     const cuda::CommOptions& options) {
  if (world_size < 1) return InvalidArgument("MultiGpu::Create: world size ", world_size);
  const std::string why = WhyFewerGpusThan(world_size);
  if (!why.empty()) return FailedPrecondition("MultiGpu::Create: ", why);
  ncclUniqueId id;
  TPFUSE_NCCL_CHECK(ncclGetUniqueId(&id));
  std::unique_ptr<MultiGpu> group(new MultiGpu());
  group->comms_.resize(size_t(world_size));
  group->streams_.assign(size_t(world_size), nullptr);
  MultiGpu* g = group.get();
  const Status created = CombineRankStatuses(RunOnRankThreads(world_size, [&](int r) -> Status {
    TPFUSE_ASSIGN_OR_RETURN(auto comm,
                            cuda::Communicator::FromUniqueId(id, r, world_size, r, options));
    g->comms_[size_t(r)] = std::move(comm);
    TPFUSE_CUDA_CHECK(cudaStreamCreateWithFlags(&g->streams_[size_t(r)], cudaStreamNonBlocking));
    return Status::Ok();
  }));
  if (!created.ok()) {
    return created.WithContext(StrCat("creating communicators on ", world_size, " GPUs"));
  }
  return StatusOr<std::unique_ptr<MultiGpu>>(std::move(group));
}

MultiGpu::~MultiGpu() {
  (void)RunOnRankThreads(int(comms_.size()), [this](int r) {
    if (streams_[size_t(r)] != nullptr) {
      (void)cudaStreamSynchronize(streams_[size_t(r)]);
      (void)cudaStreamDestroy(streams_[size_t(r)]);
    }
    comms_[size_t(r)].reset();
    return Status::Ok();
  });
}

namespace {
struct CachedGroup {
  int world_size;
  cuda::CommOptions options;
  std::unique_ptr<MultiGpu> group;
};
std::mutex& CacheMutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}
std::vector<CachedGroup>& Cache() {
  static auto* cache = new std::vector<CachedGroup>();
  return *cache;
}
}  // namespace

StatusOr<MultiGpu*> MultiGpu::Cached(int world_size, const cuda::CommOptions& options) {
  std::lock_guard<std::mutex> lock(CacheMutex());
  for (CachedGroup& entry : Cache()) {
    if (entry.world_size == world_size && entry.options == options) return entry.group.get();
  }
  TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<MultiGpu> group, Create(world_size, options));
  MultiGpu* raw = group.get();
  Cache().push_back(CachedGroup{world_size, options, std::move(group)});
  return raw;
}

void MultiGpu::ReleaseCached() {
  std::lock_guard<std::mutex> lock(CacheMutex());
  // Newest first: reverse order of creation.
  while (!Cache().empty()) Cache().pop_back();
}

std::vector<Status> MultiGpu::Run(const RankFn& fn) {
  return RunOnRankThreads(world_size(), [&](int r) {
    return fn(r, *comms_[size_t(r)], streams_[size_t(r)]);
  });
}

Status WaitBounded(cuda::Communicator& comm, cudaStream_t stream, double seconds,
                   const std::string& what) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaSuccess) return Status::Ok();
    if (e != cudaErrorNotReady) {
      return Status(StatusCode::kCudaError,
                    StrCat("rank ", comm.rank(), ": ", what, ": ", cudaGetErrorString(e)));
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
        seconds) {
      Status timeout(StatusCode::kTimeout,
                     StrCat("rank ", comm.rank(), " waited ", seconds, " s in ", what,
                            " (a peer rank failed before reaching it?)"));
      comm.Poison(timeout);
      return timeout;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

Status HostBarrier(cuda::Communicator& comm, cudaStream_t stream) {
  TPFUSE_ASSIGN_OR_RETURN(cuda::DeviceBuffer word, cuda::DeviceBuffer::Allocate(sizeof(float)));
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(word.get(), 0, sizeof(float), stream));
  TPFUSE_NCCL_CHECK(ncclAllReduce(word.get(), word.get(), 1, ncclFloat32, ncclSum, comm.nccl(),
                                  stream));
  const Status waited = WaitBounded(comm, stream, kCollectiveWaitSeconds, "a test barrier");
  // A collective that never finished may still write the word: never free it then.
  if (waited.code() == StatusCode::kTimeout) (void)word.Release();
  return waited;
}
#endif  // TPFUSE_HAVE_CUDA

}  // namespace tpfuse::testing
