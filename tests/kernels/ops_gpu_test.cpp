// Every CUDA op of kernels/ops_cuda.h, gdn_ops_cuda.h and cross_entropy_cuda.h against its CPU
// reference (float instantiation) on fresh random inputs, over shapes that are and are not
// multiples of the warp, block and chunk sizes, every instantiated dtype, packed batches where
// the op looks along T. Inputs the device takes in bf16 are rounded first and the CPU reference
// gets the rounded values; outputs are poisoned (NaN) and guarded; tolerances by output type are
// in tests/common/gpu.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/activations.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/cross_entropy_cuda.h"
#include "kernels/embedding.h"
#include "kernels/gdn.h"
#include "kernels/gdn_ops_cuda.h"
#include "kernels/norm.h"
#include "kernels/ops_cuda.h"
#include "kernels/rope.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"

namespace s0 {
namespace {

using test::AllClose;
using test::AsStored;
using test::Atol;
using test::GuardedOutput;
using test::Rtol;
using test::Upload;

constexpr int64_t kTokens[] = {1, 37, 64, 200};
constexpr int64_t kDims[] = {64, 96, 200, 2560};
constexpr float kEps = 1e-6f;

class OpsGpuTest : public test::GpuTest {};

struct HeadShape {
  int64_t heads, dim;
};

// Fresh inputs: every draw uses the next seed.
uint64_t NextSeed() {
  static uint64_t seed = 1000;
  return ++seed;
}
std::vector<float> Normal(int64_t n, float stddev = 1.0f) {
  return test::RandomNormal(size_t(n), NextSeed(), stddev);
}
std::vector<float> Uniform(int64_t n, float lo, float hi) {
  return test::RandomUniform(size_t(n), NextSeed(), lo, hi);
}
std::vector<float> Zeros(int64_t n) { return std::vector<float>(size_t(n), 0.0f); }
// n token ids in [0, vocab), the last id among them.
std::vector<int32_t> RandomIds(int64_t n, int64_t vocab) {
  const std::vector<float> u = Uniform(n, 0.0f, float(vocab));
  std::vector<int32_t> ids(u.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = std::min(int32_t(u[i]), int32_t(vocab - 1));
  ids[0] = int32_t(vocab - 1);
  return ids;
}

template <typename T>
const char* TypeName() {
  return std::is_same_v<T, bf16> ? "bf16" : "fp32";
}

std::string Shape(const char* op, int64_t a, int64_t b) {
  return std::string(op) + " [" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

// An output the op overwrites (poisoned) or accumulates into (initial values, as T holds them).
template <typename T>
GuardedOutput<T> Output(OutputMode mode, const std::vector<float>& initial, cudaStream_t s) {
  return mode == OutputMode::kAccumulate ? GuardedOutput<T>(initial, s)
                                         : GuardedOutput<T>(initial.size(), s);
}

// A packed batch of `tokens` tokens: sequence lengths cycling through 7, 1, 30, 3 (the last cut
// to fit), or one sequence; and each token's position in its sequence.
struct Packing {
  std::vector<int64_t> lengths;
  std::vector<int32_t> pos;
};
Packing Pack(int64_t tokens, bool packed) {
  Packing p;
  const int64_t cycle[] = {7, 1, 30, 3};
  for (int64_t done = 0, k = 0; done < tokens; ++k) {
    const int64_t len = packed ? std::min(cycle[k % 4], tokens - done) : tokens;
    p.lengths.push_back(len);
    for (int64_t i = 0; i < len; ++i) p.pos.push_back(int32_t(i));
    done += len;
  }
  return p;
}

// ---- Conversions, embedding, split / merge: exact.

TEST_F(OpsGpuTest, CastToBf16RoundsLikeTheHost) {
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000), int64_t(200 * 2560)}) {
    SCOPED_TRACE(n);
    std::vector<float> x = Normal(n, 100.0f);
    x[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even (1.0)
    const auto d_x = Upload<float>(x, stream());
    GuardedOutput<bf16> y(size_t(n), stream());
    gpu::CastToBf16(d_x.data(), y.data(), n, stream());
    EXPECT_TRUE(AllClose("cast", y.Read("cast", stream()), AsStored<bf16>(x), 0, 0));
  }
}

template <typename Out>
void CheckEmbedding(CudaContext& ctx, int64_t tokens, int64_t hidden) {
  SCOPED_TRACE(Shape("embedding", tokens, hidden) + " -> " + TypeName<Out>());
  const cudaStream_t s = ctx.stream();
  const int64_t vocab = 1000;
  const auto table = AsStored<bf16>(Normal(vocab * hidden));
  const std::vector<int32_t> ids = RandomIds(tokens, vocab);
  std::vector<float> ref = Zeros(tokens * hidden);
  EmbeddingForward(ids.data(), table.data(), ref.data(), tokens, vocab, hidden);
  DeviceBuffer<int32_t> d_ids(ids.size());
  d_ids.Upload(ids, s);
  const auto d_table = Upload<bf16>(table, s);
  GuardedOutput<Out> out(ref.size(), s);
  gpu::EmbeddingForward(d_ids.data(), d_table.data(), out.data(), tokens, vocab, hidden, s);
  EXPECT_TRUE(AllClose("embedding", out.Read("embedding", s), ref, 0, 0));
}

TEST_F(OpsGpuTest, EmbeddingMatchesCpu) {
  for (int64_t t : kTokens) {
    for (int64_t h : kDims) {
      CheckEmbedding<float>(ctx(), t, h);
      CheckEmbedding<bf16>(ctx(), t, h);
    }
  }
}

template <typename G>
void CheckSplitMerge(CudaContext& ctx, int64_t tokens, int64_t n_h, int64_t d) {
  SCOPED_TRACE(Shape("split/merge", tokens, n_h * d) + " grad " + TypeName<G>());
  const cudaStream_t s = ctx.stream();
  const int64_t n = tokens * n_h * d;
  const auto qg = AsStored<bf16>(Normal(2 * n));
  std::vector<float> q_ref = Zeros(n), gate_ref = Zeros(n), dqg_ref = Zeros(2 * n);
  SplitQueryGate(qg.data(), q_ref.data(), gate_ref.data(), tokens, n_h, d);
  const auto d_qg = Upload<bf16>(qg, s);
  GuardedOutput<bf16> q(size_t(n), s), gate(size_t(n), s);
  gpu::SplitQueryGate(d_qg.data(), q.data(), gate.data(), tokens, n_h, d, s);
  EXPECT_TRUE(AllClose("q", q.Read("q", s), q_ref, 0, 0));
  EXPECT_TRUE(AllClose("gate", gate.Read("gate", s), gate_ref, 0, 0));

  const auto dq = Normal(n), dgate = Normal(n);
  MergeQueryGateGrad(dq.data(), dgate.data(), dqg_ref.data(), tokens, n_h, d);
  const auto d_dq = Upload<float>(dq, s), d_dgate = Upload<float>(dgate, s);
  GuardedOutput<G> dqg(size_t(2 * n), s);
  gpu::MergeQueryGateGrad(d_dq.data(), d_dgate.data(), dqg.data(), tokens, n_h, d, s);
  EXPECT_TRUE(AllClose("dqg", dqg.Read("dqg", s), AsStored<G>(dqg_ref), 0, 0));
}

TEST_F(OpsGpuTest, SplitQueryGateAndMergeMatchCpu) {
  for (int64_t t : kTokens) {
    for (const HeadShape& h :
         {HeadShape{2, 64}, HeadShape{3, 96}, HeadShape{4, 256}, HeadShape{1, 5}}) {
      CheckSplitMerge<float>(ctx(), t, h.heads, h.dim);
      CheckSplitMerge<bf16>(ctx(), t, h.heads, h.dim);
    }
  }
}

// ---- 1 + w RMSNorm.

template <typename X, typename Y>
void CheckRmsNormForward(CudaContext& ctx, int64_t rows, int64_t dim, bool in_place) {
  SCOPED_TRACE(Shape("RmsNormForward", rows, dim) + " x " + TypeName<X>() + " y " + TypeName<Y>() +
               (in_place ? " in place" : ""));
  const cudaStream_t s = ctx.stream();
  const auto x = AsStored<X>(Normal(rows * dim, 1.5f));
  const auto w = Normal(dim, 0.3f);
  std::vector<float> ref(x.size());
  RmsNormForward(x.data(), w.data(), ref.data(), rows, dim, kEps);
  const auto d_w = Upload<float>(w, s);
  if constexpr (std::is_same_v<X, Y>) {
    if (in_place) {
      GuardedOutput<Y> xy(x, s);
      gpu::RmsNormForward(xy.data(), d_w.data(), xy.data(), rows, dim, kEps, s);
      EXPECT_TRUE(AllClose("y", xy.Read("y", s), ref, Atol<Y>(), Rtol<Y>()));
      return;
    }
  }
  const auto d_x = Upload<X>(x, s);
  GuardedOutput<Y> y(x.size(), s);
  gpu::RmsNormForward(d_x.data(), d_w.data(), y.data(), rows, dim, kEps, s);
  EXPECT_TRUE(AllClose("y", y.Read("y", s), ref, Atol<Y>(), Rtol<Y>()));
}

template <typename X, typename G>
void CheckRmsNormBackward(CudaContext& ctx, int64_t rows, int64_t dim, OutputMode mode) {
  SCOPED_TRACE(Shape("RmsNormBackward", rows, dim) + " x " + TypeName<X>() + " dx " +
               TypeName<G>() + (mode == OutputMode::kAccumulate ? " accumulate" : ""));
  const cudaStream_t s = ctx.stream();
  const auto x = AsStored<X>(Normal(rows * dim, 1.5f));
  const auto w = Normal(dim, 0.3f);
  const auto dy = Normal(rows * dim);
  const auto initial = AsStored<G>(Normal(rows * dim));
  std::vector<float> ref = mode == OutputMode::kAccumulate ? initial : std::vector<float>(x.size());
  RmsNormBackward(x.data(), w.data(), dy.data(), ref.data(), rows, dim, kEps, mode);
  const auto d_x = Upload<X>(x, s);
  const auto d_w = Upload<float>(w, s), d_dy = Upload<float>(dy, s);
  GuardedOutput<G> dx = Output<G>(mode, initial, s);
  gpu::RmsNormBackward(d_x.data(), d_w.data(), d_dy.data(), dx.data(), rows, dim, kEps, mode, s);
  EXPECT_TRUE(AllClose("dx", dx.Read("dx", s), ref, Atol<G>(), Rtol<G>()));
}

TEST_F(OpsGpuTest, RmsNormForwardMatchesCpu) {
  for (int64_t t : kTokens) {
    for (int64_t h : kDims) {
      CheckRmsNormForward<float, bf16>(ctx(), t, h, false);
      CheckRmsNormForward<bf16, bf16>(ctx(), t, h, false);
      CheckRmsNormForward<bf16, float>(ctx(), t, h, false);
      CheckRmsNormForward<float, float>(ctx(), t, h, false);
    }
  }
  CheckRmsNormForward<bf16, bf16>(ctx(), 37, 200, true);
  CheckRmsNormForward<float, float>(ctx(), 37, 200, true);
}

TEST_F(OpsGpuTest, RmsNormBackwardMatchesCpu) {
  for (int64_t t : kTokens) {
    for (int64_t h : kDims) {
      for (OutputMode mode : {OutputMode::kOverwrite, OutputMode::kAccumulate}) {
        CheckRmsNormBackward<float, float>(ctx(), t, h, mode);
        CheckRmsNormBackward<bf16, float>(ctx(), t, h, mode);
        CheckRmsNormBackward<bf16, bf16>(ctx(), t, h, mode);
        CheckRmsNormBackward<float, bf16>(ctx(), t, h, mode);
      }
    }
  }
}

// dx may be dy itself (fp32), accumulating: dx = dy + grad.
TEST_F(OpsGpuTest, RmsNormBackwardInPlace) {
  const cudaStream_t s = stream();
  const int64_t rows = 37, dim = 96;
  const auto x = AsStored<bf16>(Normal(rows * dim));
  const auto w = Normal(dim, 0.3f);
  const auto dy = Normal(rows * dim);
  std::vector<float> ref = dy;
  RmsNormBackward(x.data(), w.data(), dy.data(), ref.data(), rows, dim, kEps,
                  OutputMode::kAccumulate);
  const auto d_x = Upload<bf16>(x, s);
  const auto d_w = Upload<float>(w, s);
  GuardedOutput<float> g(dy, s);
  gpu::RmsNormBackward(d_x.data(), d_w.data(), g.data(), g.data(), rows, dim, kEps,
                       OutputMode::kAccumulate, s);
  EXPECT_TRUE(AllClose("dx", g.Read("dx", s), ref, Atol<float>(), Rtol<float>()));
}

// ---- RoPE.

template <typename E>
void CheckRope(CudaContext& ctx, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot,
               bool packed, bool in_place) {
  SCOPED_TRACE(Shape("rope", tokens, heads * head_dim) + " rot " + std::to_string(rot) + " " +
               TypeName<E>() + (packed ? " packed" : "") + (in_place ? " in place" : ""));
  const cudaStream_t s = ctx.stream();
  const int64_t half = rot / 2, n = tokens * heads * head_dim;
  const Packing p = Pack(tokens, packed);
  // The device table has more rows than any position uses; the CPU gets one row per token.
  const int64_t table_rows = tokens + 5;
  std::vector<float> cos = Zeros(table_rows * half), sin(cos.size());
  RopeTables(table_rows, 0, rot, 1e7, cos.data(), sin.data());
  std::vector<float> cos_t = Zeros(tokens * half), sin_t(cos_t.size());
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(cos.begin() + p.pos[size_t(t)] * half, half, cos_t.begin() + t * half);
    std::copy_n(sin.begin() + p.pos[size_t(t)] * half, half, sin_t.begin() + t * half);
  }
  const auto x = AsStored<E>(Normal(n));
  std::vector<float> fwd_ref = Zeros(n), bwd_ref = Zeros(n);
  RopeForward(x.data(), fwd_ref.data(), tokens, heads, head_dim, rot, cos_t.data(), sin_t.data());
  RopeBackward(x.data(), bwd_ref.data(), tokens, heads, head_dim, rot, cos_t.data(), sin_t.data());

  const auto d_cos = Upload<float>(cos, s), d_sin = Upload<float>(sin, s);
  DeviceBuffer<int32_t> d_pos(p.pos.size());
  d_pos.Upload(p.pos, s);
  const int32_t* pos = packed ? d_pos.data() : nullptr;
  const auto d_x = Upload<E>(x, s);
  for (int backward = 0; backward < 2; ++backward) {
    const std::string name = backward ? "RopeBackward" : "RopeForward";
    const auto run = backward ? gpu::RopeBackward<E> : gpu::RopeForward<E>;
    GuardedOutput<E> y = in_place ? GuardedOutput<E>(x, s) : GuardedOutput<E>(size_t(n), s);
    run(in_place ? y.data() : d_x.data(), y.data(), tokens, heads, head_dim, rot, d_cos.data(),
        d_sin.data(), pos, s);
    EXPECT_TRUE(
        AllClose(name, y.Read(name, s), backward ? bwd_ref : fwd_ref, Atol<E>(), Rtol<E>()));
  }
}

TEST_F(OpsGpuTest, RopeMatchesCpu) {
  struct Heads {
    int64_t heads, head_dim, rot;
  };
  for (int64_t t : kTokens) {
    for (Heads h : {Heads{2, 256, 64}, Heads{3, 64, 64}, Heads{1, 96, 24}}) {
      for (bool packed : {false, true}) {
        for (bool in_place : {false, true}) {
          CheckRope<float>(ctx(), t, h.heads, h.head_dim, h.rot, packed, in_place);
          CheckRope<bf16>(ctx(), t, h.heads, h.head_dim, h.rot, packed, in_place);
        }
      }
    }
  }
}

// ---- SwiGLU and the sigmoid output gate (element-wise; n need not be a multiple of anything).

constexpr int64_t kElementCounts[] = {1, 37 * 96, 200 * 200 + 3, 64 * 2560};

template <typename G>
void CheckSwiGlu(CudaContext& ctx, int64_t n) {
  SCOPED_TRACE("swiglu n " + std::to_string(n) + " grad " + TypeName<G>());
  const cudaStream_t s = ctx.stream();
  const auto gate = AsStored<bf16>(Normal(n, 3.0f)), up = AsStored<bf16>(Normal(n));
  const auto dact = Normal(n);
  std::vector<float> act_ref = Zeros(n), dgate_ref = Zeros(n), dup_ref = Zeros(n);
  SwiGluForward(gate.data(), up.data(), act_ref.data(), n);
  SwiGluBackward(gate.data(), up.data(), dact.data(), dgate_ref.data(), dup_ref.data(), n);
  const auto d_gate = Upload<bf16>(gate, s), d_up = Upload<bf16>(up, s);
  const auto d_dact = Upload<float>(dact, s);
  GuardedOutput<bf16> act(size_t(n), s);
  GuardedOutput<G> dgate(size_t(n), s), dup(size_t(n), s);
  gpu::SwiGluForward(d_gate.data(), d_up.data(), act.data(), n, s);
  gpu::SwiGluBackward(d_gate.data(), d_up.data(), d_dact.data(), dgate.data(), dup.data(), n, s);
  EXPECT_TRUE(AllClose("act", act.Read("act", s), act_ref, Atol<bf16>(), Rtol<bf16>()));
  EXPECT_TRUE(AllClose("dgate", dgate.Read("dgate", s), dgate_ref, Atol<G>(), Rtol<G>()));
  EXPECT_TRUE(AllClose("dup", dup.Read("dup", s), dup_ref, Atol<G>(), Rtol<G>()));
}

TEST_F(OpsGpuTest, SwiGluMatchesCpu) {
  for (int64_t n : kElementCounts) {
    CheckSwiGlu<float>(ctx(), n);
    CheckSwiGlu<bf16>(ctx(), n);
  }
}

template <typename A>
void CheckSigmoidGate(CudaContext& ctx, int64_t n) {
  SCOPED_TRACE("sigmoid gate n " + std::to_string(n) + " attn " + TypeName<A>());
  const cudaStream_t s = ctx.stream();
  const auto attn = AsStored<A>(Normal(n));
  const auto gate = AsStored<bf16>(Normal(n, 4.0f));
  const auto dout = Normal(n);
  std::vector<float> out_ref = Zeros(n), dattn_ref = Zeros(n), dgate_ref = Zeros(n);
  SigmoidGateForward(attn.data(), gate.data(), out_ref.data(), n);
  SigmoidGateBackward(attn.data(), gate.data(), dout.data(), dattn_ref.data(), dgate_ref.data(), n);
  const auto d_attn = Upload<A>(attn, s);
  const auto d_gate = Upload<bf16>(gate, s);
  const auto d_dout = Upload<float>(dout, s);
  GuardedOutput<bf16> out(size_t(n), s);
  GuardedOutput<float> dattn(size_t(n), s), dgate(size_t(n), s);
  gpu::SigmoidGateForward(d_attn.data(), d_gate.data(), out.data(), n, s);
  gpu::SigmoidGateBackward(d_attn.data(), d_gate.data(), d_dout.data(), dattn.data(), dgate.data(),
                           n, s);
  EXPECT_TRUE(AllClose("out", out.Read("out", s), out_ref, Atol<bf16>(), Rtol<bf16>()));
  EXPECT_TRUE(AllClose("dattn", dattn.Read("dattn", s), dattn_ref, Atol<float>(), Rtol<float>()));
  EXPECT_TRUE(AllClose("dgate", dgate.Read("dgate", s), dgate_ref, Atol<float>(), Rtol<float>()));
}

TEST_F(OpsGpuTest, SigmoidGateMatchesCpu) {
  for (int64_t n : kElementCounts) {
    CheckSigmoidGate<float>(ctx(), n);
    CheckSigmoidGate<bf16>(ctx(), n);
  }
}

// ---- Gated DeltaNet ops.

// The CPU conv is one sequence per call: run it on each sequence of the packing.
template <typename U, typename G>
void CheckConv(CudaContext& ctx, int64_t tokens, int64_t channels, int64_t kernel_size,
               bool packed) {
  SCOPED_TRACE(Shape("conv", tokens, channels) + " K " + std::to_string(kernel_size) + " u " +
               TypeName<U>() + " dx " + TypeName<G>() + (packed ? " packed" : ""));
  const cudaStream_t s = ctx.stream();
  const int64_t n = tokens * channels;
  const Packing p = Pack(tokens, packed);
  const auto x = AsStored<bf16>(Normal(n));
  const auto w = Normal(channels * kernel_size, 0.5f);
  const auto du = Normal(n);
  std::vector<float> u_ref = Zeros(n), dx_ref = Zeros(n);
  int64_t off = 0;
  for (int64_t len : p.lengths) {
    const int64_t o = off * channels;
    GdnConvSiluForward(x.data() + o, w.data(), len, channels, kernel_size, u_ref.data() + o);
    GdnConvSiluBackward(x.data() + o, w.data(), du.data() + o, len, channels, kernel_size,
                        dx_ref.data() + o);
    off += len;
  }
  const auto d_x = Upload<bf16>(x, s);
  const auto d_w = Upload<float>(w, s), d_du = Upload<float>(du, s);
  DeviceBuffer<int32_t> d_pos(p.pos.size());
  d_pos.Upload(p.pos, s);
  const int32_t* pos = packed ? d_pos.data() : nullptr;
  GuardedOutput<U> u(size_t(n), s);
  GuardedOutput<G> dx(size_t(n), s);
  gpu::GdnConvSiluForward(d_x.data(), d_w.data(), u.data(), tokens, channels, kernel_size, pos, s);
  gpu::GdnConvSiluBackward(d_x.data(), d_w.data(), d_du.data(), dx.data(), tokens, channels,
                           kernel_size, pos, s);
  EXPECT_TRUE(AllClose("u", u.Read("u", s), u_ref, Atol<U>(), Rtol<U>()));
  EXPECT_TRUE(AllClose("dx", dx.Read("dx", s), dx_ref, Atol<G>(), Rtol<G>()));
}

TEST_F(OpsGpuTest, GdnConvSiluMatchesCpu) {
  for (int64_t t : kTokens) {
    for (int64_t c : {int64_t(64), int64_t(200), int64_t(1000)}) {
      for (bool packed : {false, true}) {
        CheckConv<float, float>(ctx(), t, c, 4, packed);
        CheckConv<float, bf16>(ctx(), t, c, 4, packed);
        CheckConv<bf16, float>(ctx(), t, c, 4, packed);
      }
    }
    CheckConv<float, float>(ctx(), t, 96, 3, true);
  }
}

// q (or k) read out of a wider conv output: x rows at stride ldx = 3 * heads * dim, starting at
// column heads * dim (where k sits); the gradient written back at the same stride, leaving the
// other columns alone.
template <typename X, typename Y>
void CheckL2Norm(CudaContext& ctx, int64_t tokens, int64_t heads, int64_t dim) {
  SCOPED_TRACE(Shape("l2norm", tokens * heads, dim) + " x " + TypeName<X>() + " y " +
               TypeName<Y>());
  const cudaStream_t s = ctx.stream();
  const int64_t width = heads * dim, ld = 3 * width, n = tokens * width;
  const auto wide = AsStored<X>(Normal(tokens * ld));
  std::vector<float> x = Zeros(n);
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(wide.begin() + t * ld + width, width, x.begin() + t * width);
  }
  const auto dy = Normal(n);
  std::vector<float> y_ref = Zeros(n), dx_ref = Zeros(n);
  GdnL2NormForward(x.data(), tokens * heads, dim, y_ref.data());
  GdnL2NormBackward(x.data(), dy.data(), tokens * heads, dim, dx_ref.data());

  const auto d_wide = Upload<X>(wide, s);
  const auto d_dy = Upload<float>(dy, s);
  GuardedOutput<Y> y(size_t(n), s);
  GuardedOutput<float> dx_wide(size_t(tokens * ld), s);
  gpu::GdnL2NormForward(d_wide.data() + width, ld, y.data(), width, tokens, heads, dim, s);
  gpu::GdnL2NormBackward(d_wide.data() + width, ld, d_dy.data(), width, dx_wide.data() + width, ld,
                         tokens, heads, dim, s);
  EXPECT_TRUE(AllClose("y", y.Read("y", s), y_ref, Atol<Y>(), Rtol<Y>()));
  const std::vector<float> got_wide = dx_wide.Read("dx", s);
  std::vector<float> dx = Zeros(n);
  size_t touched_outside = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < ld; ++j) {
      const float v = got_wide[size_t(t * ld + j)];
      if (j >= width && j < 2 * width) {
        dx[size_t(t * width + j - width)] = v;
      } else if (!std::isnan(v)) {
        ++touched_outside;
      }
    }
  }
  EXPECT_EQ(touched_outside, 0u) << "dx written outside its columns";
  EXPECT_TRUE(AllClose("dx", dx, dx_ref, Atol<float>(), Rtol<float>()));
}

TEST_F(OpsGpuTest, GdnL2NormMatchesCpu) {
  for (int64_t t : kTokens) {
    for (const HeadShape& h : {HeadShape{1, 128}, HeadShape{3, 64}, HeadShape{2, 100}}) {
      CheckL2Norm<float, float>(ctx(), t, h.heads, h.dim);
      CheckL2Norm<float, bf16>(ctx(), t, h.heads, h.dim);
      CheckL2Norm<bf16, float>(ctx(), t, h.heads, h.dim);
      CheckL2Norm<bf16, bf16>(ctx(), t, h.heads, h.dim);
    }
  }
}

// a + dt_bias spans both sides of softplus' threshold (20).
template <typename G>
void CheckGates(CudaContext& ctx, int64_t tokens, int64_t heads) {
  SCOPED_TRACE(Shape("gates", tokens, heads) + " grad " + TypeName<G>());
  const cudaStream_t s = ctx.stream();
  const int64_t n = tokens * heads;
  const auto a = AsStored<bf16>(Uniform(n, -30.0f, 30.0f));
  const auto b = AsStored<bf16>(Normal(n, 3.0f));
  const auto a_log = Uniform(heads, -2.0f, 2.0f), dt_bias = Uniform(heads, -3.0f, 3.0f);
  const auto dg = Normal(n), dbeta = Normal(n);
  std::vector<float> g_ref = Zeros(n), beta_ref = Zeros(n), da_ref = Zeros(n), db_ref = Zeros(n);
  GdnGatesForward(a.data(), b.data(), a_log.data(), dt_bias.data(), tokens, heads, g_ref.data(),
                  beta_ref.data());
  GdnGatesBackward(a.data(), b.data(), a_log.data(), dt_bias.data(), dg.data(), dbeta.data(),
                   tokens, heads, da_ref.data(), db_ref.data());
  const auto d_a = Upload<bf16>(a, s), d_b = Upload<bf16>(b, s);
  const auto d_alog = Upload<float>(a_log, s), d_dtb = Upload<float>(dt_bias, s);
  const auto d_dg = Upload<float>(dg, s), d_dbeta = Upload<float>(dbeta, s);
  GuardedOutput<float> g(size_t(n), s), beta(size_t(n), s);
  GuardedOutput<G> da(size_t(n), s), db(size_t(n), s);
  gpu::GdnGatesForward(d_a.data(), d_b.data(), d_alog.data(), d_dtb.data(), g.data(), beta.data(),
                       tokens, heads, s);
  gpu::GdnGatesBackward(d_a.data(), d_b.data(), d_alog.data(), d_dtb.data(), d_dg.data(),
                        d_dbeta.data(), da.data(), db.data(), tokens, heads, s);
  EXPECT_TRUE(AllClose("g", g.Read("g", s), g_ref, Atol<float>(), Rtol<float>()));
  EXPECT_TRUE(AllClose("beta", beta.Read("beta", s), beta_ref, Atol<float>(), Rtol<float>()));
  EXPECT_TRUE(AllClose("da", da.Read("da", s), da_ref, Atol<G>(), Rtol<G>()));
  EXPECT_TRUE(AllClose("db", db.Read("db", s), db_ref, Atol<G>(), Rtol<G>()));
}

TEST_F(OpsGpuTest, GdnGatesMatchCpu) {
  for (int64_t t : kTokens) {
    for (int64_t heads : {int64_t(4), int64_t(5), int64_t(32)}) {
      CheckGates<float>(ctx(), t, heads);
      CheckGates<bf16>(ctx(), t, heads);
    }
  }
}

template <typename O, typename G>
void CheckGatedRmsNorm(CudaContext& ctx, int64_t rows, int64_t dim) {
  SCOPED_TRACE(Shape("gated rmsnorm", rows, dim) + " o " + TypeName<O>() + " dz " + TypeName<G>());
  const cudaStream_t s = ctx.stream();
  const int64_t n = rows * dim;
  const auto o = AsStored<O>(Normal(n, 0.2f));
  const auto z = AsStored<bf16>(Normal(n, 2.0f));
  const auto w = test::RandomNormal(size_t(dim), NextSeed(), 0.1f, 1.0f);
  const auto dy = Normal(n);
  std::vector<float> y_ref = Zeros(n), do_ref = Zeros(n), dz_ref = Zeros(n);
  GdnGatedRmsNormForward(o.data(), z.data(), w.data(), rows, dim, kEps, y_ref.data());
  GdnGatedRmsNormBackward(o.data(), z.data(), w.data(), dy.data(), rows, dim, kEps, do_ref.data(),
                          dz_ref.data());
  const auto d_o = Upload<O>(o, s);
  const auto d_z = Upload<bf16>(z, s);
  const auto d_w = Upload<float>(w, s), d_dy = Upload<float>(dy, s);
  GuardedOutput<bf16> y(size_t(n), s);
  GuardedOutput<float> d_out(size_t(n), s);
  GuardedOutput<G> dz(size_t(n), s);
  gpu::GdnGatedRmsNormForward(d_o.data(), d_z.data(), d_w.data(), y.data(), rows, dim, kEps, s);
  gpu::GdnGatedRmsNormBackward(d_o.data(), d_z.data(), d_w.data(), d_dy.data(), d_out.data(),
                               dz.data(), rows, dim, kEps, s);
  EXPECT_TRUE(AllClose("y", y.Read("y", s), y_ref, Atol<bf16>(), Rtol<bf16>()));
  EXPECT_TRUE(AllClose("d_o", d_out.Read("d_o", s), do_ref, Atol<float>(), Rtol<float>()));
  EXPECT_TRUE(AllClose("dz", dz.Read("dz", s), dz_ref, Atol<G>(), Rtol<G>()));
}

TEST_F(OpsGpuTest, GdnGatedRmsNormMatchesCpu) {
  for (int64_t t : kTokens) {
    for (int64_t dim : {int64_t(128), int64_t(64), int64_t(100)}) {
      const int64_t rows = t * 3;
      CheckGatedRmsNorm<float, float>(ctx(), rows, dim);
      CheckGatedRmsNorm<bf16, float>(ctx(), rows, dim);
      CheckGatedRmsNorm<float, bf16>(ctx(), rows, dim);
      CheckGatedRmsNorm<bf16, bf16>(ctx(), rows, dim);
    }
  }
}

// ---- Completion cross-entropy over a packed batch.

struct CeCase {
  int64_t hidden, vocab, row_block, vocab_chunk;
  float logit_scale;
};

// Sequences with a gap before the first and between two (rows no sequence owns), a prompt that
// leaves one scored row, a prompt of zero, the shortest sequence (2 tokens).
void CheckCrossEntropy(CudaContext& ctx, const CeCase& c) {
  SCOPED_TRACE("cross-entropy H " + std::to_string(c.hidden) + " V " + std::to_string(c.vocab) +
               " row_block " + std::to_string(c.row_block) + " chunk " +
               std::to_string(c.vocab_chunk));
  const cudaStream_t s = ctx.stream();
  const int64_t H = c.hidden, V = c.vocab;
  std::vector<gpu::CeSequence> seqs = {
      {3, 37, 10, 0.25}, {40, 5, 0, 0.25}, {45, 64, 63, 1.0}, {112, 2, 1, 0.5}, {114, 90, 20, 2.0}};
  const int64_t tokens = 210;
  const auto hidden = AsStored<bf16>(Normal(tokens * H));
  const auto lm_head = AsStored<bf16>(Normal(V * H, c.logit_scale / std::sqrt(float(H))));
  const std::vector<int32_t> ids = RandomIds(tokens, V);

  std::vector<double> loss_ref;
  std::vector<float> dh_ref = Zeros(tokens * H);
  for (const gpu::CeSequence& q : seqs) {
    loss_ref.push_back(CompletionCrossEntropy(hidden.data() + q.offset * H, lm_head.data(),
                                              ids.data() + q.offset, q.length, H, V, q.prompt_len,
                                              q.grad_scale, dh_ref.data() + q.offset * H));
  }
  const auto d_hidden = Upload<bf16>(hidden, s), d_lm = Upload<bf16>(lm_head, s);
  gpu::CompletionCrossEntropy ce(H, V, c.row_block, c.vocab_chunk);
  GuardedOutput<float> dh(dh_ref.size(), s);
  const std::vector<double> loss = ce.Run(ctx, d_hidden.data(), d_lm.data(), ids.data(), tokens,
                                          seqs.data(), seqs.size(), dh.data());
  // Loss: fp32 logits from tensor cores (truncating fp32 sums over H, see gemm_gpu_test.cpp)
  // and an fp32 log-sum-exp, against the reference's fp32 logits and double sums.
  EXPECT_TRUE(AllClose("loss", loss, loss_ref, 1e-4, 1e-4));
  // d_hidden: the softmax gradient is rounded to bf16 (the GEMM's operand), about 2e-3 relative
  // rms per vocabulary term; the sum over the vocabulary does not make that worse.
  const std::vector<float> got = dh.Read("d_hidden", s);
  EXPECT_TRUE(test::RelNormClose("d_hidden", got, dh_ref, 5e-3));
  const float scale = *std::max_element(
      dh_ref.begin(), dh_ref.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  EXPECT_TRUE(AllClose("d_hidden (elementwise)", got, dh_ref, 1e-2 * std::fabs(scale), 1e-2));
  // Loss alone: the same losses.
  EXPECT_TRUE(AllClose("loss without gradient",
                       ce.Run(ctx, d_hidden.data(), d_lm.data(), ids.data(), tokens, seqs.data(),
                              seqs.size(), nullptr),
                       loss, 0, 0));
}

TEST_F(OpsGpuTest, CompletionCrossEntropyMatchesCpu) {
  CheckCrossEntropy(ctx(), {96, 1000, 16, 256, 3.0f});    // several row blocks and a chunk tail
  CheckCrossEntropy(ctx(), {64, 700, 4096, 8192, 1.0f});  // one block, one chunk (V < chunk)
  CheckCrossEntropy(ctx(), {256, 5000, 64, 2048, 8.0f});  // peaked softmax: p near 1 at times
}

}  // namespace
}  // namespace s0
