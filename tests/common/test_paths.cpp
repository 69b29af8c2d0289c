#include "tests/common/test_paths.h"

#include <cstdlib>
#include <filesystem>

namespace s0::test {

std::string SourcePath(const std::string& rel) { return std::string(S0_SOURCE_DIR) + "/" + rel; }

std::string SharedPath(const std::string& rel) {
  const char* env = std::getenv("S0_SHARED_DIR");
  std::string base = env ? env : std::string(S0_SOURCE_DIR) + "/../shared";
  return base + "/" + rel;
}

std::string TempDir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(S0_BINARY_DIR) / "test_tmp" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace s0::test
