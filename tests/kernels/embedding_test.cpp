#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/common/compare.h"
#include "tests/kernels/dense_test_util.h"

namespace s0 {
namespace {

using test::AllClose;
using test::dense::Normal;
using test::dense::Poisoned;

TEST(Embedding, GathersRows) {
  const int64_t vocab = 11, hidden = 7;
  const std::vector<double> table = Normal<double>(size_t(vocab * hidden), 1);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 5};
  std::vector<double> out = Poisoned<double>(ids.size() * hidden);
  EmbeddingForward(ids.data(), table.data(), out.data(), int64_t(ids.size()), vocab, hidden);
  std::vector<double> ref;
  for (int32_t id : ids) ref.insert(ref.end(), table.begin() + id * hidden, table.begin() + (id + 1) * hidden);
  EXPECT_TRUE(AllClose("out", out, ref, 0, 0));
}

TEST(EmbeddingDeathTest, RejectsIdsOutsideVocab) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::vector<float> table(12, 1.0f);
  std::vector<float> out(4);
  const int32_t too_big[] = {1, 4}, negative[] = {-1, 0};
  EXPECT_DEATH(EmbeddingForward(too_big, table.data(), out.data(), 2, 4, 3), "has id 4, vocab 4");
  EXPECT_DEATH(EmbeddingForward(negative, table.data(), out.data(), 2, 4, 3), "has id -1");
}

}  // namespace
}  // namespace s0
