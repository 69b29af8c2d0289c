// `s0 grad` on every committed Hugging Face fixture (tests/fixtures/qwen35/): the file it writes
// holds the loss (to 1e-5 relative) and dS0 per DeltaNet layer (to 1e-4 relative L2 error).
#include <gtest/gtest.h>

#include <cstdlib>

#include "checkpoints/safetensors.h"
#include "tests/common/compare.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

TEST(GradCommand, MatchesHuggingFaceFixtures) {
  ASSERT_GE(test::Qwen35FixtureNames().size(), 4u);
  for (const std::string& name : test::Qwen35FixtureNames()) {
    SCOPED_TRACE(name);
    const std::string dir = test::SourcePath("tests/fixtures/qwen35/" + name);
    const std::string out = test::TempDir("grad_cli_" + name) + "/grad.safetensors";
    const std::string cmd = std::string(S0_BINARY_DIR) + "/daemon/s0 grad --model " + dir +
                            "/model --data " + dir + "/data.jsonl --states " + dir +
                            "/states --out " + out + " 2>/dev/null >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    auto got = SafetensorsFile::Open(out);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto ref = SafetensorsFile::Open(dir + "/ref.safetensors");
    ASSERT_TRUE(ref.ok());
    for (const std::string& t : ref->Names()) {
      if (t != "loss" && t.rfind("grad.", 0) != 0) continue;
      auto g = got->Get(t);
      ASSERT_TRUE(g.ok()) << g.status().ToString();
      EXPECT_EQ(g->dtype, DType::kF32);
      std::vector<double> gv = *ToFloat64(*g), rv = *ToFloat64(*ref->Get(t));
      const double tol = t == "loss" ? 1e-5 : 1e-4;
      EXPECT_TRUE(test::RelNormClose(t, std::span<const double>(gv), std::span<const double>(rv), tol));
    }
  }
}

}  // namespace
}  // namespace s0
