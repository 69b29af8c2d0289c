// GFLOP/s of the CPU GEMM (kernels/matmul.h), fp32 and fp64, forward (y = x w^T) and input
// backward (dx = dy w). Usage: s0_matmul_bench [M K N [threads]]; default: the Qwen3.5 shapes
// below. Each figure is the best of several timed repetitions after one warm-up call.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/parallel.h"
#include "tests/common/compare.h"

namespace {

struct Shape {
  int64_t m, k, n;
  const char* what;
};

template <typename Fn>
double BestSeconds(Fn&& fn, double min_total_s) {
  fn();
  double best = 1e30, total = 0;
  int reps = 0;
  while (reps < 3 || total < min_total_s) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best;
}

template <typename T>
void Run(const Shape& s, const char* type) {
  std::vector<float> xf = s0::test::RandomNormal(size_t(s.m * s.k), 1);
  std::vector<float> wf = s0::test::RandomNormal(size_t(s.n * s.k), 2, 0.05f);
  std::vector<float> dyf = s0::test::RandomNormal(size_t(s.m * s.n), 3);
  std::vector<T> x(xf.begin(), xf.end()), w(wf.begin(), wf.end()), dy(dyf.begin(), dyf.end());
  std::vector<T> y(size_t(s.m * s.n)), dx(size_t(s.m * s.k));
  const double flop = 2.0 * double(s.m) * double(s.k) * double(s.n);
  double fwd = BestSeconds(
      [&] { s0::MatmulForward(x.data(), w.data(), y.data(), s.m, s.k, s.n); }, 1.0);
  double bwd = BestSeconds(
      [&] { s0::MatmulBackwardInput(dy.data(), w.data(), dx.data(), s.m, s.k, s.n); }, 1.0);
  std::printf("%-6s M=%-5lld K=%-5lld N=%-5lld forward %8.1f GFLOP/s (%8.3f ms)  backward %8.1f "
              "GFLOP/s (%8.3f ms)  %s\n",
              type, (long long)s.m, (long long)s.k, (long long)s.n, flop / fwd * 1e-9, fwd * 1e3,
              flop / bwd * 1e-9, bwd * 1e3, s.what);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> shapes;
  if (argc >= 4) {
    shapes.push_back({std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), "command line"});
    if (argc >= 5) s0::SetNumThreads(std::atoi(argv[4]));
  } else {
    shapes = {{384, 1024, 1024, "reference shape"},
              {384, 2560, 9216, "4B gate_proj/up_proj"},
              {384, 9216, 2560, "4B down_proj"},
              {1, 2560, 9216, "decode (GEMV)"}};
  }
  std::printf("threads %d, isa %s\n", s0::NumThreads(), s0::GemmIsaName());
  for (const Shape& s : shapes) Run<float>(s, "fp32");
  if (argc < 4) Run<double>(shapes[0], "fp64");
  return 0;
}
