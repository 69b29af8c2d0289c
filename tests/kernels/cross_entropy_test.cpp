#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tests/common/compare.h"
#include "tests/kernels/dense_test_util.h"

namespace s0 {
namespace {

using test::AllClose;
using test::dense::Cast;
using test::dense::GradientMatches;
using test::dense::Normal;
using test::dense::Poisoned;

struct Case {
  int64_t t, h, v;
  std::vector<int32_t> ids;
};

Case MakeCase(int64_t t, int64_t h, int64_t v, uint64_t seed) {
  Case c{t, h, v, {}};
  std::vector<float> u = test::RandomUniform(size_t(t), seed, 0.0f, float(v));
  for (float x : u) c.ids.push_back(std::min<int32_t>(int32_t(x), int32_t(v - 1)));
  return c;
}

// Hugging Face's loss by the definition: full logits, log-softmax, mean over the positions whose
// label (the next token) is not a prompt token.
double NaiveLoss(const std::vector<double>& hidden, const std::vector<double>& lm_head,
                 const Case& c, int64_t prompt_len) {
  double total = 0;
  int64_t scored = 0;
  for (int64_t t = 0; t + 1 < c.t; ++t) {
    if (t + 1 < prompt_len) continue;  // label -100
    std::vector<double> logits(size_t(c.v));
    for (int64_t j = 0; j < c.v; ++j) {
      for (int64_t i = 0; i < c.h; ++i) logits[size_t(j)] += hidden[size_t(t * c.h + i)] * lm_head[size_t(j * c.h + i)];
    }
    double mx = -INFINITY, sum = 0;
    for (double l : logits) mx = std::max(mx, l);
    for (double l : logits) sum += std::exp(l - mx);
    total += mx + std::log(sum) - logits[size_t(c.ids[size_t(t + 1)])];
    ++scored;
  }
  return total / double(scored);
}

TEST(CrossEntropy, MatchesDefinitionAndFiniteDifferences) {
  const Case c = MakeCase(9, 12, 37, 1);
  std::vector<double> hidden = Normal<double>(size_t(c.t * c.h), 2);
  const std::vector<double> lm_head = Normal<double>(size_t(c.v * c.h), 3, 0.5f);
  for (int64_t prompt_len : {0, 1, 3, 8}) {
    SCOPED_TRACE(testing::Message() << "prompt_len " << prompt_len);
    const double scale = 0.25;
    std::vector<double> dh = Poisoned<double>(hidden.size());
    const double loss = CompletionCrossEntropy(hidden.data(), lm_head.data(), c.ids.data(), c.t, c.h,
                                               c.v, prompt_len, scale, dh.data(), 2);
    EXPECT_NEAR(loss, NaiveLoss(hidden, lm_head, c, prompt_len), 1e-13);
    // Rows whose position is not scored get exactly zero.
    const int64_t first = std::max<int64_t>(prompt_len - 1, 0);
    for (int64_t t = 0; t < c.t; ++t) {
      if (t >= first && t < c.t - 1) continue;
      for (int64_t i = 0; i < c.h; ++i) EXPECT_EQ(dh[size_t(t * c.h + i)], 0.0) << "row " << t;
    }
    EXPECT_TRUE(GradientMatches("d_hidden", hidden, dh, [&] {
      return scale * NaiveLoss(hidden, lm_head, c, prompt_len);
    }, 60));
  }
}

// The chunk size bounds memory only: gradients are bitwise the same, losses equal up to the
// order of a sum.
TEST(CrossEntropy, IndependentOfChunkSize) {
  const Case c = MakeCase(40, 24, 300, 4);
  const std::vector<float> hidden = Normal<float>(size_t(c.t * c.h), 5);
  const std::vector<float> lm_head = Normal<float>(size_t(c.v * c.h), 6);
  std::vector<std::vector<float>> grads;
  std::vector<double> losses;
  for (int64_t chunk : {1, 7, 64}) {
    grads.push_back(Poisoned<float>(hidden.size()));
    losses.push_back(CompletionCrossEntropy(hidden.data(), lm_head.data(), c.ids.data(), c.t, c.h,
                                            c.v, 5, 1.0, grads.back().data(), chunk));
  }
  for (size_t i = 1; i < grads.size(); ++i) {
    EXPECT_EQ(0, std::memcmp(grads[0].data(), grads[i].data(), grads[0].size() * sizeof(float)));
    EXPECT_NEAR(losses[0], losses[i], 1e-12 * losses[0]);
  }
  // Without d_hidden the loss is the same.
  EXPECT_NEAR(losses[0], CompletionCrossEntropy(hidden.data(), lm_head.data(), c.ids.data(), c.t,
                                                c.h, c.v, 5, 1.0, static_cast<float*>(nullptr)),
              1e-12 * losses[0]);
}

// Logits in the hundreds: the log-sum-exp must not overflow; float agrees with double.
TEST(CrossEntropy, LargeLogitsFloatAgreesWithDouble) {
  const Case c = MakeCase(33, 64, 500, 7);
  const std::vector<float> hidden = Normal<float>(size_t(c.t * c.h), 8, 4.0f);
  const std::vector<float> lm_head = Normal<float>(size_t(c.v * c.h), 9, 4.0f);
  std::vector<float> dh = Poisoned<float>(hidden.size());
  std::vector<double> dhd = Poisoned<double>(hidden.size());
  const double loss = CompletionCrossEntropy(hidden.data(), lm_head.data(), c.ids.data(), c.t, c.h,
                                             c.v, 10, 1.0, dh.data());
  const std::vector<double> hd = Cast<double>(hidden), wd = Cast<double>(lm_head);
  const double loss_d = CompletionCrossEntropy(hd.data(), wd.data(), c.ids.data(), c.t, c.h, c.v,
                                               10, 1.0, dhd.data());
  ASSERT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss_d, 10.0);  // the logits really are large
  EXPECT_NEAR(loss, loss_d, 1e-5 * loss_d);
  EXPECT_NEAR(loss_d, NaiveLoss(hd, wd, c, 10), 1e-12 * loss_d);
  EXPECT_TRUE(AllClose("d_hidden fp32 vs fp64", dh, Cast<float>(dhd), 1e-5, 1e-3));
}

TEST(CrossEntropyDeathTest, NeedsAScoredPosition) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Case c = MakeCase(4, 2, 5, 10);
  const std::vector<float> hidden(8, 1.0f), lm_head(10, 1.0f);
  EXPECT_DEATH(CompletionCrossEntropy(hidden.data(), lm_head.data(), c.ids.data(), c.t, c.h, c.v,
                                      4, 1.0, static_cast<float*>(nullptr)),
               "no completion token");
}

}  // namespace
}  // namespace s0
