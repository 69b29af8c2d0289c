// Where tests find the repository's files and the shared data folder.
#pragma once

#include <string>
#include <vector>

namespace s0::test {

// Path of a file in the repository: SourcePath("tests/fixtures/x").
std::string SourcePath(const std::string& rel);
// ../shared beside the checkout (or $S0_SHARED_DIR): SharedPath("data/humaneval/...").
std::string SharedPath(const std::string& rel);
// A fresh empty directory for this test (build tree, under the running test's name), removed and
// recreated each call.
std::string TempDir(const std::string& name);
// The whole file's bytes; empty when it cannot be read (a test then fails on its contents).
std::string ReadFile(const std::string& path);
// The committed Qwen3.5 fixtures (tests/fixtures/qwen35/NAME with a ref.safetensors), sorted.
std::vector<std::string> Qwen35FixtureNames();

}  // namespace s0::test
