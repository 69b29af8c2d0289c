// Status and Result<T>: the recoverable-error tier (files, protocol, config, peers).
// Programmer and device errors go through the CHECK macros in kernels/check.h instead.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace s0 {

enum class Code { kOk, kInvalidArgument, kNotFound, kCorruption, kIOError, kUnavailable, kInternal };

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status IOError(std::string m) { return {Code::kIOError, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // "Corruption: model.safetensors: tensor 'x' ...".
  std::string ToString() const;
  // Prefixes context to the message, keeping the code: "reading config.json: <msg>".
  Status Context(const std::string& what) const {
    return ok() ? *this : Status(code_, what + ": " + msg_);
  }

 private:
  Status(Code c, std::string m) : code_(c), msg_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string msg_;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}                // NOLINT: implicit by design
  Result(Status s) : v_(std::move(s)) {}           // NOLINT: must not be ok()
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace s0

// Returns from the enclosing function when the expression yields a non-ok Status.
#define S0_RETURN_IF_ERROR(expr)              \
  do {                                        \
    ::s0::Status s0_status_ = (expr);         \
    if (!s0_status_.ok()) return s0_status_;  \
  } while (0)

#define S0_CONCAT_INNER(a, b) a##b
#define S0_CONCAT(a, b) S0_CONCAT_INNER(a, b)
// S0_ASSIGN_OR_RETURN(auto x, MakeX()); binds x or returns the error.
#define S0_ASSIGN_OR_RETURN(lhs, expr) S0_ASSIGN_OR_RETURN_IMPL(S0_CONCAT(s0_result_, __LINE__), lhs, expr)
#define S0_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
