#include "kernels/gdn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

// Rows per ParallelFor range for the row-wise ops.
constexpr size_t kRowGrain = 16;

template <typename Real>
Real Sigmoid(Real x) {
  return Real(1) / (Real(1) + std::exp(-x));
}

// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x).
template <typename Real>
Real SiluGrad(Real x) {
  const Real s = Sigmoid(x);
  return s * (Real(1) + x * (Real(1) - s));
}

// PyTorch softplus(x) with beta = 1, threshold = 20.
template <typename Real>
Real Softplus(Real x) {
  return x > Real(20) ? x : std::log1p(std::exp(x));
}

// Pre-activation of row t of the causal conv into pre[0, C).
template <typename Real>
void ConvRow(const Real* x, const Real* w, int64_t t, int64_t channels, int64_t kernel_size,
             Real* pre) {
  std::fill(pre, pre + channels, Real(0));
  for (int64_t j = 0; j < kernel_size; ++j) {
    const int64_t src = t - (kernel_size - 1) + j;
    if (src < 0) continue;
    const Real* x_src = x + src * channels;
    for (int64_t c = 0; c < channels; ++c) pre[c] += w[c * kernel_size + j] * x_src[c];
  }
}

}  // namespace

template <typename Real>
void GdnConvSiluForward(const Real* x, const Real* w, int64_t seq_len, int64_t channels,
                        int64_t kernel_size, Real* out) {
  S0_CHECK(seq_len >= 0 && channels > 0 && kernel_size > 0);
  ParallelFor(size_t(seq_len), [&](size_t begin, size_t end) {
    for (int64_t t = int64_t(begin); t < int64_t(end); ++t) {
      Real* row = out + t * channels;
      ConvRow(x, w, t, channels, kernel_size, row);
      for (int64_t c = 0; c < channels; ++c) row[c] *= Sigmoid(row[c]);
    }
  }, kRowGrain);
}

template <typename Real>
void GdnConvSiluBackward(const Real* x, const Real* w, const Real* dout, int64_t seq_len,
                         int64_t channels, int64_t kernel_size, Real* dx) {
  S0_CHECK(seq_len >= 0 && channels > 0 && kernel_size > 0);
  // dpre = dout * silu'(pre), then dx[s][c] = sum_j w[c][j] dpre[s + (K-1) - j][c].
  std::vector<Real> dpre(size_t(seq_len * channels));
  ParallelFor(size_t(seq_len), [&](size_t begin, size_t end) {
    for (int64_t t = int64_t(begin); t < int64_t(end); ++t) {
      Real* row = &dpre[size_t(t * channels)];
      ConvRow(x, w, t, channels, kernel_size, row);
      for (int64_t c = 0; c < channels; ++c) row[c] = dout[t * channels + c] * SiluGrad(row[c]);
    }
  }, kRowGrain);
  ParallelFor(size_t(seq_len), [&](size_t begin, size_t end) {
    for (int64_t s = int64_t(begin); s < int64_t(end); ++s) {
      Real* row = dx + s * channels;
      std::fill(row, row + channels, Real(0));
      for (int64_t j = 0; j < kernel_size; ++j) {
        const int64_t t = s + (kernel_size - 1) - j;
        if (t >= seq_len) continue;
        const Real* dpre_t = &dpre[size_t(t * channels)];
        for (int64_t c = 0; c < channels; ++c) row[c] += w[c * kernel_size + j] * dpre_t[c];
      }
    }
  }, kRowGrain);
}

template <typename Real>
void GdnL2NormForward(const Real* x, int64_t rows, int64_t dim, Real* y) {
  S0_CHECK(rows >= 0 && dim > 0);
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (int64_t r = int64_t(begin); r < int64_t(end); ++r) {
      const Real* x_r = x + r * dim;
      Real ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += x_r[i] * x_r[i];
      const Real inv = Real(1) / std::sqrt(ss + Real(kGdnL2NormEps));
      for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = x_r[i] * inv;
    }
  }, kRowGrain);
}

template <typename Real>
void GdnL2NormBackward(const Real* x, const Real* dy, int64_t rows, int64_t dim, Real* dx) {
  S0_CHECK(rows >= 0 && dim > 0);
  // y = x r, r = (sum x^2 + eps)^-1/2:  dx = r dy - r^3 (x . dy) x.
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (int64_t r = int64_t(begin); r < int64_t(end); ++r) {
      const Real* x_r = x + r * dim;
      const Real* dy_r = dy + r * dim;
      Real ss = 0, xdy = 0;
      for (int64_t i = 0; i < dim; ++i) {
        ss += x_r[i] * x_r[i];
        xdy += x_r[i] * dy_r[i];
      }
      const Real inv = Real(1) / std::sqrt(ss + Real(kGdnL2NormEps));
      const Real coef = inv * inv * inv * xdy;
      for (int64_t i = 0; i < dim; ++i) dx[r * dim + i] = inv * dy_r[i] - coef * x_r[i];
    }
  }, kRowGrain);
}

template <typename Real>
void GdnGatesForward(const Real* a, const Real* b, const Real* a_log, const Real* dt_bias,
                     int64_t seq_len, int64_t num_v_heads, Real* g, Real* beta) {
  S0_CHECK(seq_len >= 0 && num_v_heads > 0);
  ParallelFor(size_t(seq_len), [&](size_t begin, size_t end) {
    for (int64_t t = int64_t(begin); t < int64_t(end); ++t) {
      for (int64_t h = 0; h < num_v_heads; ++h) {
        const int64_t i = t * num_v_heads + h;
        g[i] = -std::exp(a_log[h]) * Softplus(a[i] + dt_bias[h]);
        beta[i] = Sigmoid(b[i]);
      }
    }
  }, kRowGrain);
}

template <typename Real>
void GdnGatesBackward(const Real* a, const Real* b, const Real* a_log, const Real* dt_bias,
                      const Real* dg, const Real* dbeta, int64_t seq_len, int64_t num_v_heads,
                      Real* da, Real* db) {
  S0_CHECK(seq_len >= 0 && num_v_heads > 0);
  ParallelFor(size_t(seq_len), [&](size_t begin, size_t end) {
    for (int64_t t = int64_t(begin); t < int64_t(end); ++t) {
      for (int64_t h = 0; h < num_v_heads; ++h) {
        const int64_t i = t * num_v_heads + h;
        const Real xa = a[i] + dt_bias[h];
        const Real dsoftplus = xa > Real(20) ? Real(1) : Sigmoid(xa);
        da[i] = -dg[i] * std::exp(a_log[h]) * dsoftplus;
        const Real s = Sigmoid(b[i]);
        db[i] = dbeta[i] * s * (Real(1) - s);
      }
    }
  }, kRowGrain);
}

template <typename Real>
void GdnGatedRmsNormForward(const Real* o, const Real* z, const Real* w, int64_t rows,
                            int64_t dim, double eps, Real* y) {
  S0_CHECK(rows >= 0 && dim > 0);
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (int64_t r = int64_t(begin); r < int64_t(end); ++r) {
      const Real* o_r = o + r * dim;
      const Real* z_r = z + r * dim;
      Real ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += o_r[i] * o_r[i];
      const Real rstd = Real(1) / std::sqrt(ss / Real(dim) + Real(eps));
      for (int64_t i = 0; i < dim; ++i) {
        y[r * dim + i] = o_r[i] * rstd * w[i] * (z_r[i] * Sigmoid(z_r[i]));
      }
    }
  }, kRowGrain);
}

template <typename Real>
void GdnGatedRmsNormBackward(const Real* o, const Real* z, const Real* w, const Real* dy,
                             int64_t rows, int64_t dim, double eps, Real* d_o, Real* dz) {
  S0_CHECK(rows >= 0 && dim > 0);
  // With n = o rstd and dn = dy w silu(z):  d_o = rstd (dn - n mean(dn n)).
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (int64_t r = int64_t(begin); r < int64_t(end); ++r) {
      const Real* o_r = o + r * dim;
      const Real* z_r = z + r * dim;
      const Real* dy_r = dy + r * dim;
      Real ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += o_r[i] * o_r[i];
      const Real rstd = Real(1) / std::sqrt(ss / Real(dim) + Real(eps));
      Real dn_dot_n = 0;
      for (int64_t i = 0; i < dim; ++i) {
        const Real n = o_r[i] * rstd;
        const Real s = Sigmoid(z_r[i]);
        const Real dn = dy_r[i] * w[i] * z_r[i] * s;
        dn_dot_n += dn * n;
        dz[r * dim + i] = dy_r[i] * n * w[i] * SiluGrad(z_r[i]);
        d_o[r * dim + i] = dn;  // dn until the pass below
      }
      const Real mean = dn_dot_n / Real(dim);
      for (int64_t i = 0; i < dim; ++i) {
        d_o[r * dim + i] = rstd * (d_o[r * dim + i] - o_r[i] * rstd * mean);
      }
    }
  }, kRowGrain);
}

#define S0_GDN_OPS_INSTANTIATE(Real)                                                           \
  template void GdnConvSiluForward<Real>(const Real*, const Real*, int64_t, int64_t, int64_t,  \
                                         Real*);                                               \
  template void GdnConvSiluBackward<Real>(const Real*, const Real*, const Real*, int64_t,      \
                                          int64_t, int64_t, Real*);                            \
  template void GdnL2NormForward<Real>(const Real*, int64_t, int64_t, Real*);                  \
  template void GdnL2NormBackward<Real>(const Real*, const Real*, int64_t, int64_t, Real*);    \
  template void GdnGatesForward<Real>(const Real*, const Real*, const Real*, const Real*,       \
                                      int64_t, int64_t, Real*, Real*);                         \
  template void GdnGatesBackward<Real>(const Real*, const Real*, const Real*, const Real*,      \
                                       const Real*, const Real*, int64_t, int64_t, Real*,      \
                                       Real*);                                                 \
  template void GdnGatedRmsNormForward<Real>(const Real*, const Real*, const Real*, int64_t,   \
                                             int64_t, double, Real*);                          \
  template void GdnGatedRmsNormBackward<Real>(const Real*, const Real*, const Real*,           \
                                              const Real*, int64_t, int64_t, double, Real*,    \
                                              Real*);
S0_GDN_OPS_INSTANTIATE(float)
S0_GDN_OPS_INSTANTIATE(double)
#undef S0_GDN_OPS_INSTANTIATE

}  // namespace s0
