#include "tests/common/gpu.h"

#ifdef S0_HAVE_CUDA
#include <cstring>
#endif

namespace s0::test {

std::string GpuUnavailableReason() {
#ifdef S0_HAVE_CUDA
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the error so that it cannot leak into a later check
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + ", " + cudaGetErrorString(e);
  }
  if (count == 0) return "cudaGetDeviceCount reports 0 devices";
  return "";
#else
  return "built without CUDA";
#endif
}

#ifdef S0_HAVE_CUDA

void GpuTest::SetUp() {
  static const std::string reason = GpuUnavailableReason();
  if (!reason.empty()) GTEST_SKIP() << "needs a CUDA GPU (none found: " << reason << ")";
  ctx_ = std::make_unique<CudaContext>();
}

std::vector<bf16> ToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

std::vector<float> ToFloat(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

template <typename T>
GuardedOutput<T>::GuardedOutput(size_t n, cudaStream_t stream)
    : n_(n), buffer_(n + kGuardElements) {
  buffer_.FillBytes(0xFF, stream);
}

template <typename T>
GuardedOutput<T>::GuardedOutput(const std::vector<float>& initial, cudaStream_t stream)
    : GuardedOutput(initial.size(), stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    buffer_.Upload(ToBf16(initial), stream);
  } else {
    buffer_.Upload(initial, stream);
  }
}

template <typename T>
std::vector<float> GuardedOutput<T>::Read(const std::string& name, cudaStream_t stream) const {
  const std::vector<T> all = buffer_.ToHost(stream);
  std::vector<unsigned char> guard(kGuardElements * sizeof(T));
  std::memcpy(guard.data(), all.data() + n_, guard.size());
  for (size_t i = 0; i < guard.size(); ++i) {
    if (guard[i] != 0xFF) {
      ADD_FAILURE() << name << ": the kernel wrote past the end of its output (guard byte " << i
                    << " is " << int(guard[i]) << ")";
      break;
    }
  }
  std::vector<float> out(n_);
  for (size_t i = 0; i < n_; ++i) {
    if constexpr (std::is_same_v<T, bf16>) {
      out[i] = __bfloat162float(all[i]);
    } else {
      out[i] = all[i];
    }
  }
  return out;
}

template class GuardedOutput<float>;
template class GuardedOutput<bf16>;

#endif  // S0_HAVE_CUDA

}  // namespace s0::test
