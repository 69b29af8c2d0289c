// The GPU model's own small kernels (worker/qwen35_gpu_model.cu): dS0 accumulation and the
// device-side random weights of benchmark models. Host declarations only, C++17, so both the .cu
// and the C++20 host code of worker/qwen35_gpu_model.cpp include this file. Conventions as in
// kernels/ops_cuda.h: plain device pointers, sizes in elements, enqueued on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace s0::gpu {

// acc[i] += x[i] in fp32.   acc, x: [n] fp32
void AccumulateInto(float* acc, const float* x, int64_t n, cudaStream_t stream);

// out[i] = mean + stddev * N(0, 1), a counter-based draw: element i of stream `seed` (the same
// seed and n give the same values on every run and device). T = float or bf16 (rounded once).
template <typename T>
void FillNormal(T* out, int64_t n, float mean, float stddev, uint64_t seed, cudaStream_t stream);

// out[i] = log(U(lo, hi)), with 0 < lo < hi (the A_log parameterisation of a decay rate).
void FillLogUniform(float* out, int64_t n, float lo, float hi, uint64_t seed, cudaStream_t stream);

}  // namespace s0::gpu
