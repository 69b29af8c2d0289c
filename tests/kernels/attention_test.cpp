#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/parallel.h"
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

struct Dims {
  int64_t t, n_h, n_kv, d;
  size_t q_size() const { return size_t(t * n_h * d); }
  size_t kv_size() const { return size_t(t * n_kv * d); }
};

// Causal GQA attention by the definition, in double, one query row at a time.
std::vector<double> NaiveAttention(const std::vector<double>& q, const std::vector<double>& k,
                                   const std::vector<double>& v, const Dims& m) {
  std::vector<double> out(m.q_size());
  const double scale = 1 / std::sqrt(double(m.d));
  for (int64_t h = 0; h < m.n_h; ++h) {
    const int64_t g = h / (m.n_h / m.n_kv);
    for (int64_t i = 0; i < m.t; ++i) {
      const double* qi = q.data() + (i * m.n_h + h) * m.d;
      std::vector<double> p(size_t(i + 1));
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const double* kj = k.data() + (j * m.n_kv + g) * m.d;
        double s = 0;
        for (int64_t c = 0; c < m.d; ++c) s += qi[c] * kj[c];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      for (double& x : p) sum += (x = std::exp(x - mx));
      double* oi = out.data() + (i * m.n_h + h) * m.d;
      for (int64_t c = 0; c < m.d; ++c) {
        double acc = 0;
        for (int64_t j = 0; j <= i; ++j) acc += p[size_t(j)] / sum * v[size_t((j * m.n_kv + g) * m.d + c)];
        oi[c] = acc;
      }
    }
  }
  return out;
}

template <typename T>
class AttentionTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AttentionTyped, Types);

// GQA ratios 1, 2 and 4; lengths below, at and across the 64-row query block; d not a multiple
// of any register tile.
TYPED_TEST(AttentionTyped, ForwardMatchesDefinition) {
  using T = TypeParam;
  const Dims cases[] = {{1, 2, 2, 8}, {64, 4, 4, 16}, {150, 4, 2, 20}, {77, 8, 2, 12}};
  for (const Dims& m : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << m.t << " n_h=" << m.n_h << " n_kv=" << m.n_kv);
    const std::vector<T> q = Normal<T>(m.q_size(), 1), k = Normal<T>(m.kv_size(), 2);
    const std::vector<T> v = Normal<T>(m.kv_size(), 3);
    std::vector<T> out = Poisoned<T>(m.q_size());
    AttentionForward(q.data(), k.data(), v.data(), out.data(), m.t, m.n_h, m.n_kv, m.d);
    const std::vector<double> ref = NaiveAttention(Cast<double>(q), Cast<double>(k), Cast<double>(v), m);
    const double tol = sizeof(T) == 4 ? 2e-5 : 1e-13;
    EXPECT_TRUE(AllClose("out", out, Cast<T>(ref), tol, tol));
  }
}

// Changing keys and values after position t leaves outputs up to t bit-identical.
TEST(Attention, Causal) {
  const Dims m{90, 4, 2, 8};
  const std::vector<float> q = Normal<float>(m.q_size(), 4), k = Normal<float>(m.kv_size(), 5);
  const std::vector<float> v = Normal<float>(m.kv_size(), 6);
  std::vector<float> k2 = k, v2 = v, out(m.q_size()), out2(m.q_size());
  const int64_t t = 70;
  for (size_t i = size_t((t + 1) * m.n_kv * m.d); i < k2.size(); ++i) {
    k2[i] += 1.0f;
    v2[i] -= 2.0f;
  }
  AttentionForward(q.data(), k.data(), v.data(), out.data(), m.t, m.n_h, m.n_kv, m.d);
  AttentionForward(q.data(), k2.data(), v2.data(), out2.data(), m.t, m.n_h, m.n_kv, m.d);
  const size_t prefix = size_t((t + 1) * m.n_h * m.d);
  EXPECT_EQ(0, std::memcmp(out.data(), out2.data(), prefix * sizeof(float)));
  EXPECT_NE(0, std::memcmp(out.data() + prefix, out2.data() + prefix, sizeof(float)));
}

void CheckBackward(const Dims& m) {
  SCOPED_TRACE(testing::Message() << "T=" << m.t << " n_h=" << m.n_h << " n_kv=" << m.n_kv);
  std::vector<double> q = Normal<double>(m.q_size(), 7), k = Normal<double>(m.kv_size(), 8);
  std::vector<double> v = Normal<double>(m.kv_size(), 9);
  const std::vector<double> cot = Normal<double>(m.q_size(), 10);
  std::vector<double> dq = Poisoned<double>(m.q_size()), dk = Poisoned<double>(m.kv_size());
  std::vector<double> dv = Poisoned<double>(m.kv_size());
  AttentionBackward(q.data(), k.data(), v.data(), cot.data(), dq.data(), dk.data(), dv.data(), m.t,
                    m.n_h, m.n_kv, m.d);
  auto loss = [&] {
    std::vector<double> out(m.q_size());
    AttentionForward(q.data(), k.data(), v.data(), out.data(), m.t, m.n_h, m.n_kv, m.d);
    return Dot(cot, out);
  };
  EXPECT_TRUE(GradientMatches("dq", q, dq, loss, 40));
  EXPECT_TRUE(GradientMatches("dk", k, dk, loss, 40));
  EXPECT_TRUE(GradientMatches("dv", v, dv, loss, 40));
}

TEST(Attention, FiniteDifferenceBackward) {
  CheckBackward({9, 2, 2, 5});   // no grouping
  CheckBackward({70, 4, 2, 6});  // GQA ratio 2, two query blocks
  CheckBackward({13, 8, 2, 3});  // GQA ratio 4
}

// dk and dv sum per-head shares in a fixed order: the thread count changes no bit.
TEST(Attention, BackwardBitwiseIndependentOfThreads) {
  const Dims m{100, 8, 2, 24};
  const std::vector<float> q = Normal<float>(m.q_size(), 11), k = Normal<float>(m.kv_size(), 12);
  const std::vector<float> v = Normal<float>(m.kv_size(), 13), dout = Normal<float>(m.q_size(), 14);
  const int threads = NumThreads();
  std::vector<std::vector<float>> grads;
  for (int n_threads : {1, 5}) {
    SetNumThreads(n_threads);
    std::vector<float> dq(m.q_size()), dk(m.kv_size()), dv(m.kv_size());
    AttentionBackward(q.data(), k.data(), v.data(), dout.data(), dq.data(), dk.data(), dv.data(),
                      m.t, m.n_h, m.n_kv, m.d);
    for (auto* g : {&dq, &dk, &dv}) grads.push_back(*g);
  }
  SetNumThreads(threads);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(0, std::memcmp(grads[i].data(), grads[i + 3].data(), grads[i].size() * sizeof(float)));
  }
}

TEST(Attention, FloatBackwardAgreesWithDouble) {
  const Dims m{130, 4, 1, 16};
  const std::vector<float> q = Normal<float>(m.q_size(), 15), k = Normal<float>(m.kv_size(), 16);
  const std::vector<float> v = Normal<float>(m.kv_size(), 17), dout = Normal<float>(m.q_size(), 18);
  std::vector<float> dq = Poisoned<float>(m.q_size()), dk = Poisoned<float>(m.kv_size());
  std::vector<float> dv = Poisoned<float>(m.kv_size());
  std::vector<double> dqd = Poisoned<double>(m.q_size()), dkd = Poisoned<double>(m.kv_size());
  std::vector<double> dvd = Poisoned<double>(m.kv_size());
  AttentionBackward(q.data(), k.data(), v.data(), dout.data(), dq.data(), dk.data(), dv.data(), m.t,
                    m.n_h, m.n_kv, m.d);
  AttentionBackward(Cast<double>(q).data(), Cast<double>(k).data(), Cast<double>(v).data(),
                    Cast<double>(dout).data(), dqd.data(), dkd.data(), dvd.data(), m.t, m.n_h,
                    m.n_kv, m.d);
  EXPECT_TRUE(AllClose("dq", dq, Cast<float>(dqd), 5e-5, 1e-4));
  EXPECT_TRUE(AllClose("dk", dk, Cast<float>(dkd), 5e-5, 1e-4));
  EXPECT_TRUE(AllClose("dv", dv, Cast<float>(dvd), 5e-5, 1e-4));
}

// Head h's 2d values of q_proj's output are [query | gate], not two contiguous halves.
TEST(Attention, SplitQueryGateLayoutAndMerge) {
  const int64_t t = 3, n_h = 4, d = 5;
  std::vector<double> qg(size_t(t * n_h * 2 * d));
  for (size_t i = 0; i < qg.size(); ++i) qg[i] = double(i);
  std::vector<double> q = Poisoned<double>(size_t(t * n_h * d)), gate = Poisoned<double>(q.size());
  SplitQueryGate(qg.data(), q.data(), gate.data(), t, n_h, d);
  std::vector<double> q_ref, gate_ref;
  for (int64_t tok = 0; tok < t; ++tok) {
    for (int64_t h = 0; h < n_h; ++h) {
      for (int64_t c = 0; c < d; ++c) {
        q_ref.push_back(double((tok * n_h + h) * 2 * d + c));
        gate_ref.push_back(double((tok * n_h + h) * 2 * d + d + c));
      }
    }
  }
  EXPECT_TRUE(AllClose("q", q, q_ref, 0, 0));
  EXPECT_TRUE(AllClose("gate", gate, gate_ref, 0, 0));
  std::vector<double> merged = Poisoned<double>(qg.size());
  MergeQueryGateGrad(q.data(), gate.data(), merged.data(), t, n_h, d);
  EXPECT_TRUE(AllClose("merged", merged, qg, 0, 0));
}

TEST(Attention, FiniteDifferenceSigmoidGate) {
  const int64_t n = 300;
  std::vector<double> attn = Normal<double>(n, 19), gate = Normal<double>(n, 20, 3.0f);
  const std::vector<double> cot = Normal<double>(n, 21);
  std::vector<double> dattn = Poisoned<double>(n), dgate = Poisoned<double>(n);
  SigmoidGateBackward(attn.data(), gate.data(), cot.data(), dattn.data(), dgate.data(), n);
  auto loss = [&] {
    std::vector<double> out(n);
    SigmoidGateForward(attn.data(), gate.data(), out.data(), n);
    return Dot(cot, out);
  };
  EXPECT_TRUE(GradientMatches("dattn", attn, dattn, loss));
  EXPECT_TRUE(GradientMatches("dgate", gate, dgate, loss));
  std::vector<float> out = Poisoned<float>(n);
  const std::vector<float> attn_f = Cast<float>(attn), gate_f = Cast<float>(gate);
  SigmoidGateForward(attn_f.data(), gate_f.data(), out.data(), n);
  std::vector<double> outd(n);
  SigmoidGateForward(attn.data(), gate.data(), outd.data(), n);
  EXPECT_TRUE(AllClose("out fp32 vs fp64", out, Cast<float>(outd), 1e-6, 1e-6));
}

}  // namespace
}  // namespace s0
