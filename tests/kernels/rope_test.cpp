#include "kernels/rope.h"

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
using test::dense::Normal;
using test::dense::Poisoned;

// cos and sin of Qwen3.5's rotary angles (rot_dim 64, theta 1e7) at positions 4000 and 131071,
// from PyTorch 2.11 on the CPU following Hugging Face's Qwen3_5TextRotaryEmbedding: inv_freq =
// 1.0 / (theta ** (arange(0, 64, 2).float() / 64)), freqs = inv_freq.float() @ pos.float(), then
// freqs.cos() and freqs.sin(), all float32 (CUDA's values differ from these by at most 1 ulp).
const float kTorchCos4000[32] = {
    -0x1.75bb9cp-1f, -0x1.11221p-2f, -0x1.fab27p-1f, -0x1.fdbe3p-1f,
    0x1.93ca48p-1f, -0x1.459e82p-2f, 0x1.fffb84p-1f, -0x1.9b7facp-4f,
    -0x1.b91b9ap-2f, 0x1.1580cep-1f, 0x1.54c6dap-1f, -0x1.fff7c6p-1f,
    -0x1.ff0e78p-1f, 0x1.b43046p-1f, -0x1.e5a47ep-1f, -0x1.feefc6p-2f,
    0x1.345d5ap-2f, 0x1.71912ep-1f, 0x1.ca57ep-1f, 0x1.ec2ed8p-1f,
    0x1.f8bbc2p-1f, 0x1.fd57aap-1f, 0x1.ff076cp-1f, 0x1.ffa536p-1f,
    0x1.ffded8p-1f, 0x1.fff3e4p-1f, 0x1.fffb94p-1f, 0x1.fffe62p-1f,
    0x1.ffff6ap-1f, 0x1.ffffcap-1f, 0x1.ffffecp-1f, 0x1.fffff8p-1f,
};
const float kTorchSin4000[32] = {
    -0x1.5df436p-1f, -0x1.ed736p-1f, 0x1.25ff24p-3f, 0x1.802e36p-4f,
    -0x1.3acc2cp-1f, 0x1.e56cb2p-1f, 0x1.0f18aep-7f, -0x1.fd68ep-1f,
    0x1.ce0f82p-1f, -0x1.ae463cp-1f, 0x1.7e1e8ep-1f, 0x1.6f285ep-7f,
    -0x1.f117d4p-5f, -0x1.0c1c6ep-1f, -0x1.445114p-2f, 0x1.bbb628p-1f,
    0x1.e83bbep-1f, 0x1.6259aep-1f, 0x1.c85b6cp-2f, 0x1.1a2252p-2f,
    0x1.57d166p-3f, 0x1.a0ca5p-4f, 0x1.f848b8p-5f, 0x1.30dc04p-5f,
    0x1.708144p-6f, 0x1.bd657p-7f, 0x1.0d2816p-7f, 0x1.454d94p-8f,
    0x1.8928f4p-9f, 0x1.db2bb4p-10f, 0x1.1f24e2p-10f, 0x1.5b0a4ep-11f,
};
const float kTorchCos131071[32] = {
    -0x1.a2cebcp-1f, 0x1.fd765p-1f, 0x1.df4efap-8f, -0x1.72da0ap-1f,
    0x1.5e0d06p-2f, 0x1.f3d5ap-1f, 0x1.1b591cp-1f, 0x1.5f9fb2p-1f,
    0x1.efae58p-1f, 0x1.ef73d6p-2f, -0x1.f3992ap-1f, 0x1.48b13ep-1f,
    -0x1.f5dc58p-1f, 0x1.919588p-1f, 0x1.d67c32p-1f, 0x1.badd58p-1f,
    -0x1.a45dc2p-1f, 0x1.fe1f18p-1f, -0x1.ae7762p-1f, -0x1.ec4ee8p-1f,
    0x1.748926p-1f, -0x1.f5f296p-1f, -0x1.bb30e4p-2f, 0x1.602c08p-2f,
    0x1.7b1b66p-1f, 0x1.ce0c0ap-1f, 0x1.ed90cap-1f, 0x1.f93e0ap-1f,
    0x1.fd876p-1f, 0x1.ff18dep-1f, 0x1.ffab94p-1f, 0x1.ffe12cp-1f,
};
const float kTorchSin131071[32] = {
    -0x1.268614p-1f, -0x1.975134p-4f, -0x1.fffc7ep-1f, 0x1.610174p-1f,
    -0x1.e127acp-1f, 0x1.bbcaep-3f, -0x1.aa72aep-1f, -0x1.742986p-1f,
    -0x1.00788cp-2f, 0x1.c0147cp-1f, 0x1.c00716p-3f, -0x1.889002p-1f,
    0x1.958ec4p-3f, -0x1.3d9b64p-1f, 0x1.93eb62p-2f, -0x1.00ef06p-1f,
    -0x1.244b76p-1f, -0x1.5e8d5ap-4f, 0x1.15348ap-1f, 0x1.19423ap-2f,
    -0x1.5f3a6p-1f, -0x1.93d57ap-3f, 0x1.cd8fdcp-1f, 0x1.e0c492p-1f,
    0x1.581ffp-1f, 0x1.b92a24p-2f, 0x1.104d2ep-2f, 0x1.4ba472p-3f,
    0x1.91f206p-4f, 0x1.e6490cp-5f, 0x1.25f85ep-5f, 0x1.6356b4p-6f,
};

std::vector<float> Table(int64_t pos, bool cos) {
  std::vector<float> c = Poisoned<float>(32), s = Poisoned<float>(32);
  RopeTables(1, pos, 64, 1e7, c.data(), s.data());
  return cos ? c : s;
}

// The angle is rounded to float32 before cos/sin, as in Hugging Face, even for an fp64 model.
TEST(Rope, TablesMatchTorchFloat32) {
  constexpr double kUlps = 2.4e-7;  // 2 ulp near 1; libm and torch differ in the last bit
  EXPECT_TRUE(AllClose("cos(4000)", Table(4000, true), std::vector<float>(kTorchCos4000, kTorchCos4000 + 32), kUlps, 0));
  EXPECT_TRUE(AllClose("sin(4000)", Table(4000, false), std::vector<float>(kTorchSin4000, kTorchSin4000 + 32), kUlps, 0));
  EXPECT_TRUE(AllClose("cos(131071)", Table(131071, true), std::vector<float>(kTorchCos131071, kTorchCos131071 + 32), kUlps, 0));
  EXPECT_TRUE(AllClose("sin(131071)", Table(131071, false), std::vector<float>(kTorchSin131071, kTorchSin131071 + 32), kUlps, 0));
  // The reference discriminates: angles computed in double miss it by far more than the budget.
  double worst = 0;
  for (int i = 0; i < 32; ++i) {
    worst = std::max(worst, std::fabs(std::cos(4000.0 * std::pow(1e7, -i / 32.0)) - kTorchCos4000[i]));
  }
  EXPECT_GT(worst, 1e-5);
}

TEST(Rope, OffsetSelectsTableRows) {
  const int64_t rot = 10;
  std::vector<float> c_all(13 * 5), s_all(13 * 5), c = Poisoned<float>(3 * 5), s = Poisoned<float>(3 * 5);
  RopeTables(13, 0, rot, 1e4, c_all.data(), s_all.data());
  RopeTables(3, 10, rot, 1e4, c.data(), s.data());
  EXPECT_TRUE(AllClose("cos", c, std::vector<float>(c_all.begin() + 50, c_all.end()), 0, 0));
  EXPECT_TRUE(AllClose("sin", s, std::vector<float>(s_all.begin() + 50, s_all.end()), 0, 0));
}

struct RopeCase {
  int64_t t = 7, heads = 3, head_dim = 10, rot = 6, offset = 5;
  std::vector<float> cos, sin;
  RopeCase() : cos(size_t(t * rot / 2)), sin(cos.size()) {
    RopeTables(t, offset, rot, 1e4, cos.data(), sin.data());
  }
  size_t size() const { return size_t(t * heads * head_dim); }
};

// The fp64 op rotates with the float32 table values, and only the first rot_dim dims.
TEST(Rope, ForwardFormulaAndPassThrough) {
  RopeCase r;
  const std::vector<double> x = Normal<double>(r.size(), 1);
  std::vector<double> y = Poisoned<double>(r.size()), ref(r.size());
  RopeForward(x.data(), y.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
  const int64_t half = r.rot / 2;
  for (int64_t t = 0; t < r.t; ++t) {
    for (int64_t h = 0; h < r.heads; ++h) {
      const size_t o = size_t((t * r.heads + h) * r.head_dim);
      for (int64_t i = 0; i < r.head_dim; ++i) ref[o + size_t(i)] = x[o + size_t(i)];
      for (int64_t i = 0; i < half; ++i) {
        const double c = r.cos[size_t(t * half + i)], s = r.sin[size_t(t * half + i)];
        const double a = x[o + size_t(i)], b = x[o + size_t(i + half)];
        ref[o + size_t(i)] = a * c - b * s;
        ref[o + size_t(i + half)] = b * c + a * s;
      }
    }
  }
  EXPECT_TRUE(AllClose("y", y, ref, 0, 0));
  std::vector<double> in_place = x;
  RopeForward(in_place.data(), in_place.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
  EXPECT_TRUE(AllClose("y in place", in_place, y, 0, 0));
}

TEST(Rope, FiniteDifferenceBackwardAndInverse) {
  RopeCase r;
  std::vector<double> x = Normal<double>(r.size(), 2);
  const std::vector<double> cot = Normal<double>(r.size(), 3);
  std::vector<double> dx = Poisoned<double>(r.size());
  RopeBackward(cot.data(), dx.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
  EXPECT_TRUE(GradientMatches("dx", x, dx, [&] {
    std::vector<double> y(r.size());
    RopeForward(x.data(), y.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
    return Dot(cot, y);
  }, 80));
  // A rotation's adjoint is its inverse (up to cos^2 + sin^2 = 1 in float32 tables).
  std::vector<double> y(r.size()), back = Poisoned<double>(r.size());
  RopeForward(x.data(), y.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
  RopeBackward(y.data(), back.data(), r.t, r.heads, r.head_dim, r.rot, r.cos.data(), r.sin.data());
  EXPECT_TRUE(AllClose("inverse", back, x, 1e-6, 1e-6));
}

TEST(Rope, FloatAgreesWithDouble) {
  const int64_t t = 50, heads = 4, head_dim = 256, rot = 64;
  std::vector<float> c(size_t(t * rot / 2)), s(c.size());
  RopeTables(t, 3000, rot, 1e7, c.data(), s.data());
  const std::vector<float> x = Normal<float>(size_t(t * heads * head_dim), 4);
  std::vector<float> y = Poisoned<float>(x.size()), dx = Poisoned<float>(x.size());
  std::vector<double> yd = Poisoned<double>(x.size()), dxd = Poisoned<double>(x.size());
  const std::vector<double> xd = Cast<double>(x);
  RopeForward(x.data(), y.data(), t, heads, head_dim, rot, c.data(), s.data());
  RopeForward(xd.data(), yd.data(), t, heads, head_dim, rot, c.data(), s.data());
  RopeBackward(x.data(), dx.data(), t, heads, head_dim, rot, c.data(), s.data());
  RopeBackward(xd.data(), dxd.data(), t, heads, head_dim, rot, c.data(), s.data());
  EXPECT_TRUE(AllClose("y", y, Cast<float>(yd), 1e-6, 1e-6));
  EXPECT_TRUE(AllClose("dx", dx, Cast<float>(dxd), 1e-6, 1e-6));
}

}  // namespace
}  // namespace s0
