// cuBLAS bf16 GEMMs (kernels/gemm_cuda.h) against the CPU GEMM (kernels/matmul.h, float) on the
// same bf16-rounded inputs, over shapes that are and are not tile multiples (odd K and N
// included), both output types, overwrite and accumulate.
#include "kernels/gemm_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/matmul.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"

namespace s0 {
namespace {

using test::AllClose;
using test::AsStored;
using test::GuardedOutput;
using test::RelNormClose;
using test::Upload;

struct LinearShape {
  int64_t rows, in, out;
};
constexpr LinearShape kShapes[] = {
    {1, 64, 96}, {37, 96, 64}, {64, 200, 130}, {37, 100, 37}, {200, 2560, 1000}, {3, 8, 1},
};

class GemmGpuTest : public test::GpuTest {};

std::string Describe(const char* what, const LinearShape& s, OutputMode mode) {
  return std::string(what) + " rows " + std::to_string(s.rows) + " in " + std::to_string(s.in) +
         " out " + std::to_string(s.out) +
         (mode == OutputMode::kAccumulate ? " accumulate" : " overwrite");
}

// The budget of a fp32 result: tensor cores add their products with truncation rather than
// rounding (Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021), so the error of a
// length-k sum can grow like k * 2^-24 of the partial sums (which are O(1) here), not like
// sqrt(k) * 2^-24; bf16 x bf16 products themselves are exact in fp32. A bf16 result is judged
// by its final rounding (tests/common/gpu.h).
template <typename Out>
void ExpectMatches(const std::string& name, const std::vector<float>& got,
                   const std::vector<float>& ref, int64_t k) {
  if constexpr (std::is_same_v<Out, float>) {
    const double tol = std::max(1e-5, double(k) * 0x1p-24);
    EXPECT_TRUE(AllClose(name, got, ref, 4 * tol, 4 * tol));
    EXPECT_TRUE(RelNormClose(name, got, ref, tol));
  } else {
    EXPECT_TRUE(AllClose(name, got, ref, test::Atol<Out>(), test::Rtol<Out>()));
  }
}

// y (+)= x w^T: x ~ N(0, 1), w ~ N(0, 1/in) so that y is O(1).
template <typename Out>
void CheckForward(CudaContext& ctx, const LinearShape& s, OutputMode mode, uint64_t seed) {
  const std::string name = Describe("LinearForward", s, mode);
  SCOPED_TRACE(name);
  const cudaStream_t stream = ctx.stream();
  const auto x = AsStored<bf16>(test::RandomNormal(size_t(s.rows * s.in), seed));
  const auto w = AsStored<bf16>(
      test::RandomNormal(size_t(s.out * s.in), seed + 1, 1.0f / std::sqrt(float(s.in))));
  const auto initial = AsStored<Out>(test::RandomNormal(size_t(s.rows * s.out), seed + 2));
  const auto d_x = Upload<bf16>(x, stream);
  const auto d_w = Upload<bf16>(w, stream);

  std::vector<float> ref =
      mode == OutputMode::kAccumulate ? initial : std::vector<float>(initial.size());
  MatmulForward(x.data(), w.data(), ref.data(), s.rows, s.in, s.out, mode);
  GuardedOutput<Out> y = mode == OutputMode::kAccumulate
                             ? GuardedOutput<Out>(initial, stream)
                             : GuardedOutput<Out>(initial.size(), stream);
  gpu::LinearForward(ctx, d_x.data(), d_w.data(), y.data(), s.rows, s.in, s.out, mode);
  ExpectMatches<Out>(name, y.Read(name, stream), ref, s.in);
}

// dx (+)= dy w: dy ~ N(0, 1), w ~ N(0, 1/out).
template <typename Out>
void CheckBackward(CudaContext& ctx, const LinearShape& s, OutputMode mode, uint64_t seed) {
  const std::string name = Describe("LinearBackwardInput", s, mode);
  SCOPED_TRACE(name);
  const cudaStream_t stream = ctx.stream();
  const auto dy = AsStored<bf16>(test::RandomNormal(size_t(s.rows * s.out), seed));
  const auto w = AsStored<bf16>(
      test::RandomNormal(size_t(s.out * s.in), seed + 1, 1.0f / std::sqrt(float(s.out))));
  const auto initial = AsStored<Out>(test::RandomNormal(size_t(s.rows * s.in), seed + 2));
  const auto d_dy = Upload<bf16>(dy, stream);
  const auto d_w = Upload<bf16>(w, stream);

  std::vector<float> ref =
      mode == OutputMode::kAccumulate ? initial : std::vector<float>(initial.size());
  MatmulBackwardInput(dy.data(), w.data(), ref.data(), s.rows, s.in, s.out, mode);
  GuardedOutput<Out> dx = mode == OutputMode::kAccumulate
                              ? GuardedOutput<Out>(initial, stream)
                              : GuardedOutput<Out>(initial.size(), stream);
  gpu::LinearBackwardInput(ctx, d_dy.data(), d_w.data(), dx.data(), s.rows, s.in, s.out, mode);
  ExpectMatches<Out>(name, dx.Read(name, stream), ref, s.out);
}

TEST_F(GemmGpuTest, LinearForwardMatchesCpu) {
  uint64_t seed = 100;
  for (const LinearShape& s : kShapes) {
    for (OutputMode mode : {OutputMode::kOverwrite, OutputMode::kAccumulate}) {
      CheckForward<float>(ctx(), s, mode, seed += 3);
      CheckForward<bf16>(ctx(), s, mode, seed += 3);
    }
  }
}

TEST_F(GemmGpuTest, LinearBackwardInputMatchesCpu) {
  uint64_t seed = 200;
  for (const LinearShape& s : kShapes) {
    for (OutputMode mode : {OutputMode::kOverwrite, OutputMode::kAccumulate}) {
      CheckBackward<float>(ctx(), s, mode, seed += 3);
      CheckBackward<bf16>(ctx(), s, mode, seed += 3);
    }
  }
}

// Zero rows is a no-op that leaves the output alone (the engine may see an empty batch slice).
TEST_F(GemmGpuTest, ZeroRowsWritesNothing) {
  const cudaStream_t s = stream();
  const auto w = Upload<bf16>(test::RandomNormal(64 * 32, 7), s);
  const auto x = Upload<bf16>(test::RandomNormal(32, 8), s);
  GuardedOutput<float> y(0, s);
  gpu::LinearForward(ctx(), x.data(), w.data(), y.data(), 0, 32, 64);
  gpu::LinearBackwardInput(ctx(), x.data(), w.data(), y.data(), 0, 64, 32);
  EXPECT_TRUE(y.Read("empty output", s).empty());
}

}  // namespace
}  // namespace s0
