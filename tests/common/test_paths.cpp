#include "tests/common/test_paths.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

namespace s0::test {

std::string SourcePath(const std::string& rel) { return std::string(S0_SOURCE_DIR) + "/" + rel; }

std::string SharedPath(const std::string& rel) {
  const char* env = std::getenv("S0_SHARED_DIR");
  std::string base = env ? env : std::string(S0_SOURCE_DIR) + "/../shared";
  return base + "/" + rel;
}

std::string TempDir(const std::string& name) {
  namespace fs = std::filesystem;
  // Under the running test's own directory: ctest runs tests in parallel processes, and two
  // tests asking for the same name must not share (and delete) each other's files.
  fs::path p = fs::path(S0_BINARY_DIR) / "test_tmp";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
    p /= std::string(info->test_suite_name()) + "." + info->name();
  }
  p /= name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> Qwen35FixtureNames() {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(SourcePath("tests/fixtures/qwen35"))) {
    if (fs::exists(e.path() / "ref.safetensors")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace s0::test
