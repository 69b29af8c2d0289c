// The project's one tensor comparator. Every numerical test goes through it:
//   * NaN or Inf in either tensor fails (a NaN never "passes" a tolerance check);
//   * element budget: |got - ref| <= atol + rtol * |ref|;
//   * on failure it reports count, max abs/rel error, the worst index, and the first values,
//     and dumps both tensors to $S0_TEST_DUMP_DIR (when set) as raw float32.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace s0::test {

::testing::AssertionResult AllClose(const std::string& name, std::span<const float> got,
                                    std::span<const float> ref, double atol, double rtol);
::testing::AssertionResult AllClose(const std::string& name, std::span<const double> got,
                                    std::span<const double> ref, double atol, double rtol);

// ||got - ref||_2 / ||ref||_2 <= tol (both finite; ref not all zero unless got is too).
::testing::AssertionResult RelNormClose(const std::string& name, std::span<const float> got,
                                        std::span<const float> ref, double tol);
::testing::AssertionResult RelNormClose(const std::string& name, std::span<const double> got,
                                        std::span<const double> ref, double tol);

double RelNormError(std::span<const float> got, std::span<const float> ref);
double CosineSimilarity(std::span<const float> a, std::span<const float> b);

// Fills a buffer with NaN before a kernel writes it, so an unwritten element cannot pass.
void Poison(std::span<float> out);

// Deterministic normal/uniform fills for test inputs.
std::vector<float> RandomNormal(size_t n, uint64_t seed, float stddev = 1.0f, float mean = 0.0f);
std::vector<float> RandomUniform(size_t n, uint64_t seed, float lo, float hi);

}  // namespace s0::test
