// GPU test support. Every GPU test's fixture derives from GpuTest, whose SetUp skips the test,
// with the reason, when no CUDA device is usable (CI machines have none), so those runs report
// each GPU test as SKIPPED. Inputs are rounded to what the device type holds before both the
// CPU reference and the device see them; outputs are poisoned and guarded (GuardedOutput).
#pragma once

#include <string>

namespace s0::test {

// Empty when a CUDA device can be used; otherwise why not (the CUDA error, or a build without
// CUDA).
std::string GpuUnavailableReason();

}  // namespace s0::test

#ifdef S0_HAVE_CUDA

#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

#include "kernels/device_buffer.h"

namespace s0::test {

class GpuTest : public ::testing::Test {
 protected:
  // Skips with "needs a CUDA GPU (none found: <reason>)", or creates the context.
  void SetUp() override;

  CudaContext& ctx() { return *ctx_; }
  cudaStream_t stream() { return ctx_->stream(); }

 private:
  std::unique_ptr<CudaContext> ctx_;
};

// Host-side bf16 rounding (round to nearest even, as the device's conversions).
std::vector<bf16> ToBf16(const std::vector<float>& v);
std::vector<float> ToFloat(const std::vector<bf16>& v);

// v as the device type T (float or bf16) holds it: the values to feed the CPU reference.
template <typename T>
std::vector<float> AsStored(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return ToFloat(ToBf16(v));
  } else {
    return v;
  }
}

// A device copy of v in type T (float or bf16; bf16 rounds).
template <typename T>
DeviceBuffer<T> Upload(const std::vector<float>& v, cudaStream_t stream) {
  DeviceBuffer<T> d(v.size());
  if constexpr (std::is_same_v<T, bf16>) {
    d.Upload(ToBf16(v), stream);
  } else {
    d.Upload(v, stream);
  }
  return d;
}

// Tolerances of a comparison with the CPU reference (float instantiation, fed the same rounded
// inputs), by the output's device type:
//   bf16: the final rounding alone costs up to 2^-8 relative (half an ulp of an 8-bit
//         significand); fp32 differences before it are far smaller.
//   fp32: only fp32 rounding, expf/rsqrtf's last bits and the order of reductions differ (the
//         CPU reference sums some reductions in double).
template <typename T>
constexpr double Atol() {
  return std::is_same_v<T, bf16> ? 1e-2 : 1e-5;
}
template <typename T>
constexpr double Rtol() {
  return std::is_same_v<T, bf16> ? 1e-2 : 1e-4;
}

// The guard after each GuardedOutput: elements a kernel must never write.
inline constexpr size_t kGuardElements = 64;

// A device output of n elements of T (float or bf16), followed by kGuardElements guard
// elements. Every byte starts as 0xFF (NaN in fp32 and bf16), or, for an output a kernel
// accumulates into, the given initial values followed by the 0xFF guard.
template <typename T>
class GuardedOutput {
 public:
  GuardedOutput(size_t n, cudaStream_t stream);
  GuardedOutput(const std::vector<float>& initial, cudaStream_t stream);

  T* data() { return buffer_.data(); }
  // The n elements as float; adds a test failure naming `name` if the guard was written.
  std::vector<float> Read(const std::string& name, cudaStream_t stream) const;

 private:
  size_t n_;
  DeviceBuffer<T> buffer_;
};

}  // namespace s0::test

#endif  // S0_HAVE_CUDA
