#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/activations.h"
#include "kernels/check.h"
#include "kernels/matmul.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

// Query rows per block: a head's task holds kQueryBlock x T scores (and, in backward, two more
// such buffers), and only the first i0 + kQueryBlock keys are visited for the block at i0.
constexpr int64_t kQueryBlock = 64;

void CheckShapes(int64_t tokens, int64_t n_h, int64_t n_kv, int64_t d) {
  S0_CHECK(tokens >= 0 && n_h > 0 && n_kv > 0 && d > 0);
  S0_CHECK_MSG(n_h % n_kv == 0, "query heads must be a multiple of kv heads");
}

// Turns raw scores s[rows, n_keys] (q . k for query row i0 + r) into causal probabilities in
// place: row r keeps keys 0 .. i0 + r, softmax over scale * s, later keys set to exactly 0.
// Softmax as torch computes it: subtract the row max, exp, divide by the sum (summed in double).
template <typename T>
void CausalSoftmax(T* s, int64_t rows, int64_t n_keys, int64_t i0, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * n_keys;
    const int64_t keep = i0 + r + 1;
    T mx = -INFINITY;
    for (int64_t j = 0; j < keep; ++j) {
      row[j] *= scale;
      mx = std::max(mx, row[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < keep; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += double(row[j]);
    }
    const T denom = T(sum);
    for (int64_t j = 0; j < keep; ++j) row[j] /= denom;
    std::fill(row + keep, row + n_keys, T(0));
  }
}

// dst[c, r] = src[r, c] for src: [rows, cols].
template <typename T>
void Transpose(const T* src, T* dst, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

}  // namespace

template <typename T>
void SplitQueryGate(const T* qg, T* q, T* gate, int64_t tokens, int64_t n_h, int64_t d) {
  S0_CHECK(tokens >= 0 && n_h > 0 && d > 0);
  ParallelFor(size_t(tokens * n_h), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      const T* src = qg + int64_t(row) * 2 * d;
      std::copy(src, src + d, q + int64_t(row) * d);
      std::copy(src + d, src + 2 * d, gate + int64_t(row) * d);
    }
  }, size_t(std::max<int64_t>(1, 16384 / d)));
}

template <typename T>
void MergeQueryGateGrad(const T* dq, const T* dgate, T* dqg, int64_t tokens, int64_t n_h,
                        int64_t d) {
  S0_CHECK(tokens >= 0 && n_h > 0 && d > 0);
  ParallelFor(size_t(tokens * n_h), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      T* dst = dqg + int64_t(row) * 2 * d;
      std::copy(dq + int64_t(row) * d, dq + int64_t(row + 1) * d, dst);
      std::copy(dgate + int64_t(row) * d, dgate + int64_t(row + 1) * d, dst + d);
    }
  }, size_t(std::max<int64_t>(1, 16384 / d)));
}

template <typename T>
void AttentionForward(const T* q, const T* k, const T* v, T* out, int64_t tokens, int64_t n_h,
                      int64_t n_kv, int64_t d) {
  CheckShapes(tokens, n_h, n_kv, d);
  const int64_t group = n_h / n_kv, ldq = n_h * d, ldk = n_kv * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
  ParallelFor(size_t(n_h), [&](size_t begin, size_t end) {
    std::vector<T> s(size_t(std::min(kQueryBlock, tokens) * tokens));
    for (size_t h = begin; h < end; ++h) {
      const int64_t qo = int64_t(h) * d, ko = int64_t(h) / group * d;
      for (int64_t i0 = 0; i0 < tokens; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, tokens - i0), n_keys = i0 + rows;
        Gemm(rows, n_keys, d, q + i0 * ldq + qo, ldq, k + ko, ldk, BLayout::kNK, s.data(), n_keys,
             OutputMode::kOverwrite);
        CausalSoftmax(s.data(), rows, n_keys, i0, scale);
        Gemm(rows, d, n_keys, s.data(), n_keys, v + ko, ldk, BLayout::kKN, out + i0 * ldq + qo,
             ldq, OutputMode::kOverwrite);
      }
    }
  });
}

template <typename T>
void AttentionBackward(const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                       int64_t tokens, int64_t n_h, int64_t n_kv, int64_t d) {
  CheckShapes(tokens, n_h, n_kv, d);
  const int64_t group = n_h / n_kv, ldq = n_h * d, ldk = n_kv * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
  // Each query head's share of dk and dv, [n_h, T, d], summed per kv head at the end in a fixed
  // order, so that heads run in parallel and results do not depend on the thread count.
  std::vector<T> dk_head(size_t(n_h * tokens * d), T(0)), dv_head(size_t(n_h * tokens * d), T(0));
  ParallelFor(size_t(n_h), [&](size_t begin, size_t end) {
    const size_t block = size_t(std::min(kQueryBlock, tokens) * tokens);
    std::vector<T> p(block), ds(block), transposed(block);
    for (size_t h = begin; h < end; ++h) {
      const int64_t qo = int64_t(h) * d, ko = int64_t(h) / group * d;
      T* dkh = dk_head.data() + int64_t(h) * tokens * d;
      T* dvh = dv_head.data() + int64_t(h) * tokens * d;
      for (int64_t i0 = 0; i0 < tokens; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, tokens - i0), n_keys = i0 + rows;
        const T* q_blk = q + i0 * ldq + qo;
        const T* dout_blk = dout + i0 * ldq + qo;
        Gemm(rows, n_keys, d, q_blk, ldq, k + ko, ldk, BLayout::kNK, p.data(), n_keys,
             OutputMode::kOverwrite);
        CausalSoftmax(p.data(), rows, n_keys, i0, scale);
        // dP = dO V^T, then the softmax gradient dS = P (dP - rowsum(P dP)), times the scale
        // that multiplied the scores.
        Gemm(rows, n_keys, d, dout_blk, ldq, v + ko, ldk, BLayout::kNK, ds.data(), n_keys,
             OutputMode::kOverwrite);
        for (int64_t r = 0; r < rows; ++r) {
          const T* pr = p.data() + r * n_keys;
          T* dsr = ds.data() + r * n_keys;
          double dot = 0;
          for (int64_t j = 0; j < n_keys; ++j) dot += double(pr[j]) * double(dsr[j]);
          const T row_dot = T(dot);
          for (int64_t j = 0; j < n_keys; ++j) dsr[j] = pr[j] * (dsr[j] - row_dot) * scale;
        }
        Gemm(rows, d, n_keys, ds.data(), n_keys, k + ko, ldk, BLayout::kKN, dq + i0 * ldq + qo,
             ldq, OutputMode::kOverwrite);
        Transpose(ds.data(), transposed.data(), rows, n_keys);
        Gemm(n_keys, d, rows, transposed.data(), rows, q_blk, ldq, BLayout::kKN, dkh, d,
             OutputMode::kAccumulate);
        Transpose(p.data(), transposed.data(), rows, n_keys);
        Gemm(n_keys, d, rows, transposed.data(), rows, dout_blk, ldq, BLayout::kKN, dvh, d,
             OutputMode::kAccumulate);
      }
    }
  });
  ParallelFor(size_t(tokens * n_kv), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      const int64_t t = int64_t(row) / n_kv, g = int64_t(row) % n_kv;
      T* dkr = dk + int64_t(row) * d;
      T* dvr = dv + int64_t(row) * d;
      std::fill(dkr, dkr + d, T(0));
      std::fill(dvr, dvr + d, T(0));
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const T* src_k = dk_head.data() + (h * tokens + t) * d;
        const T* src_v = dv_head.data() + (h * tokens + t) * d;
        for (int64_t i = 0; i < d; ++i) {
          dkr[i] += src_k[i];
          dvr[i] += src_v[i];
        }
      }
    }
  }, size_t(std::max<int64_t>(1, 8192 / d)));
}

template <typename T>
void SigmoidGateForward(const T* attn, const T* gate, T* out, int64_t n) {
  S0_CHECK(n >= 0);
  ParallelFor(size_t(n), [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) out[i] = attn[i] * Sigmoid(gate[i]);
  }, 16384);
}

template <typename T>
void SigmoidGateBackward(const T* attn, const T* gate, const T* dout, T* dattn, T* dgate,
                         int64_t n) {
  S0_CHECK(n >= 0);
  ParallelFor(size_t(n), [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const T s = Sigmoid(gate[i]), go = dout[i];
      dgate[i] = go * attn[i] * s * (T(1) - s);
      dattn[i] = go * s;
    }
  }, 16384);
}

#define S0_INSTANTIATE(T)                                                                     \
  template void SplitQueryGate<T>(const T*, T*, T*, int64_t, int64_t, int64_t);              \
  template void MergeQueryGateGrad<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);    \
  template void AttentionForward<T>(const T*, const T*, const T*, T*, int64_t, int64_t,      \
                                    int64_t, int64_t);                                        \
  template void AttentionBackward<T>(const T*, const T*, const T*, const T*, T*, T*, T*,     \
                                     int64_t, int64_t, int64_t, int64_t);                     \
  template void SigmoidGateForward<T>(const T*, const T*, T*, int64_t);                      \
  template void SigmoidGateBackward<T>(const T*, const T*, const T*, T*, T*, int64_t);
S0_INSTANTIATE(float)
S0_INSTANTIATE(double)
#undef S0_INSTANTIATE

}  // namespace s0
