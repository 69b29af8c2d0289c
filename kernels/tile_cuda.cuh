// Block-level register tiles, shared-memory plans and loads, and the launcher of the tiled CUDA
// kernels (attention, GDN). Private to kernels/; include from .cu files only (device code, C++17).
//
// Contract:
//   - Every kernel that uses these runs exactly kThreads = 256 threads per block, seen as a
//     16 x 16 grid: thread tid is (ty, tx) = (tid / 16, tid % 16).
//   - Tile<TM, TN> is a block-wide (16 TM) x (16 TN) fp32 tile held in registers: thread (ty, tx)
//     holds v[i][j] = element (ty + 16 i, tx + 16 j). So each tile row lives on the 16 threads of
//     one half-warp, and tiles with the same TM keep a row on the same threads: they combine
//     elementwise and per-row values (softmax statistics, row sums) stay in those registers.
//   - The row reductions (RowMax, RowSum, Tile::RowSums) shuffle over the half-warp with a full
//     mask: every thread of the block must call them, with no divergence around the call.
//   - LoadTile and LoadVector stride over the whole block; the caller synchronizes
//     (__syncthreads) before reading what they wrote.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/check.h"
#include "kernels/cuda_check.h"

namespace s0::tile {
// Internal linkage, as when each .cu file kept its own copy: every kernel file gets its own
// inlined instances.
namespace {

constexpr int kThreads = 256;  // a 16 x 16 grid of threads (see Tile)

// Row stride in shared memory for rows of `cols` floats: odd, so that the 16 threads walking a
// column of a transposed operand hit 16 different banks.
__host__ __device__ constexpr int Ld(int cols) { return cols | 1; }

// The reduction of x over the 16 threads of a tile row (a half-warp); the result is in all 16.
// Every thread of the block must call them.
__device__ float RowMax(float x) {
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}
__device__ float RowSum(float x) {
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// A block-wide register tile of (16 TM) x (16 TN) fp32 values: thread (ty, tx) = (tid / 16,
// tid % 16) holds rows ty + 16 i and columns tx + 16 j. Tiles with the same TM keep a row on the
// same 16 threads (a half-warp), so tiles combine elementwise and rows reduce with shuffles.
template <int TM, int TN>
struct Tile {
  float v[TM][TN];

  __device__ static int Row(int i) { return int(threadIdx.x) / 16 + 16 * i; }
  __device__ static int Col(int j) { return int(threadIdx.x) % 16 + 16 * j; }

  __device__ void Zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) v[i][j] = 0.f;
    }
  }

  // v[m][n] += sum_{k < depth} a(m, k) b(k, n). Only m < rows, n < cols are meaningful; the
  // other elements are computed from clamped (in-range) indices and must be ignored.
  template <class A, class B>
  __device__ void Mma(int rows, int cols, int depth, A a, B b) {
    int m[TM], n[TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) m[i] = min(Row(i), rows - 1);
#pragma unroll
    for (int j = 0; j < TN; ++j) n[j] = min(Col(j), cols - 1);
#pragma unroll 2
    for (int k = 0; k < depth; ++k) {
      float av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = a(m[i], k);
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = b(k, n[j]);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) v[i][j] = fmaf(av[i], bv[j], v[i][j]);
      }
    }
  }

  // f(m, n, v[m][n]) for the elements with m < rows, n < cols; f may take v[m][n] by reference
  // to update it.
  template <class F>
  __device__ void ForEach(int rows, int cols, F f) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        if (Row(i) < rows && Col(j) < cols) f(Row(i), Col(j), v[i][j]);
      }
    }
  }

  // v[m][n] = f(m, n, v[m][n], other.v[m][n]) for every element held.
  template <class F>
  __device__ void Combine(const Tile& other, F f) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) v[i][j] = f(Row(i), Col(j), v[i][j], other.v[i][j]);
    }
  }

  // sums[i] = sum over n < cols of f(Row(i), n, v[Row(i)][n]), complete in each of the row's 16
  // threads. Every thread of the block must call it.
  template <class F>
  __device__ void RowSums(int cols, F f, float (&sums)[TM]) const {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        if (Col(j) < cols) s += f(Row(i), Col(j), v[i][j]);
      }
      sums[i] = RowSum(s);
    }
  }
};

// Offsets (in floats) of consecutive shared-memory arrays: the host sizes a kernel's dynamic
// shared memory with the same code the kernel carves it with.
struct SmemPlan {
  int64_t floats = 0;
  __host__ __device__ int64_t Take(int64_t n) {
    const int64_t at = floats;
    floats += n;
    return at;
  }
};

// dst[r * ld + c] = src(r, c) for r < valid, 0 for valid <= r < rows; c < cols.
template <class Src>
__device__ void LoadTile(float* dst, int ld, int rows, int cols, int valid, Src src) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += kThreads) {
    const int r = idx / cols, c = idx % cols;
    dst[r * ld + c] = r < valid ? src(r, c) : 0.f;
  }
}

// rows floats of dst = src(r) for r < valid, 0 after.
template <class Src>
__device__ void LoadVector(float* dst, int rows, int valid, Src src) {
  for (int r = threadIdx.x; r < rows; r += kThreads) dst[r] = r < valid ? src(r) : 0.f;
}

// Launches kernel<<<grid, kThreads, smem_floats * 4, stream>>>(args...), raising its dynamic
// shared-memory limit first; nothing for an empty grid. `what` names the kernel family in the
// error when the device cannot give that much shared memory.
template <typename... Params, typename... Args>
void Launch(const char* what, void (*kernel)(Params...), dim3 grid, int64_t smem_floats,
            cudaStream_t stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  const size_t bytes = size_t(smem_floats) * sizeof(float);
  int device = 0, limit = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  S0_CHECK_MSG(bytes <= size_t(limit), std::string(what) + " kernel needs " +
                                           std::to_string(bytes) +
                                           " bytes of shared memory, the device allows " +
                                           std::to_string(limit));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  kernel<<<grid, kThreads, bytes, stream>>>(args...);
  CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace s0::tile
