#include "kernels/activations.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/common/compare.h"
#include "tests/kernels/dense_test_util.h"

namespace s0 {
namespace {

using test::AllClose;
using test::dense::Cast;
using test::dense::Dot;
using test::dense::GradientMatches;
using test::dense::Poisoned;
using test::dense::Uniform;

constexpr int64_t kN = 257;

TEST(Activations, FiniteDifferenceSigmoidAndSilu) {
  std::vector<double> x = Uniform<double>(kN, 1, -8, 8);
  const std::vector<double> cot = Uniform<double>(kN, 2, -1, 1);
  std::vector<double> dx = Poisoned<double>(kN);
  SigmoidBackward(x.data(), cot.data(), dx.data(), kN);
  EXPECT_TRUE(GradientMatches("sigmoid dx", x, dx, [&] {
    std::vector<double> y(kN);
    SigmoidForward(x.data(), y.data(), kN);
    return Dot(cot, y);
  }));
  dx = Poisoned<double>(kN);
  SiluBackward(x.data(), cot.data(), dx.data(), kN);
  EXPECT_TRUE(GradientMatches("silu dx", x, dx, [&] {
    std::vector<double> y(kN);
    SiluForward(x.data(), y.data(), kN);
    return Dot(cot, y);
  }));
}

TEST(Activations, FiniteDifferenceSwiGlu) {
  std::vector<double> gate = Uniform<double>(kN, 3, -6, 6), up = Uniform<double>(kN, 4, -2, 2);
  const std::vector<double> cot = Uniform<double>(kN, 5, -1, 1);
  std::vector<double> dgate = Poisoned<double>(kN), dup = Poisoned<double>(kN);
  SwiGluBackward(gate.data(), up.data(), cot.data(), dgate.data(), dup.data(), kN);
  auto loss = [&] {
    std::vector<double> act(kN);
    SwiGluForward(gate.data(), up.data(), act.data(), kN);
    return Dot(cot, act);
  };
  EXPECT_TRUE(GradientMatches("dgate", gate, dgate, loss));
  EXPECT_TRUE(GradientMatches("dup", up, dup, loss));
}

TEST(Activations, KnownValues) {
  const std::vector<double> x = {0.0, 1.0, -2.0};
  std::vector<double> s = Poisoned<double>(3), si = Poisoned<double>(3);
  SigmoidForward(x.data(), s.data(), 3);
  SiluForward(x.data(), si.data(), 3);
  const double s1 = 1 / (1 + std::exp(-1.0)), s2 = 1 / (1 + std::exp(2.0));
  EXPECT_TRUE(AllClose("sigmoid", s, std::vector<double>{0.5, s1, s2}, 1e-16, 1e-15));
  EXPECT_TRUE(AllClose("silu", si, std::vector<double>{0.0, s1, -2 * s2}, 1e-16, 1e-15));
}

// exp(-x) overflows for very negative x: outputs and gradients stay finite (0, not NaN).
TEST(Activations, ExtremeInputsStayFinite) {
  const std::vector<float> x = {-1e4f, -1000.f, -104.f, -88.f, -20.f, 0.f, 20.f, 88.f, 1000.f, 1e4f};
  const int64_t n = int64_t(x.size());
  const std::vector<float> ones(x.size(), 1.0f);
  std::vector<float> s = Poisoned<float>(x.size()), si = Poisoned<float>(x.size());
  std::vector<float> ds = Poisoned<float>(x.size()), dsi = Poisoned<float>(x.size());
  std::vector<float> act = Poisoned<float>(x.size()), dg = Poisoned<float>(x.size());
  std::vector<float> du = Poisoned<float>(x.size());
  SigmoidForward(x.data(), s.data(), n);
  SiluForward(x.data(), si.data(), n);
  SigmoidBackward(x.data(), ones.data(), ds.data(), n);
  SiluBackward(x.data(), ones.data(), dsi.data(), n);
  SwiGluForward(x.data(), ones.data(), act.data(), n);
  SwiGluBackward(x.data(), ones.data(), ones.data(), dg.data(), du.data(), n);
  std::vector<float> s_ref, si_ref, ds_ref, dsi_ref;
  for (float v : x) {
    const double sd = 1 / (1 + std::exp(-double(v)));
    s_ref.push_back(float(sd));
    si_ref.push_back(float(v * sd));
    ds_ref.push_back(float(sd * (1 - sd)));
    dsi_ref.push_back(float(sd * (1 + v * (1 - sd))));
  }
  EXPECT_TRUE(AllClose("sigmoid", s, s_ref, 1e-30, 1e-6));
  EXPECT_TRUE(AllClose("silu", si, si_ref, 1e-30, 1e-6));
  // sigmoid(20) rounds to 1 in float, so its derivative there is 0 instead of 2e-9.
  EXPECT_TRUE(AllClose("sigmoid'", ds, ds_ref, 1e-8, 1e-5));
  EXPECT_TRUE(AllClose("silu'", dsi, dsi_ref, 1e-30, 1e-5));
  EXPECT_TRUE(AllClose("swiglu", act, si_ref, 1e-30, 1e-6));
  EXPECT_TRUE(AllClose("swiglu dgate", dg, dsi_ref, 1e-30, 1e-5));
  EXPECT_TRUE(AllClose("swiglu dup", du, si_ref, 1e-30, 1e-6));
}

TEST(Activations, FloatAgreesWithDouble) {
  const int64_t n = 40000;  // several ParallelFor ranges
  const std::vector<float> g = Uniform<float>(n, 6, -10, 10), u = Uniform<float>(n, 7, -3, 3);
  const std::vector<float> da = Uniform<float>(n, 8, -1, 1);
  std::vector<float> act = Poisoned<float>(n), dg = Poisoned<float>(n), du = Poisoned<float>(n);
  std::vector<double> actd = Poisoned<double>(n), dgd = Poisoned<double>(n);
  std::vector<double> dud = Poisoned<double>(n);
  SwiGluForward(g.data(), u.data(), act.data(), n);
  SwiGluBackward(g.data(), u.data(), da.data(), dg.data(), du.data(), n);
  const std::vector<double> gd = Cast<double>(g), ud = Cast<double>(u), dad = Cast<double>(da);
  SwiGluForward(gd.data(), ud.data(), actd.data(), n);
  SwiGluBackward(gd.data(), ud.data(), dad.data(), dgd.data(), dud.data(), n);
  EXPECT_TRUE(AllClose("act", act, Cast<float>(actd), 1e-6, 1e-6));
  EXPECT_TRUE(AllClose("dgate", dg, Cast<float>(dgd), 1e-6, 1e-6));
  EXPECT_TRUE(AllClose("dup", du, Cast<float>(dud), 1e-6, 1e-6));
}

}  // namespace
}  // namespace s0
