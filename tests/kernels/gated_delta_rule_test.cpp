// The gated delta rule: the recurrent form against an independent transcription of the paper's
// formula, both backwards against central finite differences in double, and the chunked form
// against the recurrent one (forward, backward, final state, dS0) in float and double over
// sequence lengths around the chunk size, strong and zero decay, with and without S0.
#include "kernels/gated_delta_rule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/parallel.h"
#include "tests/common/compare.h"

namespace s0 {
namespace {

using test::AllClose;

enum class Decay { kMild, kStrong, kZero, kMixed };

const char* DecayName(Decay d) {
  switch (d) {
    case Decay::kMild: return "mild";
    case Decay::kStrong: return "strong";
    case Decay::kZero: return "zero";
    case Decay::kMixed: return "mixed";
  }
  return "?";
}

template <typename Real>
std::vector<Real> Cast(const std::vector<double>& x) {
  return std::vector<Real>(x.begin(), x.end());
}

template <typename Real>
void PoisonAll(std::vector<Real>& x) {
  std::fill(x.begin(), x.end(), std::numeric_limits<Real>::quiet_NaN());
}

std::vector<double> Normal(size_t n, uint64_t seed, double stddev) {
  std::vector<float> f = test::RandomNormal(n, seed, float(stddev));
  return std::vector<double>(f.begin(), f.end());
}

std::vector<double> Uniform(size_t n, uint64_t seed, double lo, double hi) {
  std::vector<float> f = test::RandomUniform(n, seed, float(lo), float(hi));
  return std::vector<double>(f.begin(), f.end());
}

// Unit rows, as the L2-normalised q and k of the layer.
void NormaliseRows(std::vector<double>& x, int64_t dim) {
  for (size_t r = 0; r < x.size() / size_t(dim); ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += x[r * dim + i] * x[r * dim + i];
    for (int64_t i = 0; i < dim; ++i) x[r * dim + i] /= std::sqrt(ss);
  }
}

// One sequence's inputs and loss weights, kept in double; Cast<Real>() views them in Real.
// The loss is L = <dout, o> + <ds_final, S_final>.
struct Problem {
  GdnDims dims;
  std::vector<double> q, k, v, g, beta, s0, dout, ds_final;  // s0, ds_final empty = nullptr

  Problem(GdnDims d, Decay decay, bool with_s0, bool with_ds_final, uint64_t seed) : dims(d) {
    const size_t nq = size_t(d.seq_len * d.num_k_heads * d.d_k);
    const size_t nv = size_t(d.seq_len * d.num_v_heads * d.d_v);
    const size_t ng = size_t(d.seq_len * d.num_v_heads);
    const size_t ns = size_t(d.num_v_heads * d.d_k * d.d_v);
    q = Normal(nq, seed + 1, 1.0);
    k = Normal(nq, seed + 2, 1.0);
    NormaliseRows(q, d.d_k);
    NormaliseRows(k, d.d_k);
    v = Normal(nv, seed + 3, 1.0);
    beta = Uniform(ng, seed + 4, 0.05, 0.95);
    switch (decay) {
      case Decay::kMild: g = Uniform(ng, seed + 5, -1.0, -0.01); break;
      case Decay::kStrong: g = Uniform(ng, seed + 5, -25.0, -15.0); break;
      case Decay::kZero: g.assign(ng, 0.0); break;
      case Decay::kMixed:  // mostly mild, one step in seven wipes the state (~e^-20)
        g = Uniform(ng, seed + 5, -0.5, 0.0);
        for (size_t i = 0; i < ng; i += 7) g[i] = -20.0;
        break;
    }
    if (with_s0) s0 = Normal(ns, seed + 6, 1.0);
    dout = Normal(nv, seed + 7, 1.0);
    if (with_ds_final) ds_final = Normal(ns, seed + 8, 1.0);
  }

  size_t state_size() const { return size_t(dims.num_v_heads * dims.d_k * dims.d_v); }
};

// A Problem in precision Real, with the forward outputs and the gradients.
template <typename Real>
struct Exec {
  explicit Exec(const Problem& p)
      : q(Cast<Real>(p.q)), k(Cast<Real>(p.k)), v(Cast<Real>(p.v)), g(Cast<Real>(p.g)),
        beta(Cast<Real>(p.beta)), s0(Cast<Real>(p.s0)), dout(Cast<Real>(p.dout)),
        ds_final(Cast<Real>(p.ds_final)), o(p.dout.size()), s_final(p.state_size()),
        dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dg(p.g.size()), dbeta(p.beta.size()),
        ds0(p.state_size()) {}

  GdnInputs<Real> inputs() const {
    return {q.data(), k.data(), v.data(), g.data(), beta.data(), s0.empty() ? nullptr : s0.data()};
  }
  GdnGrads<Real> grads() {
    return {dq.data(), dk.data(), dv.data(), dg.data(), dbeta.data(), ds0.data()};
  }

  void Forward(const GdnDims& dims, bool chunked) {
    PoisonAll(o);
    PoisonAll(s_final);
    if (chunked) {
      GatedDeltaRuleChunkedForward(dims, inputs(), o.data(), s_final.data());
    } else {
      GatedDeltaRuleRecurrentForward(dims, inputs(), o.data(), s_final.data());
    }
  }

  void Backward(const GdnDims& dims, bool chunked) {
    for (auto* x : {&dq, &dk, &dv, &dg, &dbeta, &ds0}) PoisonAll(*x);
    const Real* dsf = ds_final.empty() ? nullptr : ds_final.data();
    if (chunked) {
      GatedDeltaRuleChunkedBackward(dims, inputs(), dout.data(), dsf, grads());
    } else {
      GatedDeltaRuleRecurrentBackward(dims, inputs(), dout.data(), dsf, grads());
    }
  }

  double Loss() const {
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += double(dout[i]) * double(o[i]);
    for (size_t i = 0; i < ds_final.size(); ++i) l += double(ds_final[i]) * double(s_final[i]);
    return l;
  }

  std::vector<Real> q, k, v, g, beta, s0, dout, ds_final;
  std::vector<Real> o, s_final, dq, dk, dv, dg, dbeta, ds0;
};

double MaxAbs(std::span<const double> x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::fabs(e));
  return m;
}

// got vs ref with an error budget rel * (max|ref| + |ref|): relative to the tensor's scale, so
// that elements near zero are judged against the size of the whole tensor.
template <typename Real>
::testing::AssertionResult Close(const std::string& name, const std::vector<Real>& got,
                                 const std::vector<double>& ref, double rel) {
  const std::vector<double> got_d(got.begin(), got.end());
  return AllClose(name, got_d, ref, rel * MaxAbs(ref), rel);
}

template <typename Real>
std::vector<double> ToDouble(const std::vector<Real>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// The loss of the problem after replacing one input by x (double, forward form `chunked`).
double LossWith(const Problem& p, bool chunked) {
  Exec<double> r(p);
  r.Forward(p.dims, chunked);
  return r.Loss();
}

// Central differences of the loss along a random direction of x and along a sample of single
// elements of x, against the analytic gradient grad. Returns the largest relative error seen,
// each measured against max(|analytic|, 1e-3 * scale of the gradient tensor).
double CheckGradient(const std::string& name, std::vector<double>& x,
                     const std::vector<double>& grad, const std::function<double()>& loss,
                     uint64_t seed, double tol) {
  constexpr double kStep = 1e-5;
  constexpr int kSamples = 10;
  const double grad_scale = MaxAbs(grad);
  double worst = 0;
  auto central = [&](const std::vector<double>& dir) {
    const std::vector<double> x0 = x;
    for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] + kStep * dir[i];
    const double up = loss();
    for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] - kStep * dir[i];
    const double down = loss();
    x = x0;
    return (up - down) / (2 * kStep);
  };
  auto expect = [&](const std::string& what, double fd, double an, double floor) {
    const double err = std::fabs(fd - an) / std::max(std::fabs(an), floor);
    worst = std::max(worst, err);
    EXPECT_LE(err, tol) << name << " " << what << ": finite difference " << fd << ", analytic "
                        << an;
  };
  std::vector<double> dir = Normal(x.size(), seed, 1.0);
  double an = 0, dir_norm = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    an += grad[i] * dir[i];
    dir_norm += dir[i] * dir[i];
  }
  expect("random direction", central(dir), an, 1e-3 * grad_scale * std::sqrt(dir_norm));
  std::mt19937_64 rng(seed);
  for (int s = 0; s < kSamples; ++s) {
    const size_t i = rng() % x.size();
    std::vector<double> e(x.size(), 0.0);
    e[i] = 1;
    expect("element " + std::to_string(i), central(e), grad[i], 1e-3 * grad_scale);
  }
  return worst;
}

std::string Describe(const GdnDims& d, Decay decay, bool s0, bool dsf) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "T=%ld H_k=%ld H_v=%ld d_k=%ld d_v=%ld decay=%s s0=%d ds_final=%d",
                long(d.seq_len), long(d.num_k_heads), long(d.num_v_heads), long(d.d_k),
                long(d.d_v), DecayName(decay), int(s0), int(dsf));
  return buf;
}

// The paper's form in the transposed [V, K] layout, written independently of the library:
// S'_t = a_t S'_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T,  o_t = S'_t q_t / sqrt(d_k).
TEST(GatedDeltaRule, RecurrentMatchesPaperForm) {
  const GdnDims d{.seq_len = 23, .num_k_heads = 2, .num_v_heads = 4, .d_k = 5, .d_v = 3};
  const Problem p(d, Decay::kMild, true, false, 11);
  Exec<double> r(p);
  r.Forward(d, false);
  std::vector<double> o_ref(p.dout.size()), s_ref(p.state_size());
  const int64_t K = d.d_k, V = d.d_v, group = d.num_v_heads / d.num_k_heads;
  for (int64_t h = 0; h < d.num_v_heads; ++h) {
    std::vector<double> st(size_t(V * K));  // st[v][k]
    for (int64_t a = 0; a < K; ++a)
      for (int64_t b = 0; b < V; ++b) st[b * K + a] = p.s0[(h * K + a) * V + b];
    for (int64_t t = 0; t < d.seq_len; ++t) {
      const double* qt = &p.q[(t * d.num_k_heads + h / group) * K];
      const double* kt = &p.k[(t * d.num_k_heads + h / group) * K];
      const double* vt = &p.v[(t * d.num_v_heads + h) * V];
      const double alpha = std::exp(p.g[t * d.num_v_heads + h]), b = p.beta[t * d.num_v_heads + h];
      std::vector<double> next(st.size());
      for (int64_t i = 0; i < V; ++i) {
        for (int64_t j = 0; j < K; ++j) {
          double sik = 0;  // (S' (I - b k k^T))[i][j]
          for (int64_t m = 0; m < K; ++m) sik += st[i * K + m] * ((m == j) - b * kt[m] * kt[j]);
          next[i * K + j] = alpha * sik + b * vt[i] * kt[j];
        }
      }
      st = next;
      for (int64_t i = 0; i < V; ++i) {
        double o = 0;
        for (int64_t j = 0; j < K; ++j) o += st[i * K + j] * qt[j] / std::sqrt(double(K));
        o_ref[(t * d.num_v_heads + h) * V + i] = o;
      }
    }
    for (int64_t a = 0; a < K; ++a)
      for (int64_t b = 0; b < V; ++b) s_ref[(h * K + a) * V + b] = st[b * K + a];
  }
  EXPECT_TRUE(AllClose("o", std::span<const double>(r.o), o_ref, 1e-13, 1e-12));
  EXPECT_TRUE(AllClose("s_final", std::span<const double>(r.s_final), s_ref, 1e-13, 1e-12));
}

// Every input gradient of both forms, including dS0, dg and dbeta, against finite differences
// of the same form's forward.
TEST(GatedDeltaRule, BackwardMatchesFiniteDifferences) {
  const GdnDims shapes[] = {
      {.seq_len = 37, .num_k_heads = 2, .num_v_heads = 4, .d_k = 6, .d_v = 5},
      {.seq_len = 64, .num_k_heads = 1, .num_v_heads = 3, .d_k = 4, .d_v = 7},
      {.seq_len = 150, .num_k_heads = 2, .num_v_heads = 4, .d_k = 5, .d_v = 4},
  };
  constexpr double kTol = 1e-6;
  double worst = 0;
  int shape_index = 0;
  for (const GdnDims& d : shapes) {
    const Decay decay = shape_index == 2 ? Decay::kMixed : Decay::kMild;
    for (bool chunked : {false, true}) {
      SCOPED_TRACE(Describe(d, decay, true, true) + (chunked ? " chunked" : " recurrent"));
      Problem p(d, decay, true, true, 100 + shape_index);
      Exec<double> r(p);
      r.Backward(d, chunked);
      auto loss = [&] { return LossWith(p, chunked); };
      struct Item {
        const char* name;
        std::vector<double>* x;
        const std::vector<double>* grad;
      } items[] = {{"dq", &p.q, &r.dq},       {"dk", &p.k, &r.dk}, {"dv", &p.v, &r.dv},
                   {"dg", &p.g, &r.dg},       {"dbeta", &p.beta, &r.dbeta},
                   {"ds0", &p.s0, &r.ds0}};
      uint64_t seed = 1000;
      for (const Item& it : items) {
        worst = std::max(worst, CheckGradient(it.name, *it.x, *it.grad, loss, seed++, kTol));
      }
    }
    ++shape_index;
  }
  std::printf("[ gdn ] max relative error vs finite differences: %.3g\n", worst);
}

// The chunked form against the recurrent one, in float and in double. T around the chunk size;
// strong decay exercises underflowing e^(gamma_r - gamma_i), zero decay the undamped state.
TEST(GatedDeltaRule, ChunkedMatchesRecurrent) {
  constexpr double kTolFloat = 1e-5, kTolDouble = 1e-12;
  double worst_f = 0, worst_d = 0;
  uint64_t seed = 200;
  for (int64_t t : {1, 63, 64, 65, 200}) {
    for (Decay decay : {Decay::kMild, Decay::kStrong, Decay::kZero, Decay::kMixed}) {
      for (bool with_s0 : {false, true}) {
        const GdnDims d{.seq_len = t, .num_k_heads = 2, .num_v_heads = 4, .d_k = 12, .d_v = 10};
        const bool with_dsf = with_s0 == (t % 2 == 0);
        SCOPED_TRACE(Describe(d, decay, with_s0, with_dsf));
        const Problem p(d, decay, with_s0, with_dsf, seed++);
        Exec<double> rec_d(p), chk_d(p);
        Exec<float> rec_f(p), chk_f(p);
        rec_d.Forward(d, false);
        rec_d.Backward(d, false);
        chk_d.Forward(d, true);
        chk_d.Backward(d, true);
        rec_f.Forward(d, false);
        rec_f.Backward(d, false);
        chk_f.Forward(d, true);
        chk_f.Backward(d, true);
        struct Field {
          const char* name;
          std::vector<double> Exec<double>::*d;
          std::vector<float> Exec<float>::*f;
        } fields[] = {{"o", &Exec<double>::o, &Exec<float>::o},
                      {"s_final", &Exec<double>::s_final, &Exec<float>::s_final},
                      {"dq", &Exec<double>::dq, &Exec<float>::dq},
                      {"dk", &Exec<double>::dk, &Exec<float>::dk},
                      {"dv", &Exec<double>::dv, &Exec<float>::dv},
                      {"dg", &Exec<double>::dg, &Exec<float>::dg},
                      {"dbeta", &Exec<double>::dbeta, &Exec<float>::dbeta},
                      {"ds0", &Exec<double>::ds0, &Exec<float>::ds0}};
        for (const Field& f : fields) {
          const std::vector<double>& ref = rec_d.*f.d;
          const std::string n = f.name;
          EXPECT_TRUE(Close("double chunked " + n, chk_d.*f.d, ref, kTolDouble));
          EXPECT_TRUE(Close("float chunked " + n, chk_f.*f.f, ToDouble(rec_f.*f.f), kTolFloat));
          EXPECT_TRUE(Close("float recurrent vs double " + n, rec_f.*f.f, ref, kTolFloat));
          EXPECT_TRUE(Close("float chunked vs double " + n, chk_f.*f.f, ref, kTolFloat));
          const double scale = std::max(MaxAbs(ref), 1e-300);
          for (size_t i = 0; i < ref.size(); ++i) {
            worst_d = std::max(worst_d, std::fabs((chk_d.*f.d)[i] - ref[i]) / scale);
            const double err_f = std::fabs(double((chk_f.*f.f)[i]) - double((rec_f.*f.f)[i]));
            worst_f = std::max(worst_f, err_f / scale);
          }
        }
      }
    }
  }
  std::printf("[ gdn ] chunked vs recurrent, max error / max|ref|: float %.3g, double %.3g\n",
              worst_f, worst_d);
}

// Model-sized heads (d_k = d_v = 128, two value heads per key head), one partial chunk.
TEST(GatedDeltaRule, ChunkedMatchesRecurrentAtModelHeadSize) {
  const GdnDims d{.seq_len = 70, .num_k_heads = 1, .num_v_heads = 2, .d_k = 128, .d_v = 128};
  const Problem p(d, Decay::kMixed, true, true, 300);
  Exec<float> rec(p), chk(p);
  rec.Forward(d, false);
  rec.Backward(d, false);
  chk.Forward(d, true);
  chk.Backward(d, true);
  EXPECT_TRUE(Close("o", chk.o, ToDouble(rec.o), 1e-5));
  EXPECT_TRUE(Close("s_final", chk.s_final, ToDouble(rec.s_final), 1e-5));
  EXPECT_TRUE(Close("dq", chk.dq, ToDouble(rec.dq), 1e-5));
  EXPECT_TRUE(Close("dk", chk.dk, ToDouble(rec.dk), 1e-5));
  EXPECT_TRUE(Close("dv", chk.dv, ToDouble(rec.dv), 1e-5));
  EXPECT_TRUE(Close("dg", chk.dg, ToDouble(rec.dg), 1e-5));
  EXPECT_TRUE(Close("dbeta", chk.dbeta, ToDouble(rec.dbeta), 1e-5));
  EXPECT_TRUE(Close("ds0", chk.ds0, ToDouble(rec.ds0), 1e-5));
}

// An empty sequence passes S0 through and dS_final back.
TEST(GatedDeltaRule, EmptySequencePassesStateThrough) {
  const GdnDims d{.seq_len = 0, .num_k_heads = 1, .num_v_heads = 2, .d_k = 3, .d_v = 2};
  const Problem p(d, Decay::kMild, true, true, 400);
  for (bool chunked : {false, true}) {
    Exec<double> r(p);
    r.Forward(d, chunked);
    r.Backward(d, chunked);
    EXPECT_EQ(r.s_final, p.s0);
    EXPECT_EQ(r.ds0, p.ds_final);
  }
}

// Results are bit-identical whatever the number of threads.
TEST(GatedDeltaRule, ResultsDoNotDependOnThreadCount) {
  const GdnDims d{.seq_len = 100, .num_k_heads = 3, .num_v_heads = 6, .d_k = 8, .d_v = 8};
  const Problem p(d, Decay::kMild, true, true, 500);
  const int saved = NumThreads();
  std::vector<Exec<float>> runs;  // [threads][form]
  for (int threads : {1, 3}) {
    SetNumThreads(threads);
    for (bool chunked : {false, true}) {
      runs.emplace_back(p);
      runs.back().Forward(d, chunked);
      runs.back().Backward(d, chunked);
    }
  }
  SetNumThreads(saved);
  for (int form = 0; form < 2; ++form) {
    for (auto f : {&Exec<float>::o, &Exec<float>::s_final, &Exec<float>::dq, &Exec<float>::dk,
                   &Exec<float>::dv, &Exec<float>::dg, &Exec<float>::dbeta, &Exec<float>::ds0}) {
      const auto& a = runs[form].*f;
      const auto& b = runs[2 + form].*f;
      ASSERT_EQ(a.size(), b.size());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "form " << form;
    }
  }
}

}  // namespace
}  // namespace s0
