// The unique-id bootstrap (file and tcp) with ranks as threads: delivery to every rank, late
// rank 0, bounded waits with clear errors, bad addresses, and disagreeing ranks.
#include "backends/cuda/comm/bootstrap.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace tpfuse {
namespace {

using Clock = std::chrono::steady_clock;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

std::string UniquePath() {
  static std::atomic<int> counter{0};
  return StrCat("/tmp/tpfuse_bootstrap_test_", ::getpid(), "_", counter.fetch_add(1), ".id");
}

std::string FreeTcpAddress() {
  StatusOr<int> port = PickFreeLoopbackPort();
  EXPECT_TRUE(port.ok()) << port.status().ToString();
  return StrCat("127.0.0.1:", port.ok() ? *port : 1);
}

std::vector<uint8_t> RandomBlob(size_t n) {
  std::mt19937 rng(std::random_device{}());
  std::vector<uint8_t> blob(n);
  for (uint8_t& b : blob) b = uint8_t(rng());
  return blob;
}

struct RankRun {
  std::vector<Status> statuses;
  std::vector<std::vector<uint8_t>> blobs;
};

// Runs ranks [first_rank, world_size) as threads; rank r starts after delay_ms[r] (if given).
// Rank 0 publishes `root_blob`; the others receive into blobs of `blob_bytes[r]` (default: the
// root's size).
RankRun RunRanks(BootstrapMethod method, const std::string& address, int world_size,
                 double timeout_seconds, const std::vector<uint8_t>& root_blob,
                 std::vector<int> delay_ms = {}, std::vector<size_t> blob_bytes = {},
                 int first_rank = 0) {
  RankRun run;
  run.statuses.resize(size_t(world_size));
  run.blobs.resize(size_t(world_size));
  std::vector<std::thread> threads;
  for (int r = first_rank; r < world_size; ++r) {
    run.blobs[size_t(r)] = r == 0 ? root_blob
                                  : std::vector<uint8_t>(size_t(r) < blob_bytes.size()
                                                             ? blob_bytes[size_t(r)]
                                                             : root_blob.size(),
                                                         0);
    threads.emplace_back([&, r] {
      if (size_t(r) < delay_ms.size()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms[size_t(r)]));
      }
      BootstrapOptions options;
      options.method = method;
      options.address = address;
      options.rank = r;
      options.world_size = world_size;
      options.timeout_seconds = timeout_seconds;
      run.statuses[size_t(r)] = BroadcastBlob(options, run.blobs[size_t(r)]);
    });
  }
  for (std::thread& t : threads) t.join();
  return run;
}

Status RunOne(BootstrapMethod method, const std::string& address, int rank, int world_size,
              double timeout_seconds, size_t bytes = 128) {
  std::vector<uint8_t> blob(bytes, 0);
  BootstrapOptions options;
  options.method = method;
  options.address = address;
  options.rank = rank;
  options.world_size = world_size;
  options.timeout_seconds = timeout_seconds;
  return BroadcastBlob(options, blob);
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// NOTE: no test here bounds how fast something happens. Waits that must succeed get a bound far
// beyond what they take (kGenerousSeconds), so a loaded machine cannot make them time out; a
// test that needs a timeout to happen makes it the only way out (nobody ever answers), and
// checks what the error says. kGenerousSeconds also bounds how long a test may hang.
constexpr double kGenerousSeconds = 60.0;

// ---------------------------------------------------------------------------- both methods

class BootstrapMethods : public ::testing::TestWithParam<BootstrapMethod> {
 protected:
  std::string FreshAddress() {
    return GetParam() == BootstrapMethod::kFile ? UniquePath() : FreeTcpAddress();
  }
};

TEST_P(BootstrapMethods, DeliversTheBlobToEveryRank) {
  const std::string address = FreshAddress();
  const std::vector<uint8_t> blob = RandomBlob(128);
  RankRun run = RunRanks(GetParam(), address, 4, kGenerousSeconds, blob);
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(run.statuses[size_t(r)].ok()) << "rank " << r << ": "
                                              << run.statuses[size_t(r)].ToString();
    EXPECT_EQ(run.blobs[size_t(r)], blob) << "rank " << r;
  }
  if (GetParam() == BootstrapMethod::kFile) {
    // Rank 0 cleans up once every rank has acknowledged.
    EXPECT_FALSE(Exists(address));
    for (int r = 1; r < 4; ++r) EXPECT_FALSE(Exists(StrCat(address, ".ack.", r)));
  }
}

TEST_P(BootstrapMethods, RankZeroMayComeLast) {
  const std::string address = FreshAddress();
  const std::vector<uint8_t> blob = RandomBlob(128);
  RankRun run = RunRanks(GetParam(), address, 3, kGenerousSeconds, blob, /*delay_ms=*/{300, 0, 0});
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(run.statuses[size_t(r)].ok()) << "rank " << r << ": "
                                              << run.statuses[size_t(r)].ToString();
    EXPECT_EQ(run.blobs[size_t(r)], blob) << "rank " << r;
  }
}

TEST_P(BootstrapMethods, RepeatedExchangesOnFreshAddresses) {
  for (int round = 0; round < 5; ++round) {
    const std::vector<uint8_t> blob = RandomBlob(128);
    RankRun run = RunRanks(GetParam(), FreshAddress(), 2, kGenerousSeconds, blob);
    ASSERT_TRUE(run.statuses[0].ok()) << run.statuses[0].ToString();
    ASSERT_TRUE(run.statuses[1].ok()) << run.statuses[1].ToString();
    EXPECT_EQ(run.blobs[1], blob) << "round " << round;
  }
}

TEST_P(BootstrapMethods, WorldSizeOneNeedsNobody) {
  const std::string address = FreshAddress();
  // Nobody else ever comes: a rank that waited for anyone would time out.
  const Status s = RunOne(GetParam(), address, 0, 1, kGenerousSeconds);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (GetParam() == BootstrapMethod::kFile) {
    EXPECT_FALSE(Exists(address));
  }
}

TEST_P(BootstrapMethods, PeerTimesOutWhenRankZeroNeverComes) {
  const std::string address = FreshAddress();
  const auto start = Clock::now();
  const Status s = RunOne(GetParam(), address, 1, 2, 0.3);
  const double took = SecondsSince(start);
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_GE(took, 0.25) << "gave up before its timeout";
  const std::string method(BootstrapMethodName(GetParam()));
  EXPECT_TRUE(Contains(s.message(), method + " bootstrap at")) << s.message();
  EXPECT_TRUE(Contains(s.message(), address)) << s.message();
  EXPECT_TRUE(Contains(s.message(), "rank 1 timed out after 0.3 s waiting for rank 0"))
      << s.message();
  if (GetParam() == BootstrapMethod::kTcp) {
    EXPECT_TRUE(Contains(s.message(), "Connection refused")) << s.message();
  }
}

TEST_P(BootstrapMethods, RankZeroTimesOutWhenPeersNeverCome) {
  const std::string address = FreshAddress();
  const auto start = Clock::now();
  const Status s = RunOne(GetParam(), address, 0, 3, 0.3);
  EXPECT_GE(SecondsSince(start), 0.25) << "gave up before its timeout";
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), address)) << s.message();
  EXPECT_TRUE(Contains(s.message(), "rank 0 timed out after 0.3 s")) << s.message();
  EXPECT_TRUE(Contains(s.message(), "rank(s) 1, 2")) << s.message();
  // Nothing is left for a later job to mistake for its own.
  if (GetParam() == BootstrapMethod::kFile) {
    EXPECT_FALSE(Exists(address));
  }
}

TEST_P(BootstrapMethods, RejectsBadRankWorldAndTimeout) {
  const std::string address = FreshAddress();
  Status s = RunOne(GetParam(), address, 2, 2, 1.0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "rank 2 is outside world size 2")) << s.message();
  s = RunOne(GetParam(), address, 0, 0, 1.0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  s = RunOne(GetParam(), address, 0, 2, 0.0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "timeout_seconds")) << s.message();
  s = RunOne(GetParam(), address, 0, 2, std::nan(""));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_P(BootstrapMethods, RanksDisagreeingOnTheBlobSizeFail) {
  const std::string address = FreshAddress();
  const std::vector<uint8_t> blob = RandomBlob(128);
  if (GetParam() == BootstrapMethod::kTcp) {
    // Rank 0 learns the peer's size from its hello: both fail at once, naming both sizes.
    RankRun run = RunRanks(GetParam(), address, 2, kGenerousSeconds, blob, {}, /*blob_bytes=*/{0, 64});
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(run.statuses[size_t(r)].code(), StatusCode::kInvalidArgument) << run.statuses[size_t(r)].ToString();
      EXPECT_TRUE(Contains(run.statuses[size_t(r)].message(), "128")) << run.statuses[size_t(r)].ToString();
      EXPECT_TRUE(Contains(run.statuses[size_t(r)].message(), "64")) << run.statuses[size_t(r)].ToString();
    }
    return;
  }
  // file: a reader expecting another size never accepts rank 0's file; its timeout names both
  // sizes. It starts once the file is there, so that is what its first look finds.
  Status root;
  std::vector<uint8_t> root_blob = blob;
  std::thread root_thread([&] {
    BootstrapOptions options;
    options.method = BootstrapMethod::kFile;
    options.address = address;
    options.rank = 0;
    options.world_size = 2;
    options.timeout_seconds = kGenerousSeconds;
    root = BroadcastBlob(options, root_blob);
  });
  const auto start = Clock::now();
  while (!Exists(address) && SecondsSince(start) < kGenerousSeconds)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const Status wrong = RunOne(BootstrapMethod::kFile, address, 1, 2, 0.3, /*bytes=*/64);
  EXPECT_EQ(wrong.code(), StatusCode::kTimeout) << wrong.ToString();
  EXPECT_TRUE(Contains(wrong.message(), "holds a 128-byte blob")) << wrong.ToString();
  EXPECT_TRUE(Contains(wrong.message(), "expects a 64-byte blob")) << wrong.ToString();
  // Rank 0 still waits for rank 1: a reader of the right size completes the exchange.
  std::vector<uint8_t> got(128, 0);
  BootstrapOptions options;
  options.method = BootstrapMethod::kFile;
  options.address = address;
  options.rank = 1;
  options.world_size = 2;
  options.timeout_seconds = kGenerousSeconds;
  const Status right = BroadcastBlob(options, got);
  root_thread.join();
  EXPECT_TRUE(right.ok()) << right.ToString();
  EXPECT_TRUE(root.ok()) << root.ToString();
  EXPECT_EQ(got, blob);
}

INSTANTIATE_TEST_SUITE_P(Methods, BootstrapMethods,
                         ::testing::Values(BootstrapMethod::kFile, BootstrapMethod::kTcp),
                         [](const ::testing::TestParamInfo<BootstrapMethod>& info) {
                           return std::string(BootstrapMethodName(info.param));
                         });

// ---------------------------------------------------------------------------- file

TEST(FileBootstrap, MissingDirectoryIsNamed) {
  const std::string path = "/nonexistent_tpfuse_dir/id";
  const Status s = RunOne(BootstrapMethod::kFile, path, 0, 2, 1.0);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "file bootstrap at '/nonexistent_tpfuse_dir/id'")) << s.message();
  EXPECT_TRUE(Contains(s.message(), "No such file or directory")) << s.message();
}

TEST(FileBootstrap, EmptyPathIsRejected) {
  const Status s = RunOne(BootstrapMethod::kFile, "", 1, 2, 1.0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "file bootstrap")) << s.message();
}

TEST(FileBootstrap, ReadersWaitOutAForeignFileUntilRankZeroReplacesIt) {
  const std::string path = UniquePath();
  {
    std::ofstream junk(path);
    junk << "not a bootstrap file";
  }
  const std::vector<uint8_t> blob = RandomBlob(128);
  // Rank 1 finds the junk first and keeps polling; rank 0 replaces it.
  RankRun run = RunRanks(BootstrapMethod::kFile, path, 2, kGenerousSeconds, blob, /*delay_ms=*/{300, 0});
  ASSERT_TRUE(run.statuses[0].ok()) << run.statuses[0].ToString();
  ASSERT_TRUE(run.statuses[1].ok()) << run.statuses[1].ToString();
  EXPECT_EQ(run.blobs[1], blob);
  EXPECT_FALSE(Exists(path));
}

TEST(FileBootstrap, TimeoutNamesWhatTheReaderFound) {
  const std::string path = UniquePath();
  {
    std::ofstream junk(path);
    junk << "not a bootstrap file";
  }
  const Status s = RunOne(BootstrapMethod::kFile, path, 1, 2, 0.3);
  ::unlink(path.c_str());
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "not a tpfuse bootstrap file")) << s.message();
}

// ---------------------------------------------------------------------------- tcp

TEST(TcpBootstrap, BadAddressesAreRejectedAtOnce) {
  for (const std::string address : {"nohost", "127.0.0.1:", ":80", "127.0.0.1:abc",
                                     "127.0.0.1:70000", "127.0.0.1:0", "300.1.1.1:80",
                                     "some.host:80"}) {
    for (int rank : {0, 1}) {
      // Rejected, not waited on: a rank that waited would end in kTimeout, not kInvalidArgument.
      const Status s = RunOne(BootstrapMethod::kTcp, address, rank, 2, kGenerousSeconds);
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << address << ": " << s.ToString();
      EXPECT_TRUE(Contains(s.message(), "tcp bootstrap")) << s.message();
      EXPECT_TRUE(Contains(s.message(), StrCat("'", address, "'"))) << s.message();
    }
  }
}

TEST(TcpBootstrap, LocalhostIsLoopback) {
  StatusOr<int> port = PickFreeLoopbackPort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  const std::vector<uint8_t> blob = RandomBlob(128);
  RankRun run = RunRanks(BootstrapMethod::kTcp, StrCat("localhost:", *port), 2, kGenerousSeconds, blob);
  ASSERT_TRUE(run.statuses[0].ok()) << run.statuses[0].ToString();
  ASSERT_TRUE(run.statuses[1].ok()) << run.statuses[1].ToString();
  EXPECT_EQ(run.blobs[1], blob);
}

TEST(TcpBootstrap, UnknownMethodIsRejected) {
  StatusOr<BootstrapMethod> m = ParseBootstrapMethod("udp");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m.status().message(), "'udp'")) << m.status().message();
  EXPECT_EQ(*ParseBootstrapMethod("file"), BootstrapMethod::kFile);
  EXPECT_EQ(*ParseBootstrapMethod("tcp"), BootstrapMethod::kTcp);
}

TEST(TcpBootstrap, WorldSizeMismatchFailsBothSides) {
  const std::string address = FreeTcpAddress();
  Status root, peer;
  std::thread root_thread([&] { root = RunOne(BootstrapMethod::kTcp, address, 0, 2, kGenerousSeconds); });
  std::thread peer_thread([&] { peer = RunOne(BootstrapMethod::kTcp, address, 1, 3, kGenerousSeconds); });
  root_thread.join();
  peer_thread.join();
  EXPECT_EQ(root.code(), StatusCode::kInvalidArgument) << root.ToString();
  EXPECT_TRUE(Contains(root.message(), "rank 1 was started with world size 3, rank 0 with 2"))
      << root.message();
  EXPECT_EQ(peer.code(), StatusCode::kInvalidArgument) << peer.ToString();
  EXPECT_TRUE(Contains(peer.message(), "rank 0 has world size 2, rank 1 has 3")) << peer.message();
}

TEST(TcpBootstrap, PortInUseIsNamed) {
  // Hold a listening socket on a port, then ask rank 0 to listen there.
  const int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(holder, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = StrCat("127.0.0.1:", ntohs(addr.sin_port));
  const Status s = RunOne(BootstrapMethod::kTcp, address, 0, 2, 1.0);
  ::close(holder);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), address)) << s.message();
  EXPECT_TRUE(Contains(s.message(), "Address already in use")) << s.message();
}

TEST(TcpBootstrap, StrayConnectionsDoNotDisturbTheExchange) {
  const std::string address = FreeTcpAddress();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  const std::vector<uint8_t> blob = RandomBlob(128);
  Status root;
  std::vector<uint8_t> root_blob = blob;
  std::thread root_thread([&] {
    BootstrapOptions options;
    options.method = BootstrapMethod::kTcp;
    options.address = address;
    options.rank = 0;
    options.world_size = 2;
    options.timeout_seconds = kGenerousSeconds;
    root = BroadcastBlob(options, root_blob);
  });
  // A client that speaks another protocol, then one that connects and says nothing. Each
  // retries until rank 0 listens (rank 0 gives up after kGenerousSeconds).
  const auto start = Clock::now();
  for (const bool talk : {true, false}) {
    int fd = -1;
    while (SecondsSince(start) < kGenerousSeconds) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(uint16_t(port));
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) break;
      ::close(fd);
      fd = -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_GE(fd, 0);
    if (talk) {
      const char junk[] = "GET / HTTP/1.0\r\n\r\n......";
      ASSERT_GT(::send(fd, junk, 24, MSG_NOSIGNAL), 0);
    }
    ::close(fd);
  }
  std::vector<uint8_t> got(128, 0);
  BootstrapOptions options;
  options.method = BootstrapMethod::kTcp;
  options.address = address;
  options.rank = 1;
  options.world_size = 2;
  options.timeout_seconds = kGenerousSeconds;
  const Status peer = BroadcastBlob(options, got);
  root_thread.join();
  EXPECT_TRUE(root.ok()) << root.ToString();
  EXPECT_TRUE(peer.ok()) << peer.ToString();
  EXPECT_EQ(got, blob);
}

}  // namespace
}  // namespace tpfuse
