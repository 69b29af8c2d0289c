#include "kernels/norm.h"

#include <algorithm>
#include <cmath>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

// Rows per ParallelFor range: enough elements that a task outweighs its scheduling.
size_t RowGrain(int64_t dim) { return size_t(std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1))); }

template <typename T>
double InverseRms(const T* x, int64_t dim, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += double(x[i]) * double(x[i]);
  return 1.0 / std::sqrt(ss / double(dim) + eps);
}

}  // namespace

template <typename T>
void RmsNormForward(const T* x, const T* w, T* y, int64_t rows, int64_t dim, double eps) {
  S0_CHECK(rows >= 0 && dim > 0);
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const T* xr = x + int64_t(r) * dim;
      T* yr = y + int64_t(r) * dim;
      // As Hugging Face: normalise, then scale by (1 + w), rounding to T after each step.
      const T inv = T(InverseRms(xr, dim, eps));
      for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv) * (T(1) + w[i]);
    }
  }, RowGrain(dim));
}

template <typename T>
void RmsNormBackward(const T* x, const T* w, const T* dy, T* dx, int64_t rows, int64_t dim,
                     double eps, OutputMode mode) {
  S0_CHECK(rows >= 0 && dim > 0);
  ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const T* xr = x + int64_t(r) * dim;
      const T* dyr = dy + int64_t(r) * dim;
      T* dxr = dx + int64_t(r) * dim;
      const double inv = InverseRms(xr, dim, eps);
      double dot = 0;  // sum_j dy_j (1 + w_j) x_j
      for (int64_t i = 0; i < dim; ++i) {
        dot += double(dyr[i]) * (1.0 + double(w[i])) * double(xr[i]);
      }
      const T a = T(inv);
      const T b = T(dot * inv * inv * inv / double(dim));
      for (int64_t i = 0; i < dim; ++i) {
        const T g = a * (T(1) + w[i]) * dyr[i] - b * xr[i];
        dxr[i] = mode == OutputMode::kAccumulate ? dxr[i] + g : g;
      }
    }
  }, RowGrain(dim));
}

#define S0_INSTANTIATE(T)                                                                 \
  template void RmsNormForward<T>(const T*, const T*, T*, int64_t, int64_t, double);     \
  template void RmsNormBackward<T>(const T*, const T*, const T*, T*, int64_t, int64_t,   \
                                   double, OutputMode);
S0_INSTANTIATE(float)
S0_INSTANTIATE(double)
#undef S0_INSTANTIATE

}  // namespace s0
