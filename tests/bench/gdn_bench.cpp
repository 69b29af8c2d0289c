// Throughput of the CPU reference gated delta rule at one Qwen3.5-4B GDN layer's shape
// (H_v = 32, H_k = 16, d_k = d_v = 128), float, one sequence: chunked forward + backward in
// tokens/s on one thread and on all threads, with the recurrent form as a baseline.
// Usage: s0_gdn_bench [seq_len = 384] [repeats = 3]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "kernels/gated_delta_rule.h"
#include "kernels/parallel.h"
#include "tests/common/compare.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void NormaliseRows(std::vector<float>& x, int64_t dim) {
  for (size_t r = 0; r < x.size() / size_t(dim); ++r) {
    float ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += x[r * dim + i] * x[r * dim + i];
    for (int64_t i = 0; i < dim; ++i) x[r * dim + i] /= std::sqrt(ss);
  }
}

struct Timing {
  double forward = 1e30, backward = 1e30;  // best of the repeats, seconds
};

}  // namespace

int main(int argc, char** argv) {
  const int64_t seq_len = argc > 1 ? std::atol(argv[1]) : 384;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  const s0::GdnDims d{.seq_len = seq_len, .num_k_heads = 16, .num_v_heads = 32, .d_k = 128,
                      .d_v = 128};
  const size_t nq = size_t(d.seq_len * d.num_k_heads * d.d_k);
  const size_t nv = size_t(d.seq_len * d.num_v_heads * d.d_v);
  const size_t ng = size_t(d.seq_len * d.num_v_heads);
  const size_t ns = size_t(d.num_v_heads * d.d_k * d.d_v);
  std::vector<float> q = s0::test::RandomNormal(nq, 1), k = s0::test::RandomNormal(nq, 2);
  NormaliseRows(q, d.d_k);
  NormaliseRows(k, d.d_k);
  const std::vector<float> v = s0::test::RandomNormal(nv, 3);
  const std::vector<float> g = s0::test::RandomUniform(ng, 4, -2.0f, -0.01f);
  const std::vector<float> beta = s0::test::RandomUniform(ng, 5, 0.05f, 0.95f);
  const std::vector<float> s0_state = s0::test::RandomNormal(ns, 6, 0.1f);
  const std::vector<float> dout = s0::test::RandomNormal(nv, 7);
  std::vector<float> o(nv), dq(nq), dk(nq), dv(nv), dg(ng), dbeta(ng), ds0(ns);
  const s0::GdnInputs<float> in{q.data(), k.data(), v.data(), g.data(), beta.data(),
                                s0_state.data()};
  const s0::GdnGrads<float> grads{dq.data(), dk.data(), dv.data(), dg.data(), dbeta.data(),
                                  ds0.data()};

  auto measure = [&](bool chunked, int reps) {
    Timing best;
    for (int rep = 0; rep < reps; ++rep) {
      const auto t0 = Clock::now();
      if (chunked) {
        s0::GatedDeltaRuleChunkedForward(d, in, o.data(), nullptr);
      } else {
        s0::GatedDeltaRuleRecurrentForward(d, in, o.data(), nullptr);
      }
      const auto t1 = Clock::now();
      if (chunked) {
        s0::GatedDeltaRuleChunkedBackward(d, in, dout.data(), nullptr, grads);
      } else {
        s0::GatedDeltaRuleRecurrentBackward(d, in, dout.data(), nullptr, grads);
      }
      const auto t2 = Clock::now();
      best.forward = std::min(best.forward, Seconds(t0, t1));
      best.backward = std::min(best.backward, Seconds(t1, t2));
    }
    return best;
  };

  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("gated delta rule, float, T=%ld H_v=%ld H_k=%ld d_k=%ld d_v=%ld, best of %d\n",
              long(d.seq_len), long(d.num_v_heads), long(d.num_k_heads), long(d.d_k),
              long(d.d_v), repeats);
  std::printf("%-10s %8s %12s %12s %16s\n", "form", "threads", "forward s", "backward s",
              "fwd+bwd tok/s");
  for (int threads : {1, all}) {
    s0::SetNumThreads(threads);
    for (bool chunked : {true, false}) {
      const Timing t = measure(chunked, chunked ? repeats : 1);
      std::printf("%-10s %8d %12.3f %12.3f %16.1f\n", chunked ? "chunked" : "recurrent", threads,
                  t.forward, t.backward, double(d.seq_len) / (t.forward + t.backward));
    }
    if (threads == all) break;
  }
  return 0;
}
