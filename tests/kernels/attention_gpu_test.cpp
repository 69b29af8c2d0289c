// The CUDA causal GQA attention (kernels/attention_cuda.h) against the CPU reference
// (AttentionForward / AttentionBackward of kernels/attention.h in double, fed the same float
// inputs), run sequence by sequence; lse against a direct double evaluation. Shapes: sequence
// lengths around the tile sizes (1, 37, 64, 65, 200), packed batches of three sequences of
// different lengths (one empty), head dims of each tile configuration (40, 72, 160), Qwen3.5-4B's
// heads (n_h 16, n_kv 4, d 256) on a short packed batch, long sequences. Outputs start as NaN and
// carry guards. fp32 math throughout: relative L2 <= 1e-5 and |got - ref| <= 1e-5 max|ref| +
// 1e-4 |ref| per element (1e-5 absolute where the reference is all zeros).
// (A .cpp, not a .cu: the references and the comparator are C++20 headers; this calls only host
// APIs.)
#include "kernels/attention_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/device_buffer.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"

namespace s0 {
namespace {

constexpr double kRelL2 = 1e-5, kAtolOfMax = 1e-5, kRtol = 1e-4;

struct Case {
  std::vector<int64_t> lens;
  int64_t n_h = 4, n_kv = 2, d = 72;

  std::string Describe() const {
    std::string s = "lens {";
    for (size_t i = 0; i < lens.size(); ++i) s += (i ? ", " : "") + std::to_string(lens[i]);
    char buf[96];
    std::snprintf(buf, sizeof buf, "} n_h=%ld n_kv=%ld d=%ld", long(n_h), long(n_kv), long(d));
    return s + buf;
  }
};

struct Problem {
  Problem(const Case& c, uint64_t seed) {
    cu.push_back(0);
    for (int64_t len : c.lens) cu.push_back(cu.back() + int32_t(len));
    const int64_t t = cu.back();
    dims = {.tokens = t, .num_seqs = int64_t(c.lens.size()), .n_h = c.n_h, .n_kv = c.n_kv,
            .d = c.d};
    q = test::RandomNormal(size_t(t * c.n_h * c.d), seed + 1);
    k = test::RandomNormal(size_t(t * c.n_kv * c.d), seed + 2);
    v = test::RandomNormal(size_t(t * c.n_kv * c.d), seed + 3);
    dout = test::RandomNormal(size_t(t * c.n_h * c.d), seed + 4);
  }

  AttentionPackedDims dims;
  std::vector<int32_t> cu;
  std::vector<float> q, k, v, dout;
};

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// The double CPU reference, one sequence at a time, and lse[t, h] = log sum_{s <= t}
// e^(q_t . k_s d^-0.5) within the sequence, evaluated directly.
Reference CpuReference(const Problem& p) {
  const AttentionPackedDims& d = p.dims;
  const std::vector<double> q = ToDouble(p.q), k = ToDouble(p.k), v = ToDouble(p.v),
                            dout = ToDouble(p.dout);
  const int64_t q_row = d.n_h * d.d, kv_row = d.n_kv * d.d, group = d.n_h / d.n_kv;
  const double scale = 1.0 / std::sqrt(double(d.d));
  Reference r;
  r.out.resize(q.size());
  r.lse.resize(size_t(d.tokens * d.n_h));
  r.dq.resize(q.size());
  r.dk.resize(k.size());
  r.dv.resize(v.size());
  for (int64_t s = 0; s < d.num_seqs; ++s) {
    const int64_t t0 = p.cu[s], len = p.cu[s + 1] - t0;
    AttentionForward(q.data() + t0 * q_row, k.data() + t0 * kv_row, v.data() + t0 * kv_row,
                     r.out.data() + t0 * q_row, len, d.n_h, d.n_kv, d.d);
    AttentionBackward(q.data() + t0 * q_row, k.data() + t0 * kv_row, v.data() + t0 * kv_row,
                      dout.data() + t0 * q_row, r.dq.data() + t0 * q_row,
                      r.dk.data() + t0 * kv_row, r.dv.data() + t0 * kv_row, len, d.n_h, d.n_kv,
                      d.d);
    for (int64_t t = t0; t < t0 + len; ++t) {
      for (int64_t h = 0; h < d.n_h; ++h) {
        std::vector<double> scores;
        for (int64_t u = t0; u <= t; ++u) {
          double dot = 0;
          for (int64_t c = 0; c < d.d; ++c) {
            dot += q[t * q_row + h * d.d + c] * k[u * kv_row + (h / group) * d.d + c];
          }
          scores.push_back(dot * scale);
        }
        const double mx = *std::max_element(scores.begin(), scores.end());
        double sum = 0;
        for (double x : scores) sum += std::exp(x - mx);
        r.lse[t * d.n_h + h] = mx + std::log(sum);
      }
    }
  }
  return r;
}

struct Result {
  std::vector<float> out, lse, dq, dk, dv;
};

class AttentionCudaTest : public test::GpuTest {
 protected:
  // Forward, then backward from the forward's out and lse, on fresh device buffers.
  Result Run(const Problem& p) {
    const cudaStream_t st = stream();
    DeviceBuffer<int32_t> cu(p.cu.size());
    cu.Upload(p.cu, st);
    const DeviceBuffer<float> q = test::Upload<float>(p.q, st), k = test::Upload<float>(p.k, st),
                              v = test::Upload<float>(p.v, st),
                              dout = test::Upload<float>(p.dout, st);
    const AttentionPackedInputs in{cu.data(), q.data(), k.data(), v.data()};
    test::GuardedOutput<float> out(p.q.size(), st), lse(size_t(p.dims.tokens * p.dims.n_h), st);
    AttentionCudaForward(p.dims, in, out.data(), lse.data(), st);

    DeviceBuffer<unsigned char> ws(AttentionBackwardWorkspaceBytes(p.dims));
    ws.FillBytes(0xFF, st);
    test::GuardedOutput<float> dq(p.q.size(), st), dk(p.k.size(), st), dv(p.v.size(), st);
    AttentionCudaBackward(p.dims, in, out.data(), lse.data(), dout.data(),
                          {dq.data(), dk.data(), dv.data()}, ws.data(), st);
    return {out.Read("out", st), lse.Read("lse", st), dq.Read("dq", st), dk.Read("dk", st),
            dv.Read("dv", st)};
  }

  void ExpectMatchesReference(const Case& c, uint64_t seed) {
    SCOPED_TRACE(c.Describe());
    const Problem p(c, seed);
    const Reference ref = CpuReference(p);
    const Result got = Run(p);
    Expect("out", got.out, ref.out);
    Expect("lse", got.lse, ref.lse);
    Expect("dq", got.dq, ref.dq);
    Expect("dk", got.dk, ref.dk);
    Expect("dv", got.dv, ref.dv);
  }

  // Budgets relative to the reference's scale. An identically zero reference (dq and dk of a
  // one-token sequence: P = 1 and dP - D = 0, which the device only reaches up to rounding, its D
  // = rowsum(dO ⊙ O) being summed in another order than dP) gets the absolute budget kAtolOfMax.
  static void Expect(const std::string& name, const std::vector<float>& got,
                     const std::vector<double>& ref) {
    const std::vector<double> got_d = ToDouble(got);
    double max_ref = 0;
    for (double x : ref) max_ref = std::max(max_ref, std::fabs(x));
    if (max_ref > 0) {
      EXPECT_TRUE(test::RelNormClose(name, got_d, ref, kRelL2));
    }
    const double atol = kAtolOfMax * (max_ref > 0 ? max_ref : 1.0);
    EXPECT_TRUE(test::AllClose(name, got_d, ref, atol, kRtol));
  }
};

// d = 40, 72 and 160 use the 64 x 64, 64 x 128 and 32 x 256 tile configurations.
TEST_F(AttentionCudaTest, MatchesCpuOnSingleSequences) {
  uint64_t seed = 100;
  for (int64_t len : {1, 37, 64, 65, 200}) {
    for (int64_t d : {40, 72, 160}) {
      ExpectMatchesReference({.lens = {len}, .d = d}, seed += 10);
    }
  }
}

TEST_F(AttentionCudaTest, MatchesCpuOnPackedSequences) {
  uint64_t seed = 300;
  for (const std::vector<int64_t>& lens :
       {std::vector<int64_t>{37, 200, 1}, {64, 65, 13}, {65, 0, 130}}) {
    for (int64_t d : {40, 72, 160}) {
      ExpectMatchesReference({.lens = lens, .n_h = 6, .n_kv = 2, .d = d}, seed += 10);
    }
  }
}

TEST_F(AttentionCudaTest, MatchesCpuAtQwen35HeadShapes) {
  ExpectMatchesReference({.lens = {150, 30, 1}, .n_h = 16, .n_kv = 4, .d = 256}, 500);
}

TEST_F(AttentionCudaTest, MatchesCpuOnLongSequences) {
  ExpectMatchesReference({.lens = {2000, 700, 17}, .n_h = 2, .n_kv = 1, .d = 64}, 600);
}

// No atomics and fixed summation orders: two runs agree bit for bit.
TEST_F(AttentionCudaTest, RunsAreBitwiseReproducible) {
  const Problem p({.lens = {130, 64, 7}, .n_h = 8, .n_kv = 2, .d = 128}, 700);
  const Result a = Run(p), b = Run(p);
  for (auto field : {&Result::out, &Result::lse, &Result::dq, &Result::dk, &Result::dv}) {
    ASSERT_EQ((a.*field).size(), (b.*field).size());
    EXPECT_EQ(0, std::memcmp((a.*field).data(), (b.*field).data(),
                             (a.*field).size() * sizeof(float)));
  }
}

}  // namespace
}  // namespace s0
