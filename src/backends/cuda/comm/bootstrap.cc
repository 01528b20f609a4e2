#include "backends/cuda/comm/bootstrap.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

namespace tpfuse {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------- helpers

std::string ErrnoText(int err) {
  char buf[256];
  // GNU strerror_r returns the message (possibly not in buf).
  const char* text = strerror_r(err, buf, sizeof(buf));
  return text;
}

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

template <class... Args>
Status Timeout(const Args&... args) {
  return Status(StatusCode::kTimeout, StrCat(args...));
}

// A point in time every wait of one BroadcastBlob call gives up at.
class Deadline {
 public:
  explicit Deadline(double seconds)
      : seconds_(seconds),
        end_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(seconds))) {}
  Deadline(Clock::time_point end, double seconds) : seconds_(seconds), end_(end) {}

  bool Expired() const { return Clock::now() >= end_; }
  // Milliseconds left, rounded up, at least 0 (for poll()).
  int RemainingMs() const {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(end_ - Clock::now()).count();
    return int(std::clamp<int64_t>(left, 0, 1 << 30));
  }
  // This deadline or `seconds` from now, whichever comes first.
  Deadline CappedAt(double seconds) const {
    Deadline other(seconds);
    return other.end_ < end_ ? other : *this;
  }
  double seconds() const { return seconds_; }

 private:
  double seconds_;
  Clock::time_point end_;
};

// Sleeps `ms`, or less if the deadline comes first.
void SleepAtMost(int ms, const Deadline& deadline) {
  std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, deadline.RemainingMs())));
}

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

std::string RankList(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += StrCat(i ? ", " : "", ranks[i]);
  return out;
}

// ---------------------------------------------------------------------------------- file

// File layout: magic[8] | version u32 | reserved u32 | blob size u64 | blob.
constexpr char kFileMagic[8] = {'T', 'P', 'F', 'U', 'S', 'E', 'I', 'D'};
constexpr uint32_t kFileVersion = 1;
constexpr size_t kFileHeaderBytes = 24;
// Poll period of the file method.
constexpr int kFilePollMs = 5;

std::string AckPath(const std::string& path, int rank) { return StrCat(path, ".ack.", rank); }

Status WriteAll(int fd, const uint8_t* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Internal("write failed: ", ErrnoText(errno));
    }
    data += w;
    n -= size_t(w);
  }
  return Status::Ok();
}

// Rank 0: publishes the blob under `path` atomically, waits for every acknowledgement, then
// removes the file and the acknowledgements.
Status PublishFile(const BootstrapOptions& o, std::span<const uint8_t> blob,
                   const Deadline& deadline) {
  const std::string& path = o.address;
  const std::string where = StrCat("file bootstrap at '", path, "'");
  // Leftovers of an earlier job would be taken for this job's: remove them first.
  ::unlink(path.c_str());
  for (int r = 1; r < o.world_size; ++r) ::unlink(AckPath(path, r).c_str());

  // Write to a temporary name in the same directory, then rename: readers see either no file
  // or the whole file, never a prefix.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) {
      return Internal(where, ": rank 0 cannot create '", tmp, "': ", ErrnoText(errno));
    }
    std::vector<uint8_t> bytes(kFileHeaderBytes + blob.size());
    std::memcpy(bytes.data(), kFileMagic, sizeof(kFileMagic));
    PutU32(bytes.data() + 8, kFileVersion);
    PutU32(bytes.data() + 12, 0);
    PutU64(bytes.data() + 16, blob.size());
    if (!blob.empty()) std::memcpy(bytes.data() + kFileHeaderBytes, blob.data(), blob.size());
    Status written = WriteAll(fd.get(), bytes.data(), bytes.size());
    if (written.ok() && ::fsync(fd.get()) != 0) {
      written = Internal("fsync failed: ", ErrnoText(errno));
    }
    // close() reports late write errors (e.g. on network filesystems): check it.
    const int close_rc = ::close(fd.Release());
    const int close_errno = errno;
    if (written.ok() && close_rc != 0) written = Internal("close failed: ", ErrnoText(close_errno));
    if (!written.ok()) {
      ::unlink(tmp.c_str());
      return written.WithContext(StrCat(where, ": rank 0 writing '", tmp, "'"));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Internal(where, ": rank 0 cannot rename '", tmp, "' to it: ", ErrnoText(err));
  }

  std::vector<int> pending;
  for (int r = 1; r < o.world_size; ++r) pending.push_back(r);
  while (true) {
    std::erase_if(pending, [&](int r) { return ::access(AckPath(path, r).c_str(), F_OK) == 0; });
    if (pending.empty()) break;
    if (deadline.Expired()) {
      // Leave nothing behind that the next job could mistake for its own.
      ::unlink(path.c_str());
      for (int r = 1; r < o.world_size; ++r) ::unlink(AckPath(path, r).c_str());
      return Timeout(where, ": rank 0 timed out after ", Seconds(deadline.seconds()),
                     " waiting for rank(s) ", RankList(pending),
                     " to read it (no acknowledgement file '", AckPath(path, pending[0]),
                     "'); are those ranks running, with the same path?");
    }
    SleepAtMost(kFilePollMs, deadline);
  }
  ::unlink(path.c_str());
  for (int r = 1; r < o.world_size; ++r) ::unlink(AckPath(path, r).c_str());
  return Status::Ok();
}

// Ranks > 0: polls until rank 0's file appears with the expected size, reads it, acknowledges.
Status ReceiveFile(const BootstrapOptions& o, std::span<uint8_t> blob, const Deadline& deadline) {
  const std::string& path = o.address;
  const std::string where = StrCat("file bootstrap at '", path, "'");
  const size_t expected = kFileHeaderBytes + blob.size();
  std::string last_problem = "the file does not exist";
  while (true) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.valid()) {
      // Read one byte more than expected to notice a longer file.
      std::vector<uint8_t> bytes(expected + 1);
      size_t got = 0;
      bool read_error = false;
      while (got < bytes.size()) {
        ssize_t r = ::read(fd.get(), bytes.data() + got, bytes.size() - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
          last_problem = StrCat("reading it failed: ", ErrnoText(errno));
          read_error = true;
          break;
        }
        if (r == 0) break;
        got += size_t(r);
      }
      if (!read_error) {
        if (got < kFileHeaderBytes || std::memcmp(bytes.data(), kFileMagic, 8) != 0) {
          last_problem = StrCat("the file is not a tpfuse bootstrap file (", got, " bytes)");
        } else if (GetU32(bytes.data() + 8) != kFileVersion) {
          last_problem = StrCat("the file has format version ", GetU32(bytes.data() + 8),
                                ", this rank reads version ", kFileVersion);
        } else if (GetU64(bytes.data() + 16) != blob.size() || got != expected) {
          last_problem = StrCat("the file holds a ", GetU64(bytes.data() + 16), "-byte blob in ",
                                got, " bytes; this rank expects a ", blob.size(), "-byte blob in ",
                                expected, " bytes");
        } else {
          if (!blob.empty()) std::memcpy(blob.data(), bytes.data() + kFileHeaderBytes, blob.size());
          break;
        }
      }
    } else if (errno != ENOENT) {
      return Internal(where, ": rank ", o.rank, " cannot open it: ", ErrnoText(errno));
    }
    if (deadline.Expired()) {
      return Timeout(where, ": rank ", o.rank, " timed out after ", Seconds(deadline.seconds()),
                     " waiting for rank 0 to publish it (", last_problem, ")");
    }
    SleepAtMost(kFilePollMs, deadline);
  }
  const std::string ack = AckPath(path, o.rank);
  Fd ack_fd(::open(ack.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!ack_fd.valid()) {
    return Internal(where, ": rank ", o.rank, " cannot create its acknowledgement '", ack,
                    "': ", ErrnoText(errno));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------- tcp

// Hello (rank > 0 -> rank 0): magic "TPFH" | version u32 | rank u32 | world size u32 | blob u64.
// Reply (rank 0 -> rank > 0): magic "TPFR" | version u32 | status u32 | world size u32 |
// blob u64, then the blob when status is kReplyOk.
constexpr char kHelloMagic[4] = {'T', 'P', 'F', 'H'};
constexpr char kReplyMagic[4] = {'T', 'P', 'F', 'R'};
constexpr uint32_t kTcpVersion = 1;
constexpr size_t kMessageBytes = 24;
enum ReplyStatus : uint32_t {
  kReplyOk = 0,
  kReplyWorldMismatch,
  kReplyBadRank,
  kReplySizeMismatch,
  kReplyBadVersion,
};
// A connected peer gets this long to send its hello and take the reply, so a stalled
// connection cannot hold up the others.
constexpr double kPerConnectionSeconds = 2.0;
// Pause between connection attempts while rank 0 is not listening yet.
constexpr int kRetryMs = 20;

struct TcpAddress {
  sockaddr_in addr{};
};

StatusOr<TcpAddress> ParseTcpAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return InvalidArgument("tcp bootstrap: address '", address,
                           "' is not HOST:PORT (e.g. 127.0.0.1:29500)");
  }
  std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  int port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9' || port > 65535) {
      port = -1;
      break;
    }
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) {
    return InvalidArgument("tcp bootstrap: address '", address, "' has port '", port_text,
                           "', not a number in 1..65535");
  }
  TcpAddress out;
  out.addr.sin_family = AF_INET;
  out.addr.sin_port = htons(uint16_t(port));
  if (::inet_pton(AF_INET, host.c_str(), &out.addr.sin_addr) != 1) {
    return InvalidArgument("tcp bootstrap: address '", address, "' has host '", host,
                           "', not an IPv4 address or 'localhost'");
  }
  return out;
}

struct IoOutcome {
  enum Kind { kOk, kClosed, kTimedOut, kError } kind = kOk;
  int err = 0;
  bool ok() const { return kind == kOk; }
  std::string Describe() const {
    switch (kind) {
      case kOk: return "ok";
      case kClosed: return "the connection was closed";
      case kTimedOut: return "no data in time";
      case kError: return ErrnoText(err);
    }
    return "?";
  }
};

// Waits until `fd` is ready for `events`. False when the deadline passed first.
bool WaitReady(int fd, short events, const Deadline& deadline, int* err) {
  while (true) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, deadline.RemainingMs());
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) {
      *err = errno;
      return true;  // the caller's next call reports the error
    }
  }
}

IoOutcome SendAll(int fd, const uint8_t* data, size_t n, const Deadline& deadline) {
  while (n > 0) {
    // MSG_NOSIGNAL: a peer that went away is an error value, not SIGPIPE.
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w;
      n -= size_t(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int err = 0;
      if (!WaitReady(fd, POLLOUT, deadline, &err)) return {IoOutcome::kTimedOut, 0};
      continue;
    }
    return {IoOutcome::kError, errno};
  }
  return {};
}

IoOutcome RecvAll(int fd, uint8_t* data, size_t n, const Deadline& deadline) {
  while (n > 0) {
    ssize_t r = ::recv(fd, data, n, 0);
    if (r > 0) {
      data += r;
      n -= size_t(r);
      continue;
    }
    if (r == 0) return {IoOutcome::kClosed, 0};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int err = 0;
      if (!WaitReady(fd, POLLIN, deadline, &err)) return {IoOutcome::kTimedOut, 0};
      continue;
    }
    return {IoOutcome::kError, errno};
  }
  return {};
}

void EncodeMessage(uint8_t* out, const char (&magic)[4], uint32_t a, uint32_t b, uint64_t c) {
  std::memcpy(out, magic, 4);
  PutU32(out + 4, kTcpVersion);
  PutU32(out + 8, a);
  PutU32(out + 12, b);
  PutU64(out + 16, c);
}

// Rank 0: listens and serves every other rank once.
Status ServeTcp(const BootstrapOptions& o, const TcpAddress& address,
                std::span<const uint8_t> blob, const Deadline& deadline) {
  const std::string where = StrCat("tcp bootstrap at ", o.address);
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return Internal(where, ": rank 0: socket() failed: ", ErrnoText(errno));
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address.addr),
             sizeof(address.addr)) != 0) {
    const int err = errno;
    return Internal(where, ": rank 0 cannot listen: bind failed: ", ErrnoText(err),
                    err == EADDRINUSE ? " (another process holds the port)" : "");
  }
  if (::listen(listener.get(), 128) != 0) {
    return Internal(where, ": rank 0 cannot listen: listen failed: ", ErrnoText(errno));
  }

  std::vector<bool> served(static_cast<size_t>(o.world_size), false);
  int n_served = 0;
  while (n_served < o.world_size - 1) {
    if (deadline.Expired()) {
      std::vector<int> missing;
      for (int r = 1; r < o.world_size; ++r) {
        if (!served[size_t(r)]) missing.push_back(r);
      }
      return Timeout(where, ": rank 0 timed out after ", Seconds(deadline.seconds()), " with ",
                     n_served, " of ", o.world_size - 1, " ranks served (missing rank(s) ",
                     RankList(missing), "); are those ranks running, with the same address?");
    }
    int err = 0;
    if (!WaitReady(listener.get(), POLLIN, deadline, &err)) continue;
    Fd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn.valid()) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      return Internal(where, ": rank 0: accept failed: ", ErrnoText(errno));
    }
    const Deadline conn_deadline = deadline.CappedAt(kPerConnectionSeconds);
    uint8_t hello[kMessageBytes];
    // A connection that says nothing, or not our protocol, is dropped: a stray client, or a
    // rank that died and will show up as missing.
    if (!RecvAll(conn.get(), hello, sizeof(hello), conn_deadline).ok()) continue;
    if (std::memcmp(hello, kHelloMagic, 4) != 0) continue;
    const uint32_t version = GetU32(hello + 4);
    const int peer_rank = int(GetU32(hello + 8));
    const int peer_world = int(GetU32(hello + 12));
    const uint64_t peer_blob = GetU64(hello + 16);

    uint32_t status = kReplyOk;
    Status problem;
    if (version != kTcpVersion) {
      problem = InvalidArgument(where, ": a peer speaks protocol version ", version,
                                ", rank 0 speaks ", kTcpVersion);
      status = kReplyBadVersion;
    } else if (peer_world != o.world_size) {
      problem = InvalidArgument(where, ": rank ", peer_rank, " was started with world size ",
                                peer_world, ", rank 0 with ", o.world_size);
      status = kReplyWorldMismatch;
    } else if (peer_rank < 1 || peer_rank >= o.world_size) {
      problem = InvalidArgument(where, ": a peer claims rank ", peer_rank, ", outside 1..",
                                o.world_size - 1);
      status = kReplyBadRank;
    } else if (peer_blob != blob.size()) {
      problem = InvalidArgument(where, ": rank ", peer_rank, " expects a ", peer_blob,
                                "-byte blob, rank 0 has ", blob.size(), " bytes");
      status = kReplySizeMismatch;
    }
    uint8_t reply[kMessageBytes];
    EncodeMessage(reply, kReplyMagic, status, uint32_t(o.world_size), blob.size());
    IoOutcome sent = SendAll(conn.get(), reply, sizeof(reply), conn_deadline);
    if (!problem.ok()) return problem;  // the job is misconfigured: no point waiting on
    if (sent.ok() && !blob.empty()) sent = SendAll(conn.get(), blob.data(), blob.size(), conn_deadline);
    if (!sent.ok()) continue;  // the peer retries if it is alive
    if (!served[size_t(peer_rank)]) {
      served[size_t(peer_rank)] = true;
      ++n_served;
    }
  }
  return Status::Ok();
}

bool IsTransientConnectError(int err) {
  return err == ECONNREFUSED || err == ETIMEDOUT || err == ECONNRESET || err == EAGAIN ||
         err == EINTR || err == ENETUNREACH || err == EHOSTUNREACH || err == EINPROGRESS;
}

// Ranks > 0: connects to rank 0 (retrying until it listens) and reads the blob.
Status ConnectTcp(const BootstrapOptions& o, const TcpAddress& address, std::span<uint8_t> blob,
                  const Deadline& deadline) {
  const std::string where = StrCat("tcp bootstrap at ", o.address);
  std::string last_error = "no attempt finished";
  while (true) {
    if (deadline.Expired()) {
      return Timeout(where, ": rank ", o.rank, " timed out after ", Seconds(deadline.seconds()),
                     " waiting for rank 0 (last attempt: ", last_error, ")");
    }
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
      return Internal(where, ": rank ", o.rank, ": socket() failed: ", ErrnoText(errno));
    }
    int err = 0;
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address.addr),
                  sizeof(address.addr)) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        err = 0;
        if (!WaitReady(fd.get(), POLLOUT, deadline, &err)) {
          last_error = "connect: no answer";
          continue;
        }
        if (err == 0) {
          socklen_t len = sizeof(err);
          ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
    }
    if (err != 0) {
      last_error = StrCat("connect: ", ErrnoText(err));
      if (!IsTransientConnectError(err)) {
        return Internal(where, ": rank ", o.rank, " cannot connect: ", ErrnoText(err));
      }
      SleepAtMost(kRetryMs, deadline);
      continue;
    }

    uint8_t hello[kMessageBytes];
    EncodeMessage(hello, kHelloMagic, uint32_t(o.rank), uint32_t(o.world_size), blob.size());
    IoOutcome io = SendAll(fd.get(), hello, sizeof(hello), deadline);
    if (!io.ok()) {
      last_error = StrCat("sending the hello: ", io.Describe());
      SleepAtMost(kRetryMs, deadline);
      continue;
    }
    uint8_t reply[kMessageBytes];
    io = RecvAll(fd.get(), reply, sizeof(reply), deadline);
    if (!io.ok()) {
      // Rank 0 drops connections it cannot use; try again while the deadline allows.
      last_error = StrCat("reading the reply: ", io.Describe());
      SleepAtMost(kRetryMs, deadline);
      continue;
    }
    if (std::memcmp(reply, kReplyMagic, 4) != 0) {
      return Internal(where, ": rank ", o.rank,
                      " got a reply that is not tpfuse's bootstrap protocol (is another program "
                      "listening on this port?)");
    }
    const uint32_t version = GetU32(reply + 4);
    const uint32_t status = GetU32(reply + 8);
    const int root_world = int(GetU32(reply + 12));
    const uint64_t root_blob = GetU64(reply + 16);
    if (version != kTcpVersion) {
      return InvalidArgument(where, ": rank 0 speaks protocol version ", version, ", rank ",
                             o.rank, " speaks ", kTcpVersion);
    }
    switch (status) {
      case kReplyOk: break;
      case kReplyWorldMismatch:
        return InvalidArgument(where, ": rank 0 has world size ", root_world, ", rank ", o.rank,
                               " has ", o.world_size);
      case kReplyBadRank:
        return InvalidArgument(where, ": rank 0 rejected rank ", o.rank, " (world size ",
                               root_world, ")");
      case kReplySizeMismatch:
        return InvalidArgument(where, ": rank 0 has a ", root_blob, "-byte blob, rank ", o.rank,
                               " expects ", blob.size(), " bytes");
      case kReplyBadVersion:
        return InvalidArgument(where, ": rank 0 rejected rank ", o.rank,
                               "'s protocol version ", kTcpVersion);
      default:
        return Internal(where, ": rank 0 replied with unknown status ", status);
    }
    if (root_blob != blob.size()) {
      return Internal(where, ": rank 0 announced a ", root_blob, "-byte blob, rank ", o.rank,
                      " expects ", blob.size(), " bytes");
    }
    io = RecvAll(fd.get(), blob.data(), blob.size(), deadline);
    if (!io.ok()) {
      last_error = StrCat("reading the blob: ", io.Describe());
      SleepAtMost(kRetryMs, deadline);
      continue;
    }
    return Status::Ok();
  }
}

}  // namespace

std::string_view BootstrapMethodName(BootstrapMethod method) {
  switch (method) {
    case BootstrapMethod::kFile: return "file";
    case BootstrapMethod::kTcp: return "tcp";
  }
  return "?";
}

StatusOr<BootstrapMethod> ParseBootstrapMethod(std::string_view name) {
  if (name == "file") return BootstrapMethod::kFile;
  if (name == "tcp") return BootstrapMethod::kTcp;
  return InvalidArgument("bootstrap method '", name, "' is not 'file' or 'tcp'");
}

Status BroadcastBlob(const BootstrapOptions& options, std::span<uint8_t> blob) {
  const std::string_view method = BootstrapMethodName(options.method);
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return InvalidArgument(method, " bootstrap: rank ", options.rank,
                           " is outside world size ", options.world_size);
  }
  if (!(options.timeout_seconds > 0) || !std::isfinite(options.timeout_seconds)) {
    return InvalidArgument(method, " bootstrap: timeout_seconds must be a positive number, got ",
                           options.timeout_seconds);
  }
  const Deadline deadline(options.timeout_seconds);
  switch (options.method) {
    case BootstrapMethod::kFile:
      if (options.address.empty()) {
        return InvalidArgument("file bootstrap: the address (a path every rank can see) is empty");
      }
      if (options.world_size == 1) return Status::Ok();
      return options.rank == 0 ? PublishFile(options, blob, deadline)
                               : ReceiveFile(options, blob, deadline);
    case BootstrapMethod::kTcp: {
      TPFUSE_ASSIGN_OR_RETURN(TcpAddress address, ParseTcpAddress(options.address));
      if (options.world_size == 1) return Status::Ok();
      return options.rank == 0 ? ServeTcp(options, address, blob, deadline)
                               : ConnectTcp(options, address, blob, deadline);
    }
  }
  return InvalidArgument("bootstrap: unknown method");
}

StatusOr<int> PickFreeLoopbackPort() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Internal("PickFreeLoopbackPort: socket() failed: ", ErrnoText(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Internal("PickFreeLoopbackPort: bind failed: ", ErrnoText(errno));
  }
  socklen_t len = sizeof(addr);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Internal("PickFreeLoopbackPort: getsockname failed: ", ErrnoText(errno));
  }
  return int(ntohs(addr.sin_port));
}

}  // namespace tpfuse
