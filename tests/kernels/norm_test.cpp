#include "kernels/norm.h"

#include <gtest/gtest.h>

#include <cmath>
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

constexpr double kEps = 1e-6;

TEST(RmsNorm, MatchesFormula) {
  // One row [3, 4]: mean square 12.5; weights used as 1 + w.
  const std::vector<double> x = {3, 4}, w = {0.0, -0.5};
  std::vector<double> y = Poisoned<double>(2);
  RmsNormForward(x.data(), w.data(), y.data(), 1, 2, kEps);
  const double inv = 1.0 / std::sqrt(12.5 + kEps);
  EXPECT_TRUE(AllClose("y", y, std::vector<double>{3 * inv, 4 * inv * 0.5}, 1e-15, 1e-15));
}

TEST(RmsNorm, FiniteDifferenceBackward) {
  const int64_t rows = 6, dim = 37;
  std::vector<double> x = Normal<double>(size_t(rows * dim), 1);
  for (int64_t i = 0; i < dim; ++i) x[size_t(i)] *= 1e-3;  // a row of small values, near eps
  const std::vector<double> w = Normal<double>(size_t(dim), 2, 0.1f);
  const std::vector<double> cot = Normal<double>(x.size(), 3);
  std::vector<double> dx = Poisoned<double>(x.size());
  RmsNormBackward(x.data(), w.data(), cot.data(), dx.data(), rows, dim, kEps);
  auto loss = [&] {
    std::vector<double> y(x.size());
    RmsNormForward(x.data(), w.data(), y.data(), rows, dim, kEps);
    return test::dense::Dot(cot, y);
  };
  EXPECT_TRUE(GradientMatches("dx", x, dx, loss, 80));
}

TEST(RmsNorm, AccumulateAndInPlace) {
  const int64_t rows = 5, dim = 19;
  const std::vector<double> x = Normal<double>(size_t(rows * dim), 4);
  const std::vector<double> w = Normal<double>(size_t(dim), 5, 0.1f);
  const std::vector<double> dy = Normal<double>(x.size(), 6);
  const std::vector<double> base = Normal<double>(x.size(), 7);
  std::vector<double> dx = Poisoned<double>(x.size());
  RmsNormBackward(x.data(), w.data(), dy.data(), dx.data(), rows, dim, kEps);
  std::vector<double> acc = base;
  RmsNormBackward(x.data(), w.data(), dy.data(), acc.data(), rows, dim, kEps,
                  OutputMode::kAccumulate);
  std::vector<double> want = base;
  for (size_t i = 0; i < want.size(); ++i) want[i] += dx[i];
  EXPECT_TRUE(AllClose("dx accumulated", acc, want, 1e-15, 1e-15));

  std::vector<double> in_place = dy;
  RmsNormBackward(x.data(), w.data(), in_place.data(), in_place.data(), rows, dim, kEps);
  EXPECT_TRUE(AllClose("dx in place", in_place, dx, 0, 0));
  std::vector<double> y = Poisoned<double>(x.size()), y_in_place = x;
  RmsNormForward(x.data(), w.data(), y.data(), rows, dim, kEps);
  RmsNormForward(y_in_place.data(), w.data(), y_in_place.data(), rows, dim, kEps);
  EXPECT_TRUE(AllClose("y in place", y_in_place, y, 0, 0));
}

TEST(RmsNorm, FloatAgreesWithDouble) {
  const int64_t rows = 24, dim = 300;  // q/k-norm-like rows, and more rows than one task
  const std::vector<float> x = Normal<float>(size_t(rows * dim), 8, 3.0f);
  const std::vector<float> w = Normal<float>(size_t(dim), 9, 0.1f);
  const std::vector<float> dy = Normal<float>(x.size(), 10);
  std::vector<float> y = Poisoned<float>(x.size()), dx = Poisoned<float>(x.size());
  std::vector<double> yd = Poisoned<double>(x.size()), dxd = Poisoned<double>(x.size());
  RmsNormForward(x.data(), w.data(), y.data(), rows, dim, kEps);
  RmsNormBackward(x.data(), w.data(), dy.data(), dx.data(), rows, dim, kEps);
  const std::vector<double> xd = Cast<double>(x), wd = Cast<double>(w), dyd = Cast<double>(dy);
  RmsNormForward(xd.data(), wd.data(), yd.data(), rows, dim, kEps);
  RmsNormBackward(xd.data(), wd.data(), dyd.data(), dxd.data(), rows, dim, kEps);
  EXPECT_TRUE(AllClose("y fp32 vs fp64", y, Cast<float>(yd), 1e-6, 1e-6));
  EXPECT_TRUE(AllClose("dx fp32 vs fp64", dx, Cast<float>(dxd), 1e-6, 1e-5));
}

}  // namespace
}  // namespace s0
