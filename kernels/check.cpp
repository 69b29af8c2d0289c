#include "kernels/check.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace s0 {

static std::atomic<int> g_check_rank{-1};

void SetCheckRank(int rank) { g_check_rank = rank; }

void CheckFailed(const char* what, const char* stmt, const std::string& detail, const char* file,
                 int line) {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::fprintf(stderr, "[s0 fatal] %s failed: %s%s%s at %s:%d (host %s, rank %d)\n", what, stmt,
               detail.empty() ? "" : ": ", detail.c_str(), file, line, host, g_check_rank.load());
  std::fflush(stderr);
  std::abort();
}

}  // namespace s0
