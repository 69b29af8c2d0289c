#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"
#include "kernels/device_math_cuda.cuh"
#include "worker/qwen35_gpu_model.cuh"

namespace s0::gpu {
namespace {

__global__ void AccumulateKernel(float* acc, const float* x, int64_t n) {
  S0_GRID_STRIDE_LOOP(i, n) { acc[i] += x[i]; }
}

// SplitMix64's finaliser: a bijective 64-bit mix, enough for benchmark weights.
__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Two independent uniforms of element i of stream `seed`: u1 in (0, 1], u2 in [0, 1), 24 bits each.
__device__ __forceinline__ void Uniforms(uint64_t seed, int64_t i, float& u1, float& u2) {
  const uint64_t bits = Mix64(Mix64(seed) + uint64_t(i) * 0x9E3779B97F4A7C15ull);
  constexpr float kScale = 1.0f / 16777216.0f;  // 2^-24
  u1 = (float((bits >> 40) & 0xFFFFFF) + 1.0f) * kScale;
  u2 = float((bits >> 16) & 0xFFFFFF) * kScale;
}

template <typename T>
__global__ void FillNormalKernel(T* out, int64_t n, float mean, float stddev, uint64_t seed) {
  S0_GRID_STRIDE_LOOP(i, n) {
    float u1, u2;
    Uniforms(seed, i, u1, u2);
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);  // Box-Muller
    out[i] = FromFloat<T>(mean + stddev * z);
  }
}

__global__ void FillLogUniformKernel(float* out, int64_t n, float lo, float hi, uint64_t seed) {
  S0_GRID_STRIDE_LOOP(i, n) {
    float u1, u2;
    Uniforms(seed, i, u1, u2);
    out[i] = logf(lo + (hi - lo) * u2);
  }
}

}  // namespace

void AccumulateInto(float* acc, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  AccumulateKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(acc, x, n);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void FillNormal(T* out, int64_t n, float mean, float stddev, uint64_t seed, cudaStream_t stream) {
  if (n <= 0) return;
  FillNormalKernel<T>
      <<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(out, n, mean, stddev, seed);
  CUDA_CHECK_LAUNCH();
}

void FillLogUniform(float* out, int64_t n, float lo, float hi, uint64_t seed, cudaStream_t stream) {
  S0_CHECK(0.0f < lo && lo < hi);
  if (n <= 0) return;
  FillLogUniformKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(out, n, lo, hi,
                                                                                 seed);
  CUDA_CHECK_LAUNCH();
}

template void FillNormal<float>(float*, int64_t, float, float, uint64_t, cudaStream_t);
template void FillNormal<bf16>(bf16*, int64_t, float, float, uint64_t, cudaStream_t);

}  // namespace s0::gpu
