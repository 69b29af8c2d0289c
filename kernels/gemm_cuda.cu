#include "kernels/gemm_cuda.h"

#include <limits>
#include <string>
#include <type_traits>

namespace s0::gpu {
namespace {

// cuBLAS is column-major. A row-major [R, C] matrix with leading dimension C is, read
// column-major, the [C, R] matrix with leading dimension C: its transpose. So each row-major
// product is computed as its transpose:
//
//   y = x w^T   (row-major y [M, N], x [M, K], w [N, K])
//   <=> y^T = w x^T, column-major:  m = N, n = M, k = K;
//       A = w read as the column-major [K, N] matrix (w^T), lda = K, op(A) = T  -> w   [N, K]
//       B = x read as the column-major [K, M] matrix (x^T), ldb = K, op(B) = N  -> x^T [K, M]
//       C = y read as the column-major [N, M] matrix (y^T), ldc = N
//
//   dx = dy w   (row-major dx [M, K], dy [M, N], w [N, K])
//   <=> dx^T = w^T dy^T, column-major:  m = K, n = M, k = N;
//       A = w  read as column-major [K, N] (w^T),   lda = K, op(A) = N
//       B = dy read as column-major [N, M] (dy^T),  ldb = N, op(B) = N
//       C = dx read as column-major [K, M] (dx^T),  ldc = K
template <typename Out>
constexpr cudaDataType_t CudaType() {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, bf16>);
  return std::is_same_v<Out, float> ? CUDA_R_32F : CUDA_R_16BF;
}

int CheckedInt(int64_t v, const char* what) {
  S0_CHECK_MSG(v >= 0 && v <= std::numeric_limits<int>::max(),
               std::string(what) + " = " + std::to_string(v) + " does not fit cuBLAS's int");
  return int(v);
}

template <typename Out>
void Gemm(const CudaContext& ctx, cublasOperation_t op_a, int64_t m, int64_t n, int64_t k,
          const bf16* a, int64_t lda, const bf16* b, int64_t ldb, Out* c, int64_t ldc,
          OutputMode mode) {
  if (m == 0 || n == 0) return;
  S0_CHECK(k > 0);
  const float alpha = 1.0f, beta = mode == OutputMode::kAccumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), op_a, CUBLAS_OP_N, CheckedInt(m, "m"), CheckedInt(n, "n"),
                            CheckedInt(k, "k"), &alpha, a, CUDA_R_16BF, CheckedInt(lda, "lda"), b,
                            CUDA_R_16BF, CheckedInt(ldb, "ldb"), &beta, c, CudaType<Out>(),
                            CheckedInt(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

template <typename Out>
void LinearForward(const CudaContext& ctx, const bf16* x, const bf16* w, Out* y, int64_t rows,
                   int64_t in, int64_t out, OutputMode mode) {
  S0_CHECK(rows >= 0 && in > 0 && out >= 0);
  Gemm(ctx, CUBLAS_OP_T, out, rows, in, w, in, x, in, y, out, mode);
}

template <typename Out>
void LinearBackwardInput(const CudaContext& ctx, const bf16* dy, const bf16* w, Out* dx,
                         int64_t rows, int64_t in, int64_t out, OutputMode mode) {
  S0_CHECK(rows >= 0 && in >= 0 && out > 0);
  Gemm(ctx, CUBLAS_OP_N, in, rows, out, w, in, dy, out, dx, in, mode);
}

#define S0_INSTANTIATE(Out)                                                                     \
  template void LinearForward<Out>(const CudaContext&, const bf16*, const bf16*, Out*, int64_t, \
                                   int64_t, int64_t, OutputMode);                               \
  template void LinearBackwardInput<Out>(const CudaContext&, const bf16*, const bf16*, Out*,    \
                                         int64_t, int64_t, int64_t, OutputMode);
S0_INSTANTIATE(float)
S0_INSTANTIATE(bf16)
#undef S0_INSTANTIATE

}  // namespace s0::gpu
