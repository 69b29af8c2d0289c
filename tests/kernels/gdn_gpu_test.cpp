// The CUDA gated delta rule (kernels/gdn_cuda.h) against the CPU reference: the chunked form of
// kernels/gated_delta_rule.h in double, fed the same float inputs, run sequence by sequence with
// dS0 summed over the sequences. Shapes: sequence lengths around the chunk size (1, 37, 64, 65,
// 200), packed batches of three sequences of different lengths (one empty), H_v > H_k,
// d_k != d_v, Qwen3.5-4B's heads (H_k 16, H_v 32, d 128) on a short packed batch, a grid of more
// than a thousand chunk blocks; mild, strong (g = -20), zero and mixed decay. Outputs and the
// workspace start as NaN; outputs carry guards. fp32 math throughout: relative L2 <= 1e-5 and
// |got - ref| <= 1e-5 max|ref| + 1e-4 |ref| per element.
// (A .cpp, not a .cu: the references and the comparator are C++20 headers; this calls only host
// APIs.)
#include "kernels/gdn_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kernels/device_buffer.h"
#include "kernels/gated_delta_rule.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"

namespace s0 {
namespace {

constexpr double kRelL2 = 1e-5, kAtolOfMax = 1e-5, kRtol = 1e-4;

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

struct Case {
  std::vector<int64_t> lens;
  int64_t hk = 2, hv = 4, dk = 16, dv = 24;
  Decay decay = Decay::kMild;

  std::string Describe() const {
    std::string s = "lens {";
    for (size_t i = 0; i < lens.size(); ++i) s += (i ? ", " : "") + std::to_string(lens[i]);
    char buf[128];
    std::snprintf(buf, sizeof buf, "} H_k=%ld H_v=%ld d_k=%ld d_v=%ld decay=%s", long(hk),
                  long(hv), long(dk), long(dv), DecayName(decay));
    return s + buf;
  }
};

// Rows of unit length, as the L2-normalised q and k of the layer.
std::vector<float> UnitRows(std::vector<float> x, int64_t dim) {
  for (size_t r = 0; r < x.size() / size_t(dim); ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    for (int64_t i = 0; i < dim; ++i) x[r * dim + i] = float(x[r * dim + i] / std::sqrt(ss));
  }
  return x;
}

struct Problem {
  Problem(const Case& c, uint64_t seed) {
    cu.push_back(0);
    for (int64_t len : c.lens) cu.push_back(cu.back() + int32_t(len));
    const int64_t t = cu.back();
    dims = {.tokens = t, .num_seqs = int64_t(c.lens.size()), .num_k_heads = c.hk,
            .num_v_heads = c.hv, .d_k = c.dk, .d_v = c.dv};
    q = UnitRows(test::RandomNormal(size_t(t * c.hk * c.dk), seed + 1), c.dk);
    k = UnitRows(test::RandomNormal(size_t(t * c.hk * c.dk), seed + 2), c.dk);
    v = test::RandomNormal(size_t(t * c.hv * c.dv), seed + 3);
    beta = test::RandomUniform(size_t(t * c.hv), seed + 4, 0.05f, 0.95f);
    const size_t ng = size_t(t * c.hv);
    switch (c.decay) {
      case Decay::kMild: g = test::RandomUniform(ng, seed + 5, -1.0f, -0.01f); break;
      case Decay::kStrong: g.assign(ng, -20.0f); break;
      case Decay::kZero: g.assign(ng, 0.0f); break;
      case Decay::kMixed:  // mostly mild; one step in seven wipes the state (e^-20)
        g = test::RandomUniform(ng, seed + 5, -0.5f, 0.0f);
        for (size_t i = 0; i < ng; i += 7) g[i] = -20.0f;
        break;
    }
    s0 = test::RandomNormal(size_t(c.hv * c.dk * c.dv), seed + 6);
    dout = test::RandomNormal(size_t(t * c.hv * c.dv), seed + 7);
  }

  GdnPackedDims dims;
  std::vector<int32_t> cu;
  std::vector<float> q, k, v, g, beta, s0, dout;
};

struct Result {
  std::vector<float> o, dq, dk, dv, dg, dbeta, ds0;
};

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

struct Reference {
  std::vector<double> o, dq, dk, dv, dg, dbeta, ds0;
};

// The double chunked CPU reference, one sequence at a time; ds0 summed over the sequences.
Reference CpuReference(const Problem& p) {
  const GdnPackedDims& d = p.dims;
  const std::vector<double> q = ToDouble(p.q), k = ToDouble(p.k), v = ToDouble(p.v),
                            g = ToDouble(p.g), beta = ToDouble(p.beta), s0 = ToDouble(p.s0),
                            dout = ToDouble(p.dout);
  const int64_t qk_row = d.num_k_heads * d.d_k, v_row = d.num_v_heads * d.d_v;
  Reference r;
  r.o.resize(dout.size());
  r.dq.resize(q.size());
  r.dk.resize(k.size());
  r.dv.resize(v.size());
  r.dg.resize(g.size());
  r.dbeta.resize(beta.size());
  r.ds0.assign(s0.size(), 0.0);
  std::vector<double> ds0_seq(s0.size());
  for (int64_t s = 0; s < d.num_seqs; ++s) {
    const int64_t t0 = p.cu[s];
    const GdnDims sd{.seq_len = p.cu[s + 1] - t0, .num_k_heads = d.num_k_heads,
                     .num_v_heads = d.num_v_heads, .d_k = d.d_k, .d_v = d.d_v};
    const GdnInputs<double> in{q.data() + t0 * qk_row,
                               k.data() + t0 * qk_row,
                               v.data() + t0 * v_row,
                               g.data() + t0 * d.num_v_heads,
                               beta.data() + t0 * d.num_v_heads,
                               s0.data()};
    GatedDeltaRuleChunkedForward(sd, in, r.o.data() + t0 * v_row, nullptr);
    const GdnGrads<double> grads{r.dq.data() + t0 * qk_row,
                                 r.dk.data() + t0 * qk_row,
                                 r.dv.data() + t0 * v_row,
                                 r.dg.data() + t0 * d.num_v_heads,
                                 r.dbeta.data() + t0 * d.num_v_heads,
                                 ds0_seq.data()};
    GatedDeltaRuleChunkedBackward(sd, in, dout.data() + t0 * v_row, nullptr, grads);
    for (size_t i = 0; i < ds0_seq.size(); ++i) r.ds0[i] += ds0_seq[i];
  }
  return r;
}

class GdnCudaTest : public test::GpuTest {
 protected:
  // Forward, then backward (all input gradients, or dS0 only), on fresh device buffers.
  // keep: the forward keeps its per-chunk quantities and the backward uses them (kept
  // workspace); otherwise the backward recomputes them in a workspace poisoned again first.
  Result Run(const Problem& p, bool input_grads, bool keep = false) {
    const cudaStream_t st = stream();
    DeviceBuffer<int32_t> cu(p.cu.size());
    cu.Upload(p.cu, st);
    const DeviceBuffer<float> q = test::Upload<float>(p.q, st), k = test::Upload<float>(p.k, st),
                              v = test::Upload<float>(p.v, st), g = test::Upload<float>(p.g, st),
                              beta = test::Upload<float>(p.beta, st),
                              s0 = test::Upload<float>(p.s0, st),
                              dout = test::Upload<float>(p.dout, st);
    const GdnPackedInputs in{cu.data(), q.data(), k.data(), v.data(), g.data(), beta.data(),
                             s0.data()};
    // NaN everywhere: a kernel reading workspace that no kernel wrote shows in the results.
    DeviceBuffer<unsigned char> ws(
        std::max(GdnForwardWorkspaceBytes(p.dims), GdnBackwardWorkspaceBytes(p.dims)));
    ws.FillBytes(0xFF, st);

    Result r;
    test::GuardedOutput<float> o(p.dout.size(), st);
    GatedDeltaRuleCudaForward(p.dims, in, o.data(), ws.data(), st, keep);
    r.o = o.Read("o", st);

    if (!keep) ws.FillBytes(0xFF, st);
    test::GuardedOutput<float> dq(p.q.size(), st), dk(p.k.size(), st), dv(p.v.size(), st),
        dg(p.g.size(), st), dbeta(p.beta.size(), st), ds0(p.s0.size(), st);
    GdnPackedGrads grads{.ds0 = ds0.data()};
    if (input_grads) {
      grads.dq = dq.data();
      grads.dk = dk.data();
      grads.dv = dv.data();
      grads.dg = dg.data();
      grads.dbeta = dbeta.data();
    }
    GatedDeltaRuleCudaBackward(p.dims, in, dout.data(), grads, ws.data(), st, keep);
    r.ds0 = ds0.Read("ds0", st);
    if (input_grads) {
      r.dq = dq.Read("dq", st);
      r.dk = dk.Read("dk", st);
      r.dv = dv.Read("dv", st);
      r.dg = dg.Read("dg", st);
      r.dbeta = dbeta.Read("dbeta", st);
    }
    return r;
  }

  void ExpectMatchesReference(const Case& c, uint64_t seed) {
    SCOPED_TRACE(c.Describe());
    const Problem p(c, seed);
    const Reference ref = CpuReference(p);
    const Result got = Run(p, true);
    Expect("o", got.o, ref.o);
    Expect("dq", got.dq, ref.dq);
    Expect("dk", got.dk, ref.dk);
    Expect("dv", got.dv, ref.dv);
    Expect("dg", got.dg, ref.dg);
    Expect("dbeta", got.dbeta, ref.dbeta);
    Expect("ds0", got.ds0, ref.ds0);
  }

  static void Expect(const std::string& name, const std::vector<float>& got,
                     const std::vector<double>& ref) {
    const std::vector<double> got_d = ToDouble(got);
    double max_ref = 0;
    for (double x : ref) max_ref = std::max(max_ref, std::fabs(x));
    EXPECT_TRUE(test::RelNormClose(name, got_d, ref, kRelL2));
    EXPECT_TRUE(test::AllClose(name, got_d, ref, kAtolOfMax * max_ref, kRtol));
  }
};

TEST_F(GdnCudaTest, MatchesCpuOnSingleSequences) {
  uint64_t seed = 100;
  for (int64_t len : {1, 37, 64, 65, 200}) {
    for (Decay decay : {Decay::kMild, Decay::kStrong, Decay::kZero, Decay::kMixed}) {
      ExpectMatchesReference({.lens = {len}, .decay = decay}, seed += 10);
    }
  }
}

TEST_F(GdnCudaTest, MatchesCpuOnPackedSequences) {
  uint64_t seed = 300;
  for (const std::vector<int64_t>& lens :
       {std::vector<int64_t>{37, 200, 1}, {64, 65, 13}, {65, 0, 130}}) {
    for (Decay decay : {Decay::kMild, Decay::kStrong, Decay::kZero, Decay::kMixed}) {
      ExpectMatchesReference({.lens = lens, .decay = decay}, seed += 10);
    }
  }
}

TEST_F(GdnCudaTest, MatchesCpuAtQwen35HeadShapes) {
  ExpectMatchesReference(
      {.lens = {90, 40}, .hk = 16, .hv = 32, .dk = 128, .dv = 128, .decay = Decay::kMixed}, 500);
}

// 131 chunks x 8 value heads: more than a thousand blocks per chunk-parallel kernel.
TEST_F(GdnCudaTest, MatchesCpuOnManyChunks) {
  ExpectMatchesReference({.lens = {5000, 3000, 300}, .hv = 8, .decay = Decay::kMixed}, 600);
}

// Backward without input gradients (the lowest tuned layer) gives the same dS0, bit for bit.
TEST_F(GdnCudaTest, Ds0OnlyBackwardMatchesFullBackward) {
  const Problem p({.lens = {65, 200, 37}, .decay = Decay::kMixed}, 700);
  const Result full = Run(p, true), ds0_only = Run(p, false);
  ASSERT_EQ(full.ds0.size(), ds0_only.ds0.size());
  EXPECT_EQ(0, std::memcmp(full.ds0.data(), ds0_only.ds0.data(), full.ds0.size() * sizeof(float)));
  EXPECT_TRUE(test::RelNormClose("ds0", ToDouble(ds0_only.ds0), CpuReference(p).ds0, kRelL2));
}

// A backward that takes the forward's kept chunk quantities gives what one that recomputes them
// gives, bit for bit, with and without input gradients.
TEST_F(GdnCudaTest, BackwardFromAKeptForwardIsBitIdentical) {
  const Problem p({.lens = {130, 64, 7}, .hk = 2, .hv = 6, .decay = Decay::kMixed}, 900);
  for (bool input_grads : {true, false}) {
    SCOPED_TRACE(input_grads ? "with input gradients" : "dS0 only");
    const Result a = Run(p, input_grads, /*keep=*/true), b = Run(p, input_grads, false);
    for (auto field : {&Result::o, &Result::dq, &Result::dk, &Result::dv, &Result::dg,
                       &Result::dbeta, &Result::ds0}) {
      ASSERT_EQ((a.*field).size(), (b.*field).size());
      EXPECT_EQ(0, std::memcmp((a.*field).data(), (b.*field).data(),
                               (a.*field).size() * sizeof(float)));
    }
    EXPECT_FALSE(a.ds0.empty());
  }
}

// No atomics and fixed summation orders: two runs agree bit for bit.
TEST_F(GdnCudaTest, RunsAreBitwiseReproducible) {
  const Problem p({.lens = {130, 64, 7}, .hk = 2, .hv = 6, .decay = Decay::kMild}, 800);
  const Result a = Run(p, true), b = Run(p, true);
  for (auto field : {&Result::o, &Result::dq, &Result::dk, &Result::dv, &Result::dg,
                     &Result::dbeta, &Result::ds0}) {
    ASSERT_EQ((a.*field).size(), (b.*field).size());
    EXPECT_EQ(0, std::memcmp((a.*field).data(), (b.*field).data(),
                             (a.*field).size() * sizeof(float)));
  }
}

}  // namespace
}  // namespace s0
