#include "kernels/gdn_ops_cuda.h"

#include "kernels/device_math_cuda.cuh"
#include "kernels/gdn.h"

namespace s0::gpu {
namespace {

// Token t's position in its sequence: how many earlier tokens its causal taps may reach.
__device__ __forceinline__ int64_t PositionOf(const int32_t* pos, int64_t t) {
  return pos != nullptr ? int64_t(pos[t]) : t;
}

// The conv's pre-activation at (t, c): tap j reads the token `back` = K-1-j steps earlier, if it
// is in the same sequence.
__device__ __forceinline__ float ConvPre(const bf16* x, const float* wc, int64_t t, int64_t c,
                                         int64_t channels, int64_t kernel_size, int64_t p) {
  float acc = 0.0f;
  for (int64_t back = 0; back < kernel_size && back <= p; ++back) {
    acc += wc[kernel_size - 1 - back] * ToFloat(x[(t - back) * channels + c]);
  }
  return acc;
}

template <typename U>
__global__ void ConvSiluForwardKernel(const bf16* x, const float* w, U* u, int64_t tokens,
                                      int64_t channels, int64_t kernel_size, const int32_t* pos) {
  S0_GRID_STRIDE_LOOP(e, tokens * channels) {
    const int64_t t = e / channels, c = e % channels;
    const float pre =
        ConvPre(x, w + c * kernel_size, t, c, channels, kernel_size, PositionOf(pos, t));
    u[e] = FromFloat<U>(Silu(pre));
  }
}

// dx[s][c] = sum over the outputs t = s + back that tap s (same sequence: pos[t] >= back) of
// w[c][K-1-back] * du[t][c] * silu'(pre[t][c]).
template <typename G>
__global__ void ConvSiluBackwardKernel(const bf16* x, const float* w, const float* du, G* dx,
                                       int64_t tokens, int64_t channels, int64_t kernel_size,
                                       const int32_t* pos) {
  S0_GRID_STRIDE_LOOP(e, tokens * channels) {
    const int64_t s = e / channels, c = e % channels;
    const float* wc = w + c * kernel_size;
    float acc = 0.0f;
    for (int64_t back = 0; back < kernel_size && s + back < tokens; ++back) {
      const int64_t t = s + back, p = PositionOf(pos, t);
      if (p < back) continue;  // t starts a later sequence
      const float pre = ConvPre(x, wc, t, c, channels, kernel_size, p);
      acc += wc[kernel_size - 1 - back] * du[t * channels + c] * SiluGrad(pre);
    }
    dx[e] = FromFloat<G>(acc);
  }
}

// One block per (token, head) row: blockIdx.x = t * heads + h.
template <typename X, typename Y>
__global__ void L2NormForwardKernel(const X* x, int64_t ldx, Y* y, int64_t ldy, int64_t heads,
                                    int64_t dim, float eps) {
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const X* xr = x + t * ldx + h * dim;
  Y* yr = y + t * ldy + h * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    ss += v * v;
  }
  const float r = rsqrtf(BlockSum(ss) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = FromFloat<Y>(ToFloat(xr[i]) * r);
}

template <typename X>
__global__ void L2NormBackwardKernel(const X* x, int64_t ldx, const float* dy, int64_t ldy,
                                     float* dx, int64_t lddx, int64_t heads, int64_t dim,
                                     float eps) {
  const int64_t t = blockIdx.x / heads, h = blockIdx.x % heads;
  const X* xr = x + t * ldx + h * dim;
  const float* dyr = dy + t * ldy + h * dim;
  float* dxr = dx + t * lddx + h * dim;
  float ss = 0.0f, xdy = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    ss += v * v;
    xdy += v * dyr[i];
  }
  ss = BlockSum(ss);
  xdy = BlockSum(xdy);
  const float r = rsqrtf(ss + eps);
  const float coef = r * r * r * xdy;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    dxr[i] = r * dyr[i] - coef * ToFloat(xr[i]);
  }
}

__global__ void GatesForwardKernel(const bf16* a, const bf16* b, const float* a_log,
                                   const float* dt_bias, float* g, float* beta, int64_t n,
                                   int64_t num_v_heads) {
  S0_GRID_STRIDE_LOOP(i, n) {
    const int64_t h = i % num_v_heads;
    g[i] = -expf(a_log[h]) * Softplus(ToFloat(a[i]) + dt_bias[h]);
    beta[i] = Sigmoid(ToFloat(b[i]));
  }
}

template <typename G>
__global__ void GatesBackwardKernel(const bf16* a, const bf16* b, const float* a_log,
                                    const float* dt_bias, const float* dg, const float* dbeta,
                                    G* da, G* db, int64_t n, int64_t num_v_heads) {
  S0_GRID_STRIDE_LOOP(i, n) {
    const int64_t h = i % num_v_heads;
    const float xa = ToFloat(a[i]) + dt_bias[h];
    const float dsoftplus = xa > 20.0f ? 1.0f : Sigmoid(xa);
    da[i] = FromFloat<G>(-dg[i] * expf(a_log[h]) * dsoftplus);
    const float s = Sigmoid(ToFloat(b[i]));
    db[i] = FromFloat<G>(dbeta[i] * s * (1.0f - s));
  }
}

// One block per row.
template <typename O>
__global__ void GatedRmsNormForwardKernel(const O* o, const bf16* z, const float* w, bf16* y,
                                          int64_t dim, float eps) {
  const int64_t off = int64_t(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(o[off + i]);
    ss += v * v;
  }
  const float rstd = rsqrtf(BlockSum(ss) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    y[off + i] = FromFloat<bf16>(ToFloat(o[off + i]) * rstd * w[i] * Silu(ToFloat(z[off + i])));
  }
}

template <typename O, typename G>
__global__ void GatedRmsNormBackwardKernel(const O* o, const bf16* z, const float* w,
                                           const float* dy, float* d_o, G* dz, int64_t dim,
                                           float eps) {
  const int64_t off = int64_t(blockIdx.x) * dim;
  float ss = 0.0f, dn_dot_o = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(o[off + i]);
    ss += v * v;
    dn_dot_o += dy[off + i] * w[i] * Silu(ToFloat(z[off + i])) * v;
  }
  ss = BlockSum(ss);
  dn_dot_o = BlockSum(dn_dot_o);
  const float rstd = rsqrtf(ss / float(dim) + eps);
  const float mean = dn_dot_o * rstd / float(dim);  // mean(dn n)
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float zi = ToFloat(z[off + i]), n = ToFloat(o[off + i]) * rstd, d = dy[off + i];
    d_o[off + i] = rstd * (d * w[i] * Silu(zi) - n * mean);
    dz[off + i] = FromFloat<G>(d * n * w[i] * SiluGrad(zi));
  }
}

constexpr float kL2Eps = float(kGdnL2NormEps);

}  // namespace

template <typename U>
void GdnConvSiluForward(const bf16* x, const float* w, U* u, int64_t tokens, int64_t channels,
                        int64_t kernel_size, const int32_t* pos, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && channels > 0 && kernel_size > 0);
  if (tokens == 0) return;
  ConvSiluForwardKernel<<<ElementwiseBlocks(tokens * channels), kElementwiseThreads, 0, stream>>>(
      x, w, u, tokens, channels, kernel_size, pos);
  CUDA_CHECK_LAUNCH();
}

template <typename G>
void GdnConvSiluBackward(const bf16* x, const float* w, const float* du, G* dx, int64_t tokens,
                         int64_t channels, int64_t kernel_size, const int32_t* pos,
                         cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && channels > 0 && kernel_size > 0);
  if (tokens == 0) return;
  ConvSiluBackwardKernel<<<ElementwiseBlocks(tokens * channels), kElementwiseThreads, 0, stream>>>(
      x, w, du, dx, tokens, channels, kernel_size, pos);
  CUDA_CHECK_LAUNCH();
}

template <typename X, typename Y>
void GdnL2NormForward(const X* x, int64_t ldx, Y* y, int64_t ldy, int64_t tokens, int64_t heads,
                      int64_t dim, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && heads > 0 && dim > 0 && ldx >= heads * dim && ldy >= heads * dim);
  if (tokens == 0) return;
  L2NormForwardKernel<<<unsigned(tokens * heads), RowThreads(dim), 0, stream>>>(x, ldx, y, ldy,
                                                                                heads, dim, kL2Eps);
  CUDA_CHECK_LAUNCH();
}

template <typename X>
void GdnL2NormBackward(const X* x, int64_t ldx, const float* dy, int64_t ldy, float* dx,
                       int64_t lddx, int64_t tokens, int64_t heads, int64_t dim,
                       cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && heads > 0 && dim > 0 && ldx >= heads * dim && ldy >= heads * dim &&
           lddx >= heads * dim);
  if (tokens == 0) return;
  L2NormBackwardKernel<<<unsigned(tokens * heads), RowThreads(dim), 0, stream>>>(
      x, ldx, dy, ldy, dx, lddx, heads, dim, kL2Eps);
  CUDA_CHECK_LAUNCH();
}

void GdnGatesForward(const bf16* a, const bf16* b, const float* a_log, const float* dt_bias,
                     float* g, float* beta, int64_t tokens, int64_t num_v_heads,
                     cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && num_v_heads > 0);
  const int64_t n = tokens * num_v_heads;
  if (n == 0) return;
  GatesForwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(
      a, b, a_log, dt_bias, g, beta, n, num_v_heads);
  CUDA_CHECK_LAUNCH();
}

template <typename G>
void GdnGatesBackward(const bf16* a, const bf16* b, const float* a_log, const float* dt_bias,
                      const float* dg, const float* dbeta, G* da, G* db, int64_t tokens,
                      int64_t num_v_heads, cudaStream_t stream) {
  S0_CHECK(tokens >= 0 && num_v_heads > 0);
  const int64_t n = tokens * num_v_heads;
  if (n == 0) return;
  GatesBackwardKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(
      a, b, a_log, dt_bias, dg, dbeta, da, db, n, num_v_heads);
  CUDA_CHECK_LAUNCH();
}

template <typename O>
void GdnGatedRmsNormForward(const O* o, const bf16* z, const float* w, bf16* y, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream) {
  S0_CHECK(rows >= 0 && dim > 0);
  if (rows == 0) return;
  GatedRmsNormForwardKernel<<<unsigned(rows), RowThreads(dim), 0, stream>>>(o, z, w, y, dim, eps);
  CUDA_CHECK_LAUNCH();
}

template <typename O, typename G>
void GdnGatedRmsNormBackward(const O* o, const bf16* z, const float* w, const float* dy, float* d_o,
                             G* dz, int64_t rows, int64_t dim, float eps, cudaStream_t stream) {
  S0_CHECK(rows >= 0 && dim > 0);
  if (rows == 0) return;
  GatedRmsNormBackwardKernel<<<unsigned(rows), RowThreads(dim), 0, stream>>>(o, z, w, dy, d_o, dz,
                                                                             dim, eps);
  CUDA_CHECK_LAUNCH();
}

// T, X, Y: float or bf16.
#define S0_INSTANTIATE(T)                                                                       \
  template void GdnConvSiluForward<T>(const bf16*, const float*, T*, int64_t, int64_t, int64_t, \
                                      const int32_t*, cudaStream_t);                            \
  template void GdnConvSiluBackward<T>(const bf16*, const float*, const float*, T*, int64_t,    \
                                       int64_t, int64_t, const int32_t*, cudaStream_t);         \
  template void GdnL2NormBackward<T>(const T*, int64_t, const float*, int64_t, float*, int64_t, \
                                     int64_t, int64_t, int64_t, cudaStream_t);                  \
  template void GdnGatesBackward<T>(const bf16*, const bf16*, const float*, const float*,       \
                                    const float*, const float*, T*, T*, int64_t, int64_t,       \
                                    cudaStream_t);                                              \
  template void GdnGatedRmsNormForward<T>(const T*, const bf16*, const float*, bf16*, int64_t,  \
                                          int64_t, float, cudaStream_t);
S0_INSTANTIATE(float)
S0_INSTANTIATE(bf16)
#undef S0_INSTANTIATE

#define S0_INSTANTIATE_PAIR(X, Y)                                                                 \
  template void GdnL2NormForward<X, Y>(const X*, int64_t, Y*, int64_t, int64_t, int64_t, int64_t, \
                                       cudaStream_t);                                             \
  template void GdnGatedRmsNormBackward<X, Y>(const X*, const bf16*, const float*, const float*,  \
                                              float*, Y*, int64_t, int64_t, float, cudaStream_t);
S0_INSTANTIATE_PAIR(float, float)
S0_INSTANTIATE_PAIR(float, bf16)
S0_INSTANTIATE_PAIR(bf16, float)
S0_INSTANTIATE_PAIR(bf16, bf16)
#undef S0_INSTANTIATE_PAIR

}  // namespace s0::gpu
