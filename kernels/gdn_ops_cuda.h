// CUDA twins of the Gated DeltaNet layer's element-wise and normalisation ops (kernels/gdn.h,
// spec qwen3_5.md §1.6), forward and input-gradient backward: causal depthwise conv1d + SiLU,
// the q/k L2 norm, the gates, the gated RMSNorm. The delta rule itself is kernels/gdn_cuda.h.
// Conventions (dtypes, fp32 gradients and G, pos for packed batches): kernels/ops_cuda.h.
#pragma once

#include <cstdint>

#include "kernels/device_buffer.h"

namespace s0::gpu {

// u[t][c] = silu( sum_{j<K} w[c][j] * x[t - (K-1) + j][c] ); taps before the token's own
// sequence start read 0 (w[c][K-1] multiplies the current token). One thread per output.
//   x: [T, C] bf16 (in_proj_qkv's output)   w: [C, K] fp32
//   u: [T, C] U (fp32 for the delta rule, which takes q, k, v in fp32)
//   pos: [T] int32 or null (kernels/ops_cuda.h)
template <typename U>
void GdnConvSiluForward(const bf16* x, const float* w, U* u, int64_t tokens, int64_t channels,
                        int64_t kernel_size, const int32_t* pos, cudaStream_t stream);

// dx from du, the pre-activations recomputed from x.
//   x: [T, C] bf16   w: [C, K] fp32   du: [T, C] fp32   dx: [T, C] G
template <typename G>
void GdnConvSiluBackward(const bf16* x, const float* w, const float* du, G* dx, int64_t tokens,
                         int64_t channels, int64_t kernel_size, const int32_t* pos,
                         cudaStream_t stream);

// y = x * rsqrt(sum(x^2) + kGdnL2NormEps) over each head's dim values; one block per
// (token, head). Token rows are strided so that q and k can be read straight out of the conv
// output u ([T, conv_dim]: x = u (q) or u + key_dim (k), ldx = conv_dim) and their gradients
// written straight into du.
//   x: token t, head h at x[t * ldx + h * dim + i], X   y: at y[t * ldy + h * dim + i], Y
template <typename X, typename Y>
void GdnL2NormForward(const X* x, int64_t ldx, Y* y, int64_t ldy, int64_t tokens, int64_t heads,
                      int64_t dim, cudaStream_t stream);

// dx = r dy - r^3 (x . dy) x,  r = rsqrt(sum(x^2) + eps).  x: X, dy, dx: fp32, strided as above.
template <typename X>
void GdnL2NormBackward(const X* x, int64_t ldx, const float* dy, int64_t ldy, float* dx,
                       int64_t lddx, int64_t tokens, int64_t heads, int64_t dim,
                       cudaStream_t stream);

// g = -exp(a_log) * softplus(a + dt_bias) (PyTorch's softplus, threshold 20), beta = sigmoid(b);
// both in fp32 (HF rounds beta to the model dtype; the delta rule takes it in fp32 here).
//   a, b: [T, H_v] bf16   a_log, dt_bias: [H_v] fp32   g, beta: [T, H_v] fp32
void GdnGatesForward(const bf16* a, const bf16* b, const float* a_log, const float* dt_bias,
                     float* g, float* beta, int64_t tokens, int64_t num_v_heads,
                     cudaStream_t stream);

// da from dg, db from dbeta (softplus' derivative is 1 above the threshold, as in PyTorch).
//   a, b: [T, H_v] bf16   a_log, dt_bias: [H_v] fp32   dg, dbeta: [T, H_v] fp32
//   da, db: [T, H_v] G
template <typename G>
void GdnGatesBackward(const bf16* a, const bf16* b, const float* a_log, const float* dt_bias,
                      const float* dg, const float* dbeta, G* da, G* db, int64_t tokens,
                      int64_t num_v_heads, cudaStream_t stream);

// Gated RMSNorm of the delta-rule output, per row (one token and value head), one block per row:
//   y = o / sqrt(mean(o^2) + eps) * w * silu(z)        (w used as is: no 1 + w)
//   o: [rows, dim] O (float or bf16)   z: [rows, dim] bf16   w: [dim] fp32   y: [rows, dim] bf16
//   (rows = T * H_v, dim = d_v)
template <typename O>
void GdnGatedRmsNormForward(const O* o, const bf16* z, const float* w, bf16* y, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream);

// With n = o * rstd and dn = dy * w * silu(z):  d_o = rstd (dn - n mean(dn n)),
// dz = dy * n * w * silu'(z).
//   o: [rows, dim] O   z: bf16   w: [dim] fp32   dy: fp32
//   d_o: [rows, dim] fp32 (to the delta rule's backward)   dz: [rows, dim] G (to in_proj_z)
template <typename O, typename G>
void GdnGatedRmsNormBackward(const O* o, const bf16* z, const float* w, const float* dy, float* d_o,
                             G* dz, int64_t rows, int64_t dim, float eps, cudaStream_t stream);

}  // namespace s0::gpu
