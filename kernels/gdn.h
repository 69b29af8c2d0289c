// CPU reference of the Gated DeltaNet layer's element-wise and normalisation ops (Qwen3.5
// `Qwen3_5GatedDeltaNet`, spec qwen3_5.md §1.6), forward and input-gradient backward. The gated
// delta rule itself is in kernels/gated_delta_rule.h. Layer order: conv+SiLU on [q|k|v] ->
// L2 norm of q and k -> gates -> gated delta rule -> gated RMSNorm.
//
// Conventions: one sequence per call, row-major, plain pointers; T = seq_len tokens. Real is float
// or double (explicit instantiations); all arithmetic is in Real. Outputs must not alias inputs
// and are fully overwritten. No weight gradients. Work is split over rows with ParallelFor; results
// do not depend on the thread count.
#pragma once

#include <cstdint>

namespace s0 {

// Causal depthwise conv1d (no bias) + SiLU with zero left padding:
//   out[t][c] = silu( sum_{j<K} w[c][j] * x[t - (K-1) + j][c] ),   x[t < 0] = 0,
// so w[c][K-1] multiplies the current token (PyTorch conv1d weight [C, 1, K] read as [C, K]).
//   x: [T, C]   w: [C, K]   out: [T, C]
template <typename Real>
void GdnConvSiluForward(const Real* x, const Real* w, int64_t seq_len, int64_t channels,
                        int64_t kernel_size, Real* out);

// dx from dout; the pre-activation is recomputed from x.
//   x, dout, dx: [T, C]   w: [C, K]
template <typename Real>
void GdnConvSiluBackward(const Real* x, const Real* w, const Real* dout, int64_t seq_len,
                         int64_t channels, int64_t kernel_size, Real* dx);

// The epsilon of the q/k L2 norm (HF/FLA l2norm), added to the sum of squares.
inline constexpr double kGdnL2NormEps = 1e-6;

// y = x * rsqrt(sum(x^2) + kGdnL2NormEps) over each row (the last dim).
//   x, y: [rows, dim]   (q or k: rows = T * H_k, dim = d_k)
template <typename Real>
void GdnL2NormForward(const Real* x, int64_t rows, int64_t dim, Real* y);

//   x, dy, dx: [rows, dim]
template <typename Real>
void GdnL2NormBackward(const Real* x, const Real* dy, int64_t rows, int64_t dim, Real* dx);

// g[t][h] = -exp(a_log[h]) * softplus(a[t][h] + dt_bias[h]),  beta[t][h] = sigmoid(b[t][h]).
// softplus is PyTorch's default: x if x > 20, else log1p(exp(x)).
//   a, b, g, beta: [T, H_v]   a_log, dt_bias: [H_v]
template <typename Real>
void GdnGatesForward(const Real* a, const Real* b, const Real* a_log, const Real* dt_bias,
                     int64_t seq_len, int64_t num_v_heads, Real* g, Real* beta);

// da from dg, db from dbeta (softplus' derivative is 1 above the threshold, as in PyTorch).
//   a, b, dg, dbeta, da, db: [T, H_v]   a_log, dt_bias: [H_v]
template <typename Real>
void GdnGatesBackward(const Real* a, const Real* b, const Real* a_log, const Real* dt_bias,
                      const Real* dg, const Real* dbeta, int64_t seq_len, int64_t num_v_heads,
                      Real* da, Real* db);

// Gated RMSNorm of the delta-rule output, per row (one token and value head):
//   y = o / sqrt(mean(o^2) + eps) * w * silu(z)
//   o, z, y: [rows, dim]  (rows = T * H_v, dim = d_v)   w: [dim], used as is (no 1 + w)
// eps = rms_norm_eps of the model config.
template <typename Real>
void GdnGatedRmsNormForward(const Real* o, const Real* z, const Real* w, int64_t rows,
                            int64_t dim, double eps, Real* y);

//   o, z, dy, d_o, dz: [rows, dim]   w: [dim]
template <typename Real>
void GdnGatedRmsNormBackward(const Real* o, const Real* z, const Real* w, const Real* dy,
                             int64_t rows, int64_t dim, double eps, Real* d_o, Real* dz);

}  // namespace s0
