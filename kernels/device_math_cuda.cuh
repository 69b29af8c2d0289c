// Device helpers shared by the CUDA op files (include from .cu files only): conversions between
// the storage types and the fp32 compute type, the activations as the CPU reference writes them,
// block reductions and launch shapes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace s0::gpu {

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
// Round to nearest even, as the host's __float2bfloat16 (and torch's .to(bfloat16)).
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// *p = v, or *p += v when accumulating (the sum in fp32, rounded once to T).
template <typename T>
__device__ __forceinline__ void Store(T* p, float v, bool accumulate) {
  *p = FromFloat<T>(accumulate ? ToFloat(*p) + v : v);
}

// The formulas of kernels/activations.h and kernels/gdn.cpp, in fp32 with the accurate expf
// (an overflowing exp(-x) gives 0 and -0, never NaN).
__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float Silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float SiluGrad(float x) {
  const float s = Sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}
// PyTorch's softplus (beta 1, threshold 20).
__device__ __forceinline__ float Softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block, returned to every thread. blockDim.x must be a multiple of 32; every
// thread of the block must call it (it holds barriers). Safe to call several times in a row.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // a previous call's readers are done with partial
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  return WarpSum(lane < int(blockDim.x >> 5) ? partial[lane] : 0.0f);
}

// Grid-stride loops: i runs over [0, n) across the whole grid.
#define S0_GRID_STRIDE_LOOP(i, n)                                           \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

inline constexpr int kElementwiseThreads = 256;

// Blocks for an element-wise kernel over n elements; a grid-stride loop covers what a capped
// grid leaves. n must be positive.
inline unsigned ElementwiseBlocks(int64_t n) {
  return unsigned(std::min<int64_t>((n + kElementwiseThreads - 1) / kElementwiseThreads, 1 << 20));
}

// Threads of a one-block-per-row kernel: a warp multiple covering dim, at most 256 (each thread
// then loops over dim / 256 elements).
inline int RowThreads(int64_t dim) { return int(std::min<int64_t>(256, (dim + 31) / 32 * 32)); }

}  // namespace s0::gpu
