// The fatal-error tier: programmer errors and device/library failures. Prints the failing
// statement, file:line, host and (when set) the MPI rank, then aborts. Recoverable errors use
// Status (kernels/status.h) instead.
#pragma once

#include <string>

namespace s0 {

// Set once by the process that knows its rank (the daemon); -1 means "not an MPI process".
void SetCheckRank(int rank);
[[noreturn]] void CheckFailed(const char* what, const char* stmt, const std::string& detail,
                              const char* file, int line);

}  // namespace s0

#define S0_CHECK(cond)                                                     \
  do {                                                                     \
    if (!(cond)) ::s0::CheckFailed("CHECK", #cond, "", __FILE__, __LINE__); \
  } while (0)

#define S0_CHECK_MSG(cond, msg)                                               \
  do {                                                                        \
    if (!(cond)) ::s0::CheckFailed("CHECK", #cond, (msg), __FILE__, __LINE__); \
  } while (0)
