// Helpers shared by the dense-op tests (matmul, norm, rope, attention, activations, embedding,
// cross-entropy): typed random inputs, NaN-poisoned outputs, and the finite-difference check
// that every backward goes through.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "tests/common/compare.h"

namespace s0::test::dense {

// Normal(0, stddev) values, generated in float so that the float and double instantiations of an
// op see the same inputs.
template <typename T>
std::vector<T> Normal(size_t n, uint64_t seed, float stddev = 1.0f) {
  std::vector<float> f = RandomNormal(n, seed, stddev);
  return std::vector<T>(f.begin(), f.end());
}

template <typename T>
std::vector<T> Uniform(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> f = RandomUniform(n, seed, lo, hi);
  return std::vector<T>(f.begin(), f.end());
}

// An output buffer full of NaN: an element the op fails to write cannot pass a comparison.
template <typename T>
std::vector<T> Poisoned(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

template <typename To, typename From>
std::vector<To> Cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

inline double Dot(std::span<const double> a, std::span<const double> b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks an analytic gradient of a scalar loss against central differences, in double:
//   * along one random direction over all of x: (L(x + hv) - L(x - hv)) / 2h against <g, v>;
//   * per element on up to max_elements evenly spread indices (first and last included).
// loss() must read x (the caller's vector, perturbed here and restored before returning).
inline ::testing::AssertionResult GradientMatches(const std::string& name, std::vector<double>& x,
                                                  std::span<const double> analytic,
                                                  const std::function<double()>& loss,
                                                  size_t max_elements = 48, double h = 1e-6,
                                                  double tol = 1e-6) {
  if (analytic.size() != x.size()) {
    return ::testing::AssertionFailure() << name << ": gradient size " << analytic.size()
                                         << " != input size " << x.size();
  }
  const std::vector<double> x0 = x;
  const std::vector<double> v = Normal<double>(x.size(), 99);
  for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] + h * v[i];
  const double up = loss();
  for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] - h * v[i];
  const double down = loss();
  x = x0;
  const double numeric_dir = (up - down) / (2 * h), analytic_dir = Dot(analytic, v);
  if (!(std::fabs(numeric_dir - analytic_dir) <= tol * std::max(1.0, std::fabs(analytic_dir)))) {
    return ::testing::AssertionFailure()
           << name << ": directional derivative " << analytic_dir << " analytic vs "
           << numeric_dir << " by finite differences";
  }
  const size_t count = std::min(max_elements, x.size());
  std::vector<double> numeric, expected;
  for (size_t c = 0; c < count; ++c) {
    const size_t i = count == 1 ? 0 : c * (x.size() - 1) / (count - 1);
    x[i] = x0[i] + h;
    const double lp = loss();
    x[i] = x0[i] - h;
    const double lm = loss();
    x[i] = x0[i];
    numeric.push_back((lp - lm) / (2 * h));
    expected.push_back(analytic[i]);
  }
  return AllClose(name + " (per element, finite differences vs analytic)", numeric, expected, tol,
                  tol);
}

}  // namespace s0::test::dense
