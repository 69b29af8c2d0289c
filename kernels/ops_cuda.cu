#include "kernels/ops_cuda.h"

#include "kernels/device_math_cuda.cuh"

namespace s0::gpu {
namespace {

__global__ void CastToBf16Kernel(const float* x, bf16* y, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) { y[i] = FromFloat<bf16>(x[i]); }
}

// One block per token.
template <typename Out>
__global__ void EmbeddingKernel(const int32_t* ids, const bf16* table, Out* out, int64_t vocab,
                                int64_t hidden) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  if (id < 0 || id >= vocab) __trap();  // the host validates ids; this is a programmer error
  const bf16* src = table + int64_t(id) * hidden;
  Out* dst = out + t * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = FromFloat<Out>(ToFloat(src[i]));
  }
}

// One block per row. Each thread reads the same elements in both loops, so y may alias x.
template <typename X, typename Y>
__global__ void RmsNormForwardKernel(const X* x, const float* w, Y* y, int64_t dim, float eps) {
  const X* xr = x + int64_t(blockIdx.x) * dim;
  Y* yr = y + int64_t(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    ss += v * v;
  }
  const float r = rsqrtf(BlockSum(ss) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = FromFloat<Y>(ToFloat(xr[i]) * r * (1.0f + w[i]));
  }
}

// One block per row; dx may alias dy (same thread, same element).
template <typename X, typename G>
__global__ void RmsNormBackwardKernel(const X* x, const float* w, const float* dy, G* dx,
                                      int64_t dim, float eps, bool accumulate) {
  const int64_t off = int64_t(blockIdx.x) * dim;
  float ss = 0.0f, dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(x[off + i]);
    ss += v * v;
    dot += dy[off + i] * (1.0f + w[i]) * v;
  }
  ss = BlockSum(ss);
  dot = BlockSum(dot);
  const float r = rsqrtf(ss / float(dim) + eps);
  const float coef = r * r * r / float(dim) * dot;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float g = r * (1.0f + w[i]) * dy[off + i] - ToFloat(x[off + i]) * coef;
    Store(dx + off + i, g, accumulate);
  }
}

// One block per token. A thread owns a rotated pair (i, i + half) and reads both before writing
// them, so y may alias x. sign = -1 applies the inverse rotation.
template <typename Elem>
__global__ void RopeKernel(const Elem* x, Elem* y, int64_t heads, int64_t head_dim, int64_t rot_dim,
                           const float* cos, const float* sin, const int32_t* pos, float sign) {
  const int64_t t = blockIdx.x;
  const int64_t half = rot_dim / 2;
  const int64_t row = pos != nullptr ? int64_t(pos[t]) : t;
  const float* c = cos + row * half;
  const float* s = sin + row * half;
  const int64_t base = t * heads * head_dim;
  for (int64_t k = threadIdx.x; k < heads * half; k += blockDim.x) {
    const int64_t i = k % half;
    const int64_t off = base + (k / half) * head_dim + i;
    const float a = ToFloat(x[off]), b = ToFloat(x[off + half]);
    const float ci = c[i], si = sign * s[i];
    y[off] = FromFloat<Elem>(a * ci - b * si);
    y[off + half] = FromFloat<Elem>(b * ci + a * si);
  }
  if (x == y) return;
  const int64_t pass = head_dim - rot_dim;
  for (int64_t k = threadIdx.x; k < heads * pass; k += blockDim.x) {
    const int64_t off = base + (k / pass) * head_dim + rot_dim + k % pass;
    y[off] = x[off];
  }
}

__global__ void SwiGluForwardKernel(const bf16* gate, const bf16* up, bf16* act, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) { act[i] = FromFloat<bf16>(Silu(ToFloat(gate[i])) * ToFloat(up[i])); }
}

template <typename G>
__global__ void SwiGluBackwardKernel(const bf16* gate, const bf16* up, const float* dact, G* dgate,
                                     G* dup, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) {
    const float g = ToFloat(gate[i]), d = dact[i];
    dgate[i] = FromFloat<G>(d * ToFloat(up[i]) * SiluGrad(g));
    dup[i] = FromFloat<G>(d * Silu(g));
  }
}

template <typename A>
__global__ void SigmoidGateForwardKernel(const A* attn, const bf16* gate, bf16* out, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) {
    out[i] = FromFloat<bf16>(ToFloat(attn[i]) * Sigmoid(ToFloat(gate[i])));
  }
}

template <typename A>
__global__ void SigmoidGateBackwardKernel(const A* attn, const bf16* gate, const float* dout,
                                          float* dattn, float* dgate, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) {
    const float s = Sigmoid(ToFloat(gate[i])), d = dout[i];
    dattn[i] = d * s;
    dgate[i] = d * ToFloat(attn[i]) * s * (1.0f - s);
  }
}

// Over the elements of qg / dqg ([T * n_h, 2d]): coalesced on the wide side.
__global__ void SplitQueryGateKernel(const bf16* qg, bf16* q, bf16* gate, int64_t n, int64_t d) {
  S0_GRID_STRIDE_LOOP(e, n) {
    const int64_t head = e / (2 * d), j = e % (2 * d);
    if (j < d) {
      q[head * d + j] = qg[e];
    } else {
      gate[head * d + j - d] = qg[e];
    }
  }
}

template <typename G>
__global__ void MergeQueryGateGradKernel(const float* dq, const float* dgate, G* dqg, int64_t n,
                                         int64_t d) {
  S0_GRID_STRIDE_LOOP(e, n) {
    const int64_t head = e / (2 * d), j = e % (2 * d);
    dqg[e] = FromFloat<G>(j < d ? dq[head * d + j] : dgate[head * d + j - d]);
  }
}

template <typename Elem>
void Rope(const Elem* x, Elem* y, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim,
          const float* cos, const float* sin, const int32_t* pos, float sign, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && heads > 0 && rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= head_dim);
  if (tokens == 0) return;
  RopeKernel<<<unsigned(tokens), RowThreads(heads * head_dim / 2), 0, stream>>>(
      x, y, heads, head_dim, rot_dim, cos, sin, pos, sign);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void CastToBf16(const float* x, bf16* y, int64_t n, cudaStream_t stream) {
  S0_CHECK(n >= 0);
  if (n == 0) return;
  CastToBf16Kernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

template <typename Out>
void EmbeddingForward(const int32_t* ids, const bf16* table, Out* out, int64_t tokens,
                      int64_t vocab, int64_t hidden, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && vocab > 0 && hidden > 0);
  if (tokens == 0) return;
  EmbeddingKernel<<<unsigned(tokens), RowThreads(hidden), 0, stream>>>(ids, table, out, vocab,
                                                                       hidden);
  CUDA_CHECK_LAUNCH();
}

template <typename X, typename Y>
void RmsNormForward(const X* x, const float* w, Y* y, int64_t rows, int64_t dim, float eps,
                    cudaStream_t stream) {
  S0_CHECK(rows >= 0 && dim > 0);
  if (rows == 0) return;
  RmsNormForwardKernel<<<unsigned(rows), RowThreads(dim), 0, stream>>>(x, w, y, dim, eps);
  CUDA_CHECK_LAUNCH();
}

template <typename X, typename G>
void RmsNormBackward(const X* x, const float* w, const float* dy, G* dx, int64_t rows, int64_t dim,
                     float eps, OutputMode mode, cudaStream_t stream) {
  S0_CHECK(rows >= 0 && dim > 0);
  if (rows == 0) return;
  RmsNormBackwardKernel<<<unsigned(rows), RowThreads(dim), 0, stream>>>(
      x, w, dy, dx, dim, eps, mode == OutputMode::kAccumulate);
  CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void RopeForward(const Elem* x, Elem* y, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, const float* cos, const float* sin, const int32_t* pos,
                 cudaStream_t stream) {
  Rope(x, y, tokens, heads, head_dim, rot_dim, cos, sin, pos, 1.0f, stream);
}

template <typename Elem>
void RopeBackward(const Elem* dy, Elem* dx, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t rot_dim, const float* cos, const float* sin, const int32_t* pos,
                  cudaStream_t stream) {
  Rope(dy, dx, tokens, heads, head_dim, rot_dim, cos, sin, pos, -1.0f, stream);
}

void SwiGluForward(const bf16* gate, const bf16* up, bf16* act, int64_t n, cudaStream_t stream) {
  S0_CHECK(n >= 0);
  if (n == 0) return;
  SwiGluForwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(gate, up, act, n);
  CUDA_CHECK_LAUNCH();
}

template <typename G>
void SwiGluBackward(const bf16* gate, const bf16* up, const float* dact, G* dgate, G* dup,
                    int64_t n, cudaStream_t stream) {
  S0_CHECK(n >= 0);
  if (n == 0) return;
  SwiGluBackwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(gate, up, dact,
                                                                                 dgate, dup, n);
  CUDA_CHECK_LAUNCH();
}

template <typename A>
void SigmoidGateForward(const A* attn, const bf16* gate, bf16* out, int64_t n,
                        cudaStream_t stream) {
  S0_CHECK(n >= 0);
  if (n == 0) return;
  SigmoidGateForwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(attn, gate,
                                                                                     out, n);
  CUDA_CHECK_LAUNCH();
}

template <typename A>
void SigmoidGateBackward(const A* attn, const bf16* gate, const float* dout, float* dattn,
                         float* dgate, int64_t n, cudaStream_t stream) {
  S0_CHECK(n >= 0);
  if (n == 0) return;
  SigmoidGateBackwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(
      attn, gate, dout, dattn, dgate, n);
  CUDA_CHECK_LAUNCH();
}

void SplitQueryGate(const bf16* qg, bf16* q, bf16* gate, int64_t tokens, int64_t n_h, int64_t d,
                    cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && n_h > 0 && d > 0);
  const int64_t n = tokens * n_h * 2 * d;
  if (n == 0) return;
  SplitQueryGateKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(qg, q, gate, n, d);
  CUDA_CHECK_LAUNCH();
}

template <typename G>
void MergeQueryGateGrad(const float* dq, const float* dgate, G* dqg, int64_t tokens, int64_t n_h,
                        int64_t d, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && n_h > 0 && d > 0);
  const int64_t n = tokens * n_h * 2 * d;
  if (n == 0) return;
  MergeQueryGateGradKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(dq, dgate, dqg,
                                                                                     n, d);
  CUDA_CHECK_LAUNCH();
}

template void EmbeddingForward<float>(const int32_t*, const bf16*, float*, int64_t, int64_t,
                                      int64_t, cudaStream_t);
template void EmbeddingForward<bf16>(const int32_t*, const bf16*, bf16*, int64_t, int64_t, int64_t,
                                     cudaStream_t);

// X, Y, A: float or bf16.
#define S0_INSTANTIATE_NORM(X, Y)                                                                 \
  template void RmsNormForward<X, Y>(const X*, const float*, Y*, int64_t, int64_t, float,         \
                                     cudaStream_t);                                               \
  template void RmsNormBackward<X, Y>(const X*, const float*, const float*, Y*, int64_t, int64_t, \
                                      float, OutputMode, cudaStream_t);
S0_INSTANTIATE_NORM(float, float)
S0_INSTANTIATE_NORM(float, bf16)
S0_INSTANTIATE_NORM(bf16, float)
S0_INSTANTIATE_NORM(bf16, bf16)
#undef S0_INSTANTIATE_NORM

#define S0_INSTANTIATE_ELEM(E)                                                                   \
  template void RopeForward<E>(const E*, E*, int64_t, int64_t, int64_t, int64_t, const float*,   \
                               const float*, const int32_t*, cudaStream_t);                      \
  template void RopeBackward<E>(const E*, E*, int64_t, int64_t, int64_t, int64_t, const float*,  \
                                const float*, const int32_t*, cudaStream_t);                     \
  template void SwiGluBackward<E>(const bf16*, const bf16*, const float*, E*, E*, int64_t,       \
                                  cudaStream_t);                                                 \
  template void SigmoidGateForward<E>(const E*, const bf16*, bf16*, int64_t, cudaStream_t);      \
  template void SigmoidGateBackward<E>(const E*, const bf16*, const float*, float*, float*,      \
                                       int64_t, cudaStream_t);                                   \
  template void MergeQueryGateGrad<E>(const float*, const float*, E*, int64_t, int64_t, int64_t, \
                                      cudaStream_t);
S0_INSTANTIATE_ELEM(float)
S0_INSTANTIATE_ELEM(bf16)
#undef S0_INSTANTIATE_ELEM

}  // namespace s0::gpu
