#include "kernels/activations.h"

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

constexpr size_t kGrain = 16384;

// Runs fn(i) for i in [0, n) on the thread pool.
template <typename Fn>
void Elementwise(int64_t n, Fn&& fn) {
  S0_CHECK(n >= 0);
  ParallelFor(size_t(n), [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) fn(i);
  }, kGrain);
}

}  // namespace

template <typename T>
void SigmoidForward(const T* x, T* y, int64_t n) {
  Elementwise(n, [&](size_t i) { y[i] = Sigmoid(x[i]); });
}

template <typename T>
void SigmoidBackward(const T* x, const T* dy, T* dx, int64_t n) {
  Elementwise(n, [&](size_t i) {
    const T s = Sigmoid(x[i]);
    dx[i] = dy[i] * s * (T(1) - s);
  });
}

template <typename T>
void SiluForward(const T* x, T* y, int64_t n) {
  Elementwise(n, [&](size_t i) { y[i] = Silu(x[i]); });
}

template <typename T>
void SiluBackward(const T* x, const T* dy, T* dx, int64_t n) {
  Elementwise(n, [&](size_t i) { dx[i] = dy[i] * SiluDerivative(x[i]); });
}

template <typename T>
void SwiGluForward(const T* gate, const T* up, T* act, int64_t n) {
  Elementwise(n, [&](size_t i) { act[i] = Silu(gate[i]) * up[i]; });
}

template <typename T>
void SwiGluBackward(const T* gate, const T* up, const T* dact, T* dgate, T* dup, int64_t n) {
  Elementwise(n, [&](size_t i) {
    const T g = gate[i], u = up[i], da = dact[i];
    dgate[i] = da * u * SiluDerivative(g);
    dup[i] = da * Silu(g);
  });
}

#define S0_INSTANTIATE(T)                                                             \
  template void SigmoidForward<T>(const T*, T*, int64_t);                             \
  template void SigmoidBackward<T>(const T*, const T*, T*, int64_t);                  \
  template void SiluForward<T>(const T*, T*, int64_t);                                \
  template void SiluBackward<T>(const T*, const T*, T*, int64_t);                     \
  template void SwiGluForward<T>(const T*, const T*, T*, int64_t);                    \
  template void SwiGluBackward<T>(const T*, const T*, const T*, T*, T*, int64_t);
S0_INSTANTIATE(float)
S0_INSTANTIATE(double)
#undef S0_INSTANTIATE

}  // namespace s0
