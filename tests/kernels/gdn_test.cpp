// The Gated DeltaNet element-wise and normalisation ops (conv + SiLU, L2 norm, gates, gated
// RMSNorm): forward against direct formulas and known values, backward against central finite
// differences in double, float against double, and the whole layer chained (conv -> split ->
// L2 norm -> gates -> chunked delta rule -> gated RMSNorm) against finite differences of its
// raw inputs and of S0.
#include "kernels/gdn.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kernels/gated_delta_rule.h"
#include "tests/common/compare.h"

namespace s0 {
namespace {

using test::AllClose;

std::vector<double> Normal(size_t n, uint64_t seed, double stddev = 1.0, double mean = 0.0) {
  std::vector<float> f = test::RandomNormal(n, seed, float(stddev), float(mean));
  return std::vector<double>(f.begin(), f.end());
}

std::vector<double> Uniform(size_t n, uint64_t seed, double lo, double hi) {
  std::vector<float> f = test::RandomUniform(n, seed, float(lo), float(hi));
  return std::vector<double>(f.begin(), f.end());
}

std::vector<float> ToFloat(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

template <typename Real>
std::vector<Real> Poisoned(size_t n) {
  return std::vector<Real>(n, std::numeric_limits<Real>::quiet_NaN());
}

double Silu(double x) { return x / (1 + std::exp(-x)); }

double MaxAbs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::fabs(e));
  return m;
}

// Central differences (step `step`) of loss() for every element of x against grad. Each
// element's error is measured against max(|analytic|, 1e-3 * max|grad|). Returns the largest
// such relative error.
double CheckGradient(const std::string& name, std::vector<double>& x,
                     const std::vector<double>& grad, const std::function<double()>& loss,
                     double tol, double step = 1e-5) {
  const double floor = 1e-3 * MaxAbs(grad);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + step;
    const double up = loss();
    x[i] = x0 - step;
    const double down = loss();
    x[i] = x0;
    const double fd = (up - down) / (2 * step);
    const double err = std::fabs(fd - grad[i]) / std::max({std::fabs(grad[i]), floor, 1e-300});
    worst = std::max(worst, err);
    EXPECT_LE(err, tol) << name << "[" << i << "]: finite difference " << fd << ", analytic "
                        << grad[i];
  }
  return worst;
}

double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

constexpr double kFdTol = 1e-6;
constexpr double kFloatTol = 2e-6;

// Float run of an op against the double run: atol relative to the tensor's scale.
::testing::AssertionResult FloatClose(const std::string& name, const std::vector<float>& got,
                                      const std::vector<double>& ref) {
  const std::vector<double> got_d(got.begin(), got.end());
  return AllClose(name, got_d, ref, kFloatTol * MaxAbs(ref), kFloatTol);
}

// ---------------------------------------------------------------------------------------------

TEST(GdnConv, ImpulseShowsTapOrder) {
  // A unit impulse at t = 0: pre-activation at t is w[c][K-1-t], so w[c][K-1] is the current tap.
  const int64_t seq = 6, ch = 3, ksize = 4;
  std::vector<double> x(seq * ch, 0.0), w = Normal(ch * ksize, 1);
  for (int64_t c = 0; c < ch; ++c) x[c] = 1;
  std::vector<double> out = Poisoned<double>(x.size());
  GdnConvSiluForward(x.data(), w.data(), seq, ch, ksize, out.data());
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t c = 0; c < ch; ++c) {
      const double pre = t < ksize ? w[c * ksize + (ksize - 1 - t)] : 0.0;
      EXPECT_NEAR(out[t * ch + c], Silu(pre), 1e-15) << "t " << t << " c " << c;
    }
  }
}

TEST(GdnConv, ForwardMatchesDirectSum) {
  for (int64_t seq : {2, 11}) {  // shorter and longer than the kernel
    const int64_t ch = 7, ksize = 4;
    const std::vector<double> x = Normal(seq * ch, 2), w = Normal(ch * ksize, 3, 0.5);
    std::vector<double> out = Poisoned<double>(x.size()), ref(x.size());
    GdnConvSiluForward(x.data(), w.data(), seq, ch, ksize, out.data());
    for (int64_t t = 0; t < seq; ++t) {
      for (int64_t c = 0; c < ch; ++c) {
        double pre = 0;
        for (int64_t j = 0; j < ksize; ++j) {
          const int64_t src = t - (ksize - 1) + j;
          if (src >= 0) pre += w[c * ksize + j] * x[src * ch + c];
        }
        ref[t * ch + c] = Silu(pre);
      }
    }
    EXPECT_TRUE(AllClose("conv out", std::span<const double>(out), ref, 1e-15, 1e-14));
    std::vector<float> out_f = Poisoned<float>(x.size());
    const std::vector<float> x_f = ToFloat(x), w_f = ToFloat(w);
    GdnConvSiluForward(x_f.data(), w_f.data(), seq, ch, ksize, out_f.data());
    EXPECT_TRUE(FloatClose("conv out float", out_f, ref));
  }
}

TEST(GdnConv, BackwardMatchesFiniteDifferences) {
  for (int64_t seq : {2, 11}) {
    const int64_t ch = 5, ksize = 4;
    std::vector<double> x = Normal(seq * ch, 4), w = Normal(ch * ksize, 5, 0.7);
    const std::vector<double> dout = Normal(seq * ch, 6);
    std::vector<double> dx = Poisoned<double>(x.size()), out(x.size());
    GdnConvSiluBackward(x.data(), w.data(), dout.data(), seq, ch, ksize, dx.data());
    auto loss = [&] {
      GdnConvSiluForward(x.data(), w.data(), seq, ch, ksize, out.data());
      return Dot(out, dout);
    };
    CheckGradient("conv dx", x, dx, loss, kFdTol);
    std::vector<float> dx_f = Poisoned<float>(x.size());
    const std::vector<float> x_f = ToFloat(x), w_f = ToFloat(w), dout_f = ToFloat(dout);
    GdnConvSiluBackward(x_f.data(), w_f.data(), dout_f.data(), seq, ch, ksize, dx_f.data());
    EXPECT_TRUE(FloatClose("conv dx float", dx_f, dx));
  }
}

// ---------------------------------------------------------------------------------------------

TEST(GdnL2Norm, ForwardKnownValues) {
  // eps goes on the sum of squares; a zero row stays zero.
  const std::vector<double> x = {3, 4, 0, 0, 1e-4, 0};
  std::vector<double> y = Poisoned<double>(x.size());
  GdnL2NormForward(x.data(), 3, 2, y.data());
  const double r0 = 1 / std::sqrt(25 + 1e-6), r2 = 1 / std::sqrt(1e-8 + 1e-6);
  const std::vector<double> ref = {3 * r0, 4 * r0, 0, 0, 1e-4 * r2, 0};
  EXPECT_TRUE(AllClose("l2norm", std::span<const double>(y), ref, 1e-16, 1e-15));
}

TEST(GdnL2Norm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 6, dim = 8;
  std::vector<double> x = Normal(rows * dim, 7);
  x[0 * dim + 3] = 1e-4;  // include a row of small norm, where eps matters
  for (int64_t i = 0; i < dim; ++i) x[5 * dim + i] *= 1e-3;
  const std::vector<double> dy = Normal(rows * dim, 8);
  std::vector<double> dx = Poisoned<double>(x.size()), y(x.size());
  GdnL2NormBackward(x.data(), dy.data(), rows, dim, dx.data());
  auto loss = [&] {
    GdnL2NormForward(x.data(), rows, dim, y.data());
    return Dot(y, dy);
  };
  CheckGradient("l2norm dx", x, dx, loss, kFdTol, 1e-8);  // small step for the 1e-3 row

  std::vector<double> y_d(x.size());
  GdnL2NormForward(x.data(), rows, dim, y_d.data());
  const std::vector<float> x_f = ToFloat(x), dy_f = ToFloat(dy);
  std::vector<float> y_f = Poisoned<float>(x.size()), dx_f = Poisoned<float>(x.size());
  GdnL2NormForward(x_f.data(), rows, dim, y_f.data());
  GdnL2NormBackward(x_f.data(), dy_f.data(), rows, dim, dx_f.data());
  EXPECT_TRUE(FloatClose("l2norm y float", y_f, y_d));
  EXPECT_TRUE(FloatClose("l2norm dx float", dx_f, dx));
}

// ---------------------------------------------------------------------------------------------

TEST(GdnGates, ForwardKnownValues) {
  const int64_t seq = 2, hv = 2;
  const std::vector<double> a_log = {std::log(2.0), -1.0}, dt_bias = {0.5, 3.0};
  const std::vector<double> a = {-0.5, 17.5, 1.0, 17.0}, b = {0.0, 2.0, -30.0, 30.0};
  std::vector<double> g = Poisoned<double>(4), beta = Poisoned<double>(4);
  GdnGatesForward(a.data(), b.data(), a_log.data(), dt_bias.data(), seq, hv, g.data(),
                  beta.data());
  // softplus(0) = log 2; 17.5 + 3 = 20.5 > 20 passes through; 17 + 3 = 20 does not.
  const std::vector<double> g_ref = {-2 * std::log(2.0), -std::exp(-1.0) * 20.5,
                                     -2 * std::log1p(std::exp(1.5)),
                                     -std::exp(-1.0) * std::log1p(std::exp(20.0))};
  const std::vector<double> beta_ref = {0.5, 1 / (1 + std::exp(-2.0)), 1 / (1 + std::exp(30.0)),
                                        1 / (1 + std::exp(-30.0))};
  EXPECT_TRUE(AllClose("g", std::span<const double>(g), g_ref, 0, 1e-15));
  EXPECT_TRUE(AllClose("beta", std::span<const double>(beta), beta_ref, 0, 1e-15));
}

TEST(GdnGates, BackwardMatchesFiniteDifferences) {
  const int64_t seq = 9, hv = 3;
  std::vector<double> a = Uniform(seq * hv, 9, -8, 8), b = Normal(seq * hv, 10, 2.0);
  const std::vector<double> a_log = Normal(hv, 11, 1.0), dt_bias = Normal(hv, 12, 1.0);
  const std::vector<double> dg = Normal(seq * hv, 13), dbeta = Normal(seq * hv, 14);
  a[4] = 25 - dt_bias[4 % hv];  // above the softplus threshold: derivative 1
  std::vector<double> da = Poisoned<double>(a.size()), db = Poisoned<double>(b.size());
  GdnGatesBackward(a.data(), b.data(), a_log.data(), dt_bias.data(), dg.data(), dbeta.data(),
                   seq, hv, da.data(), db.data());
  std::vector<double> g(a.size()), beta(a.size());
  auto loss = [&] {
    GdnGatesForward(a.data(), b.data(), a_log.data(), dt_bias.data(), seq, hv, g.data(),
                    beta.data());
    return Dot(g, dg) + Dot(beta, dbeta);
  };
  CheckGradient("da", a, da, loss, kFdTol);
  CheckGradient("db", b, db, loss, kFdTol);
  EXPECT_DOUBLE_EQ(da[4], -dg[4] * std::exp(a_log[4 % hv]));

  const auto af = ToFloat(a), bf = ToFloat(b), alf = ToFloat(a_log), dtf = ToFloat(dt_bias),
             dgf = ToFloat(dg), dbf = ToFloat(dbeta);
  std::vector<float> da_f = Poisoned<float>(a.size()), db_f = Poisoned<float>(a.size());
  GdnGatesBackward(af.data(), bf.data(), alf.data(), dtf.data(), dgf.data(), dbf.data(), seq, hv,
                   da_f.data(), db_f.data());
  EXPECT_TRUE(FloatClose("da float", da_f, da));
  EXPECT_TRUE(FloatClose("db float", db_f, db));
}

// ---------------------------------------------------------------------------------------------

TEST(GdnGatedRmsNorm, ForwardMatchesFormula) {
  const int64_t rows = 5, dim = 6;
  const double eps = 1e-6;
  const std::vector<double> o = Normal(rows * dim, 15), z = Normal(rows * dim, 16, 2.0),
                            w = Normal(dim, 17, 0.2, 1.0);
  std::vector<double> y = Poisoned<double>(o.size()), ref(o.size());
  GdnGatedRmsNormForward(o.data(), z.data(), w.data(), rows, dim, eps, y.data());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t i = 0; i < dim; ++i) ms += o[r * dim + i] * o[r * dim + i] / dim;
    for (int64_t i = 0; i < dim; ++i) {
      ref[r * dim + i] = o[r * dim + i] / std::sqrt(ms + eps) * w[i] * Silu(z[r * dim + i]);
    }
  }
  EXPECT_TRUE(AllClose("gated rmsnorm", std::span<const double>(y), ref, 1e-15, 1e-14));
}

TEST(GdnGatedRmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 5, dim = 6;
  const double eps = 1e-6;
  std::vector<double> o = Normal(rows * dim, 18), z = Normal(rows * dim, 19, 2.0);
  const std::vector<double> w = Normal(dim, 20, 0.2, 1.0), dy = Normal(rows * dim, 21);
  std::vector<double> d_o = Poisoned<double>(o.size()), dz = Poisoned<double>(o.size()),
                      y(o.size());
  GdnGatedRmsNormBackward(o.data(), z.data(), w.data(), dy.data(), rows, dim, eps, d_o.data(),
                          dz.data());
  auto loss = [&] {
    GdnGatedRmsNormForward(o.data(), z.data(), w.data(), rows, dim, eps, y.data());
    return Dot(y, dy);
  };
  CheckGradient("d_o", o, d_o, loss, kFdTol);
  CheckGradient("dz", z, dz, loss, kFdTol);

  const auto of = ToFloat(o), zf = ToFloat(z), wf = ToFloat(w), dyf = ToFloat(dy);
  std::vector<float> do_f = Poisoned<float>(o.size()), dz_f = Poisoned<float>(o.size());
  GdnGatedRmsNormBackward(of.data(), zf.data(), wf.data(), dyf.data(), rows, dim, eps,
                          do_f.data(), dz_f.data());
  EXPECT_TRUE(FloatClose("d_o float", do_f, d_o));
  EXPECT_TRUE(FloatClose("dz float", dz_f, dz));
}

// ---------------------------------------------------------------------------------------------

// A whole Gated DeltaNet layer between its projections, in double:
//   x [T, 2 H_k d_k + H_v d_v] -conv+SiLU-> [q | k | v] -> l2norm(q), l2norm(k);
//   (a, b) -> (g, beta); chunked delta rule from S0 -> o; gated RMSNorm(o, z) -> y.
// Loss = <dy, y>. Checks dx, da, db, dz and dS0 against finite differences.
struct Layer {
  static constexpr int64_t kSeq = 70, kHk = 1, kHv = 2, kDk = 4, kDv = 3, kConv = 4;
  static constexpr int64_t kKeyDim = kHk * kDk, kChannels = 2 * kKeyDim + kHv * kDv;
  static constexpr double kEps = 1e-6;
  GdnDims dims{.seq_len = kSeq, .num_k_heads = kHk, .num_v_heads = kHv, .d_k = kDk, .d_v = kDv};
  std::vector<double> x = Normal(kSeq * kChannels, 30);
  std::vector<double> conv_w = Normal(kChannels * kConv, 31, 0.5);
  std::vector<double> a = Normal(kSeq * kHv, 32), b = Normal(kSeq * kHv, 33);
  std::vector<double> a_log = Uniform(kHv, 34, 0.0, 1.5), dt_bias = Normal(kHv, 35, 0.5);
  std::vector<double> z = Normal(kSeq * kHv * kDv, 36), norm_w = Normal(kDv, 37, 0.2, 1.0);
  std::vector<double> s0 = Normal(kHv * kDk * kDv, 38);
  std::vector<double> dy = Normal(kSeq * kHv * kDv, 39);

  // Forward intermediates.
  std::vector<double> u, q_raw, k_raw, v, q, k, g, beta, o, y;

  void Forward() {
    u.resize(x.size());
    GdnConvSiluForward(x.data(), conv_w.data(), kSeq, kChannels, kConv, u.data());
    q_raw.resize(kSeq * kKeyDim);
    k_raw.resize(kSeq * kKeyDim);
    v.resize(kSeq * kHv * kDv);
    for (int64_t t = 0; t < kSeq; ++t) {
      const double* row = &u[t * kChannels];
      std::copy(row, row + kKeyDim, &q_raw[t * kKeyDim]);
      std::copy(row + kKeyDim, row + 2 * kKeyDim, &k_raw[t * kKeyDim]);
      std::copy(row + 2 * kKeyDim, row + kChannels, &v[t * kHv * kDv]);
    }
    q.resize(q_raw.size());
    k.resize(k_raw.size());
    GdnL2NormForward(q_raw.data(), kSeq * kHk, kDk, q.data());
    GdnL2NormForward(k_raw.data(), kSeq * kHk, kDk, k.data());
    g.resize(a.size());
    beta.resize(b.size());
    GdnGatesForward(a.data(), b.data(), a_log.data(), dt_bias.data(), kSeq, kHv, g.data(),
                    beta.data());
    o.resize(v.size());
    GatedDeltaRuleChunkedForward(dims, GdnInputs<double>{q.data(), k.data(), v.data(), g.data(),
                                                         beta.data(), s0.data()},
                                 o.data(), nullptr);
    y.resize(o.size());
    GdnGatedRmsNormForward(o.data(), z.data(), norm_w.data(), kSeq * kHv, kDv, kEps, y.data());
  }

  double Loss() {
    Forward();
    return Dot(y, dy);
  }

  struct Grads {
    std::vector<double> dx, da, db, dz, ds0;
  };

  Grads Backward() {
    Forward();
    Grads out;
    std::vector<double> d_o(o.size()), dq(q.size()), dk(k.size()), dv(v.size()), dg(g.size()),
        dbeta(beta.size()), dq_raw(q.size()), dk_raw(k.size()), du(u.size());
    out.dz.resize(z.size());
    out.ds0.resize(s0.size());
    out.da.resize(a.size());
    out.db.resize(b.size());
    out.dx.resize(x.size());
    GdnGatedRmsNormBackward(o.data(), z.data(), norm_w.data(), dy.data(), kSeq * kHv, kDv, kEps,
                            d_o.data(), out.dz.data());
    GatedDeltaRuleChunkedBackward(
        dims, GdnInputs<double>{q.data(), k.data(), v.data(), g.data(), beta.data(), s0.data()},
        d_o.data(), nullptr,
        GdnGrads<double>{dq.data(), dk.data(), dv.data(), dg.data(), dbeta.data(),
                         out.ds0.data()});
    GdnGatesBackward(a.data(), b.data(), a_log.data(), dt_bias.data(), dg.data(), dbeta.data(),
                     kSeq, kHv, out.da.data(), out.db.data());
    GdnL2NormBackward(q_raw.data(), dq.data(), kSeq * kHk, kDk, dq_raw.data());
    GdnL2NormBackward(k_raw.data(), dk.data(), kSeq * kHk, kDk, dk_raw.data());
    for (int64_t t = 0; t < kSeq; ++t) {
      double* row = &du[t * kChannels];
      std::copy(&dq_raw[t * kKeyDim], &dq_raw[t * kKeyDim] + kKeyDim, row);
      std::copy(&dk_raw[t * kKeyDim], &dk_raw[t * kKeyDim] + kKeyDim, row + kKeyDim);
      std::copy(&dv[t * kHv * kDv], &dv[t * kHv * kDv] + kHv * kDv, row + 2 * kKeyDim);
    }
    GdnConvSiluBackward(x.data(), conv_w.data(), du.data(), kSeq, kChannels, kConv,
                        out.dx.data());
    return out;
  }
};

TEST(GdnLayer, ChainedBackwardMatchesFiniteDifferences) {
  Layer layer;
  const Layer::Grads grads = layer.Backward();
  auto loss = [&] { return layer.Loss(); };
  double worst = 0;
  worst = std::max(worst, CheckGradient("dx", layer.x, grads.dx, loss, kFdTol));
  worst = std::max(worst, CheckGradient("da", layer.a, grads.da, loss, kFdTol));
  worst = std::max(worst, CheckGradient("db", layer.b, grads.db, loss, kFdTol));
  worst = std::max(worst, CheckGradient("dz", layer.z, grads.dz, loss, kFdTol));
  worst = std::max(worst, CheckGradient("ds0", layer.s0, grads.ds0, loss, kFdTol));
  std::printf("[ gdn ] layer chain, max relative error vs finite differences: %.3g\n", worst);
}

}  // namespace
}  // namespace s0
