// Dense matrix products on the CPU, fp32 (engine) and fp64 (finite differences, fixtures).
// Row-major, plain pointers, sizes in elements. Outputs must not alias inputs.
//
// Determinism: every output element is summed over k in ascending order, in blocks of a fixed
// size, so results depend neither on the thread count nor on M (a row of x gives the same row of
// y whatever else is in the batch). They do depend on the instruction set picked at start-up
// (FMA or not): see GemmIsaName().
#pragma once

#include <cstdint>

#include "kernels/output_mode.h"

namespace s0 {

// How the B operand of Gemm is stored.
enum class BLayout {
  kNK,  // b[n * ldb + k]: B^T row-major, as nn.Linear stores its weight [out, in]
  kKN,  // b[k * ldb + n]: B row-major
};

// c[M, N] (+)= a[M, K] · B[K, N]. a[m * lda + k]; c[m * ldc + n]; B as `layout` says.
// Parallel over blocks of M and N; runs serially when called inside a ParallelFor task.
template <typename T>
void Gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          BLayout layout, T* c, int64_t ldc, OutputMode mode);

// nn.Linear without bias: y = x · w^T.
//   x: [rows, in], w: [out, in], y: [rows, out].
template <typename T>
void MatmulForward(const T* x, const T* w, T* y, int64_t rows, int64_t in, int64_t out,
                   OutputMode mode = OutputMode::kOverwrite);

// Input gradient of MatmulForward: dx (+)= dy · w.
//   dy: [rows, out], w: [out, in], dx: [rows, in].
template <typename T>
void MatmulBackwardInput(const T* dy, const T* w, T* dx, int64_t rows, int64_t in, int64_t out,
                         OutputMode mode = OutputMode::kOverwrite);

// The instruction set the GEMM micro-kernel uses: "avx512", "avx2+fma" or "generic" (whatever
// the compiler targets by default). Picked once per process: the best the CPU has, or the one
// named by the environment variable S0_GEMM_ISA=generic|avx2|avx512 (tests use it to cover
// every path; naming one the CPU lacks is fatal).
const char* GemmIsaName();

}  // namespace s0
