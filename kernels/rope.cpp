#include "kernels/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

// sign = +1 rotates by +angle (forward), -1 by -angle (backward).
template <typename T>
void Rotate(const T* x, T* y, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rot_dim,
            const float* cos, const float* sin, int sign) {
  S0_CHECK(tokens >= 0 && heads > 0 && rot_dim >= 0 && rot_dim % 2 == 0 && rot_dim <= head_dim);
  const int64_t half = rot_dim / 2;
  const size_t grain = size_t(std::max<int64_t>(1, 16384 / (heads * head_dim)));
  ParallelFor(size_t(tokens), [&](size_t begin, size_t end) {
    for (size_t t = begin; t < end; ++t) {
      const float* c = cos + int64_t(t) * half;
      const float* s = sin + int64_t(t) * half;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t off = (int64_t(t) * heads + h) * head_dim;
        const T* xh = x + off;
        T* yh = y + off;
        for (int64_t i = 0; i < half; ++i) {
          const T ci = T(c[i]), si = sign > 0 ? T(s[i]) : -T(s[i]);
          const T a = xh[i], b = xh[i + half];
          yh[i] = a * ci - b * si;
          yh[i + half] = b * ci + a * si;
        }
        if (yh != xh) std::copy(xh + rot_dim, xh + head_dim, yh + rot_dim);
      }
    }
  }, grain);
}

}  // namespace

void RopeTables(int64_t n_pos, int64_t pos_offset, int64_t rot_dim, double theta, float* cos,
                float* sin) {
  S0_CHECK(n_pos >= 0 && pos_offset >= 0 && rot_dim > 0 && rot_dim % 2 == 0 && theta > 0);
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = float(2 * i) / float(rot_dim);
    const float inv_freq = 1.0f / std::pow(float(theta), exponent);
    for (int64_t p = 0; p < n_pos; ++p) {
      const float angle = float(pos_offset + p) * inv_freq;
      cos[p * half + i] = std::cos(angle);
      sin[p * half + i] = std::sin(angle);
    }
  }
}

template <typename T>
void RopeForward(const T* x, T* y, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, const float* cos, const float* sin) {
  Rotate(x, y, tokens, heads, head_dim, rot_dim, cos, sin, +1);
}

template <typename T>
void RopeBackward(const T* dy, T* dx, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t rot_dim, const float* cos, const float* sin) {
  Rotate(dy, dx, tokens, heads, head_dim, rot_dim, cos, sin, -1);
}

#define S0_INSTANTIATE(T)                                                                    \
  template void RopeForward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, const float*, \
                               const float*);                                                \
  template void RopeBackward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t,             \
                                const float*, const float*);
S0_INSTANTIATE(float)
S0_INSTANTIATE(double)
#undef S0_INSTANTIATE

}  // namespace s0
