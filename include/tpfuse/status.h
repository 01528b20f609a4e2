// Errors are values: every fallible call returns a Status or a StatusOr<T>.
#pragma once

#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

namespace tpfuse {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // bad input: shapes, dtypes, attributes, syntax
  kNotFound,           // a named thing does not exist
  kUnimplemented,      // valid request that this backend / build cannot serve
  kFailedPrecondition, // the object is not in a state to do this (e.g. poisoned communicator)
  kOutOfRange,         // a size over a configured limit
  kTimeout,            // a bounded wait expired (dead or mismatched peer)
  kCudaError,
  kNcclError,
  kInternal,
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "<code name>: <message>", or "ok".
  std::string ToString() const;

  // Prefixes the message with context ("while parsing foo.tpg: ...").
  Status WithContext(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <class T>
class [[nodiscard]] StatusOr {
 public:
  // An OK status carries no value: it becomes an internal error that says so, not an error
  // with an empty message.
  StatusOr(Status status)  // NOLINT: implicit by design
      : state_(status.ok() ? Status(StatusCode::kInternal,
                                    "a StatusOr was made from an OK status, without a value")
                           : std::move(status)) {}
  StatusOr(T value) : state_(std::move(value)) {}         // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(state_); }
  // A reference: `const std::string& m = s.status().message();` stays valid while s lives.
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(state_);
  }
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<Status, T> state_;
};

// StrCat("a", 1, 'b') -> "a1b". Streams every argument.
template <class... Args>
std::string StrCat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <class... Args>
Status InvalidArgument(const Args&... args) {
  return Status(StatusCode::kInvalidArgument, StrCat(args...));
}
template <class... Args>
Status NotFound(const Args&... args) {
  return Status(StatusCode::kNotFound, StrCat(args...));
}
template <class... Args>
Status Unimplemented(const Args&... args) {
  return Status(StatusCode::kUnimplemented, StrCat(args...));
}
template <class... Args>
Status FailedPrecondition(const Args&... args) {
  return Status(StatusCode::kFailedPrecondition, StrCat(args...));
}
template <class... Args>
Status OutOfRange(const Args&... args) {
  return Status(StatusCode::kOutOfRange, StrCat(args...));
}
template <class... Args>
Status Internal(const Args&... args) {
  return Status(StatusCode::kInternal, StrCat(args...));
}

}  // namespace tpfuse

#define TPFUSE_CONCAT_INNER_(a, b) a##b
#define TPFUSE_CONCAT_(a, b) TPFUSE_CONCAT_INNER_(a, b)

#define TPFUSE_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::tpfuse::Status tpfuse_status_ = (expr);        \
    if (!tpfuse_status_.ok()) return tpfuse_status_; \
  } while (0)

// TPFUSE_ASSIGN_OR_RETURN(auto x, MakeX());
#define TPFUSE_ASSIGN_OR_RETURN(lhs, expr) \
  TPFUSE_ASSIGN_OR_RETURN_IMPL_(TPFUSE_CONCAT_(tpfuse_statusor_, __LINE__), lhs, expr)
#define TPFUSE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
