#include "tests/common/compare.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

namespace s0::test {
namespace {

template <typename T>
void Dump(const std::string& name, std::span<const T> got, std::span<const T> ref) {
  const char* dir = std::getenv("S0_TEST_DUMP_DIR");
  if (!dir) return;
  for (int which = 0; which < 2; ++which) {
    std::ofstream f(std::string(dir) + "/" + name + (which ? ".ref.f32" : ".got.f32"),
                    std::ios::binary);
    for (T v : (which ? ref : got)) {
      float x = static_cast<float>(v);
      f.write(reinterpret_cast<const char*>(&x), sizeof x);
    }
  }
}

template <typename T>
::testing::AssertionResult AllCloseT(const std::string& name, std::span<const T> got,
                                     std::span<const T> ref, double atol, double rtol) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << name << ": size " << got.size() << " != reference size " << ref.size();
  }
  size_t bad = 0, nonfinite = 0, worst = 0;
  double max_abs = 0, max_rel = 0, worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    double g = got[i], r = ref[i];
    if (!std::isfinite(g) || !std::isfinite(r)) {
      ++nonfinite;
      if (worst_excess < INFINITY) { worst = i; worst_excess = INFINITY; }
      continue;
    }
    double err = std::fabs(g - r);
    max_abs = std::max(max_abs, err);
    if (r != 0) max_rel = std::max(max_rel, err / std::fabs(r));
    double excess = err - (atol + rtol * std::fabs(r));
    if (excess > 0) ++bad;
    if (excess > worst_excess) { worst_excess = excess; worst = i; }
  }
  if (bad == 0 && nonfinite == 0) return ::testing::AssertionSuccess();
  Dump(name, got, ref);
  std::ostringstream os;
  os.precision(9);
  os << name << ": " << bad << " of " << got.size() << " elements outside atol " << atol
     << " + rtol " << rtol << ", " << nonfinite << " non-finite; max abs " << max_abs
     << ", max rel " << max_rel << "; worst [" << worst << "] got " << got[worst] << " ref "
     << ref[worst] << "; first values:";
  for (size_t i = 0; i < std::min<size_t>(got.size(), 6); ++i) os << " (" << got[i] << ", " << ref[i] << ")";
  return ::testing::AssertionFailure() << os.str();
}

template <typename T>
double RelNormErrorT(std::span<const T> got, std::span<const T> ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  if (!std::isfinite(num) || !std::isfinite(den)) return NAN;
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

template <typename T>
::testing::AssertionResult RelNormCloseT(const std::string& name, std::span<const T> got,
                                         std::span<const T> ref, double tol) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << name << ": size " << got.size() << " != reference size " << ref.size();
  }
  double e = RelNormErrorT(got, ref);
  if (std::isfinite(e) && e <= tol) return ::testing::AssertionSuccess();
  Dump(name, got, ref);
  return ::testing::AssertionFailure()
         << name << ": relative L2 error " << e << " > " << tol << " (n=" << got.size() << ")";
}

}  // namespace

::testing::AssertionResult AllClose(const std::string& name, std::span<const float> got,
                                    std::span<const float> ref, double atol, double rtol) {
  return AllCloseT(name, got, ref, atol, rtol);
}
::testing::AssertionResult AllClose(const std::string& name, std::span<const double> got,
                                    std::span<const double> ref, double atol, double rtol) {
  return AllCloseT(name, got, ref, atol, rtol);
}
::testing::AssertionResult RelNormClose(const std::string& name, std::span<const float> got,
                                        std::span<const float> ref, double tol) {
  return RelNormCloseT(name, got, ref, tol);
}
::testing::AssertionResult RelNormClose(const std::string& name, std::span<const double> got,
                                        std::span<const double> ref, double tol) {
  return RelNormCloseT(name, got, ref, tol);
}
double RelNormError(std::span<const float> got, std::span<const float> ref) {
  return RelNormErrorT(got, ref);
}

double CosineSimilarity(std::span<const float> a, std::span<const float> b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

void Poison(std::span<float> out) {
  for (float& x : out) x = NAN;
}

std::vector<float> RandomNormal(size_t n, uint64_t seed, float stddev, float mean) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> RandomUniform(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace s0::test
